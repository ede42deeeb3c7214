"""Which lookup can a transformer of the default LM's size learn: the word after a match, or before?

    python tests/benchmarks/lookup_direction.py --ckpt out/seed0/lm.pt [--steps 1000]

`what colour is the circle?` about `a red circle above a blue square` asks the LM, at the `:`
that ends the question, to carry `circle` there from the question, find it in the caption and
read the word *before* it. An induction head, the circuit small transformers are known to learn
for copying, does less: it reads the word *after* an earlier copy of the word it stands on. So
this trains models on the answer alone (the loss is on the answer token, nothing else), for
two-object scenes, in four forms:

  question    'a red circle above a blue square \n q: what colour is the circle? a:' -> ' red'
  chain       '... \n q: what colour is the circle? a: the circle is' -> ' red'  (minivlp.chained)
  before      'a red circle above a blue square \n q: circle' -> ' red'
  after       'a circle red above a square blue \n q: circle' -> ' red'   (an induction)

and five models of the default LM's sizes (width, depth, heads, context; --ckpt gives them and
the tokenizer): minivlp's LanguageModel as it is initialised (every weight N(0, 0.02), GPT-2's
rule), the same with its token and position embeddings drawn N(0, 1), the same with its linear
weights drawn N(0, 1/fan-in), the same with q, k and v mixed over 4 taps (the reading recipe),
and torch's own pre-LN nn.TransformerEncoder with torch's default initialisation (a reference
written by others). It prints each model's accuracy on 500 held-out scenes every 200 steps; 0.5
is picking one of the caption's two colours at random.
"""

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from eval import load_lm  # noqa: E402
from minivlp import (LanguageModel, adamw, caption, load_checkpoint, question_prompt,  # noqa: E402
                     random_scene, warmup_cosine)


def lookup(rng, form):
    """(prompt, answer) in one of the three forms, about a random scene of two objects of
    different shapes."""
    scene = random_scene(rng, held_out=None)
    while len(scene.objects) < 2 or scene.objects[0][1] == scene.objects[1][1]:
        scene = random_scene(rng, held_out=None)
    text = caption(scene)
    if form == "after":                                     # 'a circle red above a square blue'
        for colour, shape in scene.objects:
            text = text.replace(f"{colour} {shape}", f"{shape} {colour}")
    colour, shape = scene.objects[int(rng.integers(2))]
    if form == "question":
        return text + question_prompt(f"what colour is the {shape}?"), f" {colour}"
    if form == "chain":
        return (text + question_prompt(f"what colour is the {shape}?") + f" the {shape} is",
                f" {colour}")
    return f"{text}\nq: {shape}", f" {colour}"


def batch(tokenizer, rng, form, n):
    """(n, T) ids '<bos> prompt answer', right-padded with <eos>, and each row's answer position."""
    rows = [[tokenizer.bos_id] + tokenizer.encode(prompt) + tokenizer.encode(answer)
            for prompt, answer in (lookup(rng, form) for _ in range(n))]
    width = max(map(len, rows))
    ids = torch.tensor([row + [tokenizer.eos_id] * (width - len(row)) for row in rows])
    return ids, torch.tensor([len(row) - 1 for row in rows])


class TorchReference(nn.Module):
    """Token + position embeddings, torch's pre-LN encoder layers under a causal mask, final
    LayerNorm, head tied to the token embedding: LanguageModel's design from torch's parts."""

    def __init__(self, cfg):
        super().__init__()
        self.token_emb = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_emb = nn.Embedding(cfg.context, cfg.width)
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(cfg.width)

    def forward(self, ids):
        T = ids.shape[1]
        x = self.token_emb(ids) + self.pos_emb(torch.arange(T))
        mask = nn.Transformer.generate_square_subsequent_mask(T)
        return self.ln_final(self.blocks(x, mask=mask, is_causal=True))

    def logits(self, hidden):
        return hidden @ self.token_emb.weight.T


def with_unit_embeddings(cfg):
    """LanguageModel with its token and position embeddings redrawn N(0, 1), torch's default."""
    lm = LanguageModel(cfg)
    nn.init.normal_(lm.token_emb.weight, std=1.0)
    nn.init.normal_(lm.pos_emb.weight, std=1.0)
    return lm


def with_fan_in_weights(cfg):
    """LanguageModel with its linear weights redrawn N(0, 1/fan-in): for width 128, std 0.088."""
    lm = LanguageModel(cfg)
    for module in lm.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=module.in_features ** -0.5)
    return lm


MODELS = {"LanguageModel": LanguageModel, "LanguageModel, embeddings N(0, 1)": with_unit_embeddings,
          "LanguageModel, weights N(0, 1/fan-in)": with_fan_in_weights,
          "LanguageModel, 4 taps": lambda cfg: LanguageModel(replace(cfg, taps=4)),
          "torch TransformerEncoder": TorchReference}


def answer_logits(model, ids, at):
    """(B, V): each row's logits at the position before its answer, the one that predicts it."""
    return model.logits(model(ids[:, :-1]))[torch.arange(len(ids)), at - 1]


def train(model, tokenizer, form, cfg, args):
    """Answer-only cross-entropy, AdamW as in pretraining; the held-out accuracy every 200 steps."""
    rng = np.random.default_rng(1)
    held_ids, held_at = batch(tokenizer, np.random.default_rng(2), form, 500)
    held_answers = held_ids[torch.arange(len(held_ids)), held_at]             # (500,)
    optimizer = adamw(model.parameters(), args.lr, cfg.weight_decay, torch.device("cpu"))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                 warmup_cosine(cfg.warmup_steps, args.steps))
    accuracies = []
    for step in range(1, args.steps + 1):
        ids, at = batch(tokenizer, rng, form, args.batch_size)
        loss = F.cross_entropy(answer_logits(model, ids, at), ids[torch.arange(len(ids)), at])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        schedule.step()
        if step % 200 == 0:
            with torch.no_grad():
                guess = answer_logits(model, held_ids, held_at).argmax(-1)  # (500,)
            accuracies.append(float((guess == held_answers).float().mean()))
    return accuracies


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="an lm.pt or minivlp.pt of the shapes world")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    tokenizer, _, cfg = load_lm(load_checkpoint(args.ckpt), torch.device("cpu"))
    print(f"held-out accuracy every 200 steps, {args.steps} steps of {args.batch_size}, "
          f"lr {args.lr}")
    for form in ("question", "chain", "before", "after"):
        for name, build in MODELS.items():
            torch.manual_seed(0)
            accuracies = train(build(cfg).train(), tokenizer, form, cfg, args)
            print(f"  {form:<8} {name:<34} " + " ".join(f"{a:.3f}" for a in accuracies), flush=True)


if __name__ == "__main__":
    main()
