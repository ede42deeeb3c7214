"""Exercise 6: the InfoNCE loss of §4.2, with captions that several images share.

Grade it with: python tutorials/assignments/grade.py --exercise 6
"""

import torch


def info_nce(image_emb, text_emb, temperature, symmetric=True, caption_ids=None):
    """InfoNCE over a batch of N pairs: image i belongs with text i.

    image_emb: (N, C) image embeddings v_i, any length (not yet unit vectors).
    text_emb:  (N, C) text embeddings t_i, any length.
    temperature: τ > 0, a Python float or a 0-dim tensor (it may require grad: τ is learned).
    caption_ids: None, or an (N,) long tensor: row i's caption. Rows with equal ids share one
        caption (two images of one scene), so text j describes image i just as well as text i
        does: it is not a wrong answer for i, and is left out of i's denominator.

    With sim the cosine similarity and logits[i, j] = sim(v_i, t_j) / τ, image -> text is
        L_i = -log( exp(logits[i, i]) / Σ_{j in D_i} exp(logits[i, j]) ),   L = mean over i of L_i
    where D_i holds i itself and every j whose caption differs from i's (every j when
    caption_ids is None). symmetric=False returns this L. symmetric=True (the default, as CLIP)
    returns the average of L and the same loss text -> image, where text i's row runs over the
    images: sim(t_i, v_j) / τ, with the same D_i.
    Returns: a 0-dim tensor, differentiable with respect to both embeddings and τ. It must stay
    finite in float32 for τ as small as 0.001, where exp(1 / τ) overflows. The inputs must be
    left unchanged.

    Worked example, τ = 1, symmetric=False, caption_ids = [0, 0, 1], and
    image_emb = text_emb = [[1, 0], [1, 0], [0, 1]], so the similarities are
        [[1, 1, 0],
         [1, 1, 0],      rows 0 and 1 share caption 0: each leaves the other's column out
         [0, 0, 1]]
        L_0 = L_1 = -log( e^1 / (e^1 + e^0) ) = log(1 + e^-1)   = 0.3133
        L_2       = -log( e^1 / (e^0 + e^0 + e^1) ) = log(1 + 2 e^-1) = 0.5514
        L = (0.3133 + 0.3133 + 0.5514) / 3 = 0.3927
    Without leaving the shared caption out, L_0 would be log(2 + e^-1) = 0.8620.
    """
    raise NotImplementedError
