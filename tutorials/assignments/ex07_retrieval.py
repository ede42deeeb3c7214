"""Exercise 7: Recall@K both ways, when several images share a caption (§3.2 step 4).

Grade it with: python tutorials/assignments/grade.py --exercise 7
"""

import torch


def recall_at_k(similarity, caption_index, k):
    """Image -> text and text -> image Recall@K over the M distinct captions of a set.

    similarity: (N, M) float tensor; similarity[i, c] scores image i against caption c.
    caption_index: (N,) long tensor; image i's caption is caption_index[i]. A caption may belong
        to several images; every caption belongs to at least one.
    k: an int >= 1 (it may exceed N or M).
    Returns: a pair of Python floats (image_to_text, text_to_image), each the fraction of
    queries whose rank is <= k. Ranks start at 1:
      image -> text: image i's query has one right caption, c = caption_index[i], among the M.
          rank = 1 + the number of *wrong* captions c' with similarity[i, c'] >= similarity[i, c].
      text -> image: caption c's query has as many right images as share it; it is scored by
          the best-placed one: with s = the highest similarity[i, c] over c's images,
          rank = 1 + the number of *wrong* images i' (caption_index[i'] != c) with
          similarity[i', c] >= s.
    Ties count against the model (>=, not >): otherwise an embedder that maps every image to
    the same vector would rank every caption first. `similarity` and `caption_index` must be
    left unchanged.

    Worked example: N = 4 images, M = 3 captions, caption_index = [0, 0, 1, 2],
                     caption 0  caption 1  caption 2
        image 0        0.9        0.9        0.1      right: 0; caption 1 ties it -> rank 2
        image 1        0.5        0.2        0.4      right: 0; nothing >= 0.5    -> rank 1
        image 2        0.3        0.8        0.3      right: 1                    -> rank 1
        image 3        0.4        0.4        0.4      right: 2; captions 0 and 1 tie -> rank 3
    image -> text ranks [2, 1, 1, 3]: R@1 = 2/4 = 0.5, R@2 = 3/4 = 0.75.
        caption 0: its images 0 and 1 score 0.9 and 0.5; the best is 0.9; no wrong image
                   (2: 0.3, 3: 0.4) reaches it                            -> rank 1
        caption 1: image 2 scores 0.8; wrong image 0 scores 0.9 >= 0.8    -> rank 2
        caption 2: image 3 scores 0.4; wrong image 1 ties it at 0.4       -> rank 2
    text -> image ranks [1, 2, 2]: R@1 = 1/3, R@2 = 1.
    So recall_at_k(similarity, caption_index, 1) == (0.5, 1/3), and with k = 2, (0.75, 1.0).
    """
    raise NotImplementedError
