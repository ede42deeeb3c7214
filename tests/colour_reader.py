"""A hand-built minivlp whose every answer is known before it runs: it names the colour of what
it sees. Tests use it as a fixed checkpoint, so that captions and answers are checked against
the colour of the image rather than against the code that produced them.

The embedder maps a flat-coloured image to K prefix vectors that score each colour of COLOURS
by nearness (colour dims 0..6 of the LM width, zero-sum). The LM has one block:
  - token embeddings: a colour word ' red' (or 'red', starting a line) is ALPHA (e_red + e_flag),
    the newline 2 ALPHA e_newline, every other token 0, so that other tokens add nothing to what
    the LM reads;
  - attention: every score 0, so each position reads the mean of all positions up to it; the
    values keep the colour dims (centred) and drop the rest: a position's colour dims hold the
    mean colour of the image and of the colour words read so far;
  - MLP: a large +e_newline where the token read is a colour word (its flag dim), a large
    -e_newline where it is the newline, else nothing.
Through the tied head, a colour word predicts the newline (e_newline dominates); any other
position, the newline included, predicts the colour word of highest score. So after any text
that names no other colour, the LM says the image's colour and ends the line: describe writes
'red', and the answer to any question is 'red' (the question itself is never read). A small constant
in one more dim, which only the pad token reads, decides where nothing else does: with no image and
no colour word (the blind prompt) the LM writes <pad>, and its answer is the empty line."""

from dataclasses import asdict

import torch

from minivlp import (COLOURS, AlignConfig, LanguageModel, LMConfig, VisualEmbedder, WorldConfig,
                     freeze, save_checkpoint)
from tokenizer import Tokenizer

WIDTH, PREFIX_TOKENS, IMAGE_SIZE = 16, 2, 16
NAMES = list(COLOURS)                      # colour c is LM dim c
FLAG = len(NAMES)                          # the dim that marks a colour word just read
NEWLINE = FLAG + 1                         # the newline's direction
NOTHING = NEWLINE + 1                      # read by <pad> alone: the answer when nothing is seen
ALPHA = 4.0


def colour_tokenizer():
    """A BPE tokenizer in which each colour word, after a space or at a line's start (a caption
    read as its own line), is one token."""
    words = "".join(f" {name}" for name in NAMES) + "\n" + "\n".join(NAMES) + "\n"
    tokenizer = Tokenizer.train(words * 20, vocab_size=293)
    for name in NAMES:
        assert len(tokenizer.encode(f" {name}")) == len(tokenizer.encode(name)) == 1, name
    return tokenizer


def colour_word_ids(tokenizer, spelling):
    """The token of each colour word of NAMES, written as spelling.format(name)."""
    return [tokenizer.encode(spelling.format(name))[0] for name in NAMES]


@torch.no_grad()
def colour_lm(tokenizer, context=64):
    cfg = LMConfig(vocab_size=tokenizer.vocab_size, context=context, width=WIDTH, depth=1, heads=1,
                   taps=1)  # plain attention: the weights below are set by hand
    lm = LanguageModel(cfg)
    for p in lm.parameters():
        p.zero_()
    n = len(NAMES)
    for spelling in (" {}", "{}"):
        for c, token in enumerate(colour_word_ids(tokenizer, spelling)):
            lm.token_emb.weight[token, c] = lm.token_emb.weight[token, FLAG] = ALPHA
    lm.token_emb.weight[tokenizer.encode("\n")[-1], NEWLINE] = 2 * ALPHA
    lm.token_emb.weight[tokenizer.pad_id, NOTHING] = 1.0
    block = lm.blocks[0]
    for norm in (block.ln_attention, block.ln_mlp, lm.ln_final):
        norm.weight.fill_(1)
    centre = torch.eye(n) - 1 / n                                     # keeps a score zero-sum
    block.attention.qkv.weight[2 * WIDTH:2 * WIDTH + n, :n] = centre  # values; queries, keys 0
    block.attention.proj.weight[:n, :n] = torch.eye(n)
    block.attention.proj.bias[NOTHING] = 0.01                         # added at every position
    for unit, (reads, writes) in enumerate([(FLAG, 10.0), (NEWLINE, -10.0)]):
        block.mlp[0].weight[unit, reads], block.mlp[0].bias[unit] = 10.0, -5.0  # on where set
        block.mlp[2].weight[NEWLINE, unit] = writes
    return freeze(lm), cfg


def colour_code(name, scale=1.0):
    """(C,) a prefix vector whose colour dims score `name` highest, zero-sum."""
    n = len(NAMES)
    code = torch.zeros(WIDTH)
    code[:n] = -scale / n
    code[NAMES.index(name)] += scale
    return code


@torch.no_grad()
def colour_embedder():
    """The CNN's trunk passes each pixel's +R, -R, +G, -G, +B, -B (in [-1, 1]) through ReLUs and
    poolings unchanged; the top-left cell of a flat image is its colour; the prefix head scores
    colour c by nearness, rgb . mu_c - |mu_c|^2 / 2, centred over the colours."""
    embedder = VisualEmbedder(IMAGE_SIZE, WIDTH, PREFIX_TOKENS)
    for p in embedder.parameters():
        p.zero_()
    convolutions = [m for m in embedder.trunk if isinstance(m, torch.nn.Conv2d)]
    for i in range(3):
        convolutions[0].weight[2 * i, i, 1, 1], convolutions[0].weight[2 * i + 1, i, 1, 1] = 1, -1
    for convolution in convolutions[1:]:
        for j in range(6):
            convolution.weight[j, j, 1, 1] = 1
    for norm in (m for m in embedder.trunk if isinstance(m, torch.nn.BatchNorm2d)):
        norm.weight.fill_(1)
    cells = (IMAGE_SIZE // 8) ** 2
    linear = embedder.trunk[-2]
    for j in range(6):
        linear.weight[j, j * cells] = 1                               # channel j, cell (0, 0)
    mu = torch.tensor([COLOURS[name] for name in NAMES]) / 127.5 - 1  # (7, 3)
    weight, bias = mu - mu.mean(0), -(mu.square().sum(1) - mu.square().sum(1).mean()) / 2
    for k in range(PREFIX_TOKENS):
        rows = slice(k * WIDTH, k * WIDTH + len(NAMES))
        embedder.prefix_head.weight[rows, 0:6:2] = weight             # + the positive parts
        embedder.prefix_head.weight[rows, 1:6:2] = -weight            # - the negative parts
        embedder.prefix_head.bias[rows] = bias
    return embedder.eval()


def write_colour_checkpoint(path):
    """A minivlp.pt as train.py writes it, holding the colour reader."""
    tokenizer = colour_tokenizer()
    lm, lm_cfg = colour_lm(tokenizer)
    config = {"seed": 0, "objective": "both", "text_tower": "locked", "lm": asdict(lm_cfg),
              "world": asdict(WorldConfig(image_size=IMAGE_SIZE)),
              "align": asdict(AlignConfig(prefix_tokens=PREFIX_TOKENS))}
    save_checkpoint({"config": config, "tokenizer": tokenizer.to_dict(), "lm": lm.state_dict(),
                     "embedder": colour_embedder().state_dict(), "temperature": 0.07,
                     "whitening_mean": torch.zeros(WIDTH), "whitening_matrix": torch.eye(WIDTH)},
                    path)
    return path
