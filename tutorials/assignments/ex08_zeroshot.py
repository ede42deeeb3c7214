"""Exercise 8: zero-shot classification with prompt ensembling (§3.2 step 4, after CLIP).

No classifier is trained: each class is described in words, the frozen text tower embeds the
descriptions, and an image takes the class whose text embedding is nearest to its own. A class
described by many captions ("a small red circle on the left", "a large red square at the top",
... for the class 'red') is embedded as their average, the prompt ensemble.

Grade it with: python tutorials/assignments/grade.py --exercise 8
"""

import torch


def class_embeddings(prompt_emb, prompt_class, n_classes):
    """Embed each class as the normalised mean of its prompts' unit vectors.

    prompt_emb: (P, C) float tensor: the text embeddings of P prompts, of any length.
    prompt_class: (P,) long tensor: the class (0..n_classes-1) each prompt describes; every class
        has at least one prompt.
    Returns: (n_classes, C) float tensor whose row c is
        u_c = m_c / |m_c|,   m_c = the mean over c's prompts p of prompt_emb[p] / |prompt_emb[p]|
    Each prompt is made unit length *before* the mean, so no prompt outweighs the others, and
    the mean is made unit length again. `prompt_emb` must be left unchanged.

    Worked example: prompts [[1, 0], [0, 2], [-3, 0]] of classes [0, 0, 1]:
        class 0: unit prompts [1, 0] and [0, 1], mean [0.5, 0.5], unit [0.707, 0.707]
        class 1: unit prompt [-1, 0], itself
    so class_embeddings(...) == [[0.707, 0.707], [-1, 0]].
    """
    raise NotImplementedError


def zeroshot_classify(image_emb, class_emb):
    """(N, C) image embeddings of any length and (n_classes, C) unit class embeddings -> (N,)
    torch.long: for each image, the class of highest cosine similarity.

    Worked example: with the class embeddings above, the image [3, -1] has cosine
    (3 * 0.707 - 0.707) / sqrt(10) = 0.447 with class 0 and -3 / sqrt(10) = -0.949 with class 1:
    it is predicted class 0. Inputs must be left unchanged.
    """
    raise NotImplementedError
