"""Where the frozen LM's own answers fail: VQA from the true caption, no image, split by scene.

    python tests/benchmarks/lm_ceiling.py --ckpt out/seed0/lm.pt [--images 300]

How well the LM answers from a perfect description (the "true caption" row of eval.py) is, for
colour, shape and `exists`, about the most any VQA setting of a run reaches. This splits that row
of the `test` split by the number of objects in the scene and, for two objects, by which of them
the question is about (first or second in the caption; `what shape is the red object?` and `is
there a red square?` name their object by colour). A low number for the second object and not the
first says the LM copies an attribute from the wrong object: it has not learned to bind a colour to
its shape.

Then it shows why, on one two-object scene asked about each of its objects in turn: where each
attention head looks from the position that predicts the answer's first word (a head that reads
the question would weigh the positions differently for the two questions), and where the first
layer looks from the `q` that opens the question line, before any question word is read.
"""

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from eval import answer, load_lm, verdict  # noqa: E402
from minivlp import (Scene, WorldConfig, caption, load_checkpoint, make_eval_splits,  # noqa: E402
                     question_prompt, questions)


def which_object(scene, question):
    """'one object', or 'first' / 'second': the object of a two-object scene the question names."""
    if len(scene.objects) == 1:
        return "one object"
    words = question.rstrip("?").split()
    colour_named = words[-1] == "object"                    # 'what shape is the red object?'
    named = words[-2] if colour_named else words[-1]         # 'what colour is the circle?'
    index = 0 if colour_named else 1                         # (colour, shape)
    if words[:2] == ["is", "there"]:                         # 'is there a red square?'
        return "first" if tuple(words[-2:]) == scene.objects[0] else \
            "second" if tuple(words[-2:]) == scene.objects[1] else "neither"
    return "first" if scene.objects[0][index] == named else "second"


def true_caption(lm, tokenizer, scene):
    """The (1 + T, C) context '<bos> TRUE CAPTION'."""
    return lm.token_emb(torch.tensor([tokenizer.bos_id] + tokenizer.encode(caption(scene))))


@torch.no_grad()
def answers_by_object(lm, tokenizer, scenes):
    """{(kind, which object): [True where the answer was right, one entry a question]} for the
    colour, shape and `exists` questions about the scenes, answered from each true caption."""
    rng = np.random.default_rng(0)
    asked = [(scene, q, a, kind) for scene in scenes
             for q, a, kind in questions(scene, rng) if kind in ("colour", "shape", "exists")]
    contexts = [true_caption(lm, tokenizer, scene) for scene, *_ in asked]
    given = answer(lm, tokenizer, contexts, [q for _, q, _, _ in asked], 16)
    right = {}
    for (scene, q, a, kind), g in zip(asked, given):
        right.setdefault((kind, which_object(scene, q)), []).append(verdict(g) == verdict(a))
    return right


@torch.no_grad()
def answer_attention(lm, tokenizer, text):
    """Per layer, (heads, T) attention weights of the last position of '<bos> text' (the one that
    predicts the next word), and the T token strings. The weights are recomputed from each
    attention layer's input as CausalSelfAttention computes them."""
    inputs = []
    hooks = [block.attention.register_forward_hook(lambda layer, args, out: inputs.append(args[0]))
             for block in lm.blocks]
    ids = [tokenizer.bos_id] + tokenizer.encode(text)
    lm(torch.tensor([ids]))
    for hook in hooks:
        hook.remove()
    weights = []
    for block, x in zip(lm.blocks, inputs):                                 # x: (1, T, C)
        attention = block.attention
        q, k, _ = attention.mixed_qkv(x)                                    # 2 x (1, h, T, d)
        q, k = q[0, :, -1:], k[0]                                           # (h, 1, d), (h, T, d)
        weights.append((q @ k.transpose(1, 2) / math.sqrt(k.shape[-1])).softmax(-1)[:, 0])  # (h, T)
    return weights, ["<bos>"] + [tokenizer.decode([i]) for i in ids[1:]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="an lm.pt or minivlp.pt of the shapes world")
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.ckpt)
    tokenizer, lm, _ = load_lm(checkpoint, torch.device("cpu"))
    config = checkpoint["config"]
    scenes = make_eval_splits(WorldConfig(**config["world"]), config["seed"])["test"].scenes
    print(f"seed {config['seed']}: answers from the true caption, {args.images} test scenes")
    right = answers_by_object(lm, tokenizer, scenes[:args.images])
    for (kind, where), hits in sorted(right.items()):
        print(f"  {kind:<7} {where:<11} {np.mean(hits):.3f}  ({len(hits)} questions)")

    scene = Scene((("green", "triangle"), ("red", "circle")), "", "above")
    for shape in ("triangle", "circle"):
        question = f"what colour is the {shape}?"
        said = answer(lm, tokenizer, [true_caption(lm, tokenizer, scene)], [question], 4)[0]
        print(f"\n'{caption(scene)} / q: {question} a:' -> '{said}'; from ':' each head reads:")
        show_attention(*answer_attention(lm, tokenizer, caption(scene) + question_prompt(question)))
    print(f"\n'{caption(scene)} / q': from 'q' each head of the first layer reads:")
    weights, words = answer_attention(lm, tokenizer, f"{caption(scene)}\nq")
    show_attention(weights[:1], words)


def show_attention(weights, words):
    """Each head's two most-read positions, from answer_attention's output."""
    for layer, heads in enumerate(weights):
        for head, row in enumerate(heads):
            top = row.topk(2)
            print(f"  layer {layer} head {head}: " + ", ".join(
                f"{words[j]!r} (position {j}) {float(w):.2f}" for w, j in zip(top.values, top.indices)))


if __name__ == "__main__":
    main()
