"""Can an LM of the default size learn to bind a colour to its shape? Pretrain one on drills alone.

    python tests/benchmarks/binding_drills.py --ckpt out/seed0/lm.pt [--steps 3600]

The default LM answers `what colour is the circle?` about two-object scenes from the colour of
the same object, first or second, whichever is asked (lm_ceiling.py). This asks whether an LM of
the same size and optimizer can learn the lookup at all, given nothing else to learn. A drill is
one document: the plain caption of a two-object scene, then its colour, shape and `exists`
questions with their answers, in a random order. Each training row starts at a document's
<bos>, so the caption is always in the row (the default corpus is a stream cut into windows
anywhere). Every `--every` steps it prints lm_ceiling's table for the two-object scenes of the
`test` split: answers from the true caption, by the object asked about.

--ckpt gives the tokenizer (words are the tokens they are in a default run), the LM's sizes,
optimizer settings and seed, and the test scenes. The LM starts from random weights.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval import load_lm  # noqa: E402
from lm_ceiling import answers_by_object  # noqa: E402
from minivlp import (LanguageModel, WorldConfig, adamw, caption, encode_corpus,  # noqa: E402
                     keyed_generator, load_checkpoint, make_eval_splits, question_prompt,
                     random_scene, shapes_questions, warmup_cosine)


def drill(rng):
    """One drill document about a random two-object scene."""
    scene = random_scene(rng, held_out=None)
    while len(scene.objects) < 2:
        scene = random_scene(rng, held_out=None)
    asked = [(q, a) for q, a, kind in shapes_questions(scene, rng)
             if kind in ("colour", "shape", "exists")]
    return caption(scene) + "".join(f"{question_prompt(q)} {a}"
                                    for q, a in (asked[i] for i in rng.permutation(len(asked))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="an lm.pt or minivlp.pt of the shapes world")
    parser.add_argument("--steps", type=int, default=3600)
    parser.add_argument("--every", type=int, default=600)
    parser.add_argument("--documents", type=int, default=20000)
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.ckpt)
    tokenizer, _, cfg = load_lm(checkpoint, torch.device("cpu"))
    seed = checkpoint["config"]["seed"]
    scenes = [scene for scene in make_eval_splits(WorldConfig(**checkpoint["config"]["world"]),
                                                  seed)["test"].scenes if len(scene.objects) == 2]
    rng = np.random.default_rng((seed, 0))
    stream = encode_corpus(tokenizer, [drill(rng) for _ in range(args.documents)])  # (L,)
    starts = (stream[:-cfg.context - 1] == tokenizer.bos_id).nonzero()[:, 0]   # document starts
    torch.manual_seed(seed)
    lm = LanguageModel(cfg).train()
    optimizer = adamw(lm.parameters(), cfg.lr, cfg.weight_decay, torch.device("cpu"))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                 warmup_cosine(cfg.warmup_steps, args.steps))
    print(f"seed {seed}: {args.documents} drills, {len(stream):,} tokens; from the true caption, "
          f"{len(scenes)} two-object test scenes")
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        picked = torch.randint(len(starts), (cfg.batch_size,),
                               generator=keyed_generator(seed, 1, step))
        rows = torch.stack([stream[s:s + cfg.context + 1] for s in starts[picked].tolist()])
        loss = F.cross_entropy(lm.logits(lm(rows[:, :-1])).flatten(0, 1), rows[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), cfg.grad_clip)
        optimizer.step()
        schedule.step()
        if step % args.every == 0:
            right = answers_by_object(lm.eval(), tokenizer, scenes)
            lm.train()
            print(f"step {step} ({time.perf_counter() - start:.0f} s), loss {loss.item():.3f}: " +
                  ", ".join(f"{kind} {where} {np.mean(hits):.3f}"
                            for (kind, where), hits in sorted(right.items())))


if __name__ == "__main__":
    main()
