"""Exercise 4: the text embedding h(T) of §4.1, read from the frozen LM by re-reading the text.

The LM reads '<bos> T \\n T', the text twice, and h(T) is the mean of its final hidden states over
the second reading. While it reads T the second time, each state is predicting the next word of
a text it has already seen, so it holds what the text says, not just its grammar so far.

Grade it with: python tutorials/assignments/grade.py --exercise 4
"""

import torch


def reread_tokens(tokenizer, texts, context):
    """Texts -> the ids the LM reads, and weights marking the second reading.

    tokenizer: has encode(text) -> list of ints, and the ints bos_id and pad_id.
    texts: a list of M strings (any may be empty).
    context: the longest row the LM can read.
    Returns (ids, weights), both (M, T) with T the length of the longest row:
      ids: torch.long. Row m is [bos_id] + e + newline + e, then pad_id up to T (padding on the
           right), where newline = tokenizer.encode("\\n") (a list: use all its ids) and e is
           tokenizer.encode(texts[m]) cut to its first (context - 1 - len(newline)) // 2 ids,
           so that both readings fit in the context.
      weights: a float dtype (float32). 1.0 at the positions of the *second* e, 0.0 everywhere
           else (bos, the first e, the newline, padding).

    Worked example: tokenizer.encode gives "a red box" -> [7, 5, 9], "box" -> [9], "\\n" -> [3];
    bos_id = 1, pad_id = 0; texts = ["a red box", "box"], context = 10, so e is cut to
    (10 - 1 - 1) // 2 = 4 ids (nothing to cut here):
        ids     = [[1, 7, 5, 9, 3, 7, 5, 9],      weights = [[0, 0, 0, 0, 0, 1, 1, 1],
                   [1, 9, 3, 9, 0, 0, 0, 0]]                 [0, 0, 0, 1, 0, 0, 0, 0]]
    With context = 7, e is cut to (7 - 1 - 1) // 2 = 2 ids: the first row becomes
    [1, 7, 5, 3, 7, 5] with weights [0, 0, 0, 0, 1, 1], and T = 6.
    """
    raise NotImplementedError


def reread_features(lm, ids, weights):
    """(M, T) ids and (M, T) weights -> (M, C): h(T), the mean of the LM's final states at the
    positions whose weight is 1.

    lm(ids) returns the (M, T, C) hidden states after the LM's final LayerNorm (C = the LM's
    width); cast them to float32 before pooling. Row m of the result is
        Σ_t weights[m, t] * hidden[m, t] / max(1, Σ_t weights[m, t])
    so a row with no weight at all (an empty text) gives a vector of zeros, not NaN.
    The LM is frozen and no gradient is needed; `ids` and `weights` must be left unchanged.

    Worked example, C = 2: hidden states of one row [[9, 9], [1, 2], [3, 4], [0, 0]] with weights
    [0, 1, 1, 0] give h = [(1 + 3) / 2, (2 + 4) / 2] = [2, 3].
    """
    raise NotImplementedError
