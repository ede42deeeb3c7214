"""The reading drills and tests (minivlp Part 9) against what their text says: each test row is
decoded and checked word by word, and the scorer is run on two stand-in LMs whose answers are
known (one that always predicts the true next token, one that never does)."""

import numpy as np
import pytest
import torch

import re
import sys
from dataclasses import replace
from pathlib import Path

from minivlp import (COLOURS, SHAPES, LanguageModel, LMConfig, adamw, chained, copy_test,
                     document_starts, encode_corpus, fresh_name, lookup_document, make_corpus,
                     naming_document, naming_test, random_windows, reading_drills, reading_tests,
                     repeat_document, scored_right, text_words)
from tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train("\n".join(make_corpus(300, seed=0, reading=True)), vocab_size=400)


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


def test_chained_answers_name_the_asked_object_first():
    assert chained("what colour is the circle?", "red") == "the circle is red"
    assert chained("what shape is the red object?", "circle") == "the red object is a circle"
    assert chained("is there a red triangle?", "i see a green triangle, so no") == \
        "the triangle is green, so no"
    assert chained("is there a blue square?", "i see a red square and a blue square, so yes") == \
        "the square is red and the square is blue, so yes"
    assert chained("is there a red cross?", "i see no cross, so no") == "i see no cross, so no"
    assert chained("how many objects are there?", "two") == "two"


def test_lookup_documents_answer_from_their_own_line():
    """Each answer is checked against the objects read back from the document's first line."""
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(200):
        line, *asked = lookup_document(rng).split("\n")
        objects = re.findall(rf"a ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})", line)
        counts.add(len(objects))
        assert len(set(objects)) == len(objects) and len(asked) == 2
        for row in asked:
            question, answer = re.fullmatch(r"q: (.*\?) a: (.*)", row).groups()
            if question.startswith("what colour"):
                shape = question.split()[-1][:-1]
                assert [s for _, s in objects].count(shape) == 1
                assert answer == f"the {shape} is {dict((s, c) for c, s in objects)[shape]}"
            elif question.startswith("what shape"):
                colour = question.split()[-2]
                assert [c for c, _ in objects].count(colour) == 1
                assert answer == f"the {colour} object is a {dict(objects)[colour]}"
            else:
                colour, shape = question.removeprefix("is there a ").removesuffix("?").split()
                assert answer.endswith("yes" if (colour, shape) in objects else "no")
    assert counts == {2, 3}


def test_the_reading_corpus_is_chained_and_its_documents_fit_a_row(tokenizer):
    documents = make_corpus(400, seed=0, reading=True)
    assert len(documents) == 500                       # a quarter more: lookup documents
    answers = [row.split(" a: ", 1)[1] for document in documents
               for row in document.split("\n") if row.startswith("q: what colour")]
    assert answers and all(re.fullmatch(r"the \w+ is \w+", answer) for answer in answers)
    # <bos> + document + <eos> in 64 tokens: 0.84 here, 0.985 with a default run's tokenizer;
    # the default corpus's documents, three captions and every question, fit none
    lengths = [len(tokenizer.encode(document)) + 2 for document in documents]
    assert np.mean([length <= 64 for length in lengths]) > 0.8
    lengths = [len(tokenizer.encode(document)) + 2 for document in make_corpus(100, seed=0)]
    assert np.mean([length <= 64 for length in lengths]) == 0


def test_windows_by_document_start_at_every_bos_and_nowhere_else():
    stream = torch.tensor([9, 1, 2, 9, 3, 9, 4, 5, 6, 9, 7, 8])          # 9 opens each document
    starts = document_starts(stream, context=3)
    assert starts.tolist() == [0, 3, 5]                # at 9, a window of 3 and its next token fit
    inputs, targets = random_windows(stream, 200, 3, torch.Generator().manual_seed(0), starts)
    assert {tuple(row) for row in inputs.tolist()} == {(9, 1, 2), (9, 3, 9), (9, 4, 5)}
    assert torch.equal(targets[:, :-1], inputs[:, 1:])


def test_adamw_shrinks_matrices_but_not_the_attention_taps():
    """With zero gradients Adam's step is zero, so only weight decay moves a parameter."""
    lm = LanguageModel(replace(LMConfig(), vocab_size=50, width=32, heads=4, taps=3))
    optimizer = adamw(lm.parameters(), lr=0.1, weight_decay=0.5, device=torch.device("cpu"))
    before = {name: p.detach().clone() for name, p in lm.named_parameters()}
    for p in lm.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in lm.named_parameters():
        if ".taps." in name or p.dim() < 2:
            assert torch.equal(p, before[name]), name
        else:
            torch.testing.assert_close(p, before[name] * (1 - 0.1 * 0.5))


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


class EndsWithEos(StandIn):
    """Right at every token, but <eos> where the true next token is a newline."""

    def logits(self, ids):
        following = torch.roll(ids, -1, dims=1)
        following[following == self.newline] = self.eos
        return torch.nn.functional.one_hot(following, self.vocab_size).float()


def test_a_name_may_end_at_the_end_of_the_document(tokenizer):
    rows, scored = naming_test(tokenizer, 2, 64, 10)
    assert all(row[positions[-1]] == tokenizer.encode("\n")[-1]
               for row, positions in zip(rows, scored))          # each row's last scored: newline
    lm = EndsWithEos(tokenizer.vocab_size, right=True)
    lm.newline, lm.eos = tokenizer.encode("\n")[-1], tokenizer.eos_id
    assert scored_right(lm, tokenizer, rows, scored, whole_rows=True) == 1.0
    lm.newline = rows[0][scored[0][0]]                 # <eos> in place of the name's first token
    assert scored_right(lm, tokenizer, rows[:1], scored[:1], whole_rows=True) == 0.0


def test_a_context_too_small_for_any_row_drops_that_test(tokenizer):
    words = text_words(make_corpus(50, 0))
    assert set(reading_tests(tokenizer, 64, words, naming=True, n_rows=5)) == \
        {"copy", "names_2way", "names_5way"}
    assert set(reading_tests(tokenizer, 12, words, naming=True, n_rows=5)) < {"copy", "names_2way"}


@torch.no_grad()
def test_few_shot_naming_scores_embedded_rows_as_the_lm_reads_their_ids(tokenizer):
    """tests/benchmarks/few_shot_naming.py reads rows given as embeddings (an image's prefix is
    one); on text its verdict must be the LM's own reading of the ids: right for the LM's greedy
    continuation of the prompt, found here token by token, and wrong when one token differs."""
    sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
    from few_shot_naming import name_accuracy
    torch.manual_seed(0)
    lm = LanguageModel(LMConfig(vocab_size=tokenizer.vocab_size, width=32, heads=2, taps=4)).eval()
    newline = tokenizer.encode("\n")[-1]
    right, wrong = [], []
    for prompt, positions in zip(*naming_test(tokenizer, 2, 64, 8)):
        ids = prompt[:positions[0]]
        for _ in range(3):                             # the LM's greedy next tokens
            token = lm.logits(lm(torch.tensor([ids])))[0, -1].argmax().item()
            ids.append(newline if token == tokenizer.eos_id else token)
        target = torch.tensor(ids[positions[0]:])
        changed = target.clone()
        changed[1] = next(t for t in range(tokenizer.vocab_size)
                          if t not in (target[1], newline, tokenizer.eos_id))
        pieces = [(lm.token_emb(torch.tensor(ids[:positions[0]])), None)]
        right.append(pieces + [(lm.token_emb(target), target)])
        wrong.append(pieces + [(lm.token_emb(changed), changed)])
    assert name_accuracy(lm, tokenizer, right) == (1.0, 8)
    assert name_accuracy(lm, tokenizer, wrong) == (0.0, 8)
    too_long = [[(lm.token_emb(torch.zeros(lm.context, dtype=torch.long)), None)] + right[0][1:]]
    assert name_accuracy(lm, tokenizer, too_long) == (None, 0)
