"""The second toy world (glyphs: coloured letters on coloured backgrounds) keeps the promises of
the first: held-out pairs stay out of training, every caption parses back to its scene, the
paraphrase split uses only synonyms, and the picture shows what the caption says (checked
against the glyph's description: its two colours, its size, the centre)."""

import json

import numpy as np

import train
from eval import parse_caption
from minivlp import (COLOURS, GLYPH_HELD_OUT_PAIRS, GLYPH_SYNONYMS, Glyph, WorldConfig, all_glyphs,
                     caption, make_corpus, make_world, render)


def test_held_out_pairs_are_only_in_the_compositional_split():
    world = make_world(WorldConfig(train_images=400, eval_images=100, dataset="glyphs"), seed=0)
    pair = lambda glyph: (glyph.colour, glyph.letter)
    seen = world["train"].scenes + world["test"].scenes
    assert not any(pair(g) in GLYPH_HELD_OUT_PAIRS for g in seen)
    assert all(pair(g) in GLYPH_HELD_OUT_PAIRS for g in world["compositional"].scenes)
    assert all(g.colour != g.background for g in world["train"].scenes)


def test_every_caption_plain_or_paraphrased_parses_back_to_its_glyph():
    glyphs = all_glyphs()
    assert len(glyphs) == 7 * 12 * 2 * 6
    for glyph in glyphs[::37]:
        assert parse_caption(caption(glyph)) == glyph
        paraphrase = caption(glyph, GLYPH_SYNONYMS)
        assert parse_caption(paraphrase) == glyph
        assert not set(paraphrase.split()) & set(GLYPH_SYNONYMS)          # no plain word is left
    assert caption(Glyph("red", "k", "large", "blue")) == "a large red letter k on blue"


def ink(glyph, seed):
    """(32, 32) bool: the pixels nearer the letter's colour than the background's. Each pixel
    must be the background, the letter's colour or a blend of the two (anti-aliased edges)."""
    pixels = render(glyph, 32, np.random.default_rng(seed)).reshape(-1, 3).astype(float)
    background, colour = np.array(COLOURS[glyph.background]), np.array(COLOURS[glyph.colour])
    share = (pixels - background) @ (colour - background) / np.sum((colour - background) ** 2)
    blend = background + share.clip(0, 1)[:, None] * (colour - background)
    assert np.abs(pixels - blend).max() <= 2, glyph                     # rounding only
    return (share > 0.5).reshape(32, 32)


def test_the_picture_is_its_letter_in_its_colour_centred_and_sized_on_its_background():
    """Against the glyph's own description: its two colours only; the ink centred within the
    jitter (8% of the image) and the letter's own shape; a large letter (80% of the image)
    covering over twice the pixels of a small one (45%); two letters, two shapes of ink."""
    for seed in range(5):
        large = ink(Glyph("red", "m", "large", "blue"), seed)
        small = ink(Glyph("red", "m", "small", "blue"), seed)
        assert large.sum() > 2 * small.sum() > 0, seed
        rows, columns = np.nonzero(large)
        assert abs(rows.mean() - 15.5) < 5 and abs(columns.mean() - 15.5) < 5, seed
        other = ink(Glyph("green", "x", "large", "purple"), seed)
        assert (large != other).sum() > 0.2 * large.sum(), seed


def test_the_corpus_talks_about_glyphs_with_synonyms_and_questions():
    corpus = "\n".join(make_corpus(200, seed=0, dataset="glyphs"))
    for word in ("letter", "character", "crimson", "q: which letter is it? a:"):
        assert word in corpus


def test_a_tiny_glyphs_run_reports_its_own_attributes(tmp_path):
    assert train.cli(["--dataset", "glyphs", "--train-images", "300", "--eval-images", "60",
                      "--corpus-documents", "300", "--lm-vocab-size", "300", "--lm-width", "32",
                      "--lm-heads", "2", "--lm-steps", "10", "--steps", "10", "--warmup-steps", "2",
                      "--batch-size", "32", "--device", "cpu", "--out", str(tmp_path)]) == 0
    test = json.loads((tmp_path / "metrics.json").read_text())["test"]
    named = lambda start, end: sorted(key.removeprefix(start).removesuffix(end) for key in test
                                      if key.startswith(start) and key.endswith(end))
    attributes = ["background", "colour", "letter", "size"]            # a glyph's, no shape
    assert named("zeroshot_", "_acc") == attributes
    assert named("caption_acc_", "") == attributes
    assert named("vqa_blind_acc_", "") == sorted(attributes + ["exists"])
