"""Where captions of new colour+shape pairs break: per held-out pair, the greedy caption and the
one v re-ranks to, and which word the greedy caption got wrong.

    python tests/benchmarks/compositional_pairs.py --ckpt out/seed*/minivlp.pt [--json F]

For each checkpoint (one run of the shapes world, both heads) the `compositional` split is
captioned greedily and re-ranked by v among the greedy caption and 8 samples (eval.py
--rerank), one row per held-out pair and number of objects in the scene. An image counts for
each held-out pair it shows. A wrong greedy caption is put in the first class that fits: the
pair's shape given as the other object's shape, or as another shape; its colour wrong; the other
object, the size, position or relation wrong, or the two objects swapped; no caption the grammar
can parse. Counts add up
over the checkpoints. Nothing is trained.
"""

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from eval import (RERANK_SAMPLES, caption_candidates, choose_by_v, load_models,  # noqa: E402
                  parse_caption)
from minivlp import HELD_OUT_PAIRS, embed_images, load_checkpoint, make_eval_splits  # noqa: E402

MISSES = ("other's shape", "shape", "colour", "rest", "no parse")


def miss(said, scene, pair):
    """Which word of the held-out pair's caption went wrong: one of MISSES."""
    if said is None:
        return "no parse"
    if said.objects == scene.objects[::-1]:            # both objects right, in each other's place
        return "rest"
    if len(said.objects) == len(scene.objects):
        for (colour, shape), (said_colour, said_shape) in zip(scene.objects, said.objects):
            if (colour, shape) == pair:
                if said_shape != shape:
                    others = [other for _, other in scene.objects if other != shape]
                    return "other's shape" if said_shape in others else "shape"
                if said_colour != colour:
                    return "colour"
    return "rest"


def count(checkpoints, samples):
    """{(colour, shape, objects): Counter of images, greedy, reranked and each miss} over the
    checkpoints."""
    counts = defaultdict(Counter)
    for path in checkpoints:
        tower, embedder, world_cfg, config = load_models(load_checkpoint(path), torch.device("cpu"))
        if world_cfg.dataset != "shapes" or config["objective"] != "both":
            sys.exit(f"compositional_pairs.py: {path}: a run of the shapes world with both heads "
                     f"expected, not --dataset {world_cfg.dataset} --objective {config['objective']}")
        split = make_eval_splits(world_cfg, config["seed"])["compositional"]
        image_emb, prefixes = embed_images(embedder, split.images,
                                           torch.device("cpu"))          # (N, C), (N, K, C)
        candidates = caption_candidates(tower.lm, tower.tokenizer, prefixes, samples)
        chosen = choose_by_v(candidates, image_emb, tower)
        for scene, (first, *_), best in zip(split.scenes, candidates, chosen):
            said = parse_caption(first)
            for pair in sorted(set(scene.objects) & HELD_OUT_PAIRS):
                row = counts[(*pair, len(scene.objects))]
                row["images"] += 1
                row["greedy"] += said == scene
                row["reranked"] += parse_caption(best) == scene
                if said != scene:
                    row[miss(said, scene, pair)] += 1
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", nargs="+", required=True, help="minivlp.pt files of shapes-world "
                        "runs with both heads (e.g. the five seeds of the default run)")
    parser.add_argument("--samples", type=int, default=RERANK_SAMPLES,
                        help="captions sampled per image for the re-ranking (default: %(default)s)")
    parser.add_argument("--json", help="also write the counts here")
    args = parser.parse_args()
    counts = count(args.ckpt, args.samples)
    print(f"{len(args.ckpt)} checkpoint(s); greedy misses by the first wrong word")
    line = lambda label, c: (f"{label:<24}{c['images']:>7}{c['greedy'] / c['images']:>8.3f}"
                             f"{c['reranked'] / c['images']:>11.3f}" +
                             "".join(f"{c[name]:>15}" for name in MISSES))
    print(f"{'pair, objects':<24}{'images':>7}{'greedy':>8}{'re-ranked':>11}" +
          "".join(f"{name:>15}" for name in MISSES))
    for colour, shape, objects in sorted(counts):
        print(line(f"{colour} {shape}, {objects}", counts[(colour, shape, objects)]))
    for objects in (1, 2):
        print(line(f"all, {objects}", sum((c for key, c in counts.items() if key[2] == objects),
                                          Counter())))
    if args.json:
        Path(args.json).write_text(json.dumps({f"{c} {s}, {n}": dict(row)
                                               for (c, s, n), row in counts.items()}, indent=1))


if __name__ == "__main__":
    main()
