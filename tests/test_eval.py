"""Retrieval metrics against a count by the rule, hand-made ties, and chance; zero-shot accuracy
on a hand-made case; the side-by-side comparison of runs on hand-made metrics files."""

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from eval import choose_by_v
from minivlp import (COLOURS, POSITIONS, SHAPES, SIZES, Scene, caption, retrieval_metrics,
                     zeroshot_accuracy)


def brute_force_ranks(similarity, caption_index):
    """Ranks by the rule, counted with plain Python lists: 1 + the wrong candidates that score at
    least as high as the best right one (a tie counts against the model)."""
    N, M = len(similarity), len(similarity[0])
    image_ranks = []
    for i in range(N):
        right = similarity[i][caption_index[i]]
        image_ranks.append(1 + sum(1 for j in range(M)
                                   if j != caption_index[i] and similarity[i][j] >= right))
    text_ranks = []
    for j in range(M):
        right = [i for i in range(N) if caption_index[i] == j]
        best = max(similarity[i][j] for i in right)
        text_ranks.append(1 + sum(1 for i in range(N)
                                  if i not in right and similarity[i][j] >= best))
    return image_ranks, text_ranks


def test_ranks_worked_by_hand_with_ties_and_a_shared_caption():
    """Images 0 and 2 share caption 0; image 1 has caption 1, image 3 caption 2.
    Image -> text, each row against its own caption:
        image 0: caption 1 ties its 0.5                     -> rank 2
        image 1: 0.7 beats 0.2 and 0.6                      -> rank 1
        image 2: 0.5 beats the two tied wrong 0.3s          -> rank 1
        image 3: every caption scores 0.6, two of them wrong -> rank 3
    Text -> image, each column against its best right image:
        caption 0: images 0 and 2 tie at 0.5 (both right); image 3's 0.6 is higher -> rank 2
        caption 1: image 1's 0.7 beats every other image                           -> rank 1
        caption 2: image 3's 0.6 is tied by image 1                                -> rank 2
    Counting only strictly higher scores would rank every image first."""
    similarity = torch.tensor([[0.5, 0.5, 0.1],
                               [0.2, 0.7, 0.6],
                               [0.5, 0.3, 0.3],
                               [0.6, 0.6, 0.6]])
    caption_index = torch.tensor([0, 1, 0, 2])
    image_ranks, text_ranks = brute_force_ranks(similarity.tolist(), caption_index.tolist())
    assert image_ranks == [2, 1, 1, 3] and text_ranks == [2, 1, 2]
    metrics = retrieval_metrics(similarity, caption_index, ks=(1, 2, 3))
    assert metrics["image_to_text_R@1"] == 2 / 4
    assert metrics["image_to_text_R@2"] == 3 / 4
    assert metrics["image_to_text_R@3"] == 1.0
    assert metrics["image_to_text_mean_rank"] == pytest.approx(7 / 4)
    assert metrics["text_to_image_R@1"] == pytest.approx(1 / 3)
    assert metrics["text_to_image_R@2"] == 1.0
    assert metrics["text_to_image_mean_rank"] == pytest.approx(5 / 3)
    assert metrics["text_to_image_median_rank"] == 2


def test_recall_matches_the_count_by_the_rule_on_scores_full_of_ties():
    g = torch.Generator().manual_seed(0)
    similarity = torch.randint(0, 5, (40, 12), generator=g) / 4        # 5 values: many ties
    caption_index = torch.randint(0, 12, (40,), generator=g)
    caption_index[:12] = torch.arange(12)                              # every caption has an image
    image_ranks, text_ranks = brute_force_ranks(similarity.tolist(), caption_index.tolist())
    metrics = retrieval_metrics(similarity, caption_index)
    for k in (1, 5, 10):
        image_hits, text_hits = sum(r <= k for r in image_ranks), sum(r <= k for r in text_ranks)
        assert metrics[f"image_to_text_R@{k}"] == pytest.approx(image_hits / 40)
        assert metrics[f"text_to_image_R@{k}"] == pytest.approx(text_hits / 12)
    assert metrics["image_to_text_mean_rank"] == pytest.approx(sum(image_ranks) / 40)
    assert metrics["text_to_image_mean_rank"] == pytest.approx(sum(text_ranks) / 12)


# Chance: an embedder that knows nothing puts the candidates in a random order.
#   image -> text: the image's caption is first among the M captions with probability 1/M.
#   text -> image: the n_j images of caption j are all right answers among the N images, so one of
#   them is first with probability n_j / N; the mean over the M captions is Σ_j n_j / (N M) = 1/M,
#   whatever the n_j. Its mean rank: each of the N - n_j wrong images comes before all n_j right
#   ones with probability 1 / (n_j + 1), so the expected rank is 1 + (N - n_j) / (n_j + 1).

def test_an_embedder_that_maps_every_image_to_one_vector_is_at_or_below_chance():
    """Every image the same vector: every row of scores is the same, so image -> text puts one
    caption first for all images (R@1 is the share of images with that caption: 1/M when the
    captions have equal shares), and text -> image ties every image with every other: each
    caption's right images come after all N - n wrong ones."""
    g = torch.Generator().manual_seed(0)
    M, n, C = 10, 6, 16
    N = M * n
    caption_index = torch.arange(M).repeat_interleave(n)                # n images a caption
    text_emb = F.normalize(torch.randn(M, C, generator=g), dim=1)
    # any vector, one caption's own embedding, and zero (which must stay zero, not turn NaN)
    for vector in (torch.randn(C, generator=g), text_emb[3], torch.zeros(C)):
        image_emb = F.normalize(vector.expand(N, C), dim=1)
        metrics = retrieval_metrics(image_emb @ text_emb.T, caption_index, ks=(1,))
        assert metrics["image_to_text_R@1"] <= 1 / M + 1e-6               # float32 1/M
        assert metrics["text_to_image_R@1"] == 0.0
        assert metrics["text_to_image_mean_rank"] == 1 + N - n
    assert metrics["image_to_text_R@1"] == 0.0                          # zero: all captions tie


def test_random_embeddings_score_near_chance():
    """Random unit vectors for images and captions, drawn afresh many times: the mean of each
    figure over the draws is within 4 standard errors of chance (worked out above)."""
    g = torch.Generator().manual_seed(0)
    draws, M, n, C = 50, 20, 10, 32
    N = M * n
    caption_index = torch.arange(M).repeat_interleave(n)
    keys = ["image_to_text_R@1", "image_to_text_mean_rank", "text_to_image_R@1",
            "text_to_image_mean_rank"]
    chance = [1 / M, (M + 1) / 2, 1 / M, 1 + (N - n) / (n + 1)]
    figures = torch.tensor([[metrics[key] for key in keys] for metrics in (
        retrieval_metrics(F.normalize(torch.randn(N, C, generator=g), dim=1)
                          @ F.normalize(torch.randn(M, C, generator=g), dim=1).T,
                          caption_index, ks=(1,)) for _ in range(draws))], dtype=torch.float64)
    mean, standard_error = figures.mean(0), figures.std(0) / math.sqrt(draws)
    for key, value, expected, error in zip(keys, mean, chance, standard_error):
        assert abs(value - expected) < 4 * error, (key, value.item(), expected)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_embedding_is_a_clear_error(bad):
    # NaN compares false with everything: counted naively it would rank every answer first
    image_emb = torch.eye(3)
    image_emb[1, 0] = bad                                               # one broken image
    with pytest.raises(ValueError, match="not finite"):
        retrieval_metrics(image_emb @ torch.eye(3).T, torch.arange(3))


def test_zeroshot_is_perfect_when_image_embeddings_are_their_captions_embeddings():
    # a text embedding that is a one-hot code of each attribute value: the nearest class of an
    # image embedded exactly like its own caption must be its own value
    values = [list(COLOURS), SHAPES, SIZES, list(POSITIONS)]
    offsets = [0, 7, 12, 14]

    def code(scene):
        (colour, shape), = scene.objects
        vector = torch.zeros(19)
        own = (colour, shape, scene.size, scene.where)
        for offset, options, value in zip(offsets, values, own):
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
    scenes = [Scene((("red", "cross"),), "small", "top"),
              Scene((("blue", "circle"),), "large", "left"),
              Scene((("red", "cross"), ("blue", "circle")), "", "above")]  # two objects: skipped
    image_emb = torch.stack([code(scenes[0]), code(scenes[1]), torch.zeros(19)])
    image_emb = F.normalize(image_emb, dim=1)                           # the zero row stays zero
    metrics = zeroshot_accuracy(image_emb, scenes, embed_texts)
    assert metrics == {"zeroshot_colour_acc": 1.0, "zeroshot_shape_acc": 1.0,
                       "zeroshot_size_acc": 1.0, "zeroshot_position_acc": 1.0}
    # swap the two images' embeddings: every attribute differs, so every prediction is wrong
    swapped = zeroshot_accuracy(image_emb[[1, 0, 2]], scenes, embed_texts)
    assert all(value == 0.0 for value in swapped.values())


def hand_made_metrics(seed, tower, r1, with_prefix=True):
    """A metrics.json as train.py writes it, cut to what --compare reads. The data fingerprint
    depends on the seed, as the toy world's pairs do."""
    split = {"image_to_text_R@1": r1, "text_to_image_R@1": r1 / 2, "caption_samples": ["a"],
             **{f"zeroshot_{a}_acc": 0.5 for a in ("colour", "shape", "size", "position")}}
    if with_prefix:
        split["caption_exact_match"] = 0.25
        for kind in ("colour", "shape", "count", "position", "exists"):
            split[f"vqa_acc_{kind}"] = 0.3
            split[f"vqa_describe_acc_{kind}"] = 0.8 if kind == "exists" else 0.6   # mean 0.64
            split[f"vqa_blind_acc_{kind}"] = 0.1
    config = {"seed": seed, "text_tower": tower, "device": "cpu",
              "data_fingerprint": f"pairs of seed {seed}", "align": {"steps": 300}}
    return {"test": split, "compositional": split,
            "paraphrase": {**split, "image_to_text_R@1": 0.995},         # near perfect everywhere
            "run": {"config": config, "precision": "float32"}}


def test_compare_puts_the_seeds_of_a_setting_on_one_row(tmp_path, capsys):
    import eval as evaluation
    runs = {"locked_0": (0, "locked", 0.9), "locked_1": (1, "locked", 0.8),
            "random_0": (0, "random", 0.5)}
    for name, (seed, tower, r1) in runs.items():
        metrics = hand_made_metrics(seed, tower, r1, with_prefix=tower == "locked")
        (tmp_path / f"{name}.json").write_text(json.dumps(metrics))
    evaluation.main(["--compare", *(str(tmp_path / f"{name}.json") for name in runs)])
    header, locked, random, left_out = [re.split(r"\s{2,}", line.strip())
                                        for line in capsys.readouterr().out.splitlines()]
    assert header == ["run", "test i→t", "test t→i", "comp i→t", "comp t→i", "zero-shot",
                      "caption", "comp caption", "VQA image", "VQA own cap.", "VQA blind"]
    # by hand: R@1 of seeds 0 and 1 is 0.9 and 0.8, mean 0.85; text -> image half of that;
    # the mean of the VQA kinds is (4 x 0.6 + 0.8) / 5 = 0.64 with the caption first
    assert locked == ["text_tower=locked (seeds 0,1)", "0.850 (0.800–0.900)", "0.425 (0.400–0.450)",
                      "0.850 (0.800–0.900)", "0.425 (0.400–0.450)", "0.500", "0.250", "0.250",
                      "0.300", "0.640", "0.100"]
    assert random == ["text_tower=random (seeds 0)", "0.500", "0.250", "0.500", "0.250", "0.500",
                      "-", "-", "-", "-", "-"]                          # no prefix head
    assert left_out == ["left out, >= 0.99 for every run: para i→t"]


def test_choose_by_v_keeps_each_images_candidate_of_highest_cosine():
    """eval.py --rerank: each image keeps the caption whose embedding has the highest cosine with
    its own, checked by a loop over F.cosine_similarity; embeddings of different lengths, so that
    only their directions may count."""
    generator = torch.Generator().manual_seed(0)
    texts = [f"caption {i}" for i in range(12)]
    table = {text: torch.randn(8, generator=generator) * (1 + i) for i, text in enumerate(texts)}
    image_emb = torch.randn(30, 8, generator=generator)
    candidates = [[texts[j] for j in torch.randint(12, (5,), generator=generator)]
                  for _ in range(30)]                                   # repeats allowed
    embedded = []
    chosen = choose_by_v(candidates, image_emb, lambda batch: embedded.append(batch) or
                         torch.stack([table[text] for text in batch]))
    expected = [max(options, key=lambda text: F.cosine_similarity(table[text], v, dim=0).item())
                for options, v in zip(candidates, image_emb)]
    assert chosen == expected
    assert len(embedded) == 1 and sorted(embedded[0]) == sorted({t for o in candidates for t in o})
