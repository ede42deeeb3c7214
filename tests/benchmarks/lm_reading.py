"""Does the frozen LM read its context? Copying, fresh names and lookups by object, per seed.

    python tests/benchmarks/lm_reading.py --ckpt out/seed*/lm.pt [--rows 200] [--json FILE]

For each checkpoint of the shapes world (an lm.pt or minivlp.pt), from text alone:
  copy          a random span of the world's words, repeated after a newline: the share of the
                repeat's tokens (after its first) that the LM predicts
  names 2/5-way 'a red circle is a kipo \n a blue square is a zuve \n a red circle is a' -> kipo:
                the share of rows whose name, never seen in training, is written whole
  by object     from the true caption of a two-object `test` scene, minivlp.object_questions:
                the colour and the shape of the first and of the second object, `exists` about
                each, and about an absent combination (the first object's shape in the second's
                colour); an LM that answers by position fails one of each pair
Then the reading tests as pretraining went, every 100 steps (the history in the checkpoint): the
phase change in which copying appears. Last, the mean (min-max) over the checkpoints; --json
writes every seed's numbers to a file (tutorials/runs/reading/default.json and recipe.json hold
results.md's).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from eval import OBJECT_KINDS, answer, load_lm, verdict  # noqa: E402
from minivlp import (WorldConfig, caption, load_checkpoint, make_corpus,  # noqa: E402
                     make_eval_splits, object_questions, reading_tests, text_words)


@torch.no_grad()
def answers_by_object(lm, tokenizer, scenes):
    """{kind: accuracy} over object_questions of the scenes, each asked after its true caption."""
    asked = [(scene, q, a, kind) for scene in scenes for q, a, kind in object_questions(scene)]
    contexts = [lm.token_emb(torch.tensor([tokenizer.bos_id] + tokenizer.encode(caption(scene))))
                for scene, *_ in asked]
    given = answer(lm, tokenizer, contexts, [q for _, q, _, _ in asked], 16)
    right = {}
    for (_, _, a, kind), g in zip(asked, given):
        right.setdefault(kind, []).append(verdict(g) == verdict(a))
    return {kind: float(np.mean(right[kind])) for kind in OBJECT_KINDS}


def measure(path, rows):
    """The reading tests and lookups by object of one checkpoint, and its pretraining history."""
    checkpoint = load_checkpoint(path)
    tokenizer, lm, _ = load_lm(checkpoint, torch.device("cpu"))
    config = checkpoint["config"]
    world = WorldConfig(**config["world"])
    if world.dataset != "shapes" or config.get("text") or config.get("data"):
        raise ValueError(f"{path}: not a run of the built-in shapes world")
    words = text_words(make_corpus(world.corpus_documents, config["seed"]))
    tests = reading_tests(tokenizer, lm.context, words, naming=True, n_rows=rows)
    results = {name: test(lm) for name, test in tests.items()}
    scenes = [scene for scene in make_eval_splits(world, config["seed"])["test"].scenes
              if object_questions(scene)][:rows]
    results.update(answers_by_object(lm, tokenizer, scenes))
    return config["seed"], results, checkpoint["history"]["lm"].get("reading", [])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", nargs="+", required=True,
                        help="lm.pt or minivlp.pt files of shapes-world runs, one a seed")
    parser.add_argument("--rows", type=int, default=200,
                        help="rows of each reading test, and two-object scenes asked (default 200)")
    parser.add_argument("--json", help="write {seed: results} to this file")
    args = parser.parse_args()
    measured, by_seed = [], {}
    for path in args.ckpt:
        seed, results, history = measure(path, args.rows)
        measured.append(results)
        by_seed[seed] = results
        print(f"seed {seed} ({path}): " + ", ".join(f"{k} {v:.3f}" for k, v in results.items()))
        if history:
            curve = "; ".join(f"{step} " + " ".join(f"{v:.2f}" for v in tests.values())
                              for step, tests in history)
            print(f"  while pretraining: {curve}  ({', '.join(history[0][1])})")
    print(f"\nmean (min-max) over {len(measured)} checkpoint(s):")
    for key in measured[0]:
        values = [results[key] for results in measured]
        print(f"  {key:<15} {np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps(by_seed, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
