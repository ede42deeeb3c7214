"""Evaluate a trained minivlp checkpoint (§3.2 step 4): retrieval both ways and zero-shot accuracy.

    python eval.py --ckpt out/minivlp.pt [--json metrics.json] [--device auto|cpu|cuda]

Prints one row per split and writes the metrics as JSON (open_clip's metric names).
"""

import argparse
import sys

from minivlp import (LMConfig, TextTower, VisualEmbedder, WorldConfig, LanguageModel,
                     describe_device, freeze, image_embeddings, load_checkpoint, make_eval_splits,
                     retrieval_metrics, save_json, zeroshot_accuracy)
from tokenizer import Tokenizer


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """A bad flag is one line on stderr and exit status 2, without the usage dump."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def evaluate(embedder, tower, splits, device):
    """{split name: metrics} for every split: retrieval over its distinct captions, zero-shot."""
    results = {}
    for name, split in splits.items():
        image_emb = image_embeddings(embedder, split.images, device).cpu()     # (N, C) unit
        text_emb = tower(split.captions).cpu()                                 # (M, C)
        text_emb = text_emb / text_emb.norm(dim=1, keepdim=True)
        metrics = retrieval_metrics(image_emb @ text_emb.T, split.caption_index)  # (N,C)@(C,M)
        metrics.update(zeroshot_accuracy(image_emb, split.scenes,
                                         lambda texts: tower(texts).cpu()))
        metrics.update(images=len(split.images), captions=len(split.captions))
        results[name] = metrics
    return results


COLUMNS = [("i→t R@1", "image_to_text_R@1"), ("i→t R@5", "image_to_text_R@5"),
           ("t→i R@1", "text_to_image_R@1"), ("t→i R@5", "text_to_image_R@5"),
           ("zs colour", "zeroshot_colour_acc"), ("zs shape", "zeroshot_shape_acc"),
           ("zs size", "zeroshot_size_acc"), ("zs position", "zeroshot_position_acc")]


def format_table(results):
    """A plain-text table, one row per split."""
    header = f"{'split':<14}{'captions':>9}" + "".join(f"{title:>12}" for title, _ in COLUMNS)
    rows = [f"{name:<14}{metrics['captions']:>9}" + "".join(f"{metrics[key]:>12.3f}" for _, key in COLUMNS)
            for name, metrics in results.items()]
    return "\n".join([header, *rows])


def load_models(checkpoint, device):
    """Rebuild the frozen text tower and the visual embedder from a checkpoint's plain data."""
    config = checkpoint["config"]
    lm_cfg, world_cfg = LMConfig(**config["lm"]), WorldConfig(**config["world"])
    tokenizer = Tokenizer.from_dict(checkpoint["tokenizer"])
    lm = LanguageModel(lm_cfg)
    lm.load_state_dict(checkpoint["lm"])
    lm = freeze(lm.to(device))
    tower = TextTower(lm, tokenizer, checkpoint["whitening_mean"], checkpoint["whitening_matrix"],
                      device)
    embedder = VisualEmbedder(world_cfg.image_size, lm_cfg.width)
    embedder.load_state_dict(checkpoint["embedder"])
    return tower, embedder.to(device).eval(), world_cfg, config["seed"]


def main(argv=None):
    parser = Parser(prog="eval.py", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by train.py")
    parser.add_argument("--json", help="where to write the metrics (default: none)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = parser.parse_args(argv)
    device = describe_device(args.device)
    checkpoint = load_checkpoint(args.ckpt)
    if "embedder" not in checkpoint:
        raise ValueError(f"{args.ckpt}: holds only the LM stage (train.py --stage all writes "
                         "minivlp.pt)")
    tower, embedder, world_cfg, seed = load_models(checkpoint, device)
    results = evaluate(embedder, tower, make_eval_splits(world_cfg, seed), device)
    print(format_table(results))
    if args.json:
        save_json(results, args.json)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as error:
        print(f"eval.py: error: {error}", file=sys.stderr)
        sys.exit(2)
