"""Which reading of the frozen LM makes the best text feature h(T)? (the choice in text_features)

    python tests/benchmarks/text_features.py --ckpt out/lm.pt

For the LM in the checkpoint and for the same LM at random initialisation, three poolings:
  mean       mean of the final states over one reading of '<bos> T'
  last       the final state at the newline after '<bos> T' (the end-of-text state)
  re-read    mean of the final states over the second T of '<bos> T \\n T' (minivlp's choice)
Each is whitened as in fit_whitening (fitted on the training captions) and measured on the `test`
captions: text -> text R@1 from each caption's synonym paraphrase to the plain caption (can the
feature see that 'a tiny crimson ring' is 'a small red circle'?), and the mean cosine between
each plain caption and its nearest other caption (lower: captions are easier to tell apart).
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from minivlp import (SYNONYMS, LanguageModel, LMConfig, WorldConfig, caption, fit_whitening,  # noqa: E402
                     freeze, load_checkpoint, make_eval_splits, make_split, pad_rows)
from tokenizer import Tokenizer  # noqa: E402


@torch.no_grad()
def pooled(lm, tokenizer, texts, pooling):
    newline = tokenizer.encode("\n")
    rows, spans = [], []
    for text in texts:
        e = tokenizer.encode(text)
        if pooling == "mean":
            rows.append([tokenizer.bos_id] + e)
            spans.append((1, 1 + len(e)))
        elif pooling == "last":
            rows.append([tokenizer.bos_id] + e + newline)
            spans.append((len(e) + len(newline), 1 + len(e) + len(newline)))
        else:
            rows.append([tokenizer.bos_id] + e + newline + e)
            spans.append((1 + len(e) + len(newline), 1 + 2 * len(e) + len(newline)))
    ids = pad_rows(rows, tokenizer.pad_id)
    weights = torch.zeros(*ids.shape, 1)
    for row, (start, end) in enumerate(spans):
        weights[row, start:end] = 1
    return (lm(ids) * weights).sum(1) / weights.sum(1)


def measure(lm, tokenizer, train_captions, test_scenes, pooling):
    mean, matrix = fit_whitening(pooled(lm, tokenizer, train_captions, pooling))
    embed = lambda texts: F.normalize((pooled(lm, tokenizer, texts, pooling) - mean) @ matrix, dim=1)
    by_caption = {caption(scene): scene for scene in test_scenes}
    plain = sorted(by_caption)
    plain_emb = embed(plain)
    paraphrase_emb = embed([caption(by_caption[text], SYNONYMS) for text in plain])
    r1 = ((paraphrase_emb @ plain_emb.T).argmax(1) == torch.arange(len(plain))).float().mean()
    similarity = plain_emb @ plain_emb.T
    similarity.fill_diagonal_(-1)
    return r1.item(), similarity.max(1).values.mean().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default="out/lm.pt")
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.ckpt)
    config = checkpoint["config"]
    lm_cfg, world_cfg = LMConfig(**config["lm"]), WorldConfig(**config["world"])
    tokenizer = Tokenizer.from_dict(checkpoint["tokenizer"])
    train = make_split(min(world_cfg.train_images, 5000), world_cfg.image_size, (config["seed"], 1),
                       held_out=False)
    test = make_eval_splits(world_cfg, config["seed"])["test"]
    torch.manual_seed(config["seed"])
    random_lm = freeze(LanguageModel(lm_cfg))
    trained_lm = LanguageModel(lm_cfg)
    trained_lm.load_state_dict(checkpoint["lm"])
    freeze(trained_lm)
    print(f"{'LM':<12}{'pooling':<10}{'synonym->plain R@1':>20}{'nearest-caption cos':>22}")
    for name, lm in (("checkpoint", trained_lm), ("random", random_lm)):
        for pooling in ("mean", "last", "re-read"):
            r1, nearest = measure(lm, tokenizer, train.captions, test.scenes, pooling)
            print(f"{name:<12}{pooling:<10}{r1:>20.3f}{nearest:>22.3f}")


if __name__ == "__main__":
    main()
