"""Exercise 2: the InfoNCE loss with cosine similarity and a temperature (§4.2).

Grade it with: python tutorials/assignments/grade.py ex2
"""

import torch


def info_nce(image_emb, text_emb, temperature, symmetric=True):
    """InfoNCE over a batch of N matching pairs: image i belongs with text i, with no other.

    image_emb: (N, C) image embeddings v_i, any length (not yet unit vectors).
    text_emb:  (N, C) text embeddings t_i, any length.
    temperature: τ > 0, a Python float or a 0-dim tensor (it may require grad: τ is learned).
    symmetric: False gives image -> text only:
                   L_i = -log( exp(sim(v_i, t_i) / τ) / Σ_j exp(sim(v_i, t_j) / τ) ),  L = mean_i L_i
               with sim the cosine similarity; True gives the average of that loss and the same
               loss text -> image (CLIP).
    Returns: a 0-dim tensor, differentiable with respect to both embeddings and τ. It must stay
    finite in float32 for τ as small as 0.001.
    """
    raise NotImplementedError
