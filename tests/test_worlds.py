"""The second toy world (glyphs: coloured letters on coloured backgrounds) keeps the promises of
the first: held-out pairs stay out of training, every caption parses back to its scene, the
paraphrase split uses only synonyms, and the picture shows what the caption says."""

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


def test_the_picture_has_the_background_and_the_letter_colours():
    glyph = Glyph("red", "m", "large", "blue")
    pixels = render(glyph, 32, np.random.default_rng(0)).reshape(-1, 3)
    colours = {tuple(p) for p in pixels}
    assert tuple(pixels[0]) == COLOURS["blue"]                           # a corner: background
    assert COLOURS["red"] in colours                                      # the letter's ink


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
