"""The reading drills and tests (minivlp Part 9) against what their text says: each test row is
decoded and checked word by word, and the scorer is run on two stand-in LMs whose answers are
known (one that always predicts the true next token, one that never does)."""

import re
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from eval import name_by_example, named_right, naming_positions, naming_row
from minivlp import (COLOURS, HELD_OUT_PAIRS, SHAPES, LanguageModel, LMConfig, adamw, chained,
                     copy_test, document_starts, encode_corpus, fresh_name, lookup_document,
                     make_corpus, naming_document, naming_episodes, naming_test, random_scene,
                     random_windows, reading_drills, reading_tests, repeat_document, scored_right,
                     shapes_caption, text_words)
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


# Naming from context with images (eval.py, Frozen's fast binding). References: the tokenizer's
# own encoding of the whole prompt written out as text, and a greedy loop over its ids.

@pytest.fixture(scope="module")
def naming_tokenizer():
    """The default vocabulary size: every word of a one-object caption is then one token."""
    return Tokenizer.train("\n".join(make_corpus(300, seed=0, reading=True)), vocab_size=432)


def greedy_line(lm, tokenizer, ids, max_new_tokens=8):
    """The LM's greedy continuation of a row of ids, one full forward a token, to the line's end."""
    line_ends = {tokenizer.encode("\n")[-1], tokenizer.eos_id, tokenizer.bos_id, tokenizer.pad_id}
    new = []
    for _ in range(max_new_tokens):
        token = lm.logits(lm(torch.tensor([ids + new])))[0, -1].argmax().item()
        if token in line_ends:
            break
        new.append(token)
    return tokenizer.decode(new).strip()


def test_the_naming_positions_hold_the_article_colour_and_shape(naming_tokenizer, tokenizer):
    positions = naming_positions(naming_tokenizer, 16)
    rng = np.random.default_rng(0)
    for _ in range(30):
        scene = random_scene(rng, held_out=None)
        if len(scene.objects) == 1:
            ids = naming_tokenizer.encode(shapes_caption(scene))
            assert [ids[p] for p in positions] == \
                naming_tokenizer.encode("a {} {}".format(*scene.objects[0]))
    assert naming_positions(tokenizer, 16) is None    # 400 tokens: 'small' is split, so no line
    assert naming_positions(naming_tokenizer, 3) is None         # no shape vector in the prefix


def test_naming_episodes_name_each_pair_once_and_ask_one_of_them():
    for ways, shots in [(2, 1), (2, 2), (5, 1)]:
        for support, names, query, name in naming_episodes(ways, shots, 40, seed=1):
            pairs = [scene.objects[0] for scene in support]
            assert all(len(scene.objects) == 1 for scene in support + [query])
            assert sorted(Counter(pairs).values()) == [shots] * ways
            named = dict(zip(pairs, names))
            assert len(set(named.values())) == ways       # one name a pair, each pair its own
            assert all(named[pair] == n for pair, n in zip(pairs, names))
            assert named[query.objects[0]] == name
            assert not set(pairs) & HELD_OUT_PAIRS
            assert all(sum(map(ord, n)) % 3 == 0 for n in names)   # held-out names only


@torch.no_grad()
def test_a_described_naming_prompt_is_the_text_and_is_answered_as_the_lm_reads_its_ids(
        naming_tokenizer):
    """naming_row with descriptions must be the embeddings of the prompt written as text, and
    named_right must score the LM's greedy name: right for the greedy loop's own line, wrong for
    another name."""
    tokenizer = naming_tokenizer
    torch.manual_seed(0)
    lm = LanguageModel(LMConfig(vocab_size=tokenizer.vocab_size, width=32, heads=2, taps=4)).eval()
    embed = lambda text: lm.token_emb(torch.tensor(tokenizer.encode(text)))
    rows, reference = [], []
    for support, names, query, name in naming_episodes(2, 2, 6, seed=0):
        described = ["a {} {}".format(*scene.objects[0]) for scene in support + [query]]
        text = "\n".join(f"{d} is a {n}" for d, n in zip(described, names)) + f"\n{described[-1]}"
        row = naming_row(lm, tokenizer, [embed(d) for d in described[:-1]], names,
                         embed(described[-1]))
        ids = [tokenizer.bos_id] + tokenizer.encode(text)
        assert torch.equal(row, lm.token_emb(torch.tensor(ids)))
        rows.append(row)
        reference.append(greedy_line(lm, tokenizer, ids + tokenizer.encode(" is a")))
    assert named_right(lm, tokenizer, rows, reference) == [True] * len(rows)
    assert named_right(lm, tokenizer, rows, [line + "x" for line in reference]) == [False] * len(rows)


class SpellingEmbedder(torch.nn.Module):
    """An image embedder that spells a flat image's caption exactly: the token embeddings of 'a
    small COLOUR circle on the left', COLOUR the one nearest the image's mean pixel."""

    def __init__(self, lm, tokenizer, prefix_tokens=16):
        super().__init__()
        self.lm, self.tokenizer, self.prefix_tokens = lm, tokenizer, prefix_tokens
        self.prefix_shape = (prefix_tokens, lm.token_emb.embedding_dim)

    def forward(self, images):
        rgb = images.float().mean(dim=(2, 3))                              # (B, 3)
        table = torch.tensor(list(COLOURS.values()), dtype=torch.float)
        colours = [list(COLOURS)[i] for i in torch.cdist(rgb, table).argmin(1).tolist()]
        ids = [self.tokenizer.encode(f"a small {c} circle on the left") for c in colours]
        ids = torch.tensor([row + [row[-1]] * (self.prefix_tokens - len(row)) for row in ids])
        prefix = self.lm.token_emb(ids)                                     # (B, K, C)
        return prefix.mean(1), prefix


@torch.no_grad()
def test_naming_by_example_reads_images_as_the_words_their_vectors_spell(naming_tokenizer,
                                                                          tmp_path):
    """eval.py --name: with images whose prefix is exactly their caption's token embeddings (all
    of one length), the prompt must read '[image: a red circle] is a dax' and the name given
    must be the LM's greedy line after the same prompt written as text."""
    tokenizer = naming_tokenizer
    torch.manual_seed(1)
    lm = LanguageModel(LMConfig(vocab_size=tokenizer.vocab_size, width=32, heads=2, taps=4)).eval()
    lm.token_emb.weight.copy_(torch.nn.functional.normalize(lm.token_emb.weight, dim=1))
    paths = {}
    for colour in ("red", "blue"):
        paths[colour] = tmp_path / f"{colour}.png"
        Image.new("RGB", (32, 32), COLOURS[colour]).save(paths[colour])
    printed = name_by_example(lm, tokenizer, SpellingEmbedder(lm, tokenizer), 32,
                              torch.device("cpu"), [f"{paths['red']}:dax", f"{paths['blue']}:kep",
                                                    str(paths["red"])]).splitlines()
    text = "a red circle is a dax\na blue circle is a kep\na red circle is a"
    said = greedy_line(lm, tokenizer, [tokenizer.bos_id] + tokenizer.encode(text))
    assert printed == ["[image: a red circle] is a dax", "[image: a blue circle] is a kep",
                       f"[image: a red circle] is a ... {said}"]


@pytest.mark.parametrize("flags", [["a.png", "b.png"], ["a.png:Dax", "b.png"], ["b.png"]])
def test_naming_by_example_needs_named_images_then_one_more(naming_tokenizer, flags):
    with pytest.raises(ValueError, match="--name: expected IMAGE:NAME"):
        name_by_example(None, naming_tokenizer, None, 32, torch.device("cpu"), flags)


def test_naming_by_example_refuses_a_prefix_too_short_to_name_by(naming_tokenizer):
    lm = LanguageModel(LMConfig(vocab_size=naming_tokenizer.vocab_size, width=32, heads=2))
    with pytest.raises(ValueError, match="--name: .* shorter than 4"):
        name_by_example(lm, naming_tokenizer, SpellingEmbedder(lm, naming_tokenizer, 2), 32,
                        torch.device("cpu"), ["a.png:dax", "b.png"])
