"""Why a solved example before the image lowers the count answers: where the answer then stands.

    python tests/benchmarks/fewshot_position.py --ckpt out/seed*/minivlp.pt [--images 300] [--json F]

eval.py's `image, examples first` puts one solved example, '<bos> [image] \\n q: how many objects
are there? a: ANSWER <eos>', before the image's own row; with 16 prefix vectors only one fits,
and the answer asked for then stands near the end of the LM's 64 positions. Here, over the first
`--images` `test` images, the count question is asked after the image alone, after a solved
example with an image (one of each answer, from the images after those asked), after the same
example with its true caption, twice and cut to the image row's length, in place of its image (a
text example, as long), and after the example with its image cut to the vectors before the one
nearest the newline (the caption line the prefix spells: a short example, the answer about 9
positions earlier): the accuracy, the share of answers that end where the word does ('one' or
'two', not run on into a longer word), the share that are the example's own answer, and the
position of the answer's first token. Nothing is trained.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from eval import answer, load_models, nearest_tokens, verdict  # noqa: E402
from minivlp import (caption, embed_images, image_context, load_checkpoint,  # noqa: E402
                     make_eval_splits, question_prompt)

QUESTION = "how many objects are there?"
ANSWERS = ("one", "two")


@torch.no_grad()
def measure(path, n_images):
    """The run's seed, and {setting: (accuracy, share ended right, share that is the example's
    answer, answer position)} for one checkpoint."""
    tower, embedder, world, config = load_models(load_checkpoint(path), torch.device("cpu"))
    lm, tokenizer = tower.lm, tower.tokenizer
    test = make_eval_splits(world, config["seed"])["test"]
    scenes = test.scenes
    _, prefixes = embed_images(embedder, test.images, torch.device("cpu"), precision="float32")
    rows = image_context(lm, tokenizer, prefixes)                       # (N, 1 + K, C)
    truth = [ANSWERS[len(scene.objects) - 1] for scene in scenes[:n_images]]
    prompt = len(tokenizer.encode(question_prompt(QUESTION)))

    newline = tokenizer.encode("\n")[-1]

    def solved(i, shown):
        """(L, C): example i, its image's row ('image'), that row cut to its caption line
        ('short'), or '<bos> CAPTION' ('text'), then its question and answer."""
        qa = tokenizer.encode(f"{question_prompt(QUESTION)} {ANSWERS[len(scenes[i].objects) - 1]}")
        if shown == "image":
            head = rows[i]
        elif shown == "short":
            spelled = nearest_tokens(lm, rows[i, 1:]).tolist()          # (K,) token ids
            head = rows[i, :1 + (spelled.index(newline) if newline in spelled else len(spelled))]
        else:
            # the caption twice, cut to the image row's length: the answer stands where it does
            # after the image example
            text = [tokenizer.bos_id] + tokenizer.encode(f"{caption(scenes[i])}\n{caption(scenes[i])}")
            head = lm.token_emb(torch.tensor(text[:len(rows[i])]))
        return torch.cat([head, lm.token_emb(torch.tensor(qa + [tokenizer.eos_id]))])

    # the first image after those asked with each answer: one example of 'one', one of 'two'
    examples = [next(i for i in range(n_images, len(scenes)) if len(scenes[i].objects) == k)
                for k in (1, 2)]
    settings = {"image alone": (None, None)}
    for i in examples:
        answer_word = ANSWERS[len(scenes[i].objects) - 1]
        for shown in ("image", "text", "short"):
            settings[f"{shown} example ({answer_word}) first"] = (solved(i, shown), answer_word)
    results = {}
    for name, (example, its_answer) in settings.items():
        contexts = [row if example is None else torch.cat([example, row]) for row in rows[:n_images]]
        given = [verdict(g) for g in answer(lm, tokenizer, contexts, [QUESTION] * n_images, 4)]
        position = len(contexts[0]) + prompt
        results[name] = (float(np.mean([g == t for g, t in zip(given, truth)])),
                         float(np.mean([g in ANSWERS for g in given])),
                         float(np.mean([g == its_answer for g in given])), position)
    return config["seed"], results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", nargs="+", required=True, help="minivlp.pt files of the shapes world")
    parser.add_argument("--images", type=int, default=300, help="test images asked")
    parser.add_argument("--json", help="also write {seed: {setting: [accuracy, ended right, "
                                       "the example's answer, position]}} here")
    args = parser.parse_args()
    everything = {}
    for path in args.ckpt:
        seed, results = measure(path, args.images)
        everything[str(seed)] = results
        print(f"seed {seed} ({path})")
        for name, (accuracy, ended, copied, position) in results.items():
            print(f"  {name:<30} accuracy {accuracy:.2f}  ended right {ended:.2f}  "
                  f"the example's answer {copied:.2f}  answer at position {position}")
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1) + "\n")


if __name__ == "__main__":
    main()
