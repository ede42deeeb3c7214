"""Exercise 1: causal self-attention, the core of the frozen LM (§3.2 step 1).

Grade it with: python tutorials/assignments/grade.py ex1
"""

import torch


def causal_attention(q, k, v):
    """Scaled dot-product attention in which position t reads positions 0..t only.

    q, k, v: (B, heads, T, d) float tensors: queries, keys and values, already split into heads.
    Returns: (B, heads, T, d): for each position t, the average of the values v_0..v_t weighted
    by softmax over s <= t of q_t · k_s / sqrt(d). Positions after t get weight exactly 0.

    Write it with matmuls, a mask and a softmax; F.scaled_dot_product_attention is what the
    grader compares against, so calling it teaches nothing.
    """
    raise NotImplementedError
