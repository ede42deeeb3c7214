"""Where the frozen LM's own answers fail: VQA from the true caption, no image, split by scene.

    python tests/benchmarks/lm_ceiling.py --ckpt out/seed0/lm.pt [--images 300]

Every VQA number of a run is bounded by how well the LM answers from a perfect description (the
"true caption" row of eval.py). This splits that row of the `test` split by the number of
objects in the scene and, for two objects, by which of them the question is about (first or
second in the caption; `what shape is the red object?` and `is there a red square?` name their
object by colour). A low number for the second object and not the first says the LM copies an
attribute from the wrong object: it has not learned to bind a colour to its shape.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from eval import answer, load_lm, verdict  # noqa: E402
from minivlp import WorldConfig, caption, load_checkpoint, make_eval_splits, questions  # noqa: E402


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="an lm.pt or minivlp.pt of the shapes world")
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.ckpt)
    tokenizer, lm, _ = load_lm(checkpoint, torch.device("cpu"))
    config = checkpoint["config"]
    scenes = make_eval_splits(WorldConfig(**config["world"]), config["seed"])["test"].scenes
    rng = np.random.default_rng(0)
    asked = [(scene, q, a, kind) for scene in scenes[:args.images]
             for q, a, kind in questions(scene, rng) if kind in ("colour", "shape", "exists")]
    bos = lm.token_emb.weight[tokenizer.bos_id][None]                  # (1, C)
    contexts = [torch.cat([bos, lm.token_emb(torch.tensor(tokenizer.encode(caption(scene))))])
                for scene, *_ in asked]                                # '<bos> TRUE CAPTION'
    given = answer(lm, tokenizer, contexts, [q for _, q, _, _ in asked], 16)
    right = {}
    for (scene, q, a, kind), g in zip(asked, given):
        right.setdefault((kind, which_object(scene, q)), []).append(verdict(g) == verdict(a))
    print(f"seed {config['seed']}: answers from the true caption, {args.images} test scenes")
    for (kind, where), hits in sorted(right.items()):
        print(f"  {kind:<7} {where:<11} {np.mean(hits):.3f}  ({len(hits)} questions)")


if __name__ == "__main__":
    main()
