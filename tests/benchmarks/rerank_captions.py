"""Captions re-ranked by the contrastive head: the frozen LM proposes, the image's vector v chooses.

    python tests/benchmarks/rerank_captions.py --ckpt out/seed0/minivlp.pt [--samples 8]

The captions that train.py and eval.py score are the frozen LM's greedy continuation of the image's
prefix (Frozen). Here the LM also samples `--samples` more at temperature 1, and of these
candidates the one whose text embedding t has the highest cosine with the image embedding v (the
similarity of §4.2) is kept: the trunk's two heads check each other. Prints, for `test` and
`compositional`, the caption exact match of the greedy caption, of any candidate (the most the
choice could reach), and of the chosen one. The checkpoint is only read: nothing is trained.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from eval import describe, load_models, parse_caption  # noqa: E402
from minivlp import embed_images, load_checkpoint, make_eval_splits  # noqa: E402


def rerank(candidates, image_emb, embed_texts):
    """For each of N images, the candidate caption whose text embedding is nearest to its own.

    candidates: N lists of caption strings; image_emb: (N, C); embed_texts: M texts -> (M, C).
    Each distinct caption is embedded once."""
    texts = sorted({text for options in candidates for text in options})
    row_of = {text: row for row, text in enumerate(texts)}
    text_emb = F.normalize(embed_texts(texts).float(), dim=1)          # (M, C)
    image_emb = F.normalize(image_emb.float(), dim=1)                  # (N, C)
    chosen = []
    for options, v in zip(candidates, image_emb):
        cosines = text_emb[[row_of[text] for text in options]] @ v    # (candidates,)
        chosen.append(options[cosines.argmax().item()])
    return chosen


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True,
                        help="a minivlp.pt of a toy world, trained with both heads (the default)")
    parser.add_argument("--samples", type=int, default=8,
                        help="captions sampled an image, beside the greedy one (default: 8)")
    args = parser.parse_args()
    device = torch.device("cpu")
    tower, embedder, world_cfg, config = load_models(load_checkpoint(args.ckpt), device)
    splits = make_eval_splits(world_cfg, config["seed"])
    print(f"{args.ckpt}: caption exact match of the greedy caption, of any of the "
          f"{1 + args.samples} candidates, and of the one v chooses")
    for name in ("test", "compositional"):
        split = splits[name]
        image_emb, prefixes = embed_images(embedder, split.images, device)  # (N, C), (N, K, C)
        greedy = describe(tower.lm, tower.tokenizer, prefixes)
        sampled = [describe(tower.lm, tower.tokenizer, prefixes, sample_temperature=1.0, seed=seed)
                   for seed in range(1, args.samples + 1)]
        candidates = [list(options) for options in zip(greedy, *sampled)]
        chosen = rerank(candidates, image_emb, tower)
        exact = lambda captions: np.mean([parse_caption(text) == scene
                                          for text, scene in zip(captions, split.scenes)])
        reachable = np.mean([any(parse_caption(text) == scene for text in options)
                             for options, scene in zip(candidates, split.scenes)])
        print(f"{name:<14} greedy {exact(greedy):.3f}   any candidate {reachable:.3f}   "
              f"chosen by v {exact(chosen):.3f}")


if __name__ == "__main__":
    main()
