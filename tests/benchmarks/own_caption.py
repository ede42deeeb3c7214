"""Describe, then answer: with the image's prefix in the row, or from the LM's own caption alone.

    python tests/benchmarks/own_caption.py --ckpt out/seed*/minivlp.pt [--json FILE]

eval.py's 'own caption' setting asks the question after '<bos> CAPTION', the caption the LM
wrote from the image, read as text. Here the same questions are also asked after
'<bos> [image] \\n CAPTION', with the image's prefix still in the row.
Two-object scenes among the first 500 `test` images (as eval.py), each question of
minivlp.object_questions, scored by the answer's verdict; captions are cut to 24 tokens (a
caption that runs on would leave no room to answer).
Prints each checkpoint's accuracies by object; --json writes {seed: {setting: {kind: accuracy}}}
(tutorials/runs/reading/own_caption.json holds results.md's, one for each LM).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from eval import answer, describe, load_models, own_caption_context, verdict  # noqa: E402
from minivlp import (embed_images, image_context, load_checkpoint,  # noqa: E402
                     make_eval_splits, object_questions)


@torch.no_grad()
def measure(path):
    """{setting: {kind: accuracy}} for one minivlp.pt of the shapes world."""
    checkpoint = load_checkpoint(path)
    tower, embedder, world, config = load_models(checkpoint, torch.device("cpu"))
    if world.dataset != "shapes" or config.get("data"):
        raise ValueError(f"{path}: not a run of the built-in shapes world")
    lm, tokenizer = tower.lm, tower.tokenizer
    split = make_eval_splits(world, config["seed"])["test"]
    rows = [i for i, scene in enumerate(split.scenes[:500]) if object_questions(scene)]
    _, prefixes = embed_images(embedder, split.images[rows], torch.device("cpu"),
                               precision="float32")
    captions = describe(lm, tokenizer, prefixes)
    alone = own_caption_context(lm, tokenizer, captions, 24)                # N (1 + T, C)
    with_image = [torch.cat([row, lm.token_emb(torch.tensor(tokenizer.encode(f"\n{text}")[:24]))])
                  for row, text in zip(image_context(lm, tokenizer, prefixes), captions)]
    # N (1 + K + 1 + T, C): '<bos> [image] \n CAPTION'
    contexts = {"image + own caption": with_image, "own caption alone": alone}
    asked = [(i, question, reference, kind) for i, row in enumerate(rows)
             for question, reference, kind in object_questions(split.scenes[row])]
    results = {}
    for setting, context in contexts.items():
        given = answer(lm, tokenizer, [context[i] for i, *_ in asked], [q for _, q, _, _ in asked], 16)
        right = {}
        for (_, _, reference, kind), text in zip(asked, given):
            right.setdefault(kind, []).append(verdict(text) == verdict(reference))
        results[setting] = {kind: float(np.mean(marks)) for kind, marks in right.items()}
    return str(config["seed"]), results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", nargs="+", required=True, help="minivlp.pt files of shapes runs")
    parser.add_argument("--json", help="write {seed: {setting: {kind: accuracy}}} to this file")
    args = parser.parse_args()
    found = {}
    for path in args.ckpt:
        seed, found[seed] = measure(path)
        for setting, accuracy in found[seed].items():
            print(f"seed {seed} ({path}), {setting}: "
                  + ", ".join(f"{kind} {value:.2f}" for kind, value in accuracy.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=1) + "\n")


if __name__ == "__main__":
    main()
