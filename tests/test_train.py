"""End to end at toy size: train.py then eval.py, the frozen LM untouched, and the command line's
errors (one line, exit status 2, no traceback).

References: chance levels; the LM's weights before alignment; recall and the run's pictures
recomputed from the checkpoint with plain loops (F.cosine_similarity); the colour of a flat
image, which the hand-built checkpoint of tests/colour_reader.py must name."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import eval as evaluation
import train
from colour_reader import write_colour_checkpoint
from eval import GREEN, RED
from minivlp import COLOURS, embed_images, load_checkpoint, make_eval_splits

ROOT = Path(__file__).resolve().parent.parent
TINY_RUN = ["--train-images", "1500", "--eval-images", "150", "--corpus-documents", "600",
            "--lm-vocab-size", "300", "--lm-width", "64", "--lm-depth", "2", "--lm-steps", "40",
            "--lm-warmup-steps", "5", "--steps", "80", "--warmup-steps", "5", "--batch-size", "128",
            "--prefix-tokens", "4", "--device", "cpu"]
# K = 4, not the default 8: with a 300-token vocabulary an `exists` question and its chain take so
# many tokens that after 1 + 8 positions they would not fit the LM's 64 (eval.py skips them).


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train.main(TINY_RUN + ["--out", str(out)])
    return out


def test_tiny_run_beats_chance(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics) == {"test", "compositional", "paraphrase", "run"}
    assert metrics["run"]["text_tower"] == "locked" and metrics["run"]["trainable_parameters"] > 0
    test = metrics["test"]
    chance_at_5 = 5 / test["captions"]                                 # ~0.05 for ~100 captions
    assert test["image_to_text_R@5"] > 4 * chance_at_5
    assert test["text_to_image_R@5"] > 4 * chance_at_5
    assert test["zeroshot_position_acc"] > 2 / 5                        # 5 positions: chance 1/5


def test_alignment_leaves_the_frozen_lm_bit_identical(tiny_run):
    before = load_checkpoint(tiny_run / "lm.pt")["lm"]                # written before alignment
    after = load_checkpoint(tiny_run / "minivlp.pt")["lm"]
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name


def naive_recall(similarity, caption_index, k):
    """Recall@k both ways with plain Python loops: a right answer's rank is 1 + the wrong
    candidates scoring at least as high as the best right one."""
    N, M = len(similarity), len(similarity[0])
    image_hits = 0
    for i in range(N):
        right = similarity[i][caption_index[i]]
        wrong_above = sum(similarity[i][j] >= right for j in range(M) if j != caption_index[i])
        image_hits += 1 + wrong_above <= k
    text_hits = 0
    for j in range(M):
        best = max(similarity[i][j] for i in range(N) if caption_index[i] == j)
        wrong_above = sum(similarity[i][j] >= best for i in range(N) if caption_index[i] != j)
        text_hits += 1 + wrong_above <= k
    return image_hits / N, text_hits / M


def test_retrieval_written_by_train_matches_a_count_from_the_checkpoint(tiny_run):
    """The model rebuilt from minivlp.pt, counted by hand, gives the recall train.py wrote: the
    checkpoint holds all that evaluation needs (LM, whitening, embedder, world and seed)."""
    device = torch.device("cpu")
    checkpoint = load_checkpoint(tiny_run / "minivlp.pt")
    tower, embedder, world_cfg, config = evaluation.load_models(checkpoint, device)
    written = json.loads((tiny_run / "metrics.json").read_text())
    for name, split in make_eval_splits(world_cfg, config["seed"]).items():
        image_emb, _ = embed_images(embedder, split.images, device)      # (N, C) unit vectors
        text_emb = F.normalize(tower(split.captions), dim=1)             # (M, C)
        similarity = (image_emb @ text_emb.T).tolist()
        for k in (1, 5):
            image_to_text, text_to_image = naive_recall(similarity, split.caption_index.tolist(), k)
            assert written[name][f"image_to_text_R@{k}"] == pytest.approx(image_to_text), (name, k)
            assert written[name][f"text_to_image_R@{k}"] == pytest.approx(text_to_image), (name, k)


def test_reranking_keeps_the_candidate_nearest_v_checked_by_hand(tiny_run, monkeypatch):
    """caption_exact_match_reranked of `evaluate`, with the LM's captions replaced by known ones
    (greedy: another image's caption; sample 3: the image's own; the other samples: other
    images'), against a choice by hand: the candidate of highest F.cosine_similarity with v,
    parsed and compared with the scene."""
    device = torch.device("cpu")
    tower, embedder, world_cfg, config = evaluation.load_models(
        load_checkpoint(tiny_run / "minivlp.pt"), device)
    split = make_eval_splits(world_cfg, config["seed"])["test"]
    own = [split.captions[j] for j in split.caption_index]
    def known_captions(lm, tokenizer, prefixes, sample_temperature=0.0, seed=0, **_):
        return own if seed == 3 else own[seed + 1:] + own[:seed + 1]
    monkeypatch.setattr(evaluation, "describe", known_captions)
    support = evaluation.make_support_split(world_cfg, config["seed"])
    metrics = evaluation.evaluate(embedder, tower, {"test": split}, support, device, "both",
                                  rerank=8)["test"]
    image_emb, _ = embed_images(embedder, split.images, device)
    right = 0
    for i, scene in enumerate(split.scenes):
        options = [known_captions(None, None, None, seed=seed)[i] for seed in range(9)]
        cosines = [F.cosine_similarity(tower([text])[0], image_emb[i], dim=0).item()
                   for text in options]
        right += evaluation.parse_caption(options[cosines.index(max(cosines))]) == scene
    assert right > 0                                        # v finds some images' own caption
    assert metrics["caption_exact_match_reranked"] == pytest.approx(right / len(split.scenes))


@pytest.mark.parametrize("colour", ["red", "blue", "yellow", "white"])
def test_caption_and_ask_name_the_colour_of_the_image(colour, tmp_path, capsys):
    """tests/colour_reader.py: a checkpoint built by hand whose LM names the colour of what it
    sees. A flat image of a colour, not square (resized, then cropped): --caption must say the
    colour, and --ask must print that caption, then the colour again as the answer."""
    checkpoint = write_colour_checkpoint(tmp_path / "minivlp.pt")
    image = tmp_path / f"{colour}.png"
    Image.new("RGB", (48, 20), COLOURS[colour]).save(image)
    flags = ["--ckpt", str(checkpoint), "--device", "cpu"]
    evaluation.main(flags + ["--caption", str(image)])
    evaluation.main(flags + ["--ask", str(image), "What colour is the square? "])
    assert capsys.readouterr().out.splitlines() == [colour, colour, colour]


def test_caption_of_a_missing_or_broken_image_is_a_clear_error(tiny_run, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    for path in (tmp_path / "missing.png", broken):
        result = run_cli("eval.py", "--ckpt", str(tiny_run / "minivlp.pt"), "--caption", str(path))
        assert result.returncode == 2 and str(path) in result.stderr
        assert "Traceback" not in result.stderr


def run_cli(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args, culprit", [
    (["train.py", "--no-such-flag"], "--no-such-flag"),
    (["train.py", "--steps", "-1"], "--steps"),
    (["train.py", "--lr", "fast"], "--lr"),
    (["train.py", "--text-tower", "unlocked"], "--text-tower"),
    (["eval.py", "--ckpt", "no/such/file.pt"], "no/such/file.pt"),
])
def test_bad_input_is_one_line_with_exit_status_2(args, culprit):
    result = run_cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and culprit in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error(tmp_path):
    result = run_cli("train.py", "--device", "cuda", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "--device cuda" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()                              # nothing was started


def test_a_pickled_checkpoint_is_refused_by_eval(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "minivlp-1", "payload": print}, path)
    result = run_cli("eval.py", "--ckpt", str(path))
    assert result.returncode == 2 and "weights_only" in result.stderr


def tiny_alignment(seed, train_lm=False):
    from minivlp import (AlignConfig, LanguageModel, LMConfig, Temperature, TextTower,
                         VisualEmbedder, align, freeze)
    from tokenizer import Tokenizer
    tokenizer = Tokenizer.train("a red circle\na blue square\n" * 10, 270)
    torch.manual_seed(0)
    lm = freeze(LanguageModel(LMConfig(vocab_size=270, context=24, width=16, depth=1, heads=2)))
    tower = TextTower(lm, tokenizer, torch.zeros(16), torch.eye(16), torch.device("cpu"))
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    embedder = VisualEmbedder(16, 16, prefix_tokens=2)
    initial = {name: t.clone() for name, t in embedder.state_dict().items()}
    initial_lm = {name: t.clone() for name, t in lm.state_dict().items()}
    align(embedder, Temperature(0.07, learn=True), tower, images, torch.arange(32) % 2,
          ["a red circle", "a blue square"], AlignConfig(steps=4, batch_size=8, warmup_steps=1),
          "both", torch.device("cpu"), seed, train_lm=train_lm)
    return initial, embedder.state_dict(), initial_lm, lm


def same(a, b):
    return all(torch.equal(a[name], b[name]) for name in a)


def test_alignment_is_reproducible_on_cpu_with_the_same_seed():
    initial, first, _, _ = tiny_alignment(seed=3)
    _, second, _, _ = tiny_alignment(seed=3)
    _, other_seed, _, _ = tiny_alignment(seed=4)
    assert same(first, second)
    assert not same(first, initial)                                     # it did train
    assert not same(first, other_seed)                                  # the seed picks the batches


def test_only_the_finetune_ablation_changes_the_lm():
    _, _, initial_lm, lm = tiny_alignment(seed=0)
    assert same(initial_lm, lm.state_dict())
    _, _, initial_lm, lm = tiny_alignment(seed=0, train_lm=True)
    assert not same(initial_lm, lm.state_dict())
    assert not lm.training and not any(p.requires_grad for p in lm.parameters())  # frozen again


def test_the_runs_pictures_show_its_test_images_and_their_similarities(tiny_run):
    """similarity.png and retrieval.png against the checkpoint, recomputed here with a loop over
    F.cosine_similarity: the heat map's cell (i, j) has the grey level of image i against the
    caption of image j; each query row of retrieval.png shows its image, pixel for pixel, and
    its top 3 captions, the right one in green, the others in red."""
    device = torch.device("cpu")
    checkpoint = load_checkpoint(tiny_run / "minivlp.pt")
    tower, embedder, world_cfg, config = evaluation.load_models(checkpoint, device)
    split = make_eval_splits(world_cfg, config["seed"])["test"]
    image_emb, _ = embed_images(embedder, split.images, device)
    text_emb = tower(split.captions)
    cosine = [[F.cosine_similarity(v, t, dim=0).item() for t in text_emb] for v in image_emb[:24]]
    block = [[cosine[i][split.caption_index[j]] for j in range(24)] for i in range(24)]
    low, high = min(map(min, block)), max(map(max, block))
    with Image.open(tiny_run / "similarity.png") as picture:
        for i in range(24):
            for j in range(24):
                level = picture.getpixel((60 + j * 14 + 7, 60 + i * 14 + 7))[0]
                assert abs(level - 255 * (block[i][j] - low) / (high - low)) <= 1.01, (i, j)
    with Image.open(tiny_run / "retrieval.png") as picture:
        pixels = picture.convert("RGB")
        for row in range(6):
            y = 24 + 104 * row
            image = split.images[row]                                  # (3, 32, 32) -> 96 x 96
            for py, px in ((0, 0), (5, 20), (17, 17), (31, 9)):
                assert pixels.getpixel((8 + 3 * px + 1, y + 3 * py + 1)) == \
                    tuple(image[:, py, px].tolist()), (row, py, px)
            top = sorted(range(len(split.captions)), key=lambda j: -cosine[row][j])[:3]
            for rank, j in enumerate(top):
                band = [pixels.getpixel((x, y + 8 + 28 * rank + dy))
                        for x in range(116, 560) for dy in range(14)]
                right = j == split.caption_index[row]
                assert (GREEN in band, RED in band) == (right, not right), (row, rank)


def test_the_similarity_heat_map_is_bright_where_similarity_is_high(tmp_path):
    from PIL import Image
    from eval import draw_similarity
    similarity = torch.eye(24) * 2 - 1                                  # 1 on the diagonal, -1 off
    draw_similarity(similarity, tmp_path / "map.png", n=24, cell=14)
    with Image.open(tmp_path / "map.png") as picture:
        centre = lambda i, j: picture.getpixel((60 + j * 14 + 7, 60 + i * 14 + 7))
        assert centre(3, 3) == (255, 255, 255) and centre(3, 4) == (0, 0, 0)
