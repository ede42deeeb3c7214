"""Train minivlp end to end: tokenizer and LM pretraining, freezing, alignment, evaluation.

    python train.py                        # every stage on the built-in shapes world
    python train.py --seeds 0,1,2          # one run a seed (OUT/seed0, ...), then mean (min–max)
    python train.py --precision float32    # float32 everywhere (auto: bf16 where it is native)
    python train.py --stage lm             # only the tokenizer and the LM (writes OUT/lm.pt)
    python train.py --text-tower random    # the LM frozen at random initialisation, to compare
    python train.py --dataset glyphs       # the second toy world: coloured letters
    python train.py --data pairs.tsv --text corpus.txt     # your own image-caption pairs
    python train.py --data big.tsv --stream                # images read from disk as it trains
    python train.py ... --resume           # continue an interrupted run from OUT/train_state.pt
    torchrun --nproc_per_node=4 train.py   # data parallel over 4 processes (GPUs, or CPUs)
    python eval.py --compare out/*/metrics.json   # runs side by side, seeds as mean (min–max)

Writes OUT/lm.pt, OUT/minivlp.pt (everything eval.py needs), OUT/config.json, OUT/metrics.json,
and OUT/train_state.pt (the state to resume from) as it goes. Every file is written atomically.
"""

import argparse
import hashlib
import inspect
import io
import math
import os
import signal
import sys
import time
import tokenize
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from eval import (RERANK_SAMPLES, Parser, add_data_flags, compare, draw_pictures, evaluate,
                  format_table, load_lm, read_table)
from minivlp import (OBJECTIVES, PRECISIONS, WORLDS, AlignConfig, Checkpoints, Glyph, LMConfig,
                     LanguageModel, Temperature, TextTower, TrainingStopped, VisualEmbedder,
                     WorldConfig, align, caption, chained_corpus, compute_dtype, encode_corpus,
                     environment, fit_whitening, freeze, held_out_loss, hold_out, load_checkpoint,
                     make_corpus, make_support_split, make_world, naming_episodes, pairs_split,
                     pretrain_lm, rank_and_world, read_text, reading_drills, reading_tests, render,
                     resolve_device, save_checkpoint, save_json, text_features, text_words)
from tokenizer import Tokenizer

# Each config dataclass becomes a group of flags; LM fields carry the prefix --lm- so that
# --lm-steps (pretraining) and --steps (alignment) cannot be confused.
CONFIGS = {"world": (WorldConfig, ""), "lm": (LMConfig, "lm-"), "align": (AlignConfig, "")}

# What --help calls each group, and what holds for all of its flags.
GROUPS = {
    "world": ("the toy world", "The built-in world's images, splits and text.\n"
              "With --data, only --image-size applies."),
    "lm": ("the language model (pretraining)", "The tokenizer and the LM, pretrained on text, "
           "then frozen (§3.2 step 1).\nWith --lm, they come from that checkpoint instead."),
    "align": ("alignment", "Training the visual embedder and τ against the frozen LM "
              "(§3.2 steps 2-3, §3.4)."),
}
# Help that a field's comment in minivlp.py does not give: where the flag applies, and the
# fields left without a comment there. Keyed by group.field; shown after the comment.
MORE_HELP = {
    "world.image_size": "--data's images are resized and centre-cropped to it too; a multiple "
                        "of 8 (the embedder halves it three times)",
    "world.train_images": "built-in world only",
    "world.eval_images": "built-in world only",
    "world.corpus_documents": "built-in corpus only, ignored with --data or --text",
    "world.dataset": "ignored with --data",
    "lm.vocab_size": "unless given, it shrinks to what a small --text can fill",
    "lm.warmup_steps": "steps of linear warmup to --lm-lr, then cosine decay to a tenth",
    "lm.weight_decay": "AdamW's decay of the weight matrices (biases and norms are not shrunk)",
    "lm.grad_clip": "each step's gradients are scaled down to at most this global norm",
    "align.lr": "peak learning rate (AdamW) of the embedder and τ, after linear warmup",
    "align.warmup_steps": "steps of linear warmup to --lr, then cosine decay to a tenth",
    "align.weight_decay": "AdamW's decay of the embedder's weight matrices",
    "align.question_rows": "0 turns the teacher off",
    "align.spelling": "0 leaves the prefix free (tutorials/design.md, \"The visual prefix\")",
    "align.learn_temperature": "learn τ with the embedder; --no-learn-temperature keeps it at "
                               "--temperature",
}


TEXT_TOWERS = ["locked", "random", "finetune", "scratch"]
PRETRAINED = {"locked", "finetune"}      # towers whose LM is pretrained on the text corpus
LEARNING = {"finetune", "scratch"}       # towers whose LM keeps learning during alignment

# Every number must be positive, except these, which may also be 0.
MAY_BE_ZERO = {"warmup_steps", "weight_decay", "question_rows", "spelling", "reading_steps"}


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


def seed_list(text):
    """--seeds 0,1,2 -> [0, 1, 2]: distinct non-negative integers."""
    seeds = [number(int, True)(part) for part in text.split(",")]
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {text}")
    return seeds


def field_comments(config_class):
    """{field name: its trailing comment} of a config dataclass, read from its source: the
    comments in minivlp.py's Part 1 are the documentation, and --help shows them as they are."""
    comments, field_name = {}, None
    tokens = tokenize.generate_tokens(io.StringIO(inspect.getsource(config_class)).readline)
    for token in tokens:
        if token.type == tokenize.INDENT or token.type == tokenize.NEWLINE:
            field_name = None
        elif token.type == tokenize.NAME and token.line[:token.start[1]].isspace() \
                and token.line[token.end[1]:].lstrip().startswith(":"):
            field_name = token.string                   # 'name: type = default', a field
        elif token.type == tokenize.COMMENT and field_name:
            comments[field_name] = token.string.lstrip("#").strip()
    return comments


def field_help(group, field, comment):
    """A config flag's help: the field's comment, what MORE_HELP adds, the default."""
    words = [text for text in (comment, MORE_HELP.get(f"{group}.{field.name}")) if text]
    return "; ".join(words).replace("%", "%%") + " (default: %(default)s)"


def build_parser():
    parser = Parser(prog="train.py", description=__doc__)
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
    parser.add_argument("--out", default="out",
                        help="the folder the run writes its checkpoints, config.json, "
                             "metrics.json and pictures to (default: %(default)s)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto picks CUDA when present (default: %(default)s)")
    parser.add_argument("--seed", type=number(int, True), default=0,
                        help="seeds the world's images and text, the initial weights and the "
                             "order of batches: another seed, another run of the same settings "
                             "(--seeds runs several) (default: %(default)s)")
    parser.add_argument("--seeds", type=seed_list,
                        help="several seeds, e.g. 0,1,2, in place of --seed: one run each in "
                             "OUT/seed<N>, then every metric as mean (min–max) over them. One "
                             "process runs them one after another, so torchrun refuses it: "
                             "launch once a --seed")
    parser.add_argument("--precision", choices=["auto", *PRECISIONS], default="auto",
                        help="what matmuls and convolutions compute in. auto: bf16 where the "
                             "hardware has it natively (Ampere+ GPUs, CPUs with AVX512-BF16), fp16 "
                             "with a gradient scaler on older GPUs, float32 elsewhere "
                             "(default: %(default)s)")
    parser.add_argument("--compile", action="store_true",
                        help="run the LM and the embedder through torch.compile while they train "
                             "(compiling takes a while first; whether it pays: tutorials/speed.md)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --out from its train_state.pt "
                             "(give the same flags as the run)")
    parser.add_argument("--checkpoint-every", type=number(int, False), default=100,
                        help="save the training state every N steps (default: %(default)s)")
    data = add_data_flags(parser)
    data.add_argument("--val-data", help="pairs to evaluate on, in the same layout (default: a "
                                         "seeded 10%% of --data's rows, kept out of training)")
    data.add_argument("--text", help="a UTF-8 text file of short lines, to pretrain the "
                                     "tokenizer and LM on (default with --data: its captions)")
    data.add_argument("--stream", action="store_true",
                      help="read the training images from disk at every step (DataLoader "
                           "workers) instead of decoding them into memory once; chosen by itself "
                           "when they would fill over a quarter of the memory")
    data.add_argument("--lm", help="reuse the tokenizer and LM of this lm.pt or minivlp.pt "
                                   "instead of pretraining (its --lm-* settings replace yours)")
    for group, (config_class, prefix) in CONFIGS.items():
        flags = parser.add_argument_group(*GROUPS[group])
        comments = field_comments(config_class)
        for field in fields(config_class):
            flag, dest = "--" + prefix + field.name.replace("_", "-"), f"{group}.{field.name}"
            help = field_help(group, field, comments.get(field.name))
            if isinstance(field.default, bool):
                flags.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                                   default=field.default, help=help)
            elif field.name == "dataset":
                flags.add_argument(flag, dest=dest, choices=list(WORLDS), default=field.default,
                                   help=help)
            else:
                kind = number(type(field.default), field.name in MAY_BE_ZERO)
                flags.add_argument(flag, dest=dest, type=kind, default=field.default,
                                   metavar=field.name.upper(), help=help)
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
    if args.lm and args.text_tower not in PRETRAINED:
        parser.error(f"--lm gives a pretrained LM, but --text-tower {args.text_tower} starts "
                     f"from a random one")
    if args.seeds and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        parser.error("--seeds runs one seed after another in one process: under torchrun give "
                     "--seed, one launch a seed")
    for flag in ("val_data", "stream"):
        if getattr(args, flag) and not args.data:
            parser.error(f"--{flag.replace('_', '-')} needs --data (the built-in world is made "
                         f"in memory, with its own splits)")
    return args, configs


def writable_folder(path):
    """Create the output folder and check that files can be written in it, before any work."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"  # one a process: torchrun starts several
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"--out {path}: cannot write there ({error.strerror})") from None
    return out


def read_data(args, image_size, seed):
    """--data (and --val-data, or else a seeded 10% of --data's rows) -> {"train", "val"} splits.
    The training images are decoded into memory, or streamed from disk if asked (--stream) or if
    they would fill more than a quarter of the memory; the held-out ones always fit in memory."""
    rows = read_table(args, args.data)
    if args.val_data:
        val_rows, val_table = read_table(args, args.val_data), args.val_data
    else:
        (rows, val_rows), val_table = hold_out(args.data, rows, 0.1, seed), args.data
    decoded_bytes = len(rows) * 3 * image_size ** 2
    stream = args.stream or decoded_bytes > memory_bytes() / 4
    if stream and not args.stream:
        print(f"{args.data}: the decoded images would take {decoded_bytes / 2**30:.1f} GiB, "
              f"over a quarter of the memory: streaming them from disk")
    return {"train": pairs_split(args.data, rows, image_size, stream),
            "val": pairs_split(val_table, val_rows, image_size)}


def memory_bytes():
    """This machine's memory, where the system says (Linux, macOS); else taken as unlimited."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
        return math.inf


def read_corpus(args, world_cfg, lm_cfg, data, seed):
    """The LM's text as a list of documents, and where it comes from: the built-in corpus, or the
    lines of --text (else your training captions), cut into 20 documents of consecutive lines.
    Lines stay together so that the LM learns what follows a newline: the visual prefix is read
    as the line before the caption ('<bos> [image] \n caption \n')."""
    if not args.text and not args.data:
        return (make_corpus(world_cfg.corpus_documents, seed, world_cfg.dataset,
                            reading=lm_cfg.reading_steps > 0), "built-in corpus")
    if args.text:
        lines = [line.strip() for line in read_text(args.text).splitlines() if line.strip()]
        source = args.text
    else:
        train = data["train"]
        lines, source = [train.captions[j] for j in train.caption_index], f"{args.data} captions"
    if len(lines) < 2:
        raise ValueError(f"{source}: {len(lines)} non-empty line(s); the LM needs at least 2 "
                         f"(one part is held out)")
    parts = min(20, len(lines))
    return ["\n".join(lines[k * len(lines) // parts:(k + 1) * len(lines) // parts])
            for k in range(parts)], source


def train_tokenizer(documents, source, vocab_size, asked):
    """BPE on the corpus. A vocabulary the user asked for (--lm-vocab-size) must fit the text;
    the default shrinks to what a small corpus can fill, so small datasets work as they are."""
    try:
        tokenizer = Tokenizer.train("\n".join(documents), vocab_size, allow_fewer=not asked)
    except ValueError as error:  # the text is too small for the vocabulary asked
        raise ValueError(f"{source}: {error} (set --lm-vocab-size)") from None
    if tokenizer.vocab_size < vocab_size:
        print(f"{source} allows {tokenizer.vocab_size} tokens: the vocabulary is that size")
    return tokenizer


def warn_if_truncated(tokenizer, splits, lm_cfg, prefix_tokens):
    """Captions longer than the LM can read are cut; say so once, with the count."""
    newline = len(tokenizer.encode("\n"))
    longest = min((lm_cfg.context - 1 - newline) // 2,                  # text features read T twice
                  lm_cfg.context - 1 - prefix_tokens - 2 * newline)     # captioning after the prefix
    captions = {text for split in splits.values() for text in split.captions}
    cut = sum(len(tokenizer.encode(text)) > longest for text in captions)
    if cut:
        print(f"train.py: warning: {cut} of {len(captions)} captions are longer than the "
              f"{longest} tokens the LM reads (--lm-context {lm_cfg.context}) and were truncated",
              file=sys.stderr)


def pretrain_stage(lm_cfg, documents, tokenizer, text_tower, device, seed, checkpoints, compile,
                   precision, dataset=None):
    """§3.2 step 1: the LM on the text-only corpus, then freeze it. For a built-in world
    (dataset) the reading tests are watched, and with reading steps the shapes world's reading
    drills come first and stay mixed in (minivlp Part 9); your own text is read as it is."""
    held_out = max(1, len(documents) // 20)  # 5% of documents for held-out loss and perplexity
    drills, reading = [], {}
    if dataset:
        words, naming = text_words(documents), dataset == "shapes"
        reading = reading_tests(tokenizer, lm_cfg.context, words, naming)
        # the drills go with the reading corpus, which only the shapes world has: on the glyph
        # world's plain corpus they cost the letter questions (tutorials/results.md, glyphs)
        if chained_corpus(lm_cfg.reading_steps, dataset, own_text=False):
            drills = reading_drills(len(documents), seed, words, naming)
    train_stream = encode_corpus(tokenizer, documents[held_out:] + drills)
    held_out_stream = encode_corpus(tokenizer, documents[:held_out])
    if len(train_stream) <= lm_cfg.context + 1:
        raise ValueError(f"the corpus gives {len(train_stream)} training tokens, fewer than one "
                         f"window of --lm-context {lm_cfg.context}: give more text (--text)")
    torch.manual_seed(seed)
    lm = LanguageModel(lm_cfg).to(device)
    if text_tower in PRETRAINED:
        drill_stream = encode_corpus(tokenizer, drills) if drills else None
        history = pretrain_lm(lm, train_stream, held_out_stream, lm_cfg, device, seed, checkpoints,
                              compile, precision, drill_stream, reading)
        print(f"LM: {lm_cfg.steps} steps in {history['seconds']:.1f} s, "
              f"{history['tokens_per_s']:,.0f} tokens/s, held-out loss {history['held_out_loss']:.3f} "
              f"(perplexity {history['held_out_perplexity']:.2f})")
    else:
        history = {"held_out_loss": held_out_loss(lm, held_out_stream, lm_cfg.context, device,
                                                  precision=precision)}
        print(f"LM left at random initialisation: held-out loss {history['held_out_loss']:.3f}")
    return freeze(lm), history


def read_lm(path, device):
    """A pretrained (tokenizer, LM, LM config, history) from lm.pt or minivlp.pt."""
    checkpoint = load_checkpoint(path)
    try:
        return (*load_lm(checkpoint, device), checkpoint["history"]["lm"])
    except (KeyError, TypeError, RuntimeError) as error:  # missing keys, other shapes
        raise ValueError(f"{path}: no LM this train.py can rebuild "
                         f"({type(error).__name__}: {str(error).splitlines()[0]})") from None


def align_stage(tokenizer, lm, train, world_cfg, lm_cfg, align_cfg, objective, text_tower, device,
                seed, checkpoints, compile, precision, chain):
    """§3.2 steps 2-3: the text tower (LM + fixed whitening), then train the embedder."""
    mean, matrix = fit_whitening(text_features(lm, tokenizer, train.captions, device))
    tower = TextTower(lm, tokenizer, mean, matrix, device)
    torch.manual_seed(seed)
    embedder = VisualEmbedder(world_cfg.image_size, lm_cfg.width, align_cfg.prefix_tokens)
    temperature = Temperature(align_cfg.temperature, align_cfg.learn_temperature)
    history = align(embedder, temperature, tower, train.images, train.caption_index,
                    train.captions, align_cfg, objective, device, seed, scenes=train.scenes,
                    train_lm=text_tower in LEARNING, checkpoints=checkpoints, compile=compile,
                    precision=precision, chain=chain)
    print(f"alignment: {align_cfg.steps} steps in {history['seconds']:.1f} s, "
          f"{history['images_per_s']:,.0f} images/s, final τ {temperature().item():.4f}")
    return tower, embedder, temperature, history


def resume_state(path, run_config):
    """The saved training state of an interrupted run, if its configuration is this run's."""
    state = load_checkpoint(path)
    if "stage" not in state:
        raise ValueError(f"{path}: not a training state (train.py writes train_state.pt)")
    saved, now = flatten(state["config"]), flatten(run_config)
    if saved.get("data_fingerprint") != now["data_fingerprint"]:
        raise ValueError(f"--resume: the training data or text changed since {path} was written "
                         f"(fingerprint {saved.get('data_fingerprint')}, now "
                         f"{now['data_fingerprint']}): start a new run")
    for key in sorted(saved.keys() | now.keys()):
        if key != "device" and saved.get(key) != now.get(key):
            raise ValueError(f"--resume: {path} was written with {key} = {saved.get(key)!r}, "
                             f"this run asks for {now.get(key)!r} (give the same flags)")
    return state


def flatten(config, prefix=""):
    items = {}
    for key, value in config.items():
        if isinstance(value, dict):
            items.update(flatten(value, f"{prefix}{key}."))
        else:
            items[prefix + key] = value
    return items


def fingerprint(train, documents):
    """A short hash of the training pairs and the LM's text, saved with the run, so that --resume
    refuses to continue on data that changed. Images in memory are hashed whole (a few hundred
    MB a second); streamed images by path, size and modification time, without reading them."""
    digest = hashlib.sha256()
    for text in [*documents, *train.captions]:
        digest.update(text.encode("utf-8") + b"\0")
    digest.update(train.caption_index.numpy().tobytes())
    if isinstance(train.images, torch.Tensor):
        digest.update(train.images.numpy().tobytes())
    else:
        for _, image_path, _ in train.images.rows:
            status = image_path.stat()
            digest.update(f"{image_path}:{status.st_size}:{status.st_mtime_ns}".encode("utf-8"))
    return digest.hexdigest()[:16]


def check_prefix_room(prefix_tokens, context):
    """Captioning reads '<bos> [K prefix] \n caption \n': the caption needs some room."""
    if prefix_tokens > context - 8:
        raise ValueError(f"--prefix-tokens {prefix_tokens}: leaves too little of the LM context "
                         f"of {context} for a caption (give at most {context - 8})")


def save_examples(split, out, seed, count=4):
    """A few held-out images as PNG files, to try `eval.py --caption` and `--ask` on; in the
    shapes world also three one-object images to try `--name` on: two of different colour+shape
    pairs, then a new image of one of them (name_0.png to name_2.png)."""
    images = [split.images[i].permute(1, 2, 0).numpy() for i in range(min(count, len(split.images)))]
    texts = [split.captions[split.caption_index[i]] for i in range(len(images))]
    paths = [out / f"example_{i}.png" for i in range(len(images))]
    if split.scenes is not None and not isinstance(split.scenes[0], Glyph):
        (support, _, query, _), = naming_episodes(2, 1, 1, seed)
        rng = np.random.default_rng((seed, 13))
        images += [render(scene, split.images.shape[-1], rng) for scene in support + [query]]
        texts += [caption(scene) for scene in support + [query]]
        paths += [out / f"name_{i}.png" for i in range(3)]
    for image, path in zip(images, paths):
        Image.fromarray(image).save(path)
    return [f"{path}: {text}" for path, text in zip(paths, texts)]


def main(argv=None):
    args, configs = parse_configs(argv)
    asked_vocab = any(a.split("=")[0] == "--lm-vocab-size"
                      for a in (sys.argv[1:] if argv is None else argv))
    if not args.seeds:
        return run(args, configs, asked_vocab)
    paths = []
    for seed in args.seeds:  # one run a seed, each in its own folder, then the table over them
        out = Path(args.out) / f"seed{seed}"
        run(argparse.Namespace(**{**vars(args), "seed": seed, "out": str(out)}), configs,
            asked_vocab)
        paths.append(out / "metrics.json")
    print(f"\nseeds {args.seeds}: mean (min–max)\n{compare(paths)}")


def run(args, configs, asked_vocab):
    """One run: every stage for one seed, its files in args.out."""
    start = time.perf_counter()
    world_cfg, lm_cfg, align_cfg = configs["world"], configs["lm"], configs["align"]
    device = join_processes(args.device)
    rank, world = rank_and_world()
    if world > 1:
        check_data_parallel(args, configs, world)
    if rank > 0:
        sys.stdout = open(os.devnull, "w")  # only rank 0 prints, evaluates and writes files
    out = writable_folder(args.out)
    state_path = out / "train_state.pt"

    # Read and check every input before anything is written: bad input leaves `out` as it was.
    data = (read_data(args, world_cfg.image_size, args.seed) if args.data
            else make_world(world_cfg, args.seed))
    documents, source = read_corpus(args, world_cfg, lm_cfg, data, args.seed)
    if args.lm:
        tokenizer, lm, lm_cfg, lm_history = read_lm(args.lm, device)
    else:
        tokenizer = train_tokenizer(documents, source, lm_cfg.vocab_size, asked_vocab)
        lm_cfg = replace(lm_cfg, vocab_size=tokenizer.vocab_size)
    check_prefix_room(align_cfg.prefix_tokens, lm_cfg.context)
    precision = str(compute_dtype(device, args.precision)).removeprefix("torch.")
    run_config = {"seed": args.seed, "text_tower": args.text_tower, "objective": args.objective,
                  "precision": precision, "data": args.data, "val_data": args.val_data,
                  "text": args.text, "lm_checkpoint": args.lm, "device": str(device),
                  "data_fingerprint": fingerprint(data["train"], documents),
                  **{group: asdict(config) for group, config in {**configs, "lm": lm_cfg}.items()}}
    saved = resume_state(state_path, run_config) if args.resume else None
    warn_if_truncated(tokenizer, data, lm_cfg, align_cfg.prefix_tokens)
    print("config:", run_config, f"({world} processes)" if world > 1 else "")
    where = environment(device, args.precision)
    print("environment:", where)
    if rank == 0:
        save_json({**run_config, "environment": where}, out / "config.json")
    # Under torchrun every process holds the same weights and optimizer state: rank 0 saves them.
    checkpoints = Checkpoints(state_path if rank == 0 else None, args.checkpoint_every, saved,
                              extra={"config": run_config, "tokenizer": tokenizer.to_dict()})
    if world == 1:  # under torchrun, torchrun stops every process: the last saved state stays
        stop_on_signals(checkpoints)

    if saved is not None and saved["stage"] == "align":  # the LM stage had finished
        tokenizer, lm, _, lm_history = read_lm(out / "lm.pt", device)
    elif not args.lm:
        builtin = None if args.text or args.data else world_cfg.dataset
        lm, lm_history = pretrain_stage(lm_cfg, documents, tokenizer, args.text_tower, device,
                                        args.seed, checkpoints, args.compile, args.precision,
                                        builtin)
    checkpoint = {"config": run_config, "tokenizer": tokenizer.to_dict(), "lm": lm.state_dict(),
                  "history": {"lm": lm_history}}
    if rank == 0:
        save_checkpoint(checkpoint, out / "lm.pt")
    if args.stage == "lm":
        print(f"wrote {out / 'lm.pt'}")
        return

    chain = chained_corpus(lm_cfg.reading_steps, world_cfg.dataset, args.text or args.data)
    tower, embedder, temperature, align_history = align_stage(
        tokenizer, lm, data["train"], world_cfg, lm_cfg, align_cfg, args.objective,
        args.text_tower, device, args.seed, checkpoints, args.compile, args.precision, chain)
    checkpoint.update(lm=lm.state_dict(),  # unchanged for a frozen tower, trained otherwise
                      embedder=embedder.state_dict(), temperature=temperature().item(),
                      whitening_mean=tower.mean.cpu(), whitening_matrix=tower.matrix.cpu(),
                      history={"lm": lm_history, "align": align_history})
    if rank > 0:
        return
    save_checkpoint(checkpoint, out / "minivlp.pt")

    held_out = {name: split for name, split in data.items() if name != "train"}
    support = None if args.data else make_support_split(world_cfg, args.seed)
    evaluation_start = time.perf_counter()
    metrics = evaluate(embedder, tower, held_out, support, device, args.objective,
                       precision=args.precision, rerank=RERANK_SAMPLES, chain=chain)
    trainable = sum(p.numel() for p in embedder.parameters()) + int(align_cfg.learn_temperature)
    if args.text_tower in LEARNING:
        trainable += sum(p.numel() for p in lm.parameters())
    metrics["run"] = {"text_tower": args.text_tower, "objective": args.objective,
                      "precision": precision, "config": run_config, "environment": where,
                      "wall_seconds": time.perf_counter() - start,
                      "lm_held_out_loss": lm_history["held_out_loss"],
                      # the reading tests at the end of pretraining (minivlp Part 9)
                      **{f"lm_{name}": lm_history[name] for name in ("copy", "names_2way",
                                                                     "names_5way")
                         if name in lm_history},
                      "align_final_loss": align_history["loss"][-1][1],
                      "lm_seconds": lm_history.get("seconds"),
                      "lm_tokens_per_s": lm_history.get("tokens_per_s"),
                      "align_seconds": align_history["seconds"],
                      "align_images_per_s": align_history["images_per_s"],
                      "evaluation_seconds": time.perf_counter() - evaluation_start,
                      "trainable_parameters": trainable}
    save_json(metrics, out / "metrics.json")
    print(format_table(metrics))
    shown = data["val"] if args.data else data["test"]
    pictures = draw_pictures(embedder, tower, shown, {"lm": lm_history, "align": align_history},
                             args.objective, device, out, args.precision)
    print(f"wrote {out / 'minivlp.pt'}, {out / 'metrics.json'}, pictures "
          f"({', '.join(path.name for path in pictures)}) and example images:")
    print("\n".join(save_examples(shown, out, args.seed)))


def join_processes(device_name):
    """Under torchrun (WORLD_SIZE > 1) join the process group: NCCL with one GPU a process, or gloo
    on CPUs. A plain run is one process and needs none of this."""
    device = resolve_device(device_name)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def check_data_parallel(args, configs, world):
    for flag, batch in (("--batch-size", configs["align"].batch_size),
                        ("--lm-batch-size", configs["lm"].batch_size)):
        if batch % world:
            raise ValueError(f"{flag} {batch}: the global batch must split evenly over "
                             f"{world} processes")


def stop_on_signals(checkpoints):
    """Ctrl-C and SIGTERM: inside a training loop, finish the step, save, stop (TrainingStopped);
    elsewhere, stop at once (KeyboardInterrupt). Nothing half-written is left either way."""
    def request_stop(signum, frame):
        if not checkpoints.in_loop:
            raise KeyboardInterrupt
        checkpoints.stop_requested = signal.Signals(signum).name
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)


def cli(argv=None):
    """Run main; an expected failure is one line on stderr and an exit status, no traceback."""
    try:
        main(argv)
    except (ValueError, OSError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    except TrainingStopped as stopped:
        print(f"train.py: {stopped}", file=sys.stderr)
        return stopped.exit_status
    except KeyboardInterrupt:
        print("train.py: interrupted (outside a training loop: nothing to save)", file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM
                          else signal.default_int_handler)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
