"""Few-shot naming with images through the frozen LM (Frozen's fast binding), and where it breaks.

    python tests/benchmarks/few_shot_naming.py --ckpt out/seed*/minivlp.pt [--rows 200]
                                               [--show] [--json FILE]

For each minivlp.pt of the shapes world, eval.py's naming_metrics (the binding_* keys of
metrics.json): N-way K-shot naming, '<bos> [image] is a dax \n [image] is a kep \n [image] is a'
-> 'dax', the names never in any training text and never with an image; beside it the images'
descriptions ('a red circle', the LM's ceiling), the query image left out (blind), and the names
shuffled among the pairs (scored against the names before shuffling).

Then, on the 2-way 1-shot episodes, where it breaks:
  mixed            the support described and the query an image, and the other way round: does
                   the LM match an image with an image, or with a description?
  made up          the share of answers that are none of the support's names, images and text
  by what is shared  the episodes whose two pairs share their shape, their colour, or neither
                   (their share of the episodes, and the accuracy on them, images and descriptions)
  whole lines      each scene as its whole caption ('a small red circle on the left', text) or
                   its prefix's first 6 vectors (where the whole caption is spelled): the name
                   then stands 8 tokens after the colour, not 3
--show prints two prompts of the first checkpoint (pairs that share nothing, pairs that share
their shape) as the LM reads them, the name it gives, and where the position that writes the
name's first letter attends, per layer and head.
Last, the mean (min-max) over the checkpoints; --json writes every seed's numbers to a file
(tutorials/runs/naming/default.json holds results.md's).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from eval import (continue_lines, load_models, naming_lines, naming_metrics,  # noqa: E402
                  naming_row, nearest_tokens)
from minivlp import (caption, embed_images, image_context, load_checkpoint,  # noqa: E402
                     naming_episodes, render)


def whole_lines(lm, tokenizer, embedder, episodes, image_size):
    """Per episode, its scenes as whole captions and as their prefixes' first 6 vectors."""
    rng = np.random.default_rng((0, 12))
    scenes = [scene for support, _, query, _ in episodes for scene in support + [query]]
    images = torch.from_numpy(np.stack([render(scene, image_size, rng) for scene in scenes]))
    _, prefixes = embed_images(embedder, images.permute(0, 3, 1, 2), torch.device("cpu"),
                               precision="float32")
    seen = image_context(lm, tokenizer, prefixes)[:, 1:7]                       # (M, 6, C)
    said = [lm.token_emb(torch.tensor(tokenizer.encode(caption(scene)))) for scene in scenes]
    per_episode = len(episodes[0][0]) + 1
    return ([seen[i:i + per_episode] for i in range(0, len(seen), per_episode)],
            [said[i:i + per_episode] for i in range(0, len(said), per_episode)])


def shared(episode):
    """What the two pairs of a 2-way episode share: 'shape', 'colour' or 'neither'."""
    (c1, s1), (c2, s2) = sorted({scene.objects[0] for scene in episode[0]})
    return "shape" if s1 == s2 else "colour" if c1 == c2 else "neither"


def where_it_breaks(lm, tokenizer, embedder, image_size, n_rows):
    """{setting: accuracy} on the 2-way 1-shot episodes of naming_metrics."""
    episodes = naming_episodes(2, 1, n_rows)
    seen, said = naming_lines(lm, tokenizer, embedder, episodes, image_size, torch.device("cpu"),
                              "float32")
    whole_seen, whole_said = whole_lines(lm, tokenizer, embedder, episodes, image_size)
    names = [episode[1] for episode in episodes]
    truth = [episode[3] for episode in episodes]
    lines = {"image": seen, "text": said, "support text, query image":
             [torch.cat([t[:-1], s[-1:]]) for s, t in zip(seen, said)],
             "support image, query text": [torch.cat([s[:-1], t[-1:]]) for s, t in zip(seen, said)],
             "whole prefix (6)": whole_seen, "whole caption": whole_said}
    prompt = [tokenizer.encode(" is a")] * len(episodes)
    said = {setting: continue_lines(lm, tokenizer, [naming_row(lm, tokenizer, rows[:-1], n, rows[-1])
                                                    for rows, n in zip(scenes, names)], prompt, 8)
            for setting, scenes in lines.items()}
    right = {setting: [given == name for given, name in zip(texts, truth)]
             for setting, texts in said.items()}
    results = {setting: float(np.mean(r)) for setting, r in right.items()}
    for setting in ("image", "text"):  # a miss that names no support image: a name made up
        results[f"{setting}, made up"] = float(np.mean([given not in n for given, n
                                                         in zip(said[setting], names)]))
    for part in ("shape", "colour", "neither"):
        rows = [i for i, episode in enumerate(episodes) if shared(episode) == part]
        for setting in ("image", "text"):
            results[f"{setting}, share {part}"] = float(np.mean([right[setting][i] for i in rows]))
        results[f"episodes sharing {part}"] = len(rows) / len(episodes)
    return results


@torch.no_grad()
def show(lm, tokenizer, embedder, image_size, episode):
    """One 2-way 1-shot prompt as the LM reads it, its answer, and where the position that
    writes the name's first letter attends: the share of each layer's and head's attention on
    each piece of the row."""
    episodes = [episode]
    support, names, query, name = episode
    seen = naming_lines(lm, tokenizer, embedder, episodes, image_size, torch.device("cpu"),
                        "float32")[0][0]                                        # (3, 3, C)
    words = [f"[image: {tokenizer.decode(ids.tolist())}]" for ids in nearest_tokens(lm, seen)]
    # the position that writes the name's first letter: after ' is a' and the name's space token
    name_ids = tokenizer.encode(f" {name}")
    prompt = tokenizer.encode(" is a") + (name_ids[:1] if tokenizer.decode(name_ids[:1]) == " "
                                          else [])
    row = torch.cat([naming_row(lm, tokenizer, seen[:-1], names, seen[-1]),
                     lm.token_emb(torch.tensor(prompt))])                       # (T, C)
    is_a = len(tokenizer.encode(" is a"))
    pieces = [("<bos>", 1)]
    for i, n in enumerate(names):
        pieces += [(f"image {i + 1}", 3), ("is a", is_a), (n, len(tokenizer.encode(f" {n}\n")))]
    pieces += [("query", 3), ("is a" + " _" * (len(prompt) - is_a), len(prompt))]
    print("\n".join(f"{w} is a {n}" for w, n in zip(words, names)) + f"\n{words[-1]} is a")
    said = continue_lines(lm, tokenizer, [row[:-len(prompt)]], [tokenizer.encode(" is a")], 8)[0]
    print("the scenes: " + "; ".join(caption(s) for s in support) + f";\nthen {caption(query)}")
    print(f"the name asked for: {name}; the LM says: {said}")
    x = row[None] + lm.pos_emb.weight[:len(row)]
    print("attention of the last position, which writes the name's first letter, share on each "
          "piece:")
    print(" " * 16 + "".join(f"{p:>9}" for p, _ in pieces))
    for layer, block in enumerate(lm.blocks):
        q, k, _ = block.attention.mixed_qkv(block.ln_attention(x))             # (1, h, T, d)
        weights = (q[0, :, -1:] @ k[0].transpose(1, 2) / k.shape[-1] ** 0.5).softmax(-1)[:, 0]
        for head, w in enumerate(weights):                                      # (T,)
            shares, at = [], 0
            for _, n in pieces:
                shares.append(w[at:at + n].sum().item())
                at += n
            print(f"layer {layer + 1} head {head}  " + "".join(f"{v:9.2f}" for v in shares))
        x = block(x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", nargs="+", required=True, help="minivlp.pt files of shapes runs")
    parser.add_argument("--rows", type=int, default=200, help="episodes a setting (default 200)")
    parser.add_argument("--show", action="store_true", help="walk through one prompt first")
    parser.add_argument("--json", help="write {seed: {setting: accuracy}} to this file")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    by_seed = {}
    for path in args.ckpt:
        checkpoint = load_checkpoint(path)
        tower, embedder, world, config = load_models(checkpoint, torch.device("cpu"))
        if world.dataset != "shapes" or config.get("data"):
            raise ValueError(f"{path}: not a run of the built-in shapes world")
        lm, tokenizer, seed = tower.lm, tower.tokenizer, config["seed"]
        if args.show and not by_seed:  # the first episode whose pairs share nothing, then a shape
            episodes = naming_episodes(2, 1, 50)
            for part in ("neither", "shape"):
                print(f"\n2-way 1-shot, the pairs share {part}:")
                show(lm, tokenizer, embedder, world.image_size,
                     next(e for e in episodes if shared(e) == part))
        results = naming_metrics(lm, tokenizer, embedder, world.image_size, torch.device("cpu"),
                                 "float32", args.rows)
        results.update(where_it_breaks(lm, tokenizer, embedder, world.image_size, args.rows))
        by_seed[str(seed)] = results
        print(f"seed {seed} ({path}): " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float)
                                                    else f"{k} {v}" for k, v in results.items()))
    print(f"\nmean (min-max) over {len(by_seed)} checkpoint(s):")
    for key in next(iter(by_seed.values())):
        values = [results[key] for results in by_seed.values()]
        print(f"  {key:40s} {np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps(by_seed, indent=1) + "\n")


if __name__ == "__main__":
    main()
