"""Exercise 5: the frozen LM reading a visual prefix ahead of text (§3.4, Frozen).

Grade it with: python tutorials/assignments/grade.py ex5
"""

import torch


def forward_with_prefix(lm, token_ids, prefix):
    """Run a minivlp.LanguageModel on K prefix embeddings followed by T tokens.

    lm: a minivlp.LanguageModel; use its parts (lm.token_emb, lm.pos_emb, lm.blocks,
        lm.ln_final), not lm(...) itself.
    token_ids: (B, T) long tensor of token ids.
    prefix: (B, K, C) float tensor, C = the LM's width: embeddings that stand where K tokens'
            embeddings would, ahead of the text. K + T <= lm.context.
    Returns: (B, K + T, C) hidden states after the final LayerNorm, one per position, prefix
    positions first. Gradients must flow back into `prefix`.
    """
    raise NotImplementedError
