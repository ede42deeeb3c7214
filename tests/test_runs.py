"""Runs over several seeds and the records that make a number reproducible: `--seeds` runs one
seed after another, `eval.py --compare` prints runs that differ only in seed as mean (min–max)
and labels what else differs, a run's files say where it ran, and --resume refuses data that
changed. Also two clear errors found in review.

References: means worked by hand; for where a run ran, a process started with one thread and
bf16, the installed torch's package metadata and /proc/cpuinfo."""

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval as evaluation
import minivlp
import train
from test_custom_data import SMALL, run, write_dataset

ROOT = Path(__file__).resolve().parent.parent


def fake_metrics(path, seed, tower, test_r1, para_r1, precision="float32"):
    """A metrics.json as train.py writes it, with the few values compare reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {"seed": seed, "text_tower": tower, "objective": "both", "precision": precision,
              "align": {"steps": 300}}
    path.write_text(json.dumps({
        "test": {"image_to_text_R@1": test_r1, "text_to_image_R@1": 1.0},
        "paraphrase": {"image_to_text_R@1": para_r1},
        "run": {"config": config, "precision": precision, "text_tower": tower}}))
    return path


def test_compare_groups_seeds_as_mean_min_max_and_labels_what_differs(tmp_path, capsys):
    paths = [fake_metrics(tmp_path / f"locked{s}.json", s, "locked", r, p)
             for s, r, p in ((0, 0.90, 0.60), (1, 0.96, 0.70), (2, 0.99, 0.50))]
    paths += [fake_metrics(tmp_path / f"random{s}.json", s, "random", 0.98, 0.01)
              for s in (0, 1)]
    evaluation.main(["--compare", *map(str, paths)])
    lines = capsys.readouterr().out.splitlines()
    locked = next(line for line in lines if line.startswith("text_tower=locked (seeds 0,1,2)"))
    random = next(line for line in lines if line.startswith("text_tower=random (seeds 0,1)"))
    # means worked out by hand: (0.90 + 0.96 + 0.99) / 3 = 0.95, (0.6 + 0.7 + 0.5) / 3 = 0.6
    assert "0.950 (0.900–0.990)" in locked and "0.600 (0.500–0.700)" in locked
    assert "0.980" in random and "0.010" in random
    # t->i is 1.0 for every run: a column that tells them apart in nothing is left out
    assert "test t→i" not in lines[0] and any("left out" in line and "test t→i" in line
                                               for line in lines)


def test_compare_labels_runs_that_differ_in_precision(tmp_path, capsys):
    paths = [fake_metrics(tmp_path / "a.json", 0, "locked", 0.9, 0.6, "float32"),
             fake_metrics(tmp_path / "b.json", 0, "locked", 0.8, 0.5, "bfloat16")]
    evaluation.main(["--compare", *map(str, paths)])
    out = capsys.readouterr().out
    assert "precision=float32 (seeds 0)" in out and "precision=bfloat16 (seeds 0)" in out


def test_compare_groups_runs_that_read_their_seeds_lm_from_a_file_with_those_that_pretrained_it(
        tmp_path, capsys):
    """--lm out/seedN/lm.pt reuses the LM a run of seed N pretrains: the file is where the LM came
    from, not a setting (its settings are under lm.*), so the seeds still make one row."""
    paths = [fake_metrics(tmp_path / f"{s}.json", s, "locked", 0.9, 0.6) for s in (0, 1, 2)]
    for s, path in ((1, paths[1]), (2, paths[2])):
        record = json.loads(path.read_text())
        record["run"]["config"]["lm_checkpoint"] = f"out/seed{s}/lm.pt"
        path.write_text(json.dumps(record))
    evaluation.main(["--compare", *map(str, paths)])
    assert capsys.readouterr().out.splitlines()[1].startswith("runs (seeds 0,1,2)")


def test_compare_names_runs_without_a_configuration_by_their_files(tmp_path, capsys):
    # tutorial 8 writes evaluate's metrics with a run record of its own, without train.py's
    # configuration: such runs are not one setting, each row is its file
    paths = []
    for name, r1 in (("locked", 0.7), ("random", 0.9)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"test": {"image_to_text_R@1": r1, "text_to_image_R@1": 1.0},
                                    "run": {"text_tower": name}}))
        paths.append(path)
    evaluation.main(["--compare", *map(str, paths)])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["run=locked", "run=random"]
    assert "0.700" in lines[1] and "0.900" in lines[2]


def test_seeds_run_one_after_another_each_in_its_folder(tmp_path, monkeypatch, capsys):
    calls = []
    def fake_run(args, configs, asked_vocab):
        calls.append((args.seed, args.out))
        fake_metrics(Path(args.out) / "metrics.json", args.seed, "locked",
                     0.9 + args.seed / 100, 0.5)
    monkeypatch.setattr(train, "run", fake_run)
    train.main(["--seeds", "2,0", "--out", str(tmp_path)])
    assert calls == [(2, str(tmp_path / "seed2")), (0, str(tmp_path / "seed0"))]
    assert "0.910 (0.900–0.920)" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["0,0", "1,-2", "a"])
def test_bad_seed_lists_are_refused(flag, capsys):
    with pytest.raises(SystemExit) as exit:
        train.build_parser().parse_args(["--seeds", flag])
    assert exit.value.code == 2 and "--seeds" in capsys.readouterr().err


def test_a_run_records_its_precision_and_environment_and_resume_refuses_changed_data(tmp_path,
                                                                                     capsys):
    """train.py in a process of its own, one thread (set here, whatever this machine has) and
    --precision bf16 (emulated where not native): its config.json must say so, name the torch
    of the installed package's metadata and the processor /proc/cpuinfo names first."""
    pairs = write_dataset(tmp_path / "data", n_images=30)
    argv = ["--data", str(pairs), "--out", str(tmp_path / "out"), "--stage", "lm", *SMALL]
    result = subprocess.run([sys.executable, "train.py", *argv, "--precision", "bf16"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["precision"] == config["environment"]["precision"] == "bfloat16"
    assert config["environment"]["threads"] == 1
    assert config["environment"]["torch"] == importlib.metadata.version("torch")
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in
             (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if line.startswith("model name")]
    processor = config["environment"]["processor"]
    assert processor == names[0] if names else processor               # elsewhere: named at least
    # the same files, one caption changed: --resume must not continue on other data
    pairs.write_text(pairs.read_text().replace("something red", "something crimson", 1))
    status, _, err = run(argv + ["--precision", "bf16", "--resume"], capsys)
    assert status == 2 and "changed" in err and "Traceback" not in err


def test_a_prefix_with_no_room_for_a_caption_is_a_clear_error(tmp_path, capsys):
    status, _, err = run(["--prefix-tokens", "60", "--out", str(tmp_path / "out"),
                          "--train-images", "64", "--eval-images", "16", "--corpus-documents",
                          "60", "--lm-vocab-size", "280", "--device", "cpu"], capsys)
    assert status == 2 and "--prefix-tokens 60" in err and len(err.strip().splitlines()) == 1


def test_whitening_one_caption_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 distinct captions"):
        minivlp.fit_whitening(torch.randn(1, 8))
    with pytest.raises(ValueError, match="identical"):
        minivlp.fit_whitening(torch.ones(4, 8))
