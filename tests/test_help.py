"""--help: every flag of train.py and eval.py says what it does, the config flags in the words of
the dataclass comments in minivlp.py, and each script's usage examples show.

References: the dataclass comments copied here by hand, the usage lines of each module
docstring copied here by hand, and a hand-made dataclass whose comments are known."""

import argparse
from dataclasses import dataclass

import pytest

import eval as evaluation
import train

PARSERS = {"train.py": train.build_parser, "eval.py": evaluation.build_parser}


@pytest.mark.parametrize("script", PARSERS)
def test_no_flag_is_without_help_beyond_its_default(script):
    """At least three words besides the default: '(default: 0)' alone tells nothing."""
    parser = PARSERS[script]()
    for action in parser._actions:
        text = (action.help or "").replace("(default: %(default)s)", "").strip(" ;,.")
        assert len(text.split()) >= 3, f"{'/'.join(action.option_strings)}: {action.help!r}"


@pytest.mark.parametrize("flag, comment", [
    ("--question-rows", "images a step asked one question, taught by the LM (teacher_loss)"),
    ("--prefix-tokens", "K: embeddings the image becomes ahead of the LM's text (Frozen)"),
    ("--temperature", "τ in §4.2 (initial value when learned)"),
    ("--steps", "alignment steps (only the visual embedder learns)"),
    ("--lm-steps", "pretraining steps (why so many: tutorials/design.md)"),
    ("--image-size", "rendered images are image_size x image_size RGB"),
])
def test_a_config_flags_help_is_its_dataclass_comment_then_its_default(flag, comment):
    action = next(a for a in train.build_parser()._actions if flag in a.option_strings)
    assert action.help.startswith(comment) and action.help.endswith("(default: %(default)s)")


def test_the_help_says_what_the_comments_leave_out():
    """--help as printed: where world flags still apply, how --seed and --seeds relate, which
    flags eval.py needs. Each phrase must sit in its flag's entry, not just anywhere."""
    def entry(text, flag):
        """The lines of `flag`'s entry in a printed --help."""
        lines = text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(flag + " "))
        end = next((i for i in range(start + 1, len(lines))
                    if not lines[i].startswith(" " * 24)), len(lines))
        return " ".join(line.strip() for line in lines[start:end])

    printed = train.build_parser().format_help()
    assert "a multiple of 8" in entry(printed, "--image-size")
    assert "built-in world only" in entry(printed, "--train-images")
    assert "--seeds" in entry(printed, "--seed") and "torchrun" in entry(printed, "--seeds")
    assert "--no-learn-temperature" in entry(printed, "--learn-temperature,")
    for title in ("the toy world:", "the language model (pretraining):", "alignment:"):
        assert f"\n{title}\n" in printed
    assert "WorldConfig" not in printed and "AlignConfig" not in printed
    printed = evaluation.build_parser().format_help()
    assert "needed" in entry(printed, "--ckpt")
    assert "--caption only" in entry(printed, "--sample-temperature")
    assert "auto" in entry(printed, "--device")


@pytest.mark.parametrize("script, example", [
    ("train.py", "    python train.py --seeds 0,1,2          # one run a seed (OUT/seed0, ...), "
                 "then mean (min–max)"),
    ("train.py", "    torchrun --nproc_per_node=4 train.py   # data parallel over 4 processes "
                 "(GPUs, or CPUs)"),
    ("eval.py", '    python eval.py --ckpt out/minivlp.pt --ask IMAGE.png "what colour is the '
                'circle?"   # the same,'),
    ("eval.py", "    python eval.py --compare out/locked/metrics.json out/random/metrics.json   "
                "# side by side"),
])
def test_the_usage_examples_show_line_for_line(script, example):
    assert example in PARSERS[script]().format_help().splitlines()


@dataclass
class HandMade:
    steps: int = 3               # how many steps
    name: str = "a # b"          # a default holding '#' and ':'
    rate: float = 0.5
    flag: bool = True            # a boolean: it: has colons


def test_field_comments_are_read_from_the_source_as_written():
    assert train.field_comments(HandMade) == {"steps": "how many steps",
                                              "name": "a default holding '#' and ':'",
                                              "flag": "a boolean: it: has colons"}
    help = train.field_help("align", argparse.Namespace(name="steps"), "100% of it")
    assert help == "100%% of it (default: %(default)s)"                 # argparse's escape
