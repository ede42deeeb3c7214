"""Retrieval metrics against a brute-force count, zero-shot accuracy on a hand-made case, and
the side-by-side comparison of runs on hand-made metrics files."""

import json

import pytest
import torch

from minivlp import COLOURS, POSITIONS, SHAPES, SIZES, Scene, caption, retrieval_metrics, zeroshot_accuracy


def brute_force_ranks(similarity, caption_index):
    """Ranks by counting, one row at a time, with plain Python lists."""
    N, M = len(similarity), len(similarity[0])
    image_ranks = []
    for i in range(N):
        # the right caption's place: 1 + the captions scored strictly higher (ties favour the model)
        better = [j for j in range(M) if similarity[i][j] > similarity[i][caption_index[i]]]
        image_ranks.append(len(better) + 1)
    text_ranks = []
    for j in range(M):
        right = [i for i in range(N) if caption_index[i] == j]
        best = max(similarity[i][j] for i in right)
        text_ranks.append(1 + sum(1 for i in range(N) if i not in right and similarity[i][j] > best))
    return image_ranks, text_ranks


def test_recall_matches_a_brute_force_count_with_duplicate_captions():
    # 5 images, 3 distinct captions; images 0 and 3 share caption 0, images 1 and 4 caption 1
    similarity = torch.tensor([[0.9, 0.1, 0.3],
                               [0.2, 0.5, 0.8],
                               [0.1, 0.4, 0.7],
                               [0.3, 0.6, 0.2],
                               [0.0, 0.9, 0.1]])
    caption_index = torch.tensor([0, 1, 2, 0, 1])
    # worked by hand: image ranks 1, 2, 1, 2, 1; text ranks: caption 0 -> image 0 first (1),
    # caption 1 -> image 4 first (1), caption 2 -> image 1 scores 0.8 > image 2's 0.7 (2)
    image_ranks, text_ranks = brute_force_ranks(similarity.tolist(), caption_index.tolist())
    assert image_ranks == [1, 2, 1, 2, 1] and text_ranks == [1, 1, 2]
    metrics = retrieval_metrics(similarity, caption_index, ks=(1, 2))
    assert metrics["image_to_text_R@1"] == pytest.approx(3 / 5)
    assert metrics["image_to_text_R@2"] == pytest.approx(1.0)
    assert metrics["image_to_text_mean_rank"] == pytest.approx(7 / 5)
    assert metrics["text_to_image_R@1"] == pytest.approx(2 / 3)
    assert metrics["text_to_image_mean_rank"] == pytest.approx(4 / 3)
    assert metrics["text_to_image_median_rank"] == 1


def test_recall_matches_brute_force_on_random_scores():
    g = torch.Generator().manual_seed(0)
    similarity = torch.randn(40, 12, generator=g)
    caption_index = torch.randint(0, 12, (40,), generator=g)
    caption_index[:12] = torch.arange(12)                              # every caption has an image
    image_ranks, text_ranks = brute_force_ranks(similarity.tolist(), caption_index.tolist())
    metrics = retrieval_metrics(similarity, caption_index)
    for k in (1, 5, 10):
        assert metrics[f"image_to_text_R@{k}"] == pytest.approx(sum(r <= k for r in image_ranks) / 40)
        assert metrics[f"text_to_image_R@{k}"] == pytest.approx(sum(r <= k for r in text_ranks) / 12)
    assert metrics["image_to_text_mean_rank"] == pytest.approx(sum(image_ranks) / 40)


def test_zeroshot_is_perfect_when_image_embeddings_are_their_captions_embeddings():
    # a text embedding that is a one-hot code of each attribute value: the nearest class of an
    # image embedded exactly like its own caption must be its own value
    values = [list(COLOURS), SHAPES, SIZES, list(POSITIONS)]
    offsets = [0, 7, 12, 14]

    def code(scene):
        (colour, shape), = scene.objects
        vector = torch.zeros(19)
        for offset, options, value in zip(offsets, values, (colour, shape, scene.size, scene.where)):
            vector[offset + options.index(value)] = 1
        return vector

    lookup = {}
    for c in COLOURS:
        for s in SHAPES:
            for size in SIZES:
                for where in POSITIONS:
                    scene = Scene(((c, s),), size, where)
                    lookup[caption(scene)] = code(scene)
    embed_texts = lambda texts: torch.stack([lookup[text] for text in texts])
    scenes = [Scene((("red", "cross"),), "small", "top"), Scene((("blue", "circle"),), "large", "left"),
              Scene((("red", "cross"), ("blue", "circle")), "", "above")]  # two objects: skipped
    image_emb = torch.stack([code(scenes[0]), code(scenes[1]), torch.zeros(19)])
    image_emb = image_emb / image_emb.norm(dim=1, keepdim=True).clamp(min=1e-9)
    metrics = zeroshot_accuracy(image_emb, scenes, embed_texts)
    assert metrics == {"zeroshot_colour_acc": 1.0, "zeroshot_shape_acc": 1.0,
                       "zeroshot_size_acc": 1.0, "zeroshot_position_acc": 1.0}
    # swap the two images' embeddings: every attribute differs, so every prediction is wrong
    swapped = zeroshot_accuracy(image_emb[[1, 0, 2]], scenes, embed_texts)
    assert all(value == 0.0 for value in swapped.values())


def hand_made_metrics(tower, r1, with_prefix=True):
    split = {"image_to_text_R@1": r1, "text_to_image_R@1": r1 / 2,
             **{f"zeroshot_{a}_acc": 0.5 for a in ("colour", "shape", "size", "position")}}
    if with_prefix:
        split["caption_exact_match"] = 0.25
        for kind in ("colour", "shape", "count", "position", "exists"):
            split[f"vqa_describe_acc_{kind}"] = 0.8 if kind == "exists" else 0.6   # mean 0.64
            split[f"vqa_blind_acc_{kind}"] = 0.1
    return {"test": split, "compositional": split, "paraphrase": split,
            "run": {"text_tower": tower, "trainable_parameters": 1234567, "wall_seconds": 99.6,
                    "align_images_per_s": 1000.4}}


def test_compare_prints_runs_side_by_side(tmp_path, capsys):
    import eval as evaluation
    for tower, r1, prefix in (("locked", 0.986, True), ("random", 0.5, False)):
        (tmp_path / f"{tower}.json").write_text(json.dumps(hand_made_metrics(tower, r1, prefix)))
    evaluation.main(["--compare", str(tmp_path / "locked.json"), str(tmp_path / "random.json")])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "run"
    locked, random = lines[1].split(), lines[2].split()
    assert locked == ["locked", "1,234,567", "100", "1,000", "0.986", "0.493", "0.986", "0.493",
                      "0.986", "0.500", "0.250", "0.640", "0.100"]
    assert random[:2] == ["random", "1,234,567"] and random[-3:] == ["-", "-", "-"]
