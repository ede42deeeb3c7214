"""Exercise 5: whitening the text features, so that cosine similarity can tell captions apart.

The pooled states of a causal LM are anisotropic: every caption's h(T) shares one large
direction, and the cosine between any two captions is close to 1. A fixed linear map, fitted
once on the training captions, centres and whitens them: t = (h - μ) W. It belongs to the frozen
text tower (§4.1: t = h(T; θl)); nothing in it is trained.

Grade it with: python tutorials/assignments/grade.py --exercise 5
"""

import torch


def fit_whitening(features):
    """(M, C) float32 features h(T) of M captions -> (mean, matrix), both float32.

    mean: (C,), μ = the mean of the rows.
    matrix: (C, C), W = (Σ + eps I)^(-1/2), the symmetric inverse square root, where
      Σ = Σ_m (h_m - μ)^T (h_m - μ) / (M - 1)     the covariance, unbiased (as torch.cov)
      Σ = V diag(λ) V^T                           its eigendecomposition (torch.linalg.eigh);
                                                  clamp the λ at 0 (rounding can make a zero
                                                  eigenvalue slightly negative)
      eps = the mean of the clamped λ             shrinkage: directions of tiny variance are
                                                  not blown up
      W = V diag(1 / sqrt(λ + eps)) V^T
    Work in float64 inside (float32 loses the small eigenvalues) and return float32. M may be
    smaller than C (some λ are then 0). `features` must be left unchanged.

    Worked example: features [[1, 0], [3, 0], [2, 1], [2, -1]]: μ = [2, 0]; the centred rows
    are [-1, 0], [1, 0], [0, 1], [0, -1], so Σ = [[2/3, 0], [0, 2/3]], λ = (2/3, 2/3),
    eps = 2/3, and W = I / sqrt(4/3) = [[0.866, 0], [0, 0.866]].
    """
    raise NotImplementedError


def mean_pairwise_cosine(x):
    """(M, C) vectors, M >= 2 -> a Python float: the mean cosine similarity over all pairs i != j.

    cos(x_i, x_j) = x_i · x_j / (|x_i| |x_j|); a vector is not paired with itself. `x` must be
    left unchanged.

    Worked example: for the features above the six pairs give 1, 0.894 (four times) and 0.6,
    so the mean is 0.863. After whitening, (features - μ) W = 0.866 * [[-1, 0], [1, 0], [0, 1],
    [0, -1]]: two opposite pairs (-1) and four orthogonal ones (0), mean -1/3.
    """
    raise NotImplementedError
