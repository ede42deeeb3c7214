"""Few-shot naming through the frozen LM (Frozen's fast binding), at toy scale.

    python tests/benchmarks/few_shot_naming.py --ckpt out/seed*/minivlp.pt [--rows 200] [--json FILE]

From text, an LM that reads its context continues 'a red circle is a kipo \n a blue square is a
zuve \n a red circle is a' with 'kipo' (lm_reading.py's names test). Here the things named are
one-object images: N support images of N scenes with different colour+shape pairs, each followed
by ' is a NAME', then a new image of one of the scenes (drawn again: other jitter) and ' is a'.
The names are fresh_name(held_out=True): never in any training text, never with an image. A row
is right when the LM's most likely next tokens write the name whole and end the line (scored
teacher-forced, as lm_reading.py scores names). Settings, N-way 1-shot:

  text          each image's true caption in its place ('a small red circle on the left is a
                kipo'): the LM's ceiling
  colour+shape  only the colour and shape of each ('a red circle is a kipo'), the form of the
                naming drills and of lm_reading.py's names test
  own caption   each image's caption as the LM wrote it from the image's prefix (describe,
                then name: the names are read from text)
  image         the visual prefix in the image's place, as Frozen prompts
  blind         the image setting with the query's prefix left out: 1/N at most, for an LM
                that picks one of the names it was shown
  shuffled      the image setting with the names shuffled among the support images, scored
                against the true names: chance if the name is read from the context

A prefix is K positions (8 by default) of the LM's 64, and a caption 7 to 10 tokens, so 5-way
rows do not fit: a setting with no row that fits prints '-'. --json writes {seed: {ways:
{setting: accuracy}}} (tutorials/runs/reading/naming.json holds results.md's, one for each LM).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from eval import describe, load_models  # noqa: E402
from minivlp import (COLOURS, HELD_OUT_PAIRS, POSITIONS, SHAPES, SIZES, Scene,  # noqa: E402
                     caption, embed_images, fresh_name, image_context, load_checkpoint, pick,
                     render)

SETTINGS = ["text", "colour+shape", "own caption", "image", "blind", "shuffled"]


def naming_rows(ways, n_rows, seed):
    """n_rows of (support scenes, names, the query's index): one-object scenes of seen pairs."""
    rng = np.random.default_rng((seed, 9, ways))
    pairs = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS]
    rows = []
    while len(rows) < n_rows:
        chosen = [pairs[i] for i in rng.permutation(len(pairs))[:ways]]
        scenes = [Scene((pair,), pick(rng, SIZES), pick(rng, list(POSITIONS))) for pair in chosen]
        names = [fresh_name(rng, held_out=True) for _ in scenes]
        if len(set(names)) == ways:
            rows.append((scenes, names, int(rng.integers(ways))))
    return rows


@torch.no_grad()
def name_accuracy(lm, tokenizer, rows):
    """rows: lists of ((P, C) embeddings, ids) pieces, one list a prompt; the last piece is what
    the LM should write, its ids the tokens (the others' ids are None). The share of rows, of
    those that fit the context, whose every target token is the LM's most likely next token
    (<eos> counts as the newline): (share, rows), or (None, 0) if none fits."""
    newline = tokenizer.encode("\n")[-1]
    right = []
    for pieces in rows:
        row = torch.cat([embeddings for embeddings, _ in pieces])                 # (T, C)
        if len(row) > lm.context:
            continue
        at = len(row) - len(pieces[-1][1])                                      # the target
        predicted = lm.logits(lm(torch.empty(1, 0, dtype=torch.long), prefix=row[None]))[0]
        predicted = predicted[at - 1:len(row) - 1].argmax(-1)                    # (n,)
        predicted[predicted == tokenizer.eos_id] = newline
        right.append(torch.equal(predicted, pieces[-1][1]))
    return (float(np.mean(right)), len(right)) if right else (None, 0)


def measure(path, ways, n_rows):
    """{setting: (accuracy, rows that fit)} for one minivlp.pt."""
    checkpoint = load_checkpoint(path)
    tower, embedder, world, config = load_models(checkpoint, torch.device("cpu"))
    if world.dataset != "shapes" or config.get("data"):
        raise ValueError(f"{path}: not a run of the built-in shapes world")
    lm, tokenizer = tower.lm, tower.tokenizer
    rows = naming_rows(ways, n_rows, config["seed"])
    rng = np.random.default_rng((config["seed"], 10))
    scenes = [scene for support, _, asked in rows for scene in support + [support[asked]]]
    images = torch.from_numpy(np.stack([render(s, world.image_size, rng) for s in scenes]))
    _, prefixes = embed_images(embedder, images.permute(0, 3, 1, 2).contiguous(),
                               torch.device("cpu"), precision="float32")
    own = describe(lm, tokenizer, prefixes)                                  # (N*(ways+1)) texts
    prefixes = image_context(lm, tokenizer, prefixes)[:, 1:]                 # (N*(ways+1), K, C)
    embed = lambda text: lm.token_emb(torch.tensor(tokenizer.encode(text)))  # (T, C)
    bos = lm.token_emb(torch.tensor([tokenizer.bos_id]))
    prompts = {setting: [] for setting in SETTINGS}
    for r, (support, names, asked) in enumerate(rows):
        first = r * (ways + 1)
        target = torch.tensor(tokenizer.encode(f" {names[asked]}\n"))
        answer = (lm.token_emb(target), target)
        shuffled = [names[i] for i in np.random.default_rng((r, 11)).permutation(ways)]
        shown = support + [support[asked]]
        lines = {"text": [embed(caption(s)) for s in shown],
                 "colour+shape": [embed("a {} {}".format(*s.objects[0])) for s in shown],
                 "own caption": [embed(own[first + i]) for i in range(ways + 1)],
                 "image": [prefixes[first + i] for i in range(ways + 1)]}
        lines["blind"] = lines["image"][:ways] + [bos[:0]]
        lines["shuffled"] = lines["image"]
        for setting, described in lines.items():
            given = shuffled if setting == "shuffled" else names
            pieces = [(bos, None)]
            for line, name in zip(described[:ways], given):
                pieces += [(line, None), (embed(f" is a {name}\n"), None)]
            pieces += [(described[ways], None), (embed(" is a"), None), answer]
            prompts[setting].append(pieces)
    return {setting: name_accuracy(lm, tokenizer, prompts[setting]) for setting in SETTINGS}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", nargs="+", required=True, help="minivlp.pt files of shapes runs")
    parser.add_argument("--rows", type=int, default=200, help="prompts a setting (default 200)")
    parser.add_argument("--json", help="write {seed: {ways: {setting: accuracy}}} to this file")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    results = {}
    for ways in (2, 5):
        for path in args.ckpt:
            results[ways, path] = found = measure(path, ways, args.rows)
            print(f"{ways}-way 1-shot, {path}: " + ", ".join(
                f"{s} {'-' if a is None else f'{a:.3f}'} ({n} rows)" for s, (a, n) in found.items()))
    for ways in (2, 5):
        print(f"\n{ways}-way 1-shot, mean (min-max) over {len(args.ckpt)} checkpoint(s), "
              f"chance {1 / ways:.2f}:")
        for setting in SETTINGS:
            values = [results[ways, p][setting][0] for p in args.ckpt]
            values = [v for v in values if v is not None]
            print(f"  {setting:12s} " + (f"{np.mean(values):.3f} ({min(values):.3f}-"
                                         f"{max(values):.3f})" if values else "-"))
    if args.json:
        seeds = {path: str(load_checkpoint(path)["config"]["seed"]) for path in args.ckpt}
        Path(args.json).write_text(json.dumps(
            {seeds[path]: {str(ways): {setting: results[ways, path][setting][0]
                                       for setting in SETTINGS} for ways in (2, 5)}
             for path in args.ckpt}, indent=1) + "\n")


if __name__ == "__main__":
    main()
