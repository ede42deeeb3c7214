"""The reading drills and tests (minivlp Part 9) against what their text says: each test row is
decoded and checked word by word, and the scorer is run on two stand-in LMs whose answers are
known (one that always predicts the true next token, one that never does)."""

import numpy as np
import pytest
import torch

from minivlp import (copy_test, fresh_name, make_corpus, naming_document, naming_test,
                     reading_drills, reading_tests, repeat_document, scored_right, text_words)
from tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train("\n".join(make_corpus(300, seed=0, lookups=True)), vocab_size=400)


def test_held_out_names_are_never_drawn_for_training():
    rng = np.random.default_rng(0)
    training = {fresh_name(rng) for _ in range(3000)}
    held_out = {fresh_name(rng, held_out=True) for _ in range(3000)}
    assert training.isdisjoint(held_out)
    assert all(sum(map(ord, name)) % 3 == 0 for name in held_out)


def test_the_drills_repeat_their_span_and_name_again_what_they_named():
    rng = np.random.default_rng(0)
    first, second = repeat_document(rng, ["red", "circle", "above"]).split("\n")
    assert first == second and set(first.split()) <= {"red", "circle", "above"}
    for _ in range(50):
        lines = naming_document(rng).split("\n")
        named = {line.rsplit(" is a ", 1)[0]: line for line in lines}
        assert len(named) < len(lines)                 # some object is named a second time
        for line in lines:                             # ... with the name it was given first
            assert named[line.rsplit(" is a ", 1)[0]] == line
    drills = reading_drills(80, 0, ["red", "circle"], naming=False)
    assert len(drills) == 20 and all(" is a " not in drill for drill in drills)


def test_a_copy_row_scores_the_repeat_after_its_first_token(tokenizer):
    rows, scored = copy_test(tokenizer, text_words(make_corpus(50, 0)), 64, 20)
    for row, positions in zip(rows, scored):
        text = tokenizer.decode(row[1:])
        span = text.split("\n")[0]
        assert text == f"{span}\n{span}" and len(row) <= 64
        first_of_repeat = len(row) - len(tokenizer.encode(span))
        assert list(positions) == list(range(first_of_repeat + 1, len(row)))


@pytest.mark.parametrize("ways", [2, 5])
def test_a_naming_row_asks_for_the_name_its_object_was_given(tokenizer, ways):
    rows, scored = naming_test(tokenizer, ways, 64, 30)
    assert len(rows) == 30
    for row, positions in zip(rows, scored):
        *support, query = tokenizer.decode(row[1:positions[0]]).split("\n")
        names = {line.rsplit(" is a ", 1)[0]: line.rsplit(" ", 1)[1] for line in support}
        assert len(names) == ways == len(set(names.values()))
        target = names[query.removesuffix(" is a")]
        assert tokenizer.decode([row[j] for j in positions]) == f" {target}\n"
        assert sum(map(ord, target)) % 3 == 0          # a held-out name


class StandIn(torch.nn.Module):
    """An 'LM' whose most likely next token is the row's true next token (right=True) or the
    token after it in the vocabulary (right=False)."""

    def __init__(self, vocab_size, right):
        super().__init__()
        self.token_emb = torch.nn.Embedding(vocab_size, 1)
        self.right, self.vocab_size = right, vocab_size

    def forward(self, ids):
        return ids                                      # the 'states' are the ids themselves

    def logits(self, ids):
        following = torch.roll(ids, -1, dims=1) + (0 if self.right else 1)
        return torch.nn.functional.one_hot(following % self.vocab_size, self.vocab_size).float()


def test_the_scorer_gives_one_to_an_lm_that_knows_and_zero_to_one_that_does_not(tokenizer):
    rows, scored = naming_test(tokenizer, 2, 64, 10)
    for right, expected in [(True, 1.0), (False, 0.0)]:
        lm = StandIn(tokenizer.vocab_size, right)
        assert scored_right(lm, tokenizer, rows, scored, whole_rows=True) == expected
        assert scored_right(lm, tokenizer, rows, scored, whole_rows=False) == expected


def test_a_context_too_small_for_any_row_drops_that_test(tokenizer):
    words = text_words(make_corpus(50, 0))
    assert set(reading_tests(tokenizer, 64, words, naming=True, n_rows=5)) == \
        {"copy", "names_2way", "names_5way"}
    assert set(reading_tests(tokenizer, 12, words, naming=True, n_rows=5)) < {"copy", "names_2way"}
