"""minivlp: learning visual embeddings for a frozen language model, in one file.

Pipeline: text corpus -> tokenizer + tiny causal LM (pretrained, then frozen) -> text features
t = h(T) -> a small CNN g(I) trained with InfoNCE so that v = g(I) meets t -> retrieval and
zero-shot evaluation. The same CNN also turns an image into K prefix embeddings that the frozen LM
reads ahead of text, for captioning and question answering. Document sections implemented: §3.2
steps 1-4, §3.4 (captioning, VQA), §4.1 (v = g(I; θv), t = h(T; θl)), §4.2 (the InfoNCE loss).
Papers followed: InfoNCE (van den Oord et al. 2018), CLIP (Radford et al. 2021), LiT (Zhai et
al. 2022: a locked tower), Frozen (Tsimpoukelli et al. 2021: a frozen LM as the image's reader).
Its parts follow the document: the frozen LM, the text tower, the visual embedder, InfoNCE, the
prefix, alignment and evaluation come first; the toy worlds, your own data and checkpoints, which
feed and keep them, come after. Read it with the tutorials (tutorials/README.md), one part each.
Nothing runs on import: train.py and eval.py are the command-line faces of these functions.
"""

import csv
import functools
import io
import itertools
import json
import math
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

# Dimension legend, used in every shape comment:
#   B batch   T tokens   C LM width (= embedding size, §3.2 step 2)   V vocabulary
#   H, W image height and width   N images in a set   M distinct captions in a set
#   K visual prefix embeddings   P embeddings ahead of the tokens   L caption tokens


# ------------------------------------------------------------------------------------------------
# Part 1. Configuration: the defaults are the documentation; train.py turns every field into a flag.
# ------------------------------------------------------------------------------------------------

@dataclass
class WorldConfig:
    image_size: int = 32         # rendered images are image_size x image_size RGB
    train_images: int = 20000    # paired image-caption examples for alignment
    eval_images: int = 1000      # images in each evaluation split
    corpus_documents: int = 20000  # text-only documents for LM pretraining
    dataset: str = "shapes"      # the toy world: "shapes" or "glyphs" (letters), see WORLDS


@dataclass
class LMConfig:
    vocab_size: int = 432        # byte-level BPE: 256 bytes + 173 merges + 3 special tokens
    context: int = 64            # longest token sequence the LM reads
    width: int = 128             # C: hidden size of the LM, and so of the visual embedding
    depth: int = 2               # transformer blocks (why 2: tutorials/design.md)
    heads: int = 4               # attention heads (width must divide evenly)
    steps: int = 3600            # pretraining steps (why so many: tutorials/design.md)
    batch_size: int = 32         # sequences of `context` tokens per step
    lr: float = 3e-3             # peak learning rate (AdamW), after linear warmup
    warmup_steps: int = 40
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    taps: int = 5                # positions each q, k, v mixes (1: plain attention, Part 2)
    reading_steps: int = 400     # first steps on reading drills, then the reading corpus (shapes, Part 9)


@dataclass
class AlignConfig:
    steps: int = 600             # alignment steps (only the visual embedder learns)
    batch_size: int = 256        # N in §4.2: each image has up to N - 1 negative captions
    lr: float = 2e-3
    warmup_steps: int = 30
    weight_decay: float = 0.05
    temperature: float = 0.07    # τ in §4.2 (initial value when learned)
    learn_temperature: bool = True
    prefix_tokens: int = 16      # K: embeddings the image becomes ahead of the LM's text (Frozen)
    question_rows: int = 32      # images a step asked one question, taught by the LM (teacher_loss)
    spelling: float = 16.0       # weight of spelling_loss: the prefix pulled towards its caption's words


def resolve_device(name):
    """Resolve --device auto|cpu|cuda to a torch.device; cuda without CUDA is a ValueError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: this machine has no CUDA device (use --device cpu or auto)")
    if name == "cuda":  # float32 matmuls and convolutions outside autocast may use TF32 tensor cores
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)


PRECISIONS = {"float32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def compute_dtype(device, precision="auto"):
    """--precision auto|float32|bf16|fp16 -> the dtype matmuls and convolutions run in.

    auto takes bf16 only where the hardware computes it natively: CUDA GPUs with bf16 tensor cores
    (Ampere and newer) and CPUs with AVX512-BF16 instructions. Older GPUs (T4, V100) have fp16
    tensor cores but would only emulate bf16: auto takes fp16 there, trained with a gradient
    scaler (gradient_scaler). Other CPUs would emulate bf16 too, slower than float32: float32."""
    if precision != "auto":
        return PRECISIONS[precision]
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float16
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", bool)()
    return torch.bfloat16 if native else torch.float32


def autocast(device, precision="auto"):
    """Autocast to compute_dtype(device, precision), off for float32. Under autocast, matmuls and
    convolutions run in the lower precision while losses, norms and softmax stay in float32."""
    dtype = compute_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def gradient_scaler(device, precision="auto"):
    """fp16 keeps 5 exponent bits: small gradients would round to zero. The scaler multiplies the
    loss before backward and divides the gradients after (skipping a step whose gradients
    overflowed). bf16 has float32's exponent range and needs none: the scaler is then off and
    each of its calls passes its argument through."""
    return torch.amp.GradScaler(device.type,
                                enabled=compute_dtype(device, precision) == torch.float16)


# ------------------------------------------------------------------------------------------------
# Part 2. The language model: GPT-style, pretrained on text (§3.2 step 1), then frozen.
# ------------------------------------------------------------------------------------------------

class CausalSelfAttention(nn.Module):
    """softmax(Q K^T / sqrt(d) + causal mask) V, written out step by step, after each channel of
    q, k and v is mixed with the same channel at the `taps` - 1 positions before it.

    Why the mixing. The frozen LM must read what it is shown: copy a name it just read, find the
    shape after 'red'. That is the work of an *induction head* (Olsson et al. 2022): a key that
    says which token came *before* its position, so that a query for 'red' finds the position
    after 'red' and copies what is there. Plain attention must first learn a previous-token head
    for that; with learned positions the tiny LM does not, within its budget. A key mixed with
    the previous position's key has it at once (Olsson et al.'s smeared keys; as a causal
    convolution over q, k and v: Primer, So et al. 2021, and the Canon layers of Allen-Zhu 2025).
    The default mixes 5 positions, so that the key at a name's first token still holds the colour
    of `a red circle is a kipo`; taps = 1 is plain attention (tutorials/design.md, "Reading its
    context", measures 1, 4, 5 and 6).

        qkv'_t = Σ_{j < taps} w_j ⊙ qkv_{t-j}      (w_j: a weight a channel; 0 before the row)

    The w_j are vectors, like a LayerNorm's scale, so AdamW does not shrink them (adamw): shrunk,
    the earlier taps fade, and a value no longer carries the token before it, which is what
    `what colour is the circle?` reads at the caption's `circle`.
    """

    def __init__(self, width, heads, context, taps):
        super().__init__()
        assert width % heads == 0, f"width {width} must divide into {heads} heads"
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        # tap 0 is the position itself (weight 1); earlier positions start at 0.3, so that copying
        # finds a previous token to match from the first step. One tap: plain attention.
        self.taps = None
        if taps > 1:
            self.taps = nn.ParameterList(
                nn.Parameter(torch.full((3 * width,), 1.0 if j == 0 else 0.3)) for j in range(taps))
        # position t may attend to positions <= t only
        self.register_buffer("causal_mask", torch.ones(context, context).tril().bool(),
                             persistent=False)

    def mixed_qkv(self, x, cache=None):
        """x (B, T, C): T new positions -> q (B, h, T, d) of the new positions, k and v
        (B, h, past + T, d) of every position. cache: a LayerCache holding what the positions
        read before them left (generation), or None: then x is the whole row."""
        B, T, C = x.shape
        d = C // self.heads
        rows = self.qkv(x)                                              # (B, T, 3C)
        if self.taps is not None:
            rows = self.mix(rows, cache)
        if cache is not None:
            rows = cache.extend(rows)                                   # (B, past + T, 3C)
        past = rows.shape[1] - T                                        # positions read before x
        q, k, v = rows.split(C, dim=2)                                  # 3 x (B, past + T, C)
        q = q[:, past:].reshape(B, T, self.heads, d).transpose(1, 2)    # (B, h, T, d)
        k, v = (z.reshape(B, past + T, self.heads, d).transpose(1, 2) for z in (k, v))
        return q, k, v

    def mix(self, rows, cache=None):
        """(B, T, 3C) rows of the new positions -> each mixed with the rows of the taps - 1
        positions before it; with a cache, those read before come from it, so a generated token
        costs taps rows, not the whole row of text."""
        T = rows.shape[1]
        if cache is not None:
            rows = cache.with_earlier(rows, len(self.taps) - 1)         # (B, e + T, 3C), e < taps
        e = rows.shape[1] - T
        # tap j: the row j positions before (zeros before the start of the row)
        return sum(w * F.pad(rows, (0, 0, j, 0))[:, e:e + T] for j, w in enumerate(self.taps))

    def forward(self, x, cache=None):
        """x (B, T, C) -> (B, T, C); cache as in mixed_qkv."""
        B, T, C = x.shape
        q, k, v = self.mixed_qkv(x, cache)
        past = k.shape[2] - T
        d = C // self.heads
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)                 # (B,h,T,d) @ (B,h,d,past+T)
        # the new positions are rows past..past+T-1 of the row's causal mask
        scores = scores.masked_fill(~self.causal_mask[past:past + T, :past + T], float("-inf"))
        weights = scores.softmax(dim=-1)                                # each row sums to 1 over the past
        out = weights @ v                                               # (B,h,T,past+T) @ (B,h,past+T,d)
        return self.proj(out.transpose(1, 2).reshape(B, T, C))          # (B, T, C)


class LayerCache:
    """What one attention layer keeps of the positions it has read: their q, k, v rows (B, T, 3C)
    after mixing, which every later position attends to, and the last few rows before mixing,
    which mixing a new position reads.

    Generation feeds the LM one new token at a time; without a cache each step would recompute
    the rows of the whole row of text. The causal mask makes caching exact: a position's row
    depends only on the positions up to it, so a token appended later never changes it (and the
    mixing over taps reads earlier rows only)."""

    def __init__(self):
        self.rows = None
        self.unmixed = None

    def extend(self, rows):
        """Append the new positions' rows; return those of all positions so far."""
        if self.rows is not None:
            rows = torch.cat([self.rows, rows], dim=1)
        self.rows = rows
        return rows

    def with_earlier(self, unmixed, keep):
        """(B, T, 3C) new rows before mixing -> the (up to) `keep` rows before them, then them;
        remembers the last `keep` for the next call."""
        if self.unmixed is not None:
            unmixed = torch.cat([self.unmixed, unmixed], dim=1)
        self.unmixed = unmixed[:, -keep:]
        return unmixed

    def __len__(self):
        return 0 if self.rows is None else self.rows.shape[1]


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width, heads, context, taps):
        super().__init__()
        self.ln_attention = nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads, context, taps)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x, cache=None):
        x = x + self.attention(self.ln_attention(x), cache)
        return x + self.mlp(self.ln_mlp(x))


class LanguageModel(nn.Module):
    """Token + position embeddings, pre-LN blocks, final LayerNorm, head tied to token_emb."""

    def __init__(self, cfg):
        super().__init__()
        self.context = cfg.context
        self.token_emb = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_emb = nn.Embedding(cfg.context, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.context, cfg.taps)
                                    for _ in range(cfg.depth))
        self.ln_final = nn.LayerNorm(cfg.width)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        # GPT-2's N(0, 0.02): a random LM then starts near uniform next-token predictions
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def forward(self, token_ids, prefix=None, cache=None):
        """(B, T) token ids -> (B, T, C) hidden states after the final LayerNorm.

        prefix: optional (B, K, C) embeddings placed ahead of the tokens' embeddings (the visual
        prefix of Frozen); the output then covers all K + T positions, (B, K + T, C).
        cache: optional list of LayerCache, one a block (generate): the positions already read
        are kept there, and token_ids continue the row after them."""
        x = self.token_emb(token_ids)                                   # (B, T, C)
        if prefix is not None:
            x = torch.cat([prefix.to(x.dtype), x], dim=1)               # (B, K + T, C)
        past = len(cache[0]) if cache else 0                            # positions read before
        T = x.shape[1]
        assert past + T <= self.context, f"{past + T} positions exceed the LM context of {self.context}"
        x = x + self.pos_emb(torch.arange(past, past + T, device=x.device))  # (B, T, C) + (T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cache[i] if cache else None)
        return self.ln_final(x)

    def logits(self, hidden):
        """(B, T, C) -> (B, T, V): the head shares its weights with token_emb (weight tying)."""
        return hidden @ self.token_emb.weight.T                         # (B,T,C) @ (C,V)


def encode_corpus(tokenizer, documents):
    """Documents -> one long (L,) stream: <bos> document <eos> <bos> document <eos> ..."""
    stream = []
    for document in documents:
        stream += [tokenizer.bos_id] + tokenizer.encode(document) + [tokenizer.eos_id]
    return torch.tensor(stream)


def warmup_cosine(warmup_steps, total_steps):
    """Learning-rate factor: linear warmup to 1, then cosine decay to 0.1."""
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def adamw(parameters, lr, weight_decay, device):
    """AdamW with decay on matrices only (biases, norms, attention taps, scalars are not shrunk)."""
    parameters = [p for p in parameters if p.requires_grad]
    groups = [{"params": [p for p in parameters if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device.type == "cuda")


def keyed_generator(*key):
    """A random generator seeded by a key of integers, e.g. (seed, stage, step, rank). The training
    loops draw each step's batch from a generator keyed by that step, so that a batch depends on
    the step alone, not on the steps before it: a resumed run draws exactly the batches of the run
    never stopped, and a DataLoader may prepare batches ahead of the loop."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))


def random_windows(stream, batch_size, context, generator, starts=None):
    """(B, context) inputs and the (B, context) next tokens they must predict. starts: the
    positions a window may start at (document_starts), or None: anywhere."""
    if starts is None:
        starts = torch.randint(len(stream) - context, (batch_size,),
                               generator=generator)                    # the last: L - C - 1
    else:
        starts = starts[torch.randint(len(starts), (batch_size,), generator=generator)]
    windows = torch.stack([stream[s:s + context + 1] for s in starts.tolist()])  # (B, context+1)
    return windows[:, :-1], windows[:, 1:]


def document_starts(stream, context):
    """The positions of a stream's <bos> (its first token opens every document) where a window
    of `context` tokens and its next token fit."""
    return torch.nonzero(stream[:len(stream) - context] == stream[0]).flatten()


@torch.no_grad()
def held_out_loss(lm, stream, context, device, batch_size=256, precision="auto",
                  by_document=False):
    """Mean next-token cross-entropy over the held-out stream, cut into consecutive windows, or
    with by_document (as the reading recipe trains) a window from each document's start."""
    was_training = lm.training
    lm.eval()
    context = min(context, len(stream) - 1)                             # a small held-out corpus
    starts = (document_starts(stream, context) if by_document
              else torch.arange(0, len(stream) - context, context))     # (n,)
    n = len(starts)
    inputs = torch.stack([stream[s:s + context] for s in starts.tolist()])       # (n, context)
    targets = torch.stack([stream[s + 1:s + context + 1] for s in starts.tolist()])
    total = 0.0
    for i in range(0, n, batch_size):
        with autocast(device, precision):
            logits = lm.logits(lm(inputs[i:i + batch_size].to(device)))  # (B, context, V)
        total += F.cross_entropy(logits.float().flatten(0, 1),
                                 targets[i:i + batch_size].flatten().to(device), reduction="sum").item()
    lm.train(was_training)
    return total / (n * context)


def pretrain_lm(lm, train_stream, held_out_stream, cfg, device, seed, checkpoints=None,
                compile=False, precision="auto", drill_stream=None, reading=None):
    """Next-token cross-entropy, AdamW, warmup + cosine decay, gradient clipping.

    The first cfg.reading_steps steps read drill_stream (the reading drills, Part 9), if given,
    and the rest train_stream. With drills (the reading recipe) every row starts at a document,
    so that a question and the caption it asks about are read together; otherwise a window may
    start anywhere, and a question far into a document is often cut from its caption.
    reading: {name: lm -> accuracy} (reading_tests), run every 100 steps and shown on the
    progress bar, so that the step where copying appears can be seen.
    Returns a history with the training loss per step, the reading tests per 100 steps and at the
    end, and the held-out loss and perplexity. checkpoints (a Checkpoints) saves the loop's state
    as it goes, or resumes it. compile=True runs the model through torch.compile (see
    data_parallel); precision as in compute_dtype."""
    checkpoints = checkpoints or Checkpoints()
    rank, world = rank_and_world()
    lm.to(device).train()
    model = data_parallel(lm, device, compile=compile)
    optimizer = adamw(lm.parameters(), cfg.lr, cfg.weight_decay, device)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup_steps, cfg.steps))
    scaler = gradient_scaler(device, precision)
    reading = reading or {}
    history = {"loss": [], "reading": []}
    first_step = checkpoints.start("lm", cfg.steps, {"lm": lm}, optimizer, schedule, history,
                                   scaler)
    shown = {}
    by_document = drill_stream is not None
    train_starts = document_starts(train_stream, cfg.context) if by_document else None
    drill_starts = document_starts(drill_stream, cfg.context) if by_document else None
    start = time.perf_counter()
    bar = tqdm(range(first_step, cfg.steps), desc="pretrain LM", dynamic_ncols=True,
               initial=first_step, total=cfg.steps, disable=rank > 0)
    for step in bar:
        drilling = drill_stream is not None and step < cfg.reading_steps
        stream, starts = (drill_stream, drill_starts) if drilling else (train_stream, train_starts)
        inputs, targets = random_windows(stream, cfg.batch_size // world, cfg.context,
                                         keyed_generator(seed, 1, step, rank),  # each rank its own
                                         starts)
        inputs, targets = inputs.to(device), targets.to(device)
        with autocast(device, precision):
            logits = lm.logits(model(inputs))                           # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)                                      # clip the true gradients
        nn.utils.clip_grad_norm_(lm.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        if reading and (step + 1) % 100 == 0:
            shown = {name: test(lm) for name, test in reading.items()}
            history["reading"].append((step + 1, shown))
        logged = step % 20 == 0 or step == cfg.steps - 1
        if logged:
            history["loss"].append((step, loss.item()))
            tokens_per_s = (step + 1 - first_step) * cfg.batch_size * cfg.context / (
                time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.2f}" for k, v in shown.items()},
                            tok_s=f"{tokens_per_s:,.0f}")
        checkpoints.after_step(step, loss, logged)
    history["seconds"] = time.perf_counter() - start
    history.update({name: test(lm) for name, test in reading.items()})
    history["tokens_per_s"] = (cfg.steps - first_step) * cfg.batch_size * cfg.context / history["seconds"]
    history["held_out_loss"] = held_out_loss(lm, held_out_stream, cfg.context, device,
                                             precision=precision, by_document=by_document)
    history["held_out_perplexity"] = math.exp(history["held_out_loss"])
    return history


def freeze(lm):
    """Freeze the LM (§3.2 step 1). Frozen means exactly three things here:

    1. every parameter has requires_grad = False, so no gradient is ever computed for it (and
       any gradient left from pretraining is dropped);
    2. the module is in eval mode (this LM has no dropout, but a frozen model must not behave
       as in training: the habit matters for any LM put in its place);
    3. it is never handed to an optimizer: align() builds its optimizer from the visual embedder
       and the temperature only, and checks that no LM parameter slipped in (only the finetune
       and scratch ablations ask it to train the LM).
    """
    lm.requires_grad_(False)
    lm.zero_grad(set_to_none=True)
    return lm.eval()


# ------------------------------------------------------------------------------------------------
# Part 3. The text tower t = h(T; θl) of §4.1: the frozen LM reads a caption; whitening.
# ------------------------------------------------------------------------------------------------

def pad_rows(rows, pad_id):
    """Lists of ids -> (B, T) tensor right-padded with pad_id."""
    ids = torch.full((len(rows), max(len(row) for row in rows)), pad_id)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    return ids


def reread_tokens(tokenizer, texts, context):
    """Texts -> (M, T) ids of '<bos> T \\n T', right-padded, and (M, T) weights, 1 on the second T."""
    newline = tokenizer.encode("\n")
    longest = (context - 1 - len(newline)) // 2                        # both readings must fit
    encoded = [tokenizer.encode(text)[:longest] for text in texts]
    ids = pad_rows([[tokenizer.bos_id] + e + newline + e for e in encoded], tokenizer.pad_id)
    weights = torch.zeros(ids.shape)
    for row, e in enumerate(encoded):
        weights[row, 1 + len(e) + len(newline):1 + 2 * len(e) + len(newline)] = 1
    return ids, weights


def reread_features(lm, ids, weights):
    """(B, T) ids and weights -> (B, C): the mean of the LM's final states where weights are 1."""
    hidden = lm(ids).float()                                            # (B, T, C)
    weights = weights.unsqueeze(-1)                                     # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)      # (B, C)


@torch.no_grad()
def text_features(lm, tokenizer, texts, device, batch_size=512):
    """h(T; θl) of §4.1: one (C,) vector per text, read from the frozen LM.

    The LM reads '<bos> T \\n T' and h(T) is the mean of its final states over the *second* T.
    On that second reading each state predicts the next word of a restatement of a scene the LM
    has already read: it holds what the scene is, in the form the corpus taught, where a
    restatement picks 'red' or 'crimson' at random. On the first reading the LM cannot know what
    comes next, and its states hold little beyond the grammar (tutorials/04_text_tower.ipynb and
    tests/benchmarks/text_features.py compare the poolings). Padding sits on the right, where
    causal attention keeps it from touching the real tokens. Computed once per caption, so in
    float32 (no autocast): the targets the embedder is trained toward carry no bf16 rounding."""
    ids, weights = reread_tokens(tokenizer, texts, lm.context)          # (M, T), (M, T)
    features = []
    for i in range(0, len(texts), batch_size):
        features.append(reread_features(lm, ids[i:i + batch_size].to(device),
                                        weights[i:i + batch_size].to(device)))
    return torch.cat(features)                                          # (M, C)


def fit_whitening(features):
    """A fixed linear map W and mean μ from frozen text features: t = (h - μ) W.

    The pooled states of a causal LM are anisotropic (all captions share one large direction, mean
    pairwise cosine near 1), which leaves cosine similarity little room to tell captions apart.
    Centring and whitening spread them out. The shrinkage eps = mean eigenvalue keeps directions
    of tiny variance (such as the leftover difference between 'red' and 'crimson') from being
    blown up. Computed once from training captions, then constant: part of the frozen text tower."""
    if len(features) < 2:
        raise ValueError(f"whitening needs the features of at least 2 distinct captions, got "
                         f"{len(features)}")
    if not torch.isfinite(features).all():
        raise ValueError("whitening: the LM's text features are not finite (a diverged LM?)")
    mean = features.mean(0)                                             # (C,)
    covariance = torch.cov((features - mean).T.double())                # (C, C)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    eps = eigenvalues.clamp(min=0).mean()
    if eps == 0:
        raise ValueError("whitening: the captions' text features are all identical, so there is "
                         "no direction to whiten")
    matrix = eigenvectors @ torch.diag((eigenvalues.clamp(min=0) + eps).rsqrt()) @ eigenvectors.T
    return mean, matrix.float()                                         # (C,), (C, C)


class TextTower:
    """The text side of §4.1: texts -> h(T) -> fixed whitening -> (M, C) text embeddings t."""

    def __init__(self, lm, tokenizer, mean, matrix, device):
        self.lm, self.tokenizer, self.device = lm, tokenizer, device
        self.mean, self.matrix = mean.to(device), matrix.to(device)

    def __call__(self, texts):
        features = text_features(self.lm, self.tokenizer, texts, self.device)   # (M, C)
        return (features - self.mean) @ self.matrix                     # (M, C) @ (C, C)

    def embed_tokens(self, ids, weights):
        """The same from reread_tokens' output, with gradients: for a text tower that learns."""
        return (reread_features(self.lm, ids, weights) - self.mean) @ self.matrix


# ------------------------------------------------------------------------------------------------
# Part 4. The visual embedder g(I; θv): a small CNN whose output size is the LM width (§3.2 step 2).
# ------------------------------------------------------------------------------------------------

class VisualEmbedder(nn.Module):
    """Three conv stages, then a flatten that keeps *where* things are, then two heads.

    Global average pooling would throw away position, yet 'on the left' and 'above' are in the
    captions; flattening the H/8 x W/8 grid keeps each cell's features apart. For the same reason no
    training image is flipped: a flip swaps left and right. The two heads share the trunk: one
    vector v for InfoNCE (§4.2), and K prefix embeddings for the frozen LM's input (Frozen)."""

    def __init__(self, image_size, width, prefix_tokens):
        super().__init__()
        assert image_size % 8 == 0, f"image size {image_size} must be a multiple of 8"
        grid = image_size // 8
        stage = lambda c_in, c_out: [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                                     nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
        self.trunk = nn.Sequential(
            *stage(3, 32),               # (B, 3, H, W)      -> (B, 32, H/2, W/2)
            *stage(32, 64),              # (B, 32, H/2, W/2) -> (B, 64, H/4, W/4)
            *stage(64, 128),             # (B, 64, H/4, W/4) -> (B, 128, H/8, W/8)
            nn.Flatten(),                # (B, 128, H/8, W/8) -> (B, 128 * H/8 * W/8)
            nn.Linear(128 * grid * grid, 256), nn.ReLU())               # -> (B, 256)
        self.head = nn.Linear(256, width)                               # (B, 256) -> (B, C)
        self.prefix_head = nn.Linear(256, prefix_tokens * width)        # (B, 256) -> (B, K * C)
        self.prefix_shape = (prefix_tokens, width)
        # Channels-last weights make the convolutions run channels-last, the memory layout oneDNN
        # (CPU) and cuDNN (GPU) are fastest in; the arithmetic is the same (tests/benchmarks/
        # speed.py times both).
        self.to(memory_format=torch.channels_last)

    def forward(self, images):
        """(B, 3, H, W) uint8 images -> (B, C) image embeddings v and (B, K, C) prefixes."""
        features = self.trunk(images.float() / 127.5 - 1.0)             # [0, 255] -> [-1, 1]
        prefix = self.prefix_head(features).view(len(images), *self.prefix_shape)
        return self.head(features), prefix


# ------------------------------------------------------------------------------------------------
# Part 5. InfoNCE (§4.2), written by hand, and the temperature τ.
# ------------------------------------------------------------------------------------------------

class Temperature(nn.Module):
    """τ of §4.2, in one place: stored as log τ (so it stays positive under gradient steps),
    initial value `initial`, kept at τ >= 0.01 so that 1/τ <= 100 (CLIP's bound). The stored
    value itself is clamped after each optimizer step (clamp_), as CLIP does, rather than the
    output: a clamped output has zero gradient, and τ could never climb back."""

    MIN = 0.01

    def __init__(self, initial, learn):
        super().__init__()
        self.log_tau = nn.Parameter(torch.tensor(math.log(initial)), requires_grad=learn)

    def forward(self):
        return self.log_tau.exp()

    @torch.no_grad()
    def clamp_(self):
        self.log_tau.clamp_(min=math.log(self.MIN))


def info_nce(image_emb, text_emb, temperature, symmetric=True, caption_ids=None, rows=None):
    """InfoNCE loss of §4.2 with cosine similarity.

        sim(v, t) = v·t / (|v| |t|)            logits[i, j] = sim(v_i, t_j) / τ
        L_i = -log( exp(logits[i, i]) / Σ_j exp(logits[i, j]) ),     L = mean_i L_i

    The denominator is computed stably by subtracting each row's maximum m_i first:
        log Σ_j exp(logits[i, j]) = m_i + log Σ_j exp(logits[i, j] - m_i)
    so exp never overflows, even at τ = 0.001 in float32.

    symmetric=False is §4.2 exactly (image -> text). symmetric=True averages it with the same loss
    for text -> image (CLIP). Two extensions, each marked where it enters:
    1. caption_ids (B,) marks rows that share a caption: such a caption is not a negative of the
       other's image (it describes it just as well), so those off-diagonal pairs are left out of
       the denominators;
    2. rows (a slice of 0..B-1, default all) scores only those images and texts, each against all
       B: the "local loss" of a data-parallel run, where each process owns a slice of the global
       batch and sees every other process's rows as negatives.
    With neither, b = B and pair i sits at column i.
    """
    image_emb = F.normalize(image_emb, dim=1)                          # (B, C): sim is now a dot product
    text_emb = F.normalize(text_emb, dim=1)                            # (B, C)
    rows = rows or slice(0, len(image_emb))                            # extension 2
    positive = torch.arange(rows.start, rows.stop, device=image_emb.device)  # (b,) column of pair i
    local = torch.arange(len(positive), device=image_emb.device)       # (b,) its row
    if caption_ids is not None:                                        # extension 1
        shared = caption_ids[rows, None] == caption_ids[None, :]       # (b, B)
        shared[local, positive] = False                                # the positive stays

    def one_way(queries, keys):
        logits = queries[rows] @ keys.T / temperature                  # (b,C) @ (C,B) -> (b, B)
        if caption_ids is not None:
            logits = logits.masked_fill(shared, float("-inf"))         # exp(-inf) = 0: left out
        # L_i = log Σ_j exp(logits[i, j]) - logits[i, i], the row maximum m_i taken out first
        row_max = logits.max(dim=1, keepdim=True).values.detach()      # (b, 1): m_i
        log_denominator = row_max.squeeze(1) + (logits - row_max).exp().sum(dim=1).log()
        return (log_denominator - logits[local, positive]).mean()      # L = mean_i L_i

    if not symmetric:
        return one_way(image_emb, text_emb)
    return (one_way(image_emb, text_emb) + one_way(text_emb, image_emb)) / 2


# ------------------------------------------------------------------------------------------------
# Part 6. The visual prefix (§3.4, Frozen): the image as the first line the frozen LM reads.
# ------------------------------------------------------------------------------------------------

# In the corpus a document opens with a caption line, then restatements and questions. The K
# prefix embeddings take the place of that first line: '<bos> [K image embeddings] \n text'.
# Captioning is then 'restate the first line', and a question is asked as in the corpus.

IGNORE = -100  # target id that the loss skips (F.cross_entropy's ignore_index); never a token


def image_context(lm, tokenizer, prefix):
    """(B, K, C) visual prefix -> (B, 1 + K, C): the <bos> embedding, then the prefix, each of its
    K vectors set to the mean length of the LM's token embeddings (its direction is what the
    embedder learns). Left free, the prefix can grow many times longer than any token and drown
    the position embedding and the text after it (tutorials/design.md)."""
    bos = lm.token_emb.weight[tokenizer.bos_id].expand(len(prefix), 1, -1)  # (B, 1, C)
    token_length = lm.token_emb.weight.norm(dim=1).mean()               # (): constant while frozen
    prefix = F.normalize(prefix.to(bos.dtype), dim=-1) * token_length   # (B, K, C)
    return torch.cat([bos, prefix], dim=1)


def caption_tokens(tokenizer, captions, max_tokens):
    """Each caption as the ids of '\n caption \n' (at most max_tokens), right-padded with IGNORE:
    (M, L)."""
    newline = tokenizer.encode("\n")
    rows = [newline + tokenizer.encode(text)[:max_tokens - 2 * len(newline)] + newline
            for text in captions]
    return pad_rows(rows, IGNORE)


def prefix_loss(lm, tokenizer, prefix, tokens):
    """Next-token cross-entropy of the caption given the image (Frozen's captioning loss).

    prefix (B, K, C); tokens (B, L): '\n caption \n' padded with IGNORE. The LM is frozen but
    not detached: gradients flow through it into the prefix, and only the embedder learns (the
    finetune and scratch ablations let the LM learn from this loss too)."""
    context_emb = image_context(lm, tokenizer, prefix)                  # (B, P = 1 + K, C)
    # IGNORE padding sits after the caption, where causal attention hides it: any id will do
    hidden = lm(tokens.clamp(min=0), prefix=context_emb)                # (B, P + L, C)
    P = context_emb.shape[1]
    logits = lm.logits(hidden[:, P:-1])           # state of token j predicts token j + 1: (B, L-1, V)
    return F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten(),
                           ignore_index=IGNORE)


# The prefix spelled as its caption. Left free, the K vectors hold the caption in a code that the
# LM reads back by restating it, and a question asked straight after the image is answered by
# position. Pulled towards the caption's own token embeddings, vector j towards the caption's
# token j, the prefix becomes a line the LM can look things up in, as it looks them up in a
# caption it has read (the LM then answers by object straight after the image: tutorials/design.md).
# The pull is strong (weight 16): a vector merely near its word is found less surely than the word.

def spelling_loss(lm, tokenizer, prefix, tokens):
    """Mean 1 - cos(prefix_j, embedding of caption token j) over the caption tokens that fall in
    the K prefix positions (with the newline after a caption shorter than K). prefix (B, K, C);
    tokens (B, L): '\n caption \n' padded with IGNORE, as for prefix_loss. Only the direction
    is pulled: image_context sets each vector's length."""
    K = prefix.shape[1]
    start = len(tokenizer.encode("\n"))
    caption = tokens[:, start:start + K]                                # (B, J), J <= K
    target = lm.token_emb.weight[caption.clamp(min=0)]                  # (B, J, C)
    cosine = F.cosine_similarity(prefix[:, :caption.shape[1]].float(), target.float(), dim=-1)
    return (1 - cosine)[caption != IGNORE].mean()                       # (B, J) -> ()


# The LM as its own teacher. Read after an image's true caption, the frozen LM answers the
# corpus's questions about the scene as well as it ever can (VQA's 'true caption' row). The
# captioning loss alone teaches the prefix to be *restated*; whether the LM can also answer a
# question straight from it is then left to chance, and varied with the seed. The teacher loss
# asks a few images of each batch one corpus question and pulls the LM's answer after the image
# towards its answer after the true caption: no answer label, only the LM reading the caption.

def answer_states(hidden, first, lengths):
    """(B, T, C) states -> (B, A, C): of row b, the states from first[b] on (the first lengths[b]
    of them predict its answer tokens), A = max(lengths); places past a row's end are clamped to
    the last position, for the caller to leave out."""
    offsets = torch.arange(max(lengths), device=hidden.device)              # (A,)
    index = (torch.tensor(first, device=hidden.device)[:, None] + offsets).clamp(
        max=hidden.shape[1] - 1)                                            # (B, A)
    return hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))


def teacher_loss(lm, tokenizer, prefix, captions, asked):
    """KL(teacher || student) per answer token, averaged over the tokens of one answer an image.

    prefix (B, K, C); captions: B caption texts; asked: B (question, answer) pairs about them.
      teacher  '<bos> CAPTION \n q: QUESTION a: ANSWER \n', read without gradient
      student  '<bos> [image] \n q: QUESTION a: ANSWER \n'
    The LM reads the answer itself (teacher forcing) in both; at each position that predicts a
    token of ' ANSWER \n', the student's next-token distribution p_s must match the teacher's p_t.
    As in prefix_loss the gradient reaches the prefix through the frozen LM. A pair whose rows do
    not fit the LM's context is left out (none is with the default tokenizer); 0 if none fits."""
    P = 1 + prefix.shape[1]                                                 # <bos> and the prefix
    heads, lines, kept = [], [], []
    for b, (text, (question, answer)) in enumerate(zip(captions, asked)):
        head = [tokenizer.bos_id] + tokenizer.encode(text)
        prompt = tokenizer.encode(question_prompt(question))
        reply = tokenizer.encode(f" {answer}") + tokenizer.encode("\n")
        if max(len(head), P) + len(prompt) + len(reply) <= lm.context:
            heads.append(head)
            lines.append((prompt, reply))
            kept.append(b)
    if not kept:
        return prefix.new_zeros(())
    lengths = [len(reply) for _, reply in lines]
    with torch.no_grad():
        rows = [head + prompt + reply for head, (prompt, reply) in zip(heads, lines)]
        hidden = lm(pad_rows(rows, tokenizer.pad_id).to(prefix.device))      # (B', T, C)
        first = [len(head) + len(prompt) - 1 for head, (prompt, _) in zip(heads, lines)]
        log_p_t = F.log_softmax(lm.logits(answer_states(hidden, first, lengths)).float(), dim=-1)
    context_emb = image_context(lm, tokenizer, prefix[kept])               # (B', P, C)
    rows = [prompt + reply for prompt, reply in lines]
    hidden = lm(pad_rows(rows, tokenizer.pad_id).to(prefix.device), prefix=context_emb)
    first = [P + len(prompt) - 1 for prompt, _ in lines]                    # state before ' ANSWER'
    log_p_s = F.log_softmax(lm.logits(answer_states(hidden, first, lengths)).float(), dim=-1)
    # KL(p_t || p_s) = sum over the vocabulary of p_t (log p_t - log p_s), at each answer token
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)                     # (B', A)
    counted = torch.arange(max(lengths), device=kl.device) < torch.tensor(lengths,
                                                                         device=kl.device)[:, None]
    return kl[counted].mean()


@torch.no_grad()
def generate(lm, context_emb, prompt, max_new_tokens, sample_temperature=0.0, generator=None,
             stop_ids=()):
    """Continue (B, P, C) context embeddings and (B, T) prompt ids by up to max_new_tokens.

    Greedy when sample_temperature is 0, else sampled from softmax(logits / sample_temperature).
    Returns (B, n) new ids, n = max_new_tokens or fewer where the LM's context runs out, or as
    soon as every row holds one of stop_ids (a newline, <eos>); callers cut each row there. The
    LM reads the context and prompt once, then each new token once: a key-value cache
    (LayerCache) keeps what it has read."""
    room = lm.context - context_emb.shape[1] - prompt.shape[1] + 1     # the last needs no forward
    if room < 1:
        raise ValueError(f"{context_emb.shape[1]} + {prompt.shape[1]} positions leave no room in "
                         f"the LM context of {lm.context}")
    cache = [LayerCache() for _ in lm.blocks]
    hidden = lm(prompt, prefix=context_emb, cache=cache)                # (B, P + T, C)
    new_ids, stopped = [], torch.zeros(len(prompt), dtype=torch.bool, device=prompt.device)
    n = min(max_new_tokens, room)
    for step in range(n):
        logits = lm.logits(hidden[:, -1]).float()                      # (B, V): the next token
        if sample_temperature == 0:
            next_id = logits.argmax(dim=-1)
        else:
            probabilities = (logits / sample_temperature).softmax(dim=-1)
            next_id = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
        new_ids.append(next_id)
        stopped |= torch.isin(next_id, torch.tensor(stop_ids, device=next_id.device))
        if stopped.all() or step == n - 1:
            break
        hidden = lm(next_id[:, None], cache=cache)                      # (B, 1, C): one position
    return torch.stack(new_ids, dim=1)                                  # (B, n)


# ------------------------------------------------------------------------------------------------
# Part 7. Alignment (§3.2 step 3): train only the visual embedder, against the frozen LM; torchrun.
# ------------------------------------------------------------------------------------------------

OBJECTIVES = ("contrastive", "prefix", "both")


# Data parallel (torchrun): each of W processes takes its own B/W of the global batch of B. DDP
# averages the gradients of the trained modules over processes; InfoNCE needs one more step,
# since every image's negatives are the texts of the *global* batch.

def rank_and_world():
    """(this process's rank, number of processes): (0, 1) unless started by torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class GatherWithGrad(torch.autograd.Function):
    """(b, C) rows of this process -> (W * b, C) rows of all processes, in rank order.

    Forward is an all-gather. In backward, each process's loss has put a gradient on every row;
    the gradient of this process's own rows is their sum over processes (an all-reduce), of which
    it keeps its slice. With DDP's average over processes on top, the parameters get the gradient
    of the global batch's loss (open_clip's "local loss + gather with grad")."""

    @staticmethod
    def forward(ctx, local):
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, local.contiguous())
        return torch.cat(gathered)                                      # (W * b, C)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)                                           # sum over the W losses
        rank, world = rank_and_world()
        b = len(grad) // world
        return grad[rank * b:(rank + 1) * b]                            # (b, C)


def global_info_nce(image_emb, text_emb, temperature, caption_ids):
    """InfoNCE over the global batch: this process's b rows scored against all W * b."""
    rank, world = rank_and_world()
    if world == 1:
        return info_nce(image_emb, text_emb, temperature, caption_ids=caption_ids)
    all_ids = [torch.empty_like(caption_ids) for _ in range(world)]
    dist.all_gather(all_ids, caption_ids)
    b = len(image_emb)
    return info_nce(GatherWithGrad.apply(image_emb), GatherWithGrad.apply(text_emb), temperature,
                    caption_ids=torch.cat(all_ids), rows=slice(rank * b, (rank + 1) * b))


def average_gradients(parameters):
    """The mean gradient over processes, for trained tensors outside DDP (τ; the LM in the
    finetune and scratch ablations, whose text features pass through GatherWithGrad too)."""
    _, world = rank_and_world()
    for p in parameters:
        if world > 1 and p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def data_parallel(module, device, every_parameter_used=True, compile=False):
    """What a training loop calls: DDP around the module when torchrun started W > 1 processes,
    the module itself otherwise; compiled by torch.compile when asked (its parameters stay the
    module's: the optimizer and the checkpoints hold the module itself).
    On GPUs BatchNorm becomes SyncBatchNorm, whose statistics are those of the global batch
    (PyTorch has it for GPUs only: on CPUs each process normalises by its own share's)."""
    if rank_and_world()[1] > 1:
        if device.type == "cuda":
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # swaps the layers in place
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not every_parameter_used)
    return torch.compile(module) if compile else module


@functools.lru_cache(maxsize=2)  # a step needs this epoch's order, and at its end the next one's
def epoch_order(n_rows, seed, epoch):
    """The (N,) order in which one epoch visits the rows: a seeded permutation."""
    return torch.randperm(n_rows, generator=keyed_generator(seed, 2, epoch))


def batch_rows(n_rows, batch_size, seed, step, rank=0, world=1):
    """The (B/W,) rows process `rank` of W trains on at `step`.

    Rows are visited in epochs, each a seeded permutation of all N rows, so every row is seen
    once an epoch; the global batch of a step is the next B of them, and each process takes its
    own 1/W share, as torch's DistributedSampler shards a data set over processes. Like
    keyed_generator, it depends on the step alone."""
    first, end = step * batch_size, (step + 1) * batch_size             # places in the row order
    epochs = range(first // n_rows, (end - 1) // n_rows + 1)
    order = torch.cat([epoch_order(n_rows, seed, epoch) for epoch in epochs])  # (N * epochs,)
    batch = order[first - epochs[0] * n_rows:end - epochs[0] * n_rows]  # (B,)
    share = batch_size // world
    return batch[rank * share:(rank + 1) * share]


def image_batches(images, rows_of_step, steps, device, workers=2):
    """For each step: (its rows (B,), on the host, their images (B, 3, H, W) uint8 on the device).

    images is a uint8 tensor in memory (indexed there), or a DecodeRows, for data sets larger
    than memory: DataLoader worker processes then read and decode each batch from disk, a few
    batches ahead of the training step, which is why a batch must be known before its step."""
    if isinstance(images, torch.Tensor):
        images = images.to(device)
        for step in steps:
            rows = rows_of_step(step)
            yield rows, images[rows.to(device)]
        return
    # Each step's rows go both to the loader (ahead of the loop) and to the loop: tee keeps the
    # few in between, so they are drawn once.
    for_loader, for_loop = itertools.tee(map(rows_of_step, steps))
    loader = torch.utils.data.DataLoader(images, num_workers=workers,
                                         batch_sampler=(rows.tolist() for rows in for_loader),
                                         pin_memory=device.type == "cuda")
    for rows, (batch_images, errors) in zip(for_loop, loader):
        for error in errors:  # a file that vanished or broke since training began
            if error:
                raise ValueError(error)
        yield rows, batch_images.to(device, non_blocking=True)


def align(embedder, temperature, tower, images, caption_index, captions, cfg, objective, device,
          seed, scenes=None, train_lm=False, checkpoints=None, compile=False, precision="auto",
          chain=False):
    """Train the embedder (and a learned τ) against the LM of the text tower.

    contrastive  InfoNCE between g(I_i) and t_i (§4.2)
    prefix       next-token loss of caption i given the image's prefix, through the LM, plus
                 teacher_loss on one question about the scene of each of the first
                 cfg.question_rows images (where the N `scenes` are known: the toy worlds),
                 plus cfg.spelling times spelling_loss
    both         the sum of the two, one trunk with two heads

    images (N, 3, H, W) uint8, or a DecodeRows of N rows to stream from disk (image_batches);
    caption_index (N,) into the M distinct `captions`. With the LM
    frozen (the method), each caption's text embedding is computed once before the loop, since a
    frozen tower's outputs are constants. train_lm=True is the ablation that trains the LM too
    (LiT's 'unlocked' tower, Frozen's 'fine-tuned'): the text embeddings are then recomputed every
    step, and the LM is frozen again at the end, for evaluation. checkpoints (a Checkpoints)
    saves the loop's state as it goes, or resumes it. Under torchrun each process takes
    cfg.batch_size / W of each step's batch (batch_rows). compile=True compiles the embedder;
    precision as in compute_dtype. chain: the LM was pretrained on the reading corpus, which
    answers `chained`; teacher_loss then teaches its answers in that form."""
    assert objective in OBJECTIVES, objective
    checkpoints = checkpoints or Checkpoints()
    lm, tokenizer = tower.lm, tower.tokenizer
    rank, world = rank_and_world()
    embedder.to(device).train()
    model = data_parallel(embedder, device, every_parameter_used=objective == "both",
                          compile=compile)
    temperature.to(device)
    trained = list(embedder.parameters()) + list(temperature.parameters())
    if train_lm:
        trained += list(lm.requires_grad_(True).train().parameters())
    optimizer = adamw(trained, cfg.lr, cfg.weight_decay, device)
    if not train_lm:
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        assert not in_optimizer & {id(p) for p in lm.parameters()}, "the frozen LM is in the optimizer"
        text_emb = tower(captions)                                      # (M, C), once
    else:
        reread_ids, reread_weights = (t.to(device) for t in reread_tokens(tokenizer, captions,
                                                                          lm.context))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup_steps, cfg.steps))
    scaler = gradient_scaler(device, precision)
    asks = objective != "contrastive" and scenes is not None and cfg.question_rows > 0
    room = lm.context - 1 - embedder.prefix_shape[0]                   # after <bos> and the prefix
    tokens = caption_tokens(tokenizer, captions, room).to(device)
    history = {"loss": [], "temperature": [], "batch_R@1": []}
    modules = {"embedder": embedder, "temperature": temperature, **({"lm": lm} if train_lm else {})}
    outside_ddp = list(temperature.parameters()) + (list(lm.parameters()) if train_lm else [])
    first_step = checkpoints.start("align", cfg.steps, modules, optimizer, schedule, history,
                                   scaler)
    steps = range(first_step, cfg.steps)
    batches = image_batches(images, lambda step: batch_rows(len(images), cfg.batch_size, seed,
                                                            step, rank, world), steps, device)
    start = time.perf_counter()
    bar = tqdm(steps, desc=f"align ({objective})", dynamic_ncols=True, initial=first_step,
               total=cfg.steps, disable=rank > 0)
    for step, (batch, batch_images) in zip(bar, batches):
        caption_ids = caption_index[batch].to(device)                   # (B,)
        loss = 0.0
        with autocast(device, precision):
            image_emb, prefix = model(batch_images)                     # (B, C), (B, K, C)
            if objective != "contrastive":
                loss = prefix_loss(lm, tokenizer, prefix, tokens[caption_ids])
                if cfg.spelling:
                    loss = loss + cfg.spelling * spelling_loss(lm, tokenizer, prefix,
                                                               tokens[caption_ids])
            if asks:  # questions drawn on the host from the step alone, like the batch: resumable
                rows = batch[:cfg.question_rows // world].tolist()
                rng = np.random.default_rng((seed, 6, step, rank))
                asked = [pick(rng, questions(scenes[row], rng))[:2] for row in rows]
                if chain:  # the LM learned to answer chained: its answers teach in that form
                    asked = [(question, chained(question, answer)) for question, answer in asked]
                # Weighted by the share of the batch asked: an asked image weighs what it would
                # if all B were, and asking a few keeps the cost small (tutorials/speed.md).
                loss = loss + teacher_loss(lm, tokenizer, prefix[:len(rows)],
                                           [captions[caption_index[row]] for row in rows],
                                           asked) * len(rows) / len(batch)
            if objective != "prefix" and train_lm:
                text_batch = tower.embed_tokens(reread_ids[caption_ids], reread_weights[caption_ids])
        if objective != "prefix":  # outside autocast: the loss in float32
            if not train_lm:
                text_batch = text_emb[caption_ids]                      # (B, C)
            loss = loss + global_info_nce(image_emb.float(), text_batch.float(), temperature(),
                                          caption_ids)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        average_gradients(outside_ddp)
        scaler.step(optimizer)
        scaler.update()
        temperature.clamp_()
        schedule.step()
        logged = step % 20 == 0 or step == cfg.steps - 1  # .item() waits for the device: log sparsely
        if logged:
            history["loss"].append((step, loss.item()))
            history["temperature"].append((step, temperature().item()))
            if objective != "prefix":  # in-batch image -> text R@1: is the top caption the right one?
                with torch.no_grad():
                    scores = image_emb.float() @ F.normalize(text_batch.float(), dim=1).T  # (B, B)
                    hits = caption_ids[scores.argmax(dim=1)] == caption_ids
                history["batch_R@1"].append((step, hits.float().mean().item()))
            images_per_s = (step + 1 - first_step) * cfg.batch_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss.item():.3f}", tau=f"{temperature().item():.3f}",
                            img_s=f"{images_per_s:,.0f}")
        checkpoints.after_step(step, loss, logged)
    history["seconds"] = time.perf_counter() - start
    history["images_per_s"] = (cfg.steps - first_step) * cfg.batch_size / history["seconds"]
    embedder.eval()
    freeze(lm)
    return history


# ------------------------------------------------------------------------------------------------
# Part 8. Evaluation (§3.2 step 4): retrieval both ways and zero-shot attribute classification.
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def embed_images(embedder, images, device, batch_size=1024, precision="auto"):
    """(N, 3, H, W) uint8 -> (N, C) unit-length image embeddings and (N, K, C) prefixes."""
    embedder.eval()
    image_emb, prefixes = [], []
    for i in range(0, len(images), batch_size):
        with autocast(device, precision):
            emb, prefix = embedder(images[i:i + batch_size].to(device))
        image_emb.append(emb.float())
        prefixes.append(prefix.float())
    image_emb = torch.cat(image_emb)
    return F.normalize(image_emb, dim=1), torch.cat(prefixes)


def retrieval_metrics(similarity, caption_index, ks=(1, 5, 10)):
    """Recall@K, mean and median rank, both ways, from an (N images, M captions) similarity.

    A hit is the right caption *text*: images that share a caption all count as right answers for
    it. Image -> text: the rank of the image's caption among the M captions. Text -> image: the rank
    of the best-placed image of that caption among the N images. Ranks start at 1, and ties count
    against the model: rank = 1 + the number of wrong candidates scoring at least as high as the
    best right one. (Counting only strictly higher scores would give an embedder that maps every
    image to one vector a perfect text -> image score.) A non-finite similarity is a ValueError:
    NaN compares false with everything, so it would rank every answer first."""
    if not torch.isfinite(similarity).all():
        raise ValueError(f"retrieval: {(~torch.isfinite(similarity)).sum().item()} of the "
                         f"{similarity.numel()} similarities are not finite (NaN or inf embeddings)")
    N, M = similarity.shape
    correct = torch.zeros(N, M, dtype=torch.bool)
    correct[torch.arange(N), caption_index] = True
    metrics = {}
    for direction, scores, right in (("image_to_text", similarity, correct),
                                     ("text_to_image", similarity.T, correct.T)):
        best_right = scores.masked_fill(~right, float("-inf")).max(dim=1, keepdim=True).values
        ranks = ((scores >= best_right) & ~right).sum(dim=1).float() + 1  # (rows,)
        for k in ks:
            metrics[f"{direction}_R@{k}"] = (ranks <= k).float().mean().item()
        metrics[f"{direction}_mean_rank"] = ranks.mean().item()
        metrics[f"{direction}_median_rank"] = ranks.median().item()
    return metrics


def zeroshot_attributes(scene):
    """What zero-shot classifies in a scene: {attribute: value}, or None for two-object scenes."""
    if isinstance(scene, Glyph):
        return {"colour": scene.colour, "letter": scene.letter, "size": scene.size,
                "background": scene.background}
    if len(scene.objects) == 1:
        return {"colour": scene.objects[0][0], "shape": scene.objects[0][1], "size": scene.size,
                "position": scene.where}
    return None


def zeroshot_accuracy(image_emb, scenes, embed_texts):
    """Zero-shot accuracy per attribute (shapes: colour, shape, size, position on one-object
    images; glyphs: colour, letter, size, background).

    Each class is described by every caption of the grammar that has its value (CLIP's prompt
    ensembling: the mean of their unit text embeddings), and each image takes the nearest class.
    embed_texts maps a list of captions to (M, C) text embeddings."""
    scored = [i for i, scene in enumerate(scenes) if zeroshot_attributes(scene)]
    world = WORLDS["glyphs" if isinstance(scenes[0], Glyph) else "shapes"]
    prompt_scenes = [scene for scene in world["all"]() if zeroshot_attributes(scene)]
    prompts = embed_texts([caption(scene) for scene in prompt_scenes])  # (350 or 1,008, C)
    prompts = F.normalize(prompts, dim=1)
    metrics = {}
    for name in zeroshot_attributes(prompt_scenes[0]):
        value_of = lambda scene: zeroshot_attributes(scene)[name]
        values = sorted({value_of(scene) for scene in prompt_scenes})
        classes = torch.stack([prompts[[value_of(sc) == v for sc in prompt_scenes]].mean(0)
                               for v in values])                       # (classes, C)
        classes = F.normalize(classes, dim=1)
        predicted = (image_emb[scored] @ classes.T).argmax(dim=1)
        truth = torch.tensor([values.index(value_of(scenes[i])) for i in scored])
        metrics[f"zeroshot_{name}_acc"] = (predicted.cpu() == truth).float().mean().item()
    return metrics


# ------------------------------------------------------------------------------------------------
# Part 9. The toy worlds (shapes, glyphs): scenes, images, captions, splits and the LM's corpus.
# ------------------------------------------------------------------------------------------------

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240),
           "yellow": (240, 220, 40), "purple": (160, 60, 200), "orange": (250, 140, 20),
           "white": (240, 240, 240)}
SHAPES = ["circle", "square", "triangle", "cross", "diamond"]
SIZES = ["small", "large"]
POSITIONS = {"left": "on the left", "right": "on the right", "top": "at the top",
             "bottom": "at the bottom", "centre": "in the centre"}
# Relations are canonical (the first object is above / left of the second), so every scene has
# exactly one plain caption and retrieval has one right answer.
RELATIONS = {"above": "above", "left": "to the left of"}

# Words that paired captions never use. The LM's corpus uses them interchangeably with the plain
# words inside one document, so only a pretrained LM can know that "crimson ring" means "red circle".
SYNONYMS = {"red": "crimson", "green": "emerald", "blue": "azure", "yellow": "golden",
            "purple": "violet", "orange": "amber", "white": "ivory", "circle": "ring",
            "square": "box", "triangle": "wedge", "cross": "plus", "diamond": "rhombus",
            "small": "tiny", "large": "big"}

# Colour+shape pairs never drawn in a training image (the `compositional` split), but described
# in the LM's corpus like every other pair.
HELD_OUT_PAIRS = {("red", "triangle"), ("green", "cross"), ("blue", "diamond"),
                  ("yellow", "circle"), ("purple", "square")}


@dataclass(frozen=True)
class Scene:
    """One object (colour, shape, size, position) or two objects and their relation."""
    objects: tuple               # ((colour, shape),) or ((colour, shape), (colour, shape))
    size: str = ""               # one object only: a key of SIZES
    where: str = ""              # one object: a key of POSITIONS; two: a key of RELATIONS


def shapes_caption(scene, wording=None):
    """The grammar: 'a small red circle on the left' / 'a red circle above a blue square'.

    `wording` maps plain words to the words to use (the paraphrase split passes SYNONYMS)."""
    w = (lambda word: wording.get(word, word)) if wording else (lambda word: word)
    if len(scene.objects) == 1:
        (colour, shape), = scene.objects
        return f"a {w(scene.size)} {w(colour)} {w(shape)} {POSITIONS[scene.where]}"
    (c1, s1), (c2, s2) = scene.objects
    return f"a {w(c1)} {w(s1)} {RELATIONS[scene.where]} a {w(c2)} {w(s2)}"


def all_scenes():
    """Every scene the grammar can describe (350 with one object, 2,380 with two)."""
    pairs = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    return ([Scene((pair,), size, where) for pair in pairs for size in SIZES for where in POSITIONS]
            + [Scene((first, second), "", where) for first in pairs for second in pairs
               if first != second for where in RELATIONS])


def pick(rng, options):
    """One of a list, uniformly: the draw rng.choice makes, without its conversion to an array
    (five times faster; drawing the 20,000 training scenes and documents calls it 300,000 times)."""
    return options[rng.integers(len(options))]


def random_scene(rng, held_out):
    """Draw a scene; held_out=False avoids HELD_OUT_PAIRS, True needs one, None allows all."""
    while True:
        n_objects = int(rng.integers(1, 3))
        objects = tuple((pick(rng, list(COLOURS)), pick(rng, SHAPES))
                        for _ in range(n_objects))
        if n_objects == 2 and objects[0] == objects[1]:
            continue  # 'a red circle above a red circle' names neither object
        uses_held_out = any(pair in HELD_OUT_PAIRS for pair in objects)
        if held_out is None or held_out == uses_held_out:
            break
    if n_objects == 1:
        return Scene(objects, pick(rng, SIZES), pick(rng, list(POSITIONS)))
    return Scene(objects, "", pick(rng, list(RELATIONS)))


def draw_shape(draw, shape, cx, cy, r, fill):
    """Draw one shape of 'radius' r centred on (cx, cy)."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif shape == "cross":
        arm = max(1.0, r / 3)
        draw.rectangle([cx - r, cy - arm, cx + r, cy + arm], fill=fill)
        draw.rectangle([cx - arm, cy - r, cx + arm, cy + r], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)


def render_shapes(scene, image_size, rng):
    """Scene -> (H, W, 3) uint8 image; positions and sizes jitter so that no two images repeat."""
    s = image_size
    image = Image.new("RGB", (s, s), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    jitter = lambda: float(rng.uniform(-0.05, 0.05)) * s
    if len(scene.objects) == 1:
        (colour, shape), = scene.objects
        fx, fy = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25),
                  "bottom": (0.5, 0.75), "centre": (0.5, 0.5)}[scene.where]
        r = (0.12 if scene.size == "small" else 0.21) * s * float(rng.uniform(0.9, 1.1))
        draw_shape(draw, shape, fx * s + jitter(), fy * s + jitter(), r, COLOURS[colour])
    else:
        # along the relation's axis the first object sits at 0.2-0.3 of the image, the second at
        # 0.7-0.8; across it each object may be anywhere in the middle half
        along = [rng.uniform(0.2, 0.3), rng.uniform(0.7, 0.8)]
        across = rng.uniform(0.25, 0.75, size=2)
        for (colour, shape), a, c in zip(scene.objects, along, across):
            x, y = (c, a) if scene.where == "above" else (a, c)
            draw_shape(draw, shape, x * s, y * s, 0.15 * s, COLOURS[colour])
    return np.array(image)


# The second world, with other statistics, so that no claim rests on one generator: always one
# glyph, a letter in one colour on a background of another, e.g. 'a large red letter k on blue'.
LETTERS = ["a", "b", "d", "e", "f", "h", "k", "m", "n", "r", "t", "x"]
GLYPH_SYNONYMS = {**{word: SYNONYMS[word] for word in [*COLOURS, *SIZES]}, "letter": "character"}
GLYPH_HELD_OUT_PAIRS = {("red", "k"), ("green", "a"), ("blue", "x"), ("yellow", "m"),
                        ("purple", "e")}


@dataclass(frozen=True)
class Glyph:
    """A letter of one colour and size on a background of another colour."""
    colour: str
    letter: str
    size: str                    # a key of SIZES
    background: str              # a key of COLOURS, never the letter's own


def glyph_caption(glyph, wording=None):
    """'a large red letter k on blue' (the paraphrase split: 'a big crimson character k on azure')."""
    w = (lambda word: wording.get(word, word)) if wording else (lambda word: word)
    return f"a {w(glyph.size)} {w(glyph.colour)} {w('letter')} {glyph.letter} on {w(glyph.background)}"


def all_glyphs():
    """Every glyph the grammar can describe: 7 x 12 x 2 x 6 = 1,008."""
    return [Glyph(colour, letter, size, background) for colour in COLOURS for letter in LETTERS
            for size in SIZES for background in COLOURS if background != colour]


def random_glyph(rng, held_out):
    """Draw a glyph; held_out as in random_scene, for the (colour, letter) pairs."""
    while True:
        colour, background = (str(c) for c in rng.choice(list(COLOURS), size=2, replace=False))
        letter = pick(rng, LETTERS)
        if held_out is None or held_out == ((colour, letter) in GLYPH_HELD_OUT_PAIRS):
            return Glyph(colour, letter, pick(rng, SIZES), background)


def render_glyph(glyph, image_size, rng):
    """Glyph -> (H, W, 3) uint8 image, drawn with PIL's bundled font, position and size jittered."""
    s = image_size
    image = Image.new("RGB", (s, s), COLOURS[glyph.background])
    points = round((0.45 if glyph.size == "small" else 0.8) * s * float(rng.uniform(0.9, 1.1)))
    x, y = (s / 2 + float(rng.uniform(-0.08, 0.08)) * s for _ in range(2))
    ImageDraw.Draw(image).text((x, y), glyph.letter, fill=COLOURS[glyph.colour], anchor="mm",
                               font=ImageFont.load_default(size=points))
    return np.array(image)


# One name per world, for --dataset: how it draws scenes, all its scenes, its synonyms. caption,
# render and questions serve both worlds, choosing by the kind of scene they are given.
WORLDS = {"shapes": {"random": random_scene, "all": all_scenes, "synonyms": SYNONYMS},
          "glyphs": {"random": random_glyph, "all": all_glyphs, "synonyms": GLYPH_SYNONYMS}}


def caption(scene, wording=None):
    """The plain caption of a scene of either world; `wording` maps words to synonyms."""
    return glyph_caption(scene, wording) if isinstance(scene, Glyph) else shapes_caption(scene, wording)


def render(scene, image_size, rng):
    """A scene of either world -> (H, W, 3) uint8 image."""
    return (render_glyph if isinstance(scene, Glyph) else render_shapes)(scene, image_size, rng)


def questions(scene, rng):
    """(question, answer, kind) triples about a scene of either world."""
    return (glyph_questions if isinstance(scene, Glyph) else shapes_questions)(scene, rng)


def index_captions(texts):
    """Per-image texts -> (M distinct captions, sorted; (N,) index of each image's caption)."""
    captions = sorted(set(texts))
    position = {text: j for j, text in enumerate(captions)}
    return captions, torch.tensor([position[text] for text in texts])


@dataclass
class Split:
    """A set of rendered images and their captions; `captions` holds each distinct caption once."""
    scenes: list                 # N scenes (None for your own data: captions only)
    images: torch.Tensor         # (N, 3, H, W) uint8
    captions: list               # M distinct caption strings
    caption_index: torch.Tensor  # (N,) long: images[i] is described by captions[caption_index[i]]


def make_split(n_images, image_size, seed, held_out, wording=None, dataset="shapes"):
    """Render n_images scenes once into memory (rendering never runs in the training loop)."""
    rng = np.random.default_rng(seed)
    scenes = [WORLDS[dataset]["random"](rng, held_out) for _ in range(n_images)]
    images = np.stack([render(scene, image_size, rng) for scene in scenes])  # (N, H, W, 3)
    captions, caption_index = index_captions([caption(scene, wording) for scene in scenes])
    return Split(scenes, torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), captions,
                 caption_index)


def make_eval_splits(cfg, seed):
    """The three evaluation splits, deterministic by seed.

    test           new images of seen colour+shape pairs, plain wording
    compositional  images with a held-out pair, plain wording (the pair is only in the LM corpus)
    paraphrase     the `test` images, every word that has a synonym replaced by it
    """
    test = make_split(cfg.eval_images, cfg.image_size, (seed, 2), False, dataset=cfg.dataset)
    synonyms = WORLDS[cfg.dataset]["synonyms"]
    paraphrase = Split(test.scenes, test.images,
                       *index_captions([caption(scene, synonyms) for scene in test.scenes]))
    compositional = make_split(cfg.eval_images, cfg.image_size, (seed, 3), True, dataset=cfg.dataset)
    return {"test": test, "compositional": compositional, "paraphrase": paraphrase}


def make_world(cfg, seed):
    """The paired training set (seen colour+shape pairs, plain wording) and the evaluation splits."""
    train = make_split(cfg.train_images, cfg.image_size, (seed, 1), False, dataset=cfg.dataset)
    return {"train": train, **make_eval_splits(cfg, seed)}


def make_support_split(cfg, seed):
    """200 images of seen pairs, apart from every split, for few-shot examples."""
    return make_split(200, cfg.image_size, (seed, 4), False, dataset=cfg.dataset)


# The LM's corpus: questions about a scene of either world, then whole text-only documents.

def shapes_questions(scene, rng):
    """Question-answer pairs about a scene: (question, answer, kind). Answers use plain words.

    Kinds: colour, shape, count, position (one object), exists (answered by a chain, see
    exists_answer). A question that would not name a single object (two circles: 'what colour is
    the circle?') is not asked."""
    shapes = [shape for _, shape in scene.objects]
    colours = [colour for colour, _ in scene.objects]
    colour, shape = scene.objects[int(rng.integers(len(scene.objects)))]
    pairs = [("how many objects are there?", ["one", "two"][len(scene.objects) - 1], "count")]
    if shapes.count(shape) == 1:
        pairs.append((f"what colour is the {shape}?", colour, "colour"))
    if colours.count(colour) == 1:
        pairs.append((f"what shape is the {colour} object?", shape, "shape"))
    if len(scene.objects) == 1:
        pairs.append((f"where is the {shape}?", scene.where, "position"))
    # Two 'is there' questions a document: the chain is the hardest answer for the tiny LM to
    # learn, so it gets twice the practice (tutorials/design.md).
    for _ in range(2):
        asked = (pick(rng, list(COLOURS)), pick(rng, SHAPES))
        if rng.random() < 0.5:                     # half the time about an object that is there
            asked = scene.objects[int(rng.integers(len(scene.objects)))]
        pairs.append((f"is there a {asked[0]} {asked[1]}?", exists_answer(scene.objects, asked),
                      "exists"))
    return pairs


def object_questions(scene):
    """Questions that name one object of a two-object scene by the other attribute, for each
    object, and an `exists` question about an absent combination (the first object's shape in
    the second's colour): (question, answer, kind) with kinds like 'colour_first' and
    'exists_absent'. An LM that answers by position (the last colour it read) fails one of each
    pair; one that has bound colour to shape does not. [] for a scene where a colour or a shape
    repeats (a question would not name one object)."""
    if not isinstance(scene, Scene) or len(scene.objects) != 2:
        return []
    (c1, s1), (c2, s2) = scene.objects
    if c1 == c2 or s1 == s2:
        return []
    return [(f"what colour is the {s1}?", c1, "colour_first"),
            (f"what colour is the {s2}?", c2, "colour_second"),
            (f"what shape is the {c1} object?", s1, "shape_first"),
            (f"what shape is the {c2} object?", s2, "shape_second"),
            (f"is there a {c1} {s1}?", exists_answer(scene.objects, (c1, s1)), "exists_first"),
            (f"is there a {c2} {s2}?", exists_answer(scene.objects, (c2, s2)), "exists_second"),
            (f"is there a {c2} {s1}?", exists_answer(scene.objects, (c2, s1)), "exists_absent")]


def exists_answer(objects, asked):
    """The answer to 'is there a COLOUR SHAPE?' about a scene's (colour, shape) objects (a
    glyph's one object is (colour, 'letter k')): the objects of that shape first, then the
    verdict: 'i see a blue square, so no', 'i see no cross, so no'.

    A bare 'yes' or 'no' asks the tiny LM to match colour and shape at once, in one token; the
    chain splits that into a copy from the description, the skill colour questions use, and a
    comparison of two colour words a few tokens apart (tutorials/design.md)."""
    shape = asked[1]
    seen = " and ".join(f"a {c} {s}" for c, s in objects if s == shape) or f"no {shape}"
    return f"i see {seen}, so {'yes' if asked in objects else 'no'}"


def glyph_questions(glyph, rng):
    """Question-answer pairs about a glyph: (question, answer, kind), as questions() does."""
    asked = (pick(rng, list(COLOURS)), pick(rng, LETTERS))
    if rng.random() < 0.5:
        asked = (glyph.colour, glyph.letter)
    # The shapes world's chain, the letter in the place of the shape: 'i see a red letter k, so no'.
    chain = exists_answer([(glyph.colour, f"letter {glyph.letter}")],
                          (asked[0], f"letter {asked[1]}"))
    return [("what colour is the letter?", glyph.colour, "colour"),
            ("which letter is it?", glyph.letter, "letter"),
            ("what colour is the background?", glyph.background, "background"),
            ("is the letter small or large?", glyph.size, "size"),
            (f"is there a {asked[0]} letter {asked[1]}?", chain, "exists")]


def random_wording(rng, synonyms=SYNONYMS):
    """Each word that has a synonym is swapped for it with probability 1/2, independently."""
    return {word: synonym for word, synonym in synonyms.items() if rng.random() < 0.5}


def corpus_document(rng, dataset="shapes", reading=False):
    """A text-only document about a random scene (held-out pairs included, image never drawn).

    Three captions of the same scene, then questions with their answers (answers in plain words).
    The first caption picks its words at random; each later one either repeats it word for word
    or picks its words afresh, half the time each:
    - the fresh restatements are what teach synonyms: 'crimson' is followed by the same
      restatements as 'red', so the LM must treat them alike to predict what comes next;
    - the exact repeats teach copying from earlier in the document, a skill the tiny LM must
      learn first, and which fresh restatements alone do not teach it.
    The reading corpus (reading=True, the reading recipe) writes two captions and two questions,
    so that a document fits in one row of the LM's context with its caption, and its answers
    `chained`.
    """
    world = WORLDS[dataset]
    scene = world["random"](rng, held_out=None)
    first = random_wording(rng, world["synonyms"])
    lines = [caption(scene, first)]
    for _ in range(1 if reading else 2):
        lines.append(caption(scene, first if rng.random() < 0.5
                             else random_wording(rng, world["synonyms"])))
    document = "\n".join(lines)
    # Questions in a random order: in a fixed one (count first), the LM answered the first
    # question by its slot ('two' to 'is there a red square?'), and evaluation asks each one there.
    asked = questions(scene, rng)
    asked = [asked[i] for i in rng.permutation(len(asked))[:2 if reading else len(asked)]]
    return document + answered(rng, asked, world["synonyms"], reading)


def answered(rng, asked, synonyms=SYNONYMS, chain=False):
    """'\nq: QUESTION a: ANSWER' for each (question, answer, kind) in turn; each question's
    words are swapped for synonyms at random (random_wording), answers stay plain. With chain,
    each answer is `chained`, its echo of the question in the question's words."""
    lines = ""
    for question, answer, _ in asked:
        wording = random_wording(rng, synonyms)
        if chain:
            echoed = question.split(" ")
            answer = " ".join(wording.get(word, word) if word in echoed else word
                              for word in chained(question, answer).split(" "))
        question = " ".join(wording.get(word, word) for word in question.split(" "))
        lines += f"{question_prompt(question)} {answer}"
    return lines


def chained(question, answer):
    """The reading corpus's answers name the object asked about first, then what is asked of it:
    'what colour is the circle?' -> 'the circle is red', 'what shape is the red object?' -> 'the
    red object is a circle', and the `exists` chain 'i see a green triangle, so no' -> 'the
    triangle is green, so no'. After 'the circle is', the colour is the word just before
    `circle` in the caption: one lookup. After 'a:' the LM would first have to carry `circle`
    there from the question, a second step the tiny LM does not learn (tutorials/design.md,
    "Reading its context"). Other answers stay as they are."""
    colour_of = re.fullmatch(r"what colour is the (\w+)\?", question)
    if colour_of:
        return f"the {colour_of[1]} is {answer}"
    shape_of = re.fullmatch(r"what shape is the (\w+) object\?", question)
    if shape_of:
        return f"the {shape_of[1]} object is a {answer}"
    return re.sub(r"^i see (a .*), so", lambda seen: re.sub(r"a (\w+) (\w+)", r"the \2 is \1",
                                                            seen[1]) + ", so", answer)


def question_prompt(question):
    """'\nq: QUESTION a:', the line that asks the LM a question after what it has read, its answer
    to follow. The corpus writes every question this way, so every caller asks in these words."""
    return f"\nq: {question} a:"


def make_corpus(n_documents, seed, dataset="shapes", reading=False):
    """The LM's pretraining text: a list of documents, larger than the paired set. reading: the
    reading recipe's corpus (shapes world): shorter scene documents with `chained` answers, and a
    quarter more lookup documents (lookup_document) after them, so that the held-out 5% (the
    first documents) stays scene documents."""
    rng = np.random.default_rng((seed, 0))
    reading = reading and dataset == "shapes"
    documents = [corpus_document(rng, dataset, reading) for _ in range(n_documents)]
    if reading:
        documents += [lookup_document(rng) for _ in range(n_documents // 4)]
    return documents


def chained_corpus(reading_steps, dataset, own_text):
    """Whether the LM read the reading corpus, whose answers are `chained` (teacher_loss and VQA
    then hold it to that form): reading steps, the shapes world and its built-in corpus, not your
    own text or pairs."""
    return reading_steps > 0 and dataset == "shapes" and not own_text


def lookup_document(rng):
    """Two or three objects in a line ('a red circle above a blue square to the left of a green
    cross'), then two questions, chained, that name one object by the other attribute or ask
    whether a colour+shape is there; plain words. With three objects, answering by position (the
    first colour read, or the last) fails most questions: only reading by object pays."""
    objects = distinct_objects(rng, int(rng.integers(2, 4)))
    line = ""
    for i, (colour, shape) in enumerate(objects):
        line += (f" {pick(rng, list(RELATIONS.values()))} " if i else "") + f"a {colour} {shape}"
    colours, shapes = [c for c, _ in objects], [s for _, s in objects]
    asked = []
    for colour, shape in objects:  # only questions that name a single object
        if shapes.count(shape) == 1:
            asked.append((f"what colour is the {shape}?", colour, "colour"))
        if colours.count(colour) == 1:
            asked.append((f"what shape is the {colour} object?", shape, "shape"))
    for _ in range(2):  # half the time about an object that is there, as in shapes_questions
        # else a colour and a shape both in the line, so that no single word denies the pair
        pair = (pick(rng, colours), pick(rng, shapes))
        if rng.random() < 0.5:
            pair = objects[int(rng.integers(len(objects)))]
        asked.append((f"is there a {pair[0]} {pair[1]}?", exists_answer(objects, pair), "exists"))
    return line + answered(rng, [asked[i] for i in rng.permutation(len(asked))[:2]], {}, True)


# Reading drills. An LM learns to copy from its context in a sudden *phase change*, once its
# induction heads form (Olsson et al. 2022), and the tokens that takes grow with batch and context
# (Aoyama et al. 2025 put it near 10^5.7 sqrt(B C) tokens: some 11,000 of this LM's steps). Text
# that rewards copying brings it forward: pretraining reads only these drills for its first
# `reading_steps` steps, then the corpus with the drills mixed in, so that the skill stays.

def text_words(documents):
    """The distinct words of a text (letters only), sorted: what the repeat drills are made of."""
    return sorted({word for document in documents
                   for word in re.findall(r"[a-z]+", document.lower())})


def repeat_document(rng, words):
    """A random span of the given words, then the same span again: only copying predicts the
    second line."""
    span = " ".join(pick(rng, words) for _ in range(int(rng.integers(4, 16))))
    return f"{span}\n{span}"


def fresh_name(rng, held_out=False):
    """A made-up word of 3 to 5 letters, consonants and vowels alternating. Names whose letters'
    codes sum to a multiple of 3 are kept for the reading tests (held_out=True): never in
    training."""
    letters = ["bcdfghjklmnprstvwxz", "aeiou"]
    while True:
        start = int(rng.integers(2))
        name = "".join(pick(rng, letters[(start + i) % 2]) for i in range(int(rng.integers(3, 6))))
        if (sum(map(ord, name)) % 3 == 0) == held_out:
            return name


def distinct_objects(rng, count):
    """`count` different (colour, shape) pairs, in random order."""
    objects = []
    while len(objects) < count:
        pair = (pick(rng, list(COLOURS)), pick(rng, SHAPES))
        if pair not in objects:
            objects.append(pair)
    return objects


def naming_document(rng):
    """2 to 5 objects, each given a fresh name, then some of them named again:
    'a red circle is a zuv \\n a blue square is a kep \\n a red circle is a zuv'. The name is new in
    every document, so the last line is predictable only from the lines before it."""
    objects = distinct_objects(rng, int(rng.integers(2, 6)))
    lines = [f"a {c} {s} is a {fresh_name(rng)}" for c, s in objects]
    lines += [lines[i] for i in rng.permutation(len(lines))[:int(rng.integers(1, len(lines) + 1))]]
    return "\n".join(lines)


def reading_drills(n_documents, seed, words, naming):
    """n_documents // 4 repeated spans of `words`, and with naming (the shapes world)
    n_documents // 8 naming documents and as many lookup documents."""
    rng = np.random.default_rng((seed, 5))
    drills = [repeat_document(rng, words) for _ in range(n_documents // 4)]
    if naming:
        drills += [naming_document(rng) for _ in range(n_documents // 8)]
        drills += [lookup_document(rng) for _ in range(n_documents // 8)]
    return drills


# Reading tests: what the LM does with what it was just shown, watched while it pretrains. Both
# are scored teacher-forced, in one forward pass: a token is right when it is the LM's most likely
# next token, which is what greedy generation would write.

def copy_test(tokenizer, words, context, n_rows, seed=0):
    """Rows '<bos> SPAN \n SPAN' of random words; scored: the repeat after its first token (the
    first follows the newline, which nothing earlier predicts). A span that does not fit the
    context is drawn again, up to 20 n_rows draws: a small context may get fewer rows, or none."""
    rng = np.random.default_rng((seed, 7))
    rows, scored = [], []
    for _ in range(20 * n_rows):
        if len(rows) == n_rows:
            break
        span = " ".join(pick(rng, words) for _ in range(int(rng.integers(6, 12))))
        first, repeat = [tokenizer.bos_id] + tokenizer.encode(span + "\n"), tokenizer.encode(span)
        if len(first) + len(repeat) <= context:
            rows.append(first + repeat)
            scored.append(range(len(first) + 1, len(first) + len(repeat)))
    return rows, scored


def naming_test(tokenizer, ways, context, n_rows, seed=0):
    """Rows of `ways` objects with held-out names, then one of them again: 'a red circle is a
    kipo \n a blue square is a zuve \n a red circle is a' -> ' kipo \n' is scored (the name, and
    that it ends there: scored_right takes <eos> for the newline). A row that does not fit the
    context is drawn again, as in copy_test."""
    rng = np.random.default_rng((seed, 8, ways))
    rows, scored = [], []
    for _ in range(20 * n_rows):
        if len(rows) == n_rows:
            break
        objects = distinct_objects(rng, ways)
        names = [fresh_name(rng, held_out=True) for _ in objects]
        asked = int(rng.integers(ways))
        lines = [f"a {c} {s} is a {name}" for (c, s), name in zip(objects, names)]
        query = "a {} {} is a".format(*objects[asked])
        prompt = [tokenizer.bos_id] + tokenizer.encode("\n".join(lines + [query]))
        target = tokenizer.encode(f" {names[asked]}\n")
        if len(set(names)) == ways and len(prompt) + len(target) <= context:
            rows.append(prompt + target)
            scored.append(range(len(prompt), len(prompt) + len(target)))
    return rows, scored


@torch.no_grad()
def scored_right(lm, tokenizer, rows, scored, whole_rows):
    """Where the LM's most likely next token is the true one: the share of scored tokens, or
    with whole_rows the share of rows right at every scored token. A line ends right at a newline
    or at <eos>: a naming document ends with the name asked for, so after it both are likely."""
    was_training = lm.training
    lm.eval()
    ids = pad_rows(rows, tokenizer.pad_id).to(lm.token_emb.weight.device)
    predicted = lm.logits(lm(ids)).argmax(-1).cpu()                     # (B, T)
    predicted[predicted == tokenizer.eos_id] = tokenizer.encode("\n")[-1]
    lm.train(was_training)
    right = [[predicted[i, j - 1].item() == row[j] for j in positions]
             for i, (row, positions) in enumerate(zip(rows, scored))]
    return float(np.mean([all(r) for r in right] if whole_rows else sum(right, [])))


def reading_tests(tokenizer, context, words, naming, n_rows=100):
    """{name: lm -> accuracy}: copy, the share of a repeated span's tokens predicted right, and
    with naming (the shapes world) names_2way / names_5way, the share of held-out names written
    whole."""
    tests = {"copy": (*copy_test(tokenizer, words, context, n_rows), False)}
    if naming:
        for ways in (2, 5):
            tests[f"names_{ways}way"] = (*naming_test(tokenizer, ways, context, n_rows), True)
    return {name: functools.partial(scored_right, tokenizer=tokenizer, rows=rows, scored=scored,
                                    whole_rows=whole_rows)
            for name, (rows, scored, whole_rows) in tests.items() if rows}  # none fit: not asked


def naming_episodes(ways, shots, n_rows, seed=0):
    """N-way K-shot naming with images (Frozen's fast binding; scored in eval.py): rows of (support
    scenes, their names, query scene, the query's name). Each row takes `ways` seen colour+shape
    pairs and gives each a held-out fresh name; `shots` one-object scenes of each pair (any size
    and position) in random order, then a new scene of one of the pairs. No image is ever paired
    with a name in training: the LM learned naming from text (naming_document) only."""
    rng = np.random.default_rng((seed, 9, ways, shots))
    pairs = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS]
    one_object = lambda pair: Scene((pair,), pick(rng, SIZES), pick(rng, list(POSITIONS)))
    rows = []
    while len(rows) < n_rows:
        chosen = [pairs[i] for i in rng.permutation(len(pairs))[:ways]]
        names = [fresh_name(rng, held_out=True) for _ in chosen]
        if len(set(names)) < ways:
            continue
        support = [(one_object(chosen[i]), names[i])
                   for i in rng.permutation(np.repeat(np.arange(ways), shots))]
        asked = int(rng.integers(ways))
        rows.append(([scene for scene, _ in support], [name for _, name in support],
                     one_object(chosen[asked]), names[asked]))
    return rows


# ------------------------------------------------------------------------------------------------
# Part 10. Your own data: image-caption tables, any image file.
# ------------------------------------------------------------------------------------------------

def to_rgb(image):
    """A PIL image of any mode (L, LA, P, RGBA, CMYK, I;16, I, F) -> mode RGB.

    16- and 32-bit greys are scaled into 0..255 first (a plain convert would clip them to white),
    and transparent pixels are laid over white (a plain convert would keep whatever colour they
    hide, often black)."""
    if image.mode.startswith("I;16"):
        image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).round().astype(np.uint8))
    elif image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = values.min(), max(values.max(), values.min() + 1e-12)
        image = Image.fromarray(((values - low) / (high - low) * 255).round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image)
    return image.convert("RGB")


def load_image(path, image_size):
    """Any image file -> (3, H, W) uint8 RGB: shorter side resized to image_size, centre crop.

    An image that is missing or does not decode is a ValueError that names the file."""
    try:
        with Image.open(path) as file:
            image = to_rgb(file)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such image file") from None
    except (OSError, ValueError, SyntaxError) as error:  # what PIL raises for a file it cannot read
        raise ValueError(f"{path}: not a readable image ({error})") from None
    scale = image_size / min(image.size)
    image = image.resize((max(image_size, round(image.width * scale)),
                          max(image_size, round(image.height * scale))), Image.BICUBIC)
    left, top = (image.width - image_size) // 2, (image.height - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


# Your own data: a table of image-caption pairs in open_clip's layout (a header, then one pair a
# row: `filepath<TAB>title`), and optionally a plain-text corpus for the LM.

def read_text(path):
    """A UTF-8 text file -> str; a byte that is not UTF-8 is a ValueError naming file and line."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, expected a file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 (byte 0x{data[error.start]:02x})") from None


def read_pairs(path, separator, image_key, caption_key):
    """A CSV/TSV file -> [(line number, image path, caption)]; image paths are relative to it."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=separator)
    header = next(reader, None)
    if not header:
        raise ValueError(f"{path}: empty file, expected a header line with "
                         f"'{image_key}' and '{caption_key}'")
    for key, flag in ((image_key, "--csv-img-key"), (caption_key, "--csv-caption-key")):
        if key not in header:
            raise ValueError(f"{path}, line 1: no column '{key}' in the header {header} "
                             f"(separator {separator!r}; choose the column with {flag})")
    image_column, caption_column = header.index(image_key), header.index(caption_key)
    rows = []
    for row in reader:
        line = reader.line_num
        if not any(field.strip() for field in row):
            continue                                                    # blank lines
        if len(row) != len(header):
            raise ValueError(f"{path}, line {line}: {len(row)} fields, the header has {len(header)}")
        text = " ".join(row[caption_column].split())                   # one line, single spaces
        if not text:
            raise ValueError(f"{path}, line {line}: empty caption")
        rows.append((line, Path(path).parent / row[image_column], text))
    if not rows:
        raise ValueError(f"{path}: no image-caption rows after the header (an empty dataset)")
    return rows


class DecodeRows(torch.utils.data.Dataset):
    """Rows of read_pairs -> decoded images; an error comes back as text naming file and line
    (so that a worker process never prints a traceback)."""

    def __init__(self, table, rows, image_size):
        self.table, self.rows, self.image_size = table, rows, image_size

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        line, image_path, _ = self.rows[i]
        try:
            return load_image(image_path, self.image_size), ""
        except ValueError as error:
            return torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8), \
                f"{self.table}, line {line}: {error}"


def pairs_split(table, rows, image_size, stream=False, workers=2):
    """Decode every image once, in parallel worker processes, into one uint8 tensor in memory
    (3 KB an image at 32 x 32: a million images take 3 GB), so that training reads no file.
    stream=True, for data larger than memory, only checks that every file is there and keeps
    a DecodeRows: training then decodes each batch from disk as it goes (image_batches)."""
    captions, caption_index = index_captions([text for _, _, text in rows])
    decode = DecodeRows(table, rows, image_size)
    if stream:
        for line, image_path, _ in rows:
            if not image_path.is_file():
                raise ValueError(f"{table}, line {line}: {image_path}: no such image file")
        return Split(None, decode, captions, caption_index)
    loader = torch.utils.data.DataLoader(decode, batch_size=64,
                                         num_workers=workers if len(rows) > 256 else 0)
    images = []
    for batch, errors in loader:
        for error in errors:
            if error:
                raise ValueError(error)
        images.append(batch)
    return Split(None, torch.cat(images), captions, caption_index)


def hold_out(table, rows, fraction, seed):
    """A seeded split of a table's rows: (train rows, held-out rows), at least one row in each."""
    if len(rows) < 2:
        raise ValueError(f"{table}: one row cannot be split into training and held-out rows "
                         f"(give more rows, or --val-data)")
    order = np.random.default_rng((seed, 5)).permutation(len(rows))
    n_held_out = max(1, round(fraction * len(rows)))
    return [rows[i] for i in sorted(order[n_held_out:])], [rows[i] for i in sorted(order[:n_held_out])]


# ------------------------------------------------------------------------------------------------
# Part 11. Checkpoints: plain data and tensors only (loading runs no pickled code); resumable loops.
# ------------------------------------------------------------------------------------------------

CHECKPOINT_FORMAT = "minivlp-1"


def save_checkpoint(checkpoint, path):
    """Write atomically: a temporary file, then a rename, so a crash never leaves half a file."""
    temporary = f"{path}.tmp"
    torch.save({"format": CHECKPOINT_FORMAT, **checkpoint}, temporary)
    os.replace(temporary, path)


def load_checkpoint(path):
    """Read a checkpoint with weights_only=True (tensors and plain data; no code is executed)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such checkpoint") from None
    except Exception as error:  # pickled objects, truncated or foreign files
        raise ValueError(f"{path}: not a minivlp checkpoint loadable with weights_only=True "
                         f"({type(error).__name__})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    return checkpoint


class TrainingStopped(Exception):
    """A training loop stopped early: interrupted (state saved) or a non-finite loss."""

    def __init__(self, message, exit_status):
        super().__init__(message)
        self.exit_status = exit_status


class Checkpoints:
    """Keeps a training loop resumable: its full state (models, optimizer, LR schedule, step,
    history) is written to `path` every `every` steps, at the end of the stage, and when a stop
    is requested (train.py asks on Ctrl-C and SIGTERM). No random state is saved: a step's batch
    comes from a generator keyed by the step (keyed_generator).
    `resume_state` is such a state, read back for --resume: the loop continues after its step and
    ends with the same weights as a run never stopped (on CPU, same seed).

    Every loop also checks that its loss is finite, at every logged step and before every save, so
    that a diverged state is never written. With path=None nothing is written (tests, tutorials)."""

    def __init__(self, path=None, every=100, resume_state=None, extra=None):
        self.path, self.every, self.resume_state = path, every, resume_state
        self.extra = extra or {}             # plain data saved alongside (config, tokenizer)
        self.stop_requested = None           # set to a reason (e.g. 'SIGTERM') to stop the loop
        self.in_loop = False
        self.saved = None                    # (stage, step) of the last state written

    def start(self, stage, total_steps, modules, optimizer, schedule, history, scaler):
        """Register a loop's state; when resuming this stage, load it. Returns the first step."""
        self.stage, self.total_steps, self.modules = stage, total_steps, modules
        self.optimizer, self.schedule, self.history = optimizer, schedule, history
        self.scaler = scaler
        self.in_loop = True
        state = self.resume_state
        if state is None or state["stage"] != stage:
            return 0
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        history.update(state["history"])
        self.saved = (stage, state["step"])
        return state["step"] + 1

    def after_step(self, step, loss, logged):
        """Call after every optimizer step; `logged` says the loop read the loss this step."""
        last = step == self.total_steps - 1
        save = self.path is not None and (step % self.every == self.every - 1 or last
                                          or self.stop_requested)
        if (save or logged) and not math.isfinite(loss.item()):
            kept = (f"{self.path} keeps the state of {self.saved[0]}, step {self.saved[1]}"
                    if self.saved else "no state was saved")
            raise TrainingStopped(f"{self.stage}, step {step}: the loss is {loss.item()}; "
                                  f"stopping ({kept})", exit_status=1)
        if save:
            self.save(step)
        if last:
            self.in_loop = False
        elif self.stop_requested:
            raise TrainingStopped(f"{self.stop_requested}: stopped in {self.stage} at step {step}; "
                                  f"{self.path} holds that state (continue with --resume)",
                                  exit_status=130)

    def save(self, step):
        save_checkpoint({**self.extra, "stage": self.stage, "step": step,
                         "modules": {name: m.state_dict() for name, m in self.modules.items()},
                         "optimizer": self.optimizer.state_dict(),
                         "schedule": self.schedule.state_dict(),
                         "scaler": self.scaler.state_dict(),
                         "history": self.history},
                        self.path)
        self.saved = (self.stage, step)


def environment(device, precision="auto"):
    """Where a run's numbers come from, saved beside them: the precision it computed in, the
    thread count, the torch version and the processor (rounding and threads move the results)."""
    if device.type == "cuda":
        processor = torch.cuda.get_device_name(device)
    else:
        cpuinfo = Path("/proc/cpuinfo")
        names = [line.split(":", 1)[1].strip() for line in
                 (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
                 if line.startswith("model name")]
        processor = names[0] if names else platform.processor() or platform.machine()
    return {"precision": str(compute_dtype(device, precision)).removeprefix("torch."),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "processor": processor}


def save_json(data, path):
    """Write JSON atomically, like save_checkpoint."""
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2)
    os.replace(temporary, path)
