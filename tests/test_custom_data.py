"""Your own data, checkpoints that survive interruption, and bad input: every failure one line on
stderr, a non-zero exit status, no traceback, and nothing already written changed."""

import json
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import eval as evaluation
import minivlp
import train

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (40, 60, 230)}
# A small model and few steps: the tests check plumbing, not accuracy.
SMALL = ["--lm-width", "32", "--lm-heads", "2", "--lm-steps", "24", "--lm-warmup-steps", "2",
         "--steps", "24", "--warmup-steps", "2", "--batch-size", "32", "--checkpoint-every", "5",
         "--device", "cpu"]


def write_dataset(folder, n_images=60):
    """n_images flat-coloured PNGs of three colours, their TSV, and a text corpus."""
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["filepath\ttitle"]
    for i in range(n_images):
        name = list(COLOURS)[i % 3]
        pixels = np.array(COLOURS[name]) + rng.integers(-20, 20, (24, 30, 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / "images" / f"{i}.png")
        lines.append(f"images/{i}.png\ta photo of something {name}")
    (folder / "pairs.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    corpus = "".join(f"a photo of something {c}. {c} is a colour.\n" * 40 for c in COLOURS)
    (folder / "corpus.txt").write_text(corpus, encoding="utf-8")
    return folder / "pairs.tsv"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"))


def run(argv, capsys):
    """train.py's command line in this process: (exit status, stdout, stderr)."""
    try:
        status = train.cli(argv)
    except SystemExit as exit:                                         # argparse's errors
        status = exit.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_own_tsv_trains_and_evaluates_end_to_end(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    status, printed, _ = run(["--data", str(dataset), "--text", str(dataset.parent / "corpus.txt"),
                              "--out", str(out)] + SMALL, capsys)
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"val", "run"}
    assert metrics["val"]["images"] == 6                               # a seeded 10% held out
    assert metrics["val"]["image_to_text_R@1"] > 0.5                   # three colours: chance 1/3
    for name in ("lm.pt", "minivlp.pt", "train_state.pt", "captions.png", "retrieval.png"):
        assert (out / name).exists(), name
    evaluation.main(["--ckpt", str(out / "minivlp.pt"), "--data", str(dataset), "--device", "cpu",
                     "--classes", "red,green,blue", "--templates", "a photo of something {}", "{}",
                     "--json", str(tmp_path / "eval.json")])
    scored = json.loads((tmp_path / "eval.json").read_text())["pairs"]
    assert scored["images"] == 60 and scored["zeroshot_images"] == 60
    assert scored["zeroshot_acc"] > 0.5                                 # chance 1/3


def test_without_text_the_captions_are_the_corpus_and_the_vocabulary_fits_them(dataset, tmp_path,
                                                                              capsys):
    status, printed, _ = run(["--data", str(dataset), "--stage", "lm", "--out", str(tmp_path)]
                             + SMALL, capsys)
    assert status == 0
    lm = minivlp.load_checkpoint(tmp_path / "lm.pt")
    assert lm["config"]["lm"]["vocab_size"] < minivlp.LMConfig.vocab_size   # 432 did not fit
    assert f"allows {lm['config']['lm']['vocab_size']} tokens" in printed


@pytest.mark.parametrize("mode, pixel, expected", [
    ("L", 77, (77, 77, 77)),
    ("LA", (77, 0), (255, 255, 255)),                # fully transparent: the white background
    ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
    ("CMYK", (0, 255, 255, 0), (255, 0, 0)),         # no cyan, full magenta and yellow: red
    ("I;16", 77 * 257, (77, 77, 77)),                # 16 bits scaled to 8, not clipped to white
])
def test_any_image_mode_becomes_rgb(tmp_path, mode, pixel, expected):
    path = tmp_path / f"image.{'tiff' if mode in ('CMYK', 'I;16') else 'png'}"
    Image.new(mode, (20, 12), pixel).save(path)
    image = minivlp.load_image(path, 8)                  # (3, 8, 8): the short side 12 -> 8
    assert image.shape == (3, 8, 8) and image.dtype == torch.uint8
    assert tuple(image[:, 4, 4].tolist()) == expected


def test_a_palette_image_with_a_transparent_colour_is_laid_over_white(tmp_path):
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    image.save(tmp_path / "p.png", transparency=1)
    assert minivlp.load_image(tmp_path / "p.png", 8)[:, 0, 0].tolist() == [255, 255, 255]


def test_centre_crop_keeps_the_middle_of_the_longer_side(tmp_path):
    pixels = np.zeros((8, 24, 3), np.uint8)
    pixels[:, 8:16] = 255                                              # a white middle third
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    assert minivlp.load_image(tmp_path / "wide.png", 8).min().item() == 255


# --- bad input -----------------------------------------------------------------------------------

def bad_files(folder):
    """Each bad input as (name, flags, what the one-line message must name)."""
    good = write_dataset(folder / "good")
    def table(name, text, encoding="utf-8"):
        path = folder / name
        path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
        return str(path)
    (folder / "broken.png").write_bytes(b"not an image")
    header = "filepath\ttitle\n"
    tiny_corpus = table("tiny.txt", "ab\nab\n")
    foreign = folder / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    pickled = folder / "pickled.pt"
    torch.save({"format": minivlp.CHECKPOINT_FORMAT, "payload": print}, pickled)
    (folder / "a-file").write_text("")
    return [
        ("missing data file", ["--data", str(folder / "none.tsv")], "none.tsv"),
        ("data is a folder", ["--data", str(folder)], str(folder)),
        ("missing column", ["--data", table("cols.tsv", "path\ttitle\nimages/0.png\tred\n")],
         "'filepath'"),
        ("empty caption",
         ["--data", table("empty.tsv", header + f"{good.parent}/images/0.png\t \n")],
         "empty.tsv, line 2"),
        ("image missing", ["--data", table("gone.tsv", header + "nowhere.png\ta red thing\n" * 2)],
         "gone.tsv, line 2"),
        ("image missing, streamed", ["--data", str(folder / "gone.tsv"), "--stream"],
         "gone.tsv, line"),
        ("image broken", ["--data", table("broken.tsv", header + "broken.png\ta red thing\n" * 2)],
         "broken.tsv, line 2"),
        ("not utf-8", ["--data", table("latin.tsv", header + "broken.png\tun caf\xe9 rouge\n" * 2,
                                       "latin-1")], "latin.tsv, line 2"),
        ("empty dataset", ["--data", table("header.tsv", header)], "header.tsv"),
        ("corpus too small", ["--data", str(good), "--text", tiny_corpus,
                              "--lm-vocab-size", "400"], "tiny.txt"),
        ("text not utf-8", ["--data", str(good), "--text", table("t.txt", b"ok\n\xff\xfe\n")],
         "t.txt, line 2"),
        ("unknown flag", ["--no-such-flag"], "--no-such-flag"),
        ("bad value", ["--steps", "many"], "--steps"),
        ("negative value", ["--lr", "-1"], "--lr"),
        ("negative seed", ["--seed", "-1"], "--seed"),
        ("foreign checkpoint", ["--data", str(good), "--lm", str(foreign)], "foreign.pt"),
        ("pickled checkpoint", ["--data", str(good), "--lm", str(pickled)], "weights_only"),
        ("unwritable output", ["--out", str(folder / "a-file" / "out")], "--out"),
    ]


def test_each_bad_input_is_one_line_exit_2_and_nothing_is_overwritten(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "minivlp.pt").write_bytes(b"an earlier run's checkpoint")
    (out / "config.json").write_text("{}")
    for name, flags, culprit in bad_files(tmp_path):
        argv = flags + ([] if "--out" in flags else ["--out", str(out)]) + ["--device", "cpu"]
        status, _, err = run(argv, capsys)
        lines = err.strip().splitlines()
        assert status == 2, (name, err)
        assert len(lines) == 1 and culprit in lines[0], (name, err)
        assert "Traceback" not in err, name
        assert (out / "minivlp.pt").read_bytes() == b"an earlier run's checkpoint", name
        assert (out / "config.json").read_text() == "{}", name


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path, capsys):
    status, _, err = run(["--device", "cuda", "--out", str(tmp_path)], capsys)
    assert status == 2 and "--device cuda" in err and len(err.strip().splitlines()) == 1


def test_a_long_caption_is_truncated_with_one_warning(tmp_path, capsys):
    dataset = write_dataset(tmp_path / "d", n_images=30)
    lines = dataset.read_text().splitlines()
    lines[1] += " and then a great many more words" * 8                  # far past 64 tokens
    dataset.write_text("\n".join(lines) + "\n")
    status, _, err = run(["--data", str(dataset), "--stage", "lm", "--out", str(tmp_path / "o")]
                         + SMALL, capsys)
    assert status == 0
    assert err.count("warning") == 1 and "1 of" in err and "truncated" in err


# --- checkpoints, interruption, resume ------------------------------------------------------------

def interrupt_at(monkeypatch, stage, step):
    """Send this process SIGTERM, as `kill` would, at the end of one step of one stage."""
    after_step = minivlp.Checkpoints.after_step
    def patched(self, current, loss, logged):
        if self.stage == stage and current == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return after_step(self, current, loss, logged)
    monkeypatch.setattr(minivlp.Checkpoints, "after_step", patched)


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    assert train.cli(["--data", str(dataset), "--out", str(out)] + SMALL) == 0
    return out


def test_eval_on_a_bad_data_file_names_it(uninterrupted, tmp_path):
    with pytest.raises(ValueError, match="none.tsv: no such file"):
        evaluation.main(["--ckpt", str(uninterrupted / "minivlp.pt"), "--device", "cpu",
                         "--data", str(tmp_path / "none.tsv")])


@pytest.mark.parametrize("stage, step", [("lm", 12), ("align", 7)])
def test_an_interrupted_run_resumes_to_the_same_weights(dataset, uninterrupted, tmp_path, capsys,
                                                        monkeypatch, stage, step):
    argv = ["--data", str(dataset), "--out", str(tmp_path)] + SMALL
    interrupt_at(monkeypatch, stage, step)
    status, _, err = run(argv, capsys)
    assert status == 130 and f"stopped in {stage} at step {step}" in err
    state = minivlp.load_checkpoint(tmp_path / "train_state.pt")
    assert (state["stage"], state["step"]) == (stage, step)            # saved on the signal
    assert not (tmp_path / "minivlp.pt").exists()
    monkeypatch.undo()
    assert run(argv + ["--resume"], capsys)[0] == 0
    resumed = minivlp.load_checkpoint(tmp_path / "minivlp.pt")
    uninterrupted = minivlp.load_checkpoint(uninterrupted / "minivlp.pt")
    for part in ("lm", "embedder"):
        for name, tensor in uninterrupted[part].items():
            assert torch.equal(resumed[part][name], tensor), (part, name)
    assert resumed["temperature"] == uninterrupted["temperature"]


def test_streamed_images_resume_to_the_weights_of_images_in_memory(dataset, uninterrupted,
                                                                   tmp_path, capsys, monkeypatch):
    """--stream reads every batch from disk in DataLoader workers: the same batches, the same
    pixels, so the same weights as the uninterrupted run that decoded everything into memory."""
    argv = ["--data", str(dataset), "--out", str(tmp_path), "--stream"] + SMALL
    interrupt_at(monkeypatch, "align", 7)
    assert run(argv, capsys)[0] == 130
    monkeypatch.undo()
    assert run(argv + ["--resume"], capsys)[0] == 0
    streamed = minivlp.load_checkpoint(tmp_path / "minivlp.pt")["embedder"]
    for name, tensor in minivlp.load_checkpoint(uninterrupted / "minivlp.pt")["embedder"].items():
        assert torch.equal(streamed[name], tensor), name


def test_an_image_broken_while_streaming_stops_with_its_line(dataset, tmp_path, capsys):
    copy = write_dataset(tmp_path / "copy", n_images=30)
    (copy.parent / "images" / "4.png").write_bytes(b"no longer a picture")
    argv = ["--data", str(copy), "--val-data", str(dataset), "--stream", "--out",
            str(tmp_path / "out")] + SMALL
    status, _, err = run(argv, capsys)
    last_line = err.strip().splitlines()[-1]                           # above it: progress bars
    assert status == 2 and "pairs.tsv, line 6" in last_line and "4.png" in last_line
    assert "Traceback" not in err
    assert minivlp.load_checkpoint(tmp_path / "out" / "train_state.pt")["stage"] == "lm"


def test_resume_with_other_flags_or_a_pickled_state_is_refused(dataset, tmp_path, capsys):
    argv = ["--data", str(dataset), "--out", str(tmp_path), "--stage", "lm"] + SMALL
    assert run(argv, capsys)[0] == 0
    status, _, err = run(argv + ["--resume", "--lm-lr", "0.01"], capsys)
    assert status == 2 and "lm.lr" in err and len(err.strip().splitlines()) == 1
    torch.save({"format": minivlp.CHECKPOINT_FORMAT, "payload": print}, tmp_path / "train_state.pt")
    status, _, err = run(argv + ["--resume"], capsys)
    assert status == 2 and "weights_only" in err


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(dataset, tmp_path, capsys):
    argv = ["--data", str(dataset), "--out", str(tmp_path)] + SMALL + ["--lr", "1e30"]
    status, _, err = run(argv, capsys)
    last_line = err.strip().splitlines()[-1]                           # above it: progress bars
    assert status == 1 and "align, step" in last_line and "the loss is" in last_line
    assert "keeps the state of lm, step 23" in last_line and "Traceback" not in err
    state = minivlp.load_checkpoint(tmp_path / "train_state.pt")
    assert state["stage"] == "lm" and state["step"] == 23              # the LM stage's last, intact
    assert not (tmp_path / "minivlp.pt").exists()
