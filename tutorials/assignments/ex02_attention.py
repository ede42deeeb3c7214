"""Exercise 2: causal self-attention, the core of the LM that is pretrained, then frozen
(§3.2 step 1).

Grade it with: python tutorials/assignments/grade.py --exercise 2
"""

import torch


def causal_attention(q, k, v):
    """Scaled dot-product attention in which position t reads positions 0..t only.

    q, k, v: (B, heads, T, d) float tensors: queries, keys and values, already split into heads.
    Returns: (B, heads, T, d). For each position t:
        score(t, s)  = q_t · k_s / sqrt(d)                    for s = 0..t
        weight(t, s) = softmax over s = 0..t of score(t, s)   (exactly 0 for s > t)
        out_t        = Σ_s weight(t, s) v_s
    so out_0 is v_0, and nothing at a position after t changes out_t. Gradients must flow back
    into q, k and v (build the result from torch operations, not .item() or numpy).

    Worked example, B = heads = 1, T = 2, d = 1: q = k = [[1], [1]], v = [[2], [4]]:
        out_0 = v_0 = [2]
        scores of position 1: (1 / 1, 1 / 1) -> weights (0.5, 0.5) -> out_1 = [3]

    Write it with matmuls, a mask and a softmax: F.scaled_dot_product_attention is one of the
    references the grader compares with, so calling it teaches nothing.
    """
    raise NotImplementedError
