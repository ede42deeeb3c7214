"""Exercise 9: the frozen LM reading a visual prefix ahead of text (§3.4; the Frozen paper).

The image becomes K embeddings that stand where the embeddings of K tokens would stand, ahead of
the text. The frozen LM reads them like any other input: that is how it can caption an image or
answer a question about it.

Grade it with: python tutorials/assignments/grade.py --exercise 9
"""

import torch


def forward_with_prefix(lm, token_ids, prefix):
    """Run a minivlp.LanguageModel on K prefix embeddings followed by T tokens.

    lm: a minivlp.LanguageModel, built from these parts (use them, not lm(...) itself):
        lm.token_emb   nn.Embedding(V, C): token id -> (C,) embedding
        lm.pos_emb     nn.Embedding(lm.context, C): position p -> (C,) embedding
        lm.blocks      a list of transformer blocks, each (B, S, C) -> (B, S, C), applied in order
        lm.ln_final    a LayerNorm applied after the last block
    token_ids: (B, T) long tensor of token ids.
    prefix: (B, K, C) float tensor, C = the LM's width: K embeddings placed ahead of the tokens'
        embeddings. K + T <= lm.context.
    Returns: (B, K + T, C) hidden states after lm.ln_final, prefix positions first.

    The input sequence is the K prefix vectors, then the T token embeddings. The position
    embeddings cover *all* K + T inputs: the first prefix vector is position 0, the last prefix
    vector is position K - 1, and token j is position K + j. Add lm.pos_emb of positions
    0..K+T-1 to the whole sequence, run the blocks, then lm.ln_final. Gradients must flow back
    into `prefix` (the LM is frozen, but the embedder behind the prefix learns through it).

    Worked example: K = 2, T = 3 -> the blocks read 5 vectors:
        [prefix_0 + pos_0, prefix_1 + pos_1, emb(id_0) + pos_2, emb(id_1) + pos_3,
         emb(id_2) + pos_4]
    and the result has shape (B, 5, C).
    """
    raise NotImplementedError
