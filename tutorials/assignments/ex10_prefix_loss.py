"""Exercise 10: the captioning loss: the frozen LM predicts an image's caption after its prefix.

The visual embedder turns an image into K prefix embeddings; the frozen LM reads them, then the
caption, and the loss is the LM's next-token cross-entropy on the caption. Its gradient flows
back through the frozen LM into the prefix, so only the embedder learns (§3.2 step 3 applied to
the captioning objective of the Frozen paper, §3.4).

Grade it with: python tutorials/assignments/grade.py --exercise 10
"""

import torch
import torch.nn.functional as F

from minivlp import IGNORE, image_context  # noqa: F401 (given: the docstring says how to use them)


def prefix_loss(lm, tokenizer, prefix, tokens):
    """Mean next-token cross-entropy of the caption tokens, after the image.

    lm: a frozen minivlp.LanguageModel. lm(token_ids, prefix=context_emb) runs it on the
        (B, P, C) embeddings context_emb followed by the (B, L) tokens' embeddings, and returns
        (B, P + L, C) hidden states; lm.logits(hidden) turns (B, S, C) states into (B, S, V)
        next-token logits over the vocabulary.
    tokenizer: passed on to image_context (it reads tokenizer.bos_id).
    prefix: (B, K, C), the visual embedder's output for B images.
    tokens: (B, L) long: each row the ids of '\\n caption \\n', right-padded with IGNORE (-100).

    Steps and conventions the grader checks:
      1. context_emb = image_context(lm, tokenizer, prefix): (B, P, C) with P = 1 + K, the
         <bos> embedding followed by the K prefix vectors (rescaled). It is imported above:
         use it as it is.
      2. The LM reads context_emb, then the tokens. IGNORE is not a token id: give the LM any
         valid id in its place (0 will do); padding sits after the caption, where causal
         attention keeps it from changing any earlier state.
      3. The hidden state at the position of token j (position P + j) predicts token j + 1, for
         j = 0 .. L-2. The first token, the opening newline, is given, not predicted; the state
         of the last token predicts nothing.
      4. Targets equal to IGNORE are skipped. The loss is one mean over all remaining targets
         of the batch (not a mean of per-caption means). Cast the logits to float32 first.
      5. The LM stays frozen and is not detached: do not change its requires_grad, call
         .detach() on its output, or run it under torch.no_grad(). The gradient must reach
         `prefix`, and with it the embedder; no LM parameter gets one. `tokens` must be left
         unchanged.
    Returns: a 0-dim float32 tensor.

    Worked example of the positions: K = 2 (so P = 3), one row of tokens [n, 7, 8, n, -100]
    with n the newline id. The LM reads 8 positions: 0..2 the context, 3..7 the tokens (the
    -100 read as 0). The targets are: position 3 (n) -> 7, position 4 (7) -> 8, position 5 (8)
    -> n, position 6 (n) -> -100, skipped. Three targets; the loss of this row alone is
        ( -log p_3(7) - log p_4(8) - log p_5(n) ) / 3
    where p_s is the softmax of the logits at position s.
    """
    raise NotImplementedError
