"""How closely the visual prefix spells its caption: the cosine of prefix vector j to the LM's
embedding of the caption's token j, by position, and the nearest token of each vector.

    python tests/benchmarks/prefix_spelling.py --ckpt out/seed*/minivlp.pt [--images 300]

For each checkpoint (a shapes-world run with the prefix head), over the first `--images`
two-object `test` images: the mean cosine at each position the caption fills (spelling_loss pulls
each towards 1), the share of vectors whose nearest token embedding (by cosine) is the caption's
token, and three images' captions beside what their K vectors are nearest to, the positions after
the caption's newline included (no loss spells those). Nothing is trained.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from eval import load_models  # noqa: E402
from minivlp import (IGNORE, caption, caption_tokens, embed_images, load_checkpoint,  # noqa: E402
                     make_eval_splits, object_questions)


@torch.no_grad()
def measure(path, n_images):
    """(mean cosine by position, nearest-token accuracy by position, three examples)."""
    tower, embedder, world, config = load_models(load_checkpoint(path), torch.device("cpu"))
    lm, tokenizer = tower.lm, tower.tokenizer
    split = make_eval_splits(world, config["seed"])["test"]
    rows = [i for i, scene in enumerate(split.scenes) if object_questions(scene)][:n_images]
    _, prefix = embed_images(embedder, split.images[rows], torch.device("cpu"),
                             precision="float32")                 # (N, K, C)
    K = prefix.shape[1]
    tokens = caption_tokens(tokenizer, [caption(split.scenes[i]) for i in rows], lm.context)
    start = len(tokenizer.encode("\n"))
    spelled = tokens[:, start:start + K]                              # (N, J): caption, newline
    words = F.normalize(lm.token_emb.weight, dim=-1)                  # (V, C)
    similarity = F.normalize(prefix.float(), dim=-1) @ words.T        # (N, K, V)
    filled = spelled != IGNORE
    cosine = similarity[:, :spelled.shape[1]].gather(-1, spelled.clamp(min=0)[..., None])[..., 0]
    nearest = similarity.argmax(-1)                                   # (N, K)
    hit = nearest[:, :spelled.shape[1]] == spelled
    by_position = lambda x: [x[:, j][filled[:, j]].float().mean().item()
                             for j in range(spelled.shape[1]) if filled[:, j].any()]
    examples = [(caption(split.scenes[rows[b]]),
                 " | ".join(repr(tokenizer.decode([t]))[1:-1] for t in nearest[b].tolist()))
                for b in range(3)]
    return by_position(cosine), by_position(hit), examples


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", nargs="+", required=True, help="minivlp.pt files")
    parser.add_argument("--images", type=int, default=300, help="two-object test images")
    args = parser.parse_args()
    for path in args.ckpt:
        cosine, hit, examples = measure(path, args.images)
        print(f"{path}: cosine by position {' '.join(f'{c:.2f}' for c in cosine)} "
              f"(min {min(cosine):.2f})")
        print(f"  nearest token right {' '.join(f'{h:.2f}' for h in hit)} (mean {np.mean(hit):.2f})")
        for text, spelled in examples:
            print(f"  {text}\n    -> {spelled}")


if __name__ == "__main__":
    main()
