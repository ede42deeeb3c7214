"""The visual prefix (Frozen): the questions, the captioning loss, decoding, BLEU-4 and caption
parsing.

References: answers read off the scene; BLEU-4 worked by hand; per-token loops with
F.cross_entropy and F.kl_div; hand-built LMs whose output is known before they run (a counter,
and tests/colour_reader.py, which names the colour it reads), for decoding, the order of
answers and what each VQA setting reads."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from colour_reader import colour_code, colour_lm, colour_tokenizer
from eval import answer, bleu4, parse_caption, prefix_metrics, verdict
from minivlp import (COLOURS, IGNORE, Glyph, LanguageModel, LMConfig, Scene, VisualEmbedder,
                     caption_tokens, corpus_document, freeze, generate, image_context,
                     object_questions, prefix_loss, questions, random_glyph, random_scene,
                     spelling_loss, teacher_loss)
from tokenizer import Tokenizer

TINY = LMConfig(vocab_size=280, context=32, width=32, depth=2, heads=4)
SHAPE_KINDS = ["colour", "shape", "count", "position"]       # and `exists`, the longest


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train("a small red circle on the left\na big blue square\n" * 20, 280)


def test_exists_answers_name_the_asked_things_then_say_whether_the_asked_object_is_there():
    scene = Scene((("red", "square"), ("blue", "square")), "", "above")
    by_kind = lambda rng: {kind: (q, a) for q, a, kind in questions(scene, rng)}
    seen = {by_kind(np.random.default_rng(seed))["exists"] for seed in range(1000)}
    assert ("is there a blue square?", "i see a red square and a blue square, so yes") in seen
    assert ("is there a green square?", "i see a red square and a blue square, so no") in seen
    assert ("is there a red circle?", "i see no circle, so no") in seen
    glyph = Glyph("red", "k", "large", "blue")
    seen = {q: a for seed in range(1000)
            for q, a, kind in questions(glyph, np.random.default_rng(seed)) if kind == "exists"}
    assert seen["is there a red letter k?"] == "i see a red letter k, so yes"
    assert seen["is there a blue letter k?"] == "i see a red letter k, so no"
    assert seen["is there a red letter m?"] == "i see no letter m, so no"
    assert verdict("i see no circle, so no") == "no" and verdict("red") == "red"
    assert verdict("a small red circle on the left") != "left"          # not a position answer
    # the reading recipe's chained answers: the last word, after the object asked about
    assert verdict("the circle is red") == "red"
    assert verdict("the red object is a circle") == "circle"
    assert verdict("the triangle is green, so no") == "no"
    assert verdict("the circle is red and the square is blue") != "blue"  # not one chained answer
    # Over many scenes the verdict agrees with a plain look through the objects.
    rng = np.random.default_rng(1)
    for scene in [random_scene(rng, None) for _ in range(300)] + [random_glyph(rng, None)
                                                                   for _ in range(100)]:
        q, a = next((q, a) for q, a, kind in questions(scene, rng) if kind == "exists")
        objects = scene.objects if isinstance(scene, Scene) else [(scene.colour, scene.letter)]
        words = q.removeprefix("is there a ").removesuffix("?").split(" ")
        asked = (words[0], words[-1])                  # 'red square' or 'red letter k'
        assert verdict(a) == ("yes" if asked in objects else "no"), (q, a)


def test_a_corpus_document_asks_its_questions_in_a_random_order_two_of_them_exists():
    """Evaluation asks each question right after the description: in the corpus every kind must
    come first sometimes, or the LM answers that place's kind whatever the question."""
    kind_of = {"how many": "count", "what colour": "colour", "what shape": "shape",
               "where is": "position", "is there": "exists"}
    first_kinds = set()
    for seed in range(300):
        lines = corpus_document(np.random.default_rng(seed)).split("\n")
        asked = [line for line in lines if line.startswith("q: ")]
        assert lines[3:] == asked                               # three captions, then questions
        kinds = [kind_of[" ".join(line.split(" ")[1:3])] for line in asked]
        assert kinds.count("exists") == 2 and kinds.count("count") == 1
        first_kinds.add(kinds[0])
    assert first_kinds == set(kind_of.values())


def test_bleu4_matches_a_value_worked_by_hand():
    """Pair 1: 'a b c d e' against 'a b c d f': n-gram matches 4/5, 3/4, 2/3, 1/2.
    Pair 2: 'a b c d' against 'a b c d e f': 4/4, 3/3, 2/2, 1/1.
    Corpus: p = 8/9, 6/7, 4/5, 2/3; lengths c = 9, r = 11, so BP = exp(1 - 11/9)."""
    expected = math.exp(1 - 11 / 9) * (8 / 9 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25
    got = bleu4(["a b c d e", "a b c d"], ["a b c d f", "a b c d e f"])
    assert got == pytest.approx(expected, rel=1e-12)
    assert bleu4(["a b c d e"], ["a b c d f"]) == pytest.approx(0.2 ** 0.25, rel=1e-12)
    assert bleu4(["the cat sat on"], ["the cat sat on"]) == pytest.approx(1.0)
    # clipping: 'the' counts once, and no bigram matches, so BLEU is 0
    assert bleu4(["the the the the"], ["the cat"]) == 0.0


def test_captions_parse_in_plain_and_synonym_wording():
    scene = Scene((("red", "circle"),), "small", "left")
    assert parse_caption("a small red circle on the left") == scene
    assert parse_caption("a tiny crimson ring on the left") == scene
    assert parse_caption("a red circle above a azure box") == Scene(
        (("red", "circle"), ("blue", "square")), "", "above")
    assert parse_caption("a small red circle on the") is None
    assert parse_caption("a red circle above a red circle") is None     # not a valid scene


def padded(tokens, extra):
    return torch.cat([tokens, torch.full((len(tokens), extra), IGNORE)], dim=1)


def test_prefix_loss_ignores_padding_and_matches_a_per_token_reference(tokenizer):
    torch.manual_seed(0)
    lm = freeze(LanguageModel(TINY))
    prefix = torch.randn(3, 2, TINY.width)
    tokens = caption_tokens(tokenizer, ["a small red circle", "a big blue square on the left", "a"],
                            TINY.context)
    loss = prefix_loss(lm, tokenizer, prefix, tokens)
    with_padding = prefix_loss(lm, tokenizer, prefix, padded(tokens, 5))
    assert loss.item() == pytest.approx(with_padding.item(), abs=1e-6)
    # reference: each caption alone, unpadded, the cross-entropy of every next token, then the
    # mean over all predicted tokens of the batch
    newline = tokenizer.encode("\n")
    total, count = 0.0, 0
    for row, text in enumerate(["a small red circle", "a big blue square on the left", "a"]):
        ids = torch.tensor([newline + tokenizer.encode(text) + newline])
        token_length = torch.linalg.vector_norm(lm.token_emb.weight, dim=1).mean()
        scaled = prefix[row:row + 1] / torch.linalg.vector_norm(prefix[row:row + 1], dim=-1,
                                                                keepdim=True) * token_length
        context = torch.cat([lm.token_emb.weight[tokenizer.bos_id][None, None], scaled], 1)
        logits = lm.logits(lm(ids, prefix=context))[0, 3:-1]             # states of the tokens
        total += F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    assert loss.item() == pytest.approx(total / count, abs=1e-5)


def test_spelling_loss_pulls_each_prefix_vector_towards_its_caption_token(tokenizer):
    """Reference: a loop over rows and positions, vector j against the embedding of the
    caption's token j (or the newline after it), 1 - cos by hand; positions past the caption
    and its newline are left out. A prefix that is the caption's embeddings scores 0."""
    torch.manual_seed(0)
    lm = freeze(LanguageModel(TINY))
    K = 5
    texts = ["a small red circle on the left", "a big blue square", "a"]
    prefix = torch.randn(3, K, TINY.width)
    tokens = caption_tokens(tokenizer, texts, TINY.context)
    terms = []
    for row, text in enumerate(texts):
        spelled = (tokenizer.encode(text) + tokenizer.encode("\n"))[:K]
        for j, token in enumerate(spelled):
            p, e = prefix[row, j], lm.token_emb.weight[token]
            terms.append(1 - (p @ e / (p.norm() * e.norm())).item())
    assert spelling_loss(lm, tokenizer, prefix, tokens).item() == pytest.approx(np.mean(terms),
                                                                                 abs=1e-6)
    assert spelling_loss(lm, tokenizer, prefix, padded(tokens, 5)).item() == pytest.approx(
        np.mean(terms), abs=1e-6)
    words = tokenizer.encode(texts[1]) + tokenizer.encode("\n")
    exact = lm.token_emb.weight[words][None] * 3.0                      # any length: direction only
    assert spelling_loss(lm, tokenizer, exact, tokens[1:2]).item() == pytest.approx(0, abs=1e-6)


def test_teacher_loss_matches_a_per_token_kl_of_each_row_alone(tokenizer):
    """Reference: each row alone and unpadded, the teacher reading the caption and the student
    reading the image, torch's kl_div at every position that predicts a token of ' ANSWER \n',
    then the mean over those positions of the rows that fit the context (the third does not)."""
    torch.manual_seed(0)
    lm = freeze(LanguageModel(LMConfig(vocab_size=280, context=64, width=32, depth=2, heads=4)))
    captions = ["a small red circle on the left", "a big blue square", "a red circle " * 12]
    asked = [("what colour is the circle?", "red"),
             ("is there a red square?", "i see a blue square, so no"), ("where?", "left")]
    prefix = torch.randn(3, 2, 32, requires_grad=True)
    loss = teacher_loss(lm, tokenizer, prefix, captions, asked)
    context = image_context(lm, tokenizer, prefix)                      # (3, 1 + 2, C)
    total, count = 0.0, 0
    for row in range(2):
        prompt = tokenizer.encode(f"\nq: {asked[row][0]} a:")
        reply = tokenizer.encode(f" {asked[row][1]}") + tokenizer.encode("\n")
        head = [tokenizer.bos_id] + tokenizer.encode(captions[row])
        teacher = lm.logits(lm(torch.tensor([head + prompt + reply])))[0]
        student = lm.logits(lm(torch.tensor([prompt + reply]), prefix=context[row:row + 1]))[0]
        for j in range(len(reply)):                  # state before reply token j predicts it
            log_t = F.log_softmax(teacher[len(head) + len(prompt) - 1 + j], dim=-1)
            log_s = F.log_softmax(student[3 + len(prompt) - 1 + j], dim=-1)
            total = total + F.kl_div(log_s, log_t, log_target=True, reduction="sum")
            count += 1
    assert 1 + len(tokenizer.encode(captions[2])) > 64                  # the third cannot fit
    assert loss.item() == pytest.approx(total.item() / count, rel=1e-5)
    loss.backward()
    assert prefix.grad[:2].abs().sum() > 0 and torch.equal(prefix.grad[2], torch.zeros(2, 32))
    assert all(p.grad is None for p in lm.parameters())
    assert teacher_loss(lm, tokenizer, prefix, captions[2:], asked[2:]).item() == 0.0


def test_a_kind_of_question_that_cannot_fit_after_the_image_is_skipped_with_a_warning(tokenizer,
                                                                                     capsys):
    """A 56-token context after <bos> and 2 prefix vectors: with this small vocabulary an `exists`
    question and its chain take more tokens than are left, every other kind fits."""
    torch.manual_seed(0)
    lm = freeze(LanguageModel(LMConfig(vocab_size=280, context=56, width=32, depth=1, heads=2)))
    rng = np.random.default_rng(0)
    scenes = [random_scene(rng, None) for _ in range(8)]
    asked = [(q, a, kind) for scene in scenes for q, a, kind in questions(scene, rng)]
    need = lambda kind: max(len(tokenizer.encode(f"\nq: {q} a: {a}\n"))
                            for q, a, k in asked if k == kind)
    assert need("exists") > 56 - 3 > max(need(kind) + 5 for kind in SHAPE_KINDS)
    metrics = prefix_metrics(lm, tokenizer, torch.randn(8, 2, 32), scenes, torch.randn(8, 2, 32),
                             scenes, vqa_images=8)
    warning = capsys.readouterr().err
    assert len(warning.splitlines()) == 1
    skipped = set(warning.removeprefix("warning: ").split(" questions")[0].split(", "))
    assert "exists" in skipped and all(kind.startswith("exists") for kind in skipped)
    by_object = {kind for scene in scenes for *_, kind in object_questions(scene)}
    assert by_object                                   # the split by object is asked too
    assert {key.removeprefix("vqa_acc_") for key in metrics if key.startswith("vqa_acc_")} == \
        (set(SHAPE_KINDS) | by_object) - skipped


def test_image_context_puts_bos_first_and_gives_each_prefix_vector_a_token_length(tokenizer):
    torch.manual_seed(0)
    lm = freeze(LanguageModel(TINY))
    prefix = torch.randn(3, 2, TINY.width) * torch.tensor([0.01, 50.0])[None, :, None]
    context = image_context(lm, tokenizer, prefix)                     # (3, 1 + 2, C)
    assert context.shape == (3, 3, TINY.width)
    assert torch.equal(context[:, 0], lm.token_emb.weight[tokenizer.bos_id].expand(3, -1))
    lengths = [math.sqrt(sum(x * x for x in row)) for row in lm.token_emb.weight.tolist()]
    for vector, original in zip(context[:, 1:].flatten(0, 1), prefix.flatten(0, 1)):
        assert torch.linalg.vector_norm(vector).item() == pytest.approx(sum(lengths) / len(lengths),
                                                                         rel=1e-5)
        assert F.cosine_similarity(vector, original, dim=0).item() == pytest.approx(1.0, abs=1e-5)


def test_captioning_gradients_reach_the_embedder_and_leave_the_lm_unchanged(tokenizer):
    torch.manual_seed(0)
    lm = freeze(LanguageModel(TINY))
    before = {name: t.clone() for name, t in lm.state_dict().items()}
    embedder = VisualEmbedder(image_size=16, width=TINY.width, prefix_tokens=2)
    optimizer = torch.optim.AdamW(embedder.parameters(), lr=0.01)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    tokens = caption_tokens(tokenizer, ["a small red circle"] * 4, TINY.context)
    _, prefix = embedder(images)
    assert prefix.shape == (4, 2, TINY.width)
    prefix_loss(lm, tokenizer, prefix, tokens).backward()
    assert embedder.trunk[0].weight.grad.abs().sum() > 0
    assert embedder.head.weight.grad is None                            # the other head: no loss
    assert all(p.grad is None for p in lm.parameters())
    optimizer.step()
    for name, tensor in lm.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def counting_lm():
    """A hand-built LM whose next token is always the current token + 1 (mod 8).

    token_emb = 3 * identity, so token i is 3 e_i (e_i one-hot); attention is switched off (zero
    output projection); the MLP maps e_i to 10 * e_(i+1) (identity in, shift matrix out), which
    outweighs the residual e_i; the tied head then scores token i + 1 highest."""
    lm = LanguageModel(LMConfig(vocab_size=8, context=16, width=8, depth=1, heads=2))
    with torch.no_grad():
        for p in lm.parameters():
            p.zero_()
        lm.token_emb.weight.copy_(3 * torch.eye(8))
        block = lm.blocks[0]
        for norm in (block.ln_attention, block.ln_mlp, lm.ln_final):
            norm.weight.fill_(1)
        block.mlp[0].weight[:8].copy_(torch.eye(8))
        block.mlp[2].weight[:, :8].copy_(10 * torch.eye(8).roll(1, dims=0))
    return freeze(lm)


def test_greedy_decoding_of_a_hand_built_model_counts():
    lm = counting_lm()
    context = lm.token_emb(torch.tensor([[0], [0]]))                   # (2, 1, C)
    prompt = torch.tensor([[3], [6]])
    expected = torch.tensor([[4, 5, 6, 7, 0], [7, 0, 1, 2, 3]])
    assert torch.equal(generate(lm, context, prompt, 5), expected)
    # sampling at a tiny temperature is greedy
    assert torch.equal(generate(lm, context, prompt, 5, sample_temperature=1e-3), expected)


def test_sampling_draws_from_the_softmax_of_the_logits_over_the_temperature():
    """4,000 draws of the next token at temperature 5: each token's share is within 4 standard
    errors of softmax(logits / 5), with the logits read straight from the LM."""
    lm = counting_lm()
    rows = 4000
    context = lm.token_emb(torch.zeros(rows, 1, dtype=torch.long))      # (rows, 1, C)
    prompt = torch.full((rows, 1), 3)
    logits = lm.logits(lm(prompt[:1], prefix=context[:1]))[0, -1]      # (V,): after the prompt
    expected = (logits / 5).softmax(dim=0)
    draw = lambda seed: generate(lm, context, prompt, 1, 5.0, torch.Generator().manual_seed(seed))
    share = torch.bincount(draw(0)[:, 0], minlength=8) / rows
    standard_error = (expected * (1 - expected) / rows).sqrt()
    assert ((share - expected).abs() < 4 * standard_error).all(), (share, expected)
    assert torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))  # the seed counts


def test_generation_stops_once_every_row_holds_a_stop_id():
    lm = counting_lm()
    context = lm.token_emb(torch.tensor([[0], [0]]))                   # (2, 1, C)
    # the first row writes 7 after 2 tokens, the second after 4: all stop there, not at 6
    assert torch.equal(generate(lm, context, torch.tensor([[5], [3]]), 6, stop_ids=(7,)),
                       torch.tensor([[6, 7, 0, 1], [4, 5, 6, 7]]))
    # either of two stop ids ends a row: 6 the first at once, 5 the second at its second token
    assert torch.equal(generate(lm, context, torch.tensor([[5], [3]]), 6, stop_ids=(6, 5)),
                       torch.tensor([[6, 7], [4, 5]]))


def test_generation_stops_at_the_context_length():
    lm = counting_lm()
    context_emb = lm.token_emb(torch.tensor([[0]])).expand(1, 10, -1)   # 10 of 16 positions used
    # 1 prompt token: the LM reads at most 16 positions, so 6 new tokens (the 6th needs no forward)
    assert torch.equal(generate(lm, context_emb, torch.tensor([[1]]), 50),
                       torch.tensor([[2, 3, 4, 5, 6, 7]]))
    with pytest.raises(ValueError, match="no room"):
        generate(lm, lm.token_emb(torch.tensor([[0]])).expand(1, 16, -1), torch.tensor([[1]]), 5)


def test_answers_come_back_in_question_order_whatever_the_batching():
    """The colour reader (tests/colour_reader.py) answers any question with the colour its
    context shows. Contexts of 1 or 2 image vectors and questions of two lengths make three
    batches by length, two of them split by batch_size 2: each question must get its own
    context's colour back, in the order asked."""
    tokenizer = colour_tokenizer()
    lm, _ = colour_lm(tokenizer)
    names = ["red", "blue", "green", "white", "yellow", "orange"]
    vectors = [2, 2, 1, 2, 2, 1]
    long, short = "what colour is the circle?", "what colour?"
    asked = [long, long, long, short, long, short]
    contexts = [image_context(lm, tokenizer, colour_code(name).expand(1, k, -1))[0]
                for name, k in zip(names, vectors)]
    assert answer(lm, tokenizer, contexts, asked, batch_size=2) == names


def test_vqa_settings_read_what_each_promises_worked_out_for_the_colour_reader(capsys):
    """prefix_metrics with the colour reader, which names the colour it reads (the image's, or
    the first colour word of the text), on one-object scenes. The first half of the prefixes
    show each scene's colour, the second half the next colour of COLOURS: so by hand
      vqa_acc_colour = vqa_describe_acc_colour = 0.5   (the image's colour, said again; its
                                                         own caption names the image's colour)
      vqa_text_acc_colour = 1.0                         (the true caption names the colour)
      vqa_blind_acc_colour = 0.0                        (nothing to read: no colour word)
      every other kind 0.0                              (a colour is never a count, a shape,
                                                         a position or a yes/no verdict)
      the captions are the colours the prefixes show, which no grammar parses: exact match 0.
    A setting that read another's context would change one of these."""
    tokenizer = colour_tokenizer()
    lm, _ = colour_lm(tokenizer, context=128)
    names = list(COLOURS)
    shapes = ["circle", "square", "triangle", "cross", "diamond", "circle", "square"]
    scenes = [Scene(((name, shape),), "small", "left") for name, shape in zip(names, shapes)] * 2
    shown = names + names[1:] + names[:1]
    prefixes = torch.stack([colour_code(name).expand(2, -1) for name in shown])   # (14, 2, C)
    metrics = prefix_metrics(lm, tokenizer, prefixes, scenes, prefixes, scenes)
    assert metrics["caption_samples"] == shown[:5] and metrics["caption_exact_match"] == 0.0
    expected_colour = {"vqa_acc": 0.5, "vqa_describe_acc": 0.5, "vqa_text_acc": 1.0,
                       "vqa_blind_acc": 0.0}
    for setting, value in expected_colour.items():
        assert metrics[f"{setting}_colour"] == value, setting
        for kind in ("shape", "count", "position", "exists"):
            assert metrics[f"{setting}_{kind}"] == 0.0, (setting, kind)
    assert capsys.readouterr().err == ""                              # every kind was asked
    # Held to chained answers ('the circle is red'), the reader scores the same: the verdict
    # compares what an answer says, whatever its form (few-shot aside: chained examples are
    # longer, so fewer fit, and the reader reads the first example's colour)
    chained = prefix_metrics(lm, tokenizer, prefixes, scenes, prefixes, scenes, chain=True)
    same = lambda m: {k: v for k, v in m.items() if "vqa" in k and "fewshot" not in k}
    assert same(chained) == same(metrics)
