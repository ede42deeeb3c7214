"""Exercise 4: Recall@K for image -> text retrieval (§3.2 step 4).

Grade it with: python tutorials/assignments/grade.py ex4
"""

import torch


def recall_at_k(similarity, k):
    """The fraction of images whose own caption is among their k best-scoring captions.

    similarity: (N, N) float tensor; similarity[i, j] is the score of image i against caption j,
                and caption i is the one right answer for image i.
    k: int >= 1 (it may exceed N).
    Returns: a float in [0, 1]. The rank of image i's caption is 1 + the number of captions that
    score *strictly* higher than it, so ties count in the model's favour; a hit is rank <= k.
    `similarity` must be left unchanged.
    """
    raise NotImplementedError
