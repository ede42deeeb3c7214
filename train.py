"""Train minivlp end to end: tokenizer and LM pretraining, freezing, alignment, evaluation.

    python train.py                        # every stage on the built-in shapes world
    python train.py --stage lm             # only the tokenizer and the LM (writes OUT/lm.pt)
    python train.py --text-tower random    # the LM frozen at random initialisation, to compare
    python eval.py --compare out/*/metrics.json   # runs side by side (see the README's table)

Writes OUT/lm.pt, OUT/minivlp.pt (everything eval.py needs), OUT/config.json, OUT/metrics.json.
"""

import argparse
import math
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

from PIL import Image

from eval import Parser, draw_pictures, evaluate, format_table
from minivlp import (OBJECTIVES, AlignConfig, LMConfig, LanguageModel, Temperature, TextTower,
                     VisualEmbedder, WorldConfig, align, encode_corpus, fit_whitening, freeze,
                     held_out_loss, make_corpus, make_support_split, make_world, pretrain_lm,
                     resolve_device, save_checkpoint, save_json, text_features)
from tokenizer import Tokenizer

# Each config dataclass becomes a group of flags; LM fields carry the prefix --lm- so that
# --lm-steps (pretraining) and --steps (alignment) cannot be confused.
CONFIGS = {"world": (WorldConfig, ""), "lm": (LMConfig, "lm-"), "align": (AlignConfig, "")}


TEXT_TOWERS = ["locked", "random", "finetune", "scratch"]
PRETRAINED = {"locked", "finetune"}      # towers whose LM is pretrained on the text corpus
LEARNING = {"finetune", "scratch"}       # towers whose LM keeps learning during alignment

# Every number must be positive, except these, which may also be 0.
MAY_BE_ZERO = {"warmup_steps", "weight_decay"}


def number(kind, may_be_zero):
    def parse(text):
        value = kind(text)  # a ValueError here becomes argparse's 'invalid value' message
        if value < 0 or (value == 0 and not may_be_zero) or not math.isfinite(value):
            raise argparse.ArgumentTypeError(
                f"expected a {'non-negative' if may_be_zero else 'positive'} {kind.__name__}, "
                f"got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def build_parser():
    parser = Parser(prog="train.py", description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=["all", "lm"], default="all",
                        help="all: every stage; lm: tokenizer and LM only (default: %(default)s)")
    parser.add_argument("--text-tower", choices=TEXT_TOWERS, default="locked",
                        help="locked: pretrained, then frozen (the method); random: frozen at "
                             "random initialisation; finetune: pretrained, then trained with the "
                             "embedder; scratch: random, then trained with the embedder "
                             "(default: %(default)s)")
    parser.add_argument("--objective", choices=OBJECTIVES, default="both",
                        help="contrastive: InfoNCE only; prefix: captioning loss through the "
                             "frozen LM only; both: their sum (default: %(default)s)")
    parser.add_argument("--out", default="out", help="output folder (default: %(default)s)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto picks CUDA when present (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    for group, (config_class, prefix) in CONFIGS.items():
        flags = parser.add_argument_group(config_class.__name__)
        for field in fields(config_class):
            flag, dest = "--" + prefix + field.name.replace("_", "-"), f"{group}.{field.name}"
            if isinstance(field.default, bool):
                flags.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                                   default=field.default, help="(default: %(default)s)")
            else:
                kind = number(type(field.default), field.name in MAY_BE_ZERO)
                flags.add_argument(flag, dest=dest, type=kind, default=field.default,
                                   help="(default: %(default)s)")
    return parser


def parse_configs(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    configs = {group: config_class(**{f.name: getattr(args, f"{group}.{f.name}")
                                      for f in fields(config_class)})
               for group, (config_class, _) in CONFIGS.items()}
    world_cfg, lm_cfg = configs["world"], configs["lm"]
    if lm_cfg.width % lm_cfg.heads:
        parser.error(f"--lm-width {lm_cfg.width} must be a multiple of --lm-heads {lm_cfg.heads}")
    if world_cfg.image_size % 8:
        parser.error(f"--image-size {world_cfg.image_size} must be a multiple of 8 (three 2x poolings)")
    return args, configs


def pretrain_stage(lm_cfg, world_cfg, text_tower, device, seed):
    """§3.2 step 1: tokenizer and LM on the text-only corpus, then freeze the LM."""
    corpus = make_corpus(world_cfg.corpus_documents, seed)
    tokenizer = Tokenizer.train("\n".join(corpus), lm_cfg.vocab_size)
    held_out = max(1, len(corpus) // 20)  # 5% of documents for held-out loss and perplexity
    train_stream = encode_corpus(tokenizer, corpus[held_out:])
    held_out_stream = encode_corpus(tokenizer, corpus[:held_out])
    torch.manual_seed(seed)
    lm = LanguageModel(lm_cfg).to(device)
    if text_tower in PRETRAINED:
        history = pretrain_lm(lm, train_stream, held_out_stream, lm_cfg, device, seed)
        print(f"LM: {lm_cfg.steps} steps in {history['seconds']:.1f} s, "
              f"{history['tokens_per_s']:,.0f} tokens/s, held-out loss {history['held_out_loss']:.3f} "
              f"(perplexity {history['held_out_perplexity']:.2f})")
    else:
        history = {"held_out_loss": held_out_loss(lm, held_out_stream, lm_cfg.context, device)}
        print(f"LM left at random initialisation: held-out loss {history['held_out_loss']:.3f}")
    return tokenizer, freeze(lm), history


def align_stage(tokenizer, lm, world_cfg, lm_cfg, align_cfg, objective, text_tower, device, seed):
    """§3.2 steps 2-3: the text tower (LM + fixed whitening), then train the embedder."""
    world = make_world(world_cfg, seed)
    train = world["train"]
    mean, matrix = fit_whitening(text_features(lm, tokenizer, train.captions, device))
    tower = TextTower(lm, tokenizer, mean, matrix, device)
    torch.manual_seed(seed)
    embedder = VisualEmbedder(world_cfg.image_size, lm_cfg.width, align_cfg.prefix_tokens)
    temperature = Temperature(align_cfg.temperature, align_cfg.learn_temperature)
    history = align(embedder, temperature, tower, train.images, train.caption_index,
                    train.captions, align_cfg, objective, device, seed,
                    train_lm=text_tower in LEARNING)
    print(f"alignment: {align_cfg.steps} steps in {history['seconds']:.1f} s, "
          f"{history['images_per_s']:,.0f} images/s, final τ {temperature().item():.4f}")
    return world, tower, embedder, temperature, history


def save_examples(split, out, count=4):
    """A few `test` images as PNG files, to try `eval.py --caption` and `--ask` on."""
    paths = []
    for i in range(count):
        path = out / f"example_{i}.png"
        Image.fromarray(split.images[i].permute(1, 2, 0).numpy()).save(path)
        paths.append(f"{path}: {split.captions[split.caption_index[i]]}")
    return paths


def main(argv=None):
    start = time.perf_counter()
    args, configs = parse_configs(argv)
    world_cfg, lm_cfg, align_cfg = configs["world"], configs["lm"], configs["align"]
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_config = {"seed": args.seed, "text_tower": args.text_tower, "objective": args.objective,
                  "device": str(device),
                  **{group: asdict(config) for group, config in configs.items()}}
    print("config:", run_config)
    save_json(run_config, out / "config.json")

    tokenizer, lm, lm_history = pretrain_stage(lm_cfg, world_cfg, args.text_tower, device, args.seed)
    checkpoint = {"config": run_config, "tokenizer": tokenizer.to_dict(), "lm": lm.state_dict(),
                  "history": {"lm": lm_history}}
    save_checkpoint(checkpoint, out / "lm.pt")
    if args.stage == "lm":
        print(f"wrote {out / 'lm.pt'}")
        return

    world, tower, embedder, temperature, align_history = align_stage(
        tokenizer, lm, world_cfg, lm_cfg, align_cfg, args.objective, args.text_tower, device,
        args.seed)
    checkpoint.update(lm=lm.state_dict(),  # unchanged for a frozen tower, trained otherwise
                      embedder=embedder.state_dict(), temperature=temperature().item(),
                      whitening_mean=tower.mean.cpu(), whitening_matrix=tower.matrix.cpu(),
                      history={"lm": lm_history, "align": align_history})
    save_checkpoint(checkpoint, out / "minivlp.pt")

    support = make_support_split(world_cfg, args.seed)
    metrics = evaluate(embedder, tower, {name: world[name] for name in world if name != "train"},
                       support, device, args.objective)
    trainable = sum(p.numel() for p in embedder.parameters()) + int(align_cfg.learn_temperature)
    if args.text_tower in LEARNING:
        trainable += sum(p.numel() for p in lm.parameters())
    metrics["run"] = {"text_tower": args.text_tower, "objective": args.objective,
                      "device": str(device), "wall_seconds": time.perf_counter() - start,
                      "align_images_per_s": align_history["images_per_s"],
                      "trainable_parameters": trainable}
    save_json(metrics, out / "metrics.json")
    print(format_table(metrics))
    pictures = draw_pictures(embedder, tower, world["test"], {"lm": lm_history, "align": align_history},
                             args.objective, device, out)
    print(f"wrote {out / 'minivlp.pt'}, {out / 'metrics.json'}, pictures "
          f"({', '.join(path.name for path in pictures)}) and example images:")
    print("\n".join(save_examples(world["test"], out)))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        sys.exit(2)
