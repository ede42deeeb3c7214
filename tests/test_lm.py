"""The language model: attention against torch's own, causality, the prefix path, freezing,
pooling, whitening and checkpoints."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minivlp import (CausalSelfAttention, LMConfig, LanguageModel, fit_whitening, freeze,
                     load_checkpoint, save_checkpoint, text_features)
from tokenizer import Tokenizer

TINY = LMConfig(vocab_size=300, context=16, width=32, depth=2, heads=4)


def tiny_lm(seed=0):
    torch.manual_seed(seed)
    return LanguageModel(TINY)


def test_attention_is_scaled_dot_product_attention_over_rows_mixed_by_a_loop():
    """The reference mixes q, k, v over the taps position by position, then calls torch's own
    causal attention."""
    torch.manual_seed(0)
    attention = CausalSelfAttention(width=32, heads=4, context=16, taps=3)
    with torch.no_grad():
        for weights in attention.taps:
            weights.normal_()                           # not the initial weights: any weights
    x = torch.randn(3, 11, 32)
    B, T, C = x.shape
    rows = attention.qkv(x)                             # (B, T, 3C)
    mixed = torch.zeros_like(rows)
    for t in range(T):
        for j in range(3):
            if t - j >= 0:
                mixed[:, t] += attention.taps[j] * rows[:, t - j]
    q, k, v = (z.view(B, T, 4, 8).transpose(1, 2) for z in mixed.split(C, dim=2))
    reference = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    reference = attention.proj(reference.transpose(1, 2).reshape(B, T, C))
    torch.testing.assert_close(attention(x), reference, rtol=1e-5, atol=1e-6)


def test_editing_a_later_token_leaves_earlier_outputs_unchanged():
    lm = tiny_lm().eval()
    ids = torch.randint(0, TINY.vocab_size, (2, 12))
    edited = ids.clone()
    edited[:, 7] = (edited[:, 7] + 1) % TINY.vocab_size
    before, after = lm(ids), lm(edited)
    assert torch.equal(before[:, :7], after[:, :7])
    assert not torch.allclose(before[:, 7:], after[:, 7:])


def test_head_is_tied_to_the_token_embedding():
    lm = tiny_lm()
    hidden = torch.randn(2, 5, TINY.width)
    reference = F.linear(hidden, lm.token_emb.weight)
    torch.testing.assert_close(lm.logits(hidden), reference)
    assert lm.logits(hidden).shape == (2, 5, TINY.vocab_size)


def test_empty_prefix_equals_the_plain_forward():
    lm = tiny_lm().eval()
    ids = torch.randint(0, TINY.vocab_size, (2, 9))
    no_prefix = torch.zeros(2, 0, TINY.width)
    assert torch.equal(lm(ids), lm(ids, prefix=no_prefix))


def test_prefix_occupies_the_first_positions():
    lm = tiny_lm().eval()
    ids = torch.randint(0, TINY.vocab_size, (2, 5))
    prefix = torch.randn(2, 3, TINY.width)
    hidden = lm(ids, prefix=prefix)
    assert hidden.shape == (2, 8, TINY.width)
    # the prefix positions see only the prefix (causality), so changing tokens leaves them alone
    other = lm((ids + 1) % TINY.vocab_size, prefix=prefix)
    assert torch.equal(hidden[:, :3], other[:, :3])


def test_freeze_drops_gradients_left_from_pretraining():
    lm = tiny_lm()
    lm.logits(lm(torch.randint(0, TINY.vocab_size, (2, 5)))).sum().backward()
    assert all(p.grad is not None for p in lm.parameters())
    freeze(lm)
    assert all(p.grad is None and not p.requires_grad for p in lm.parameters())


def test_frozen_lm_is_bit_identical_after_an_optimizer_step_through_it():
    lm = freeze(tiny_lm())
    before = {name: p.clone() for name, p in lm.state_dict().items()}
    prefix = torch.randn(2, 3, TINY.width, requires_grad=True)  # trained, upstream of the LM
    trainable = [p for p in lm.parameters() if p.requires_grad] + [prefix]
    optimizer = torch.optim.AdamW(trainable, lr=0.1, weight_decay=0.1)
    ids = torch.randint(0, TINY.vocab_size, (2, 6))
    # positions 2 .. K+T-2 predict the T tokens: the loss reaches the prefix only through the LM
    loss = F.cross_entropy(lm.logits(lm(ids, prefix=prefix))[:, 2:-1].flatten(0, 1), ids.flatten())
    loss.backward()
    optimizer.step()
    assert prefix.grad is not None and prefix.grad.abs().sum() > 0
    assert not lm.training
    assert all(p.grad is None and not p.requires_grad for p in lm.parameters())
    for name, tensor in lm.state_dict().items():
        assert torch.equal(tensor, before[name]), name


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train("a small red circle on the left\na big blue square\n" * 20, 280)


def test_text_features_do_not_depend_on_padding_or_batch(tokenizer):
    lm = freeze(tiny_lm())
    texts = ["a small red circle on the left", "a big blue square", "a"]
    batched = text_features(lm, tokenizer, texts, torch.device("cpu"))
    alone = torch.cat([text_features(lm, tokenizer, [text], torch.device("cpu")) for text in texts])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    # the reference: the LM reads '<bos> T \n T'; the mean of its states over the second T
    text = tokenizer.encode(texts[1])
    newline = tokenizer.encode("\n")
    ids = torch.tensor([[tokenizer.bos_id] + text + newline + text])
    second_reading = lm(ids)[0, 1 + len(text) + len(newline):]
    assert len(second_reading) == len(text)
    torch.testing.assert_close(alone[1], second_reading.mean(0), rtol=1e-5, atol=1e-5)


def test_whitening_spectrum_matches_a_float64_reference():
    torch.manual_seed(0)
    features = torch.randn(500, 8) @ torch.randn(8, 8) + 3.0           # anisotropic, off-centre
    mean, matrix = fit_whitening(features)
    whitened = (features - mean) @ matrix
    eigenvalues = torch.linalg.eigvalsh(torch.cov(features.double().T))
    eps = eigenvalues.mean()
    expected = (eigenvalues / (eigenvalues + eps)).sort().values      # shrunk whitening spectrum
    got = torch.linalg.eigvalsh(torch.cov(whitened.double().T)).sort().values
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert whitened.mean(0).abs().max() < 1e-4


def test_checkpoint_round_trip_gives_the_same_model(tmp_path, tokenizer):
    lm = tiny_lm()
    path = tmp_path / "lm.pt"
    save_checkpoint({"lm": lm.state_dict(), "tokenizer": tokenizer.to_dict()}, path)
    checkpoint = load_checkpoint(path)
    copy = LanguageModel(TINY)
    copy.load_state_dict(checkpoint["lm"])
    ids = torch.randint(0, TINY.vocab_size, (2, 7))
    assert torch.equal(lm.eval()(ids), copy.eval()(ids))
    restored = Tokenizer.from_dict(checkpoint["tokenizer"])
    assert restored.encode("a red circle") == tokenizer.encode("a red circle")
    assert not (tmp_path / "lm.pt.tmp").exists()


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "minivlp-1", "payload": math.exp}, path)   # a function: needs pickle
    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint(path)


def test_lm_ceiling_recomputes_the_attention_weights_the_lm_uses(tokenizer):
    """tests/benchmarks/lm_ceiling.py shows where each head looks by recomputing its weights; applied
    to the layer's values they must give the layer's real output at the last position."""
    sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
    from lm_ceiling import answer_attention
    lm = tiny_lm()
    seen = []                                                   # (input, output) of each layer
    for block in lm.blocks:
        block.attention.register_forward_hook(lambda layer, args, out: seen.append((args[0], out)))
    weights, words = answer_attention(lm, tokenizer, "a red circle")
    assert words[0] == "<bos>" and len(words) == 1 + len(tokenizer.encode("a red circle"))
    for block, w, (x, out) in zip(lm.blocks, weights, seen):
        attention = block.attention
        C = x.shape[-1]
        v = attention.mixed_qkv(x)[2][0]                                     # (h, T, d)
        mixed = (w[:, None] @ v)[:, 0].reshape(C)                             # (h, d) -> (C,)
        torch.testing.assert_close(attention.proj(mixed), out[0, -1], rtol=1e-5, atol=1e-6)


def test_binding_drills_answer_from_their_own_caption():
    """tests/benchmarks/binding_drills.py: each drill is a two-object caption and questions whose
    answers can be read off that caption, checked here by parsing the caption's words."""
    sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
    from binding_drills import drill
    rng = np.random.default_rng(0)
    for _ in range(200):
        caption, *lines = drill(rng).split("\n")
        words = caption.split(" ")                 # 'a red circle above a blue square'
        objects = [(words[1], words[2]), (words[-2], words[-1])]
        assert words[0] == words[-3] == "a" and " ".join(words[3:-3]) in ("above", "to the left of")
        assert lines and all(line.startswith("q: ") for line in lines)
        for line in lines:
            question, answer = line[len("q: "):].split(" a: ")
            asked = question.rstrip("?").split(" ")
            if question.startswith("what colour is the"):
                assert [answer] == [c for c, s in objects if s == asked[-1]]
            elif question.startswith("what shape is the"):
                assert [answer] == [s for c, s in objects if c == asked[-2]]
            else:                                  # 'is there a red circle?'
                assert answer.endswith("yes" if tuple(asked[-2:]) in objects else "no")


def test_lookup_forms_ask_the_colour_of_the_named_shape():
    """tests/benchmarks/lookup_direction.py: in every form the answer is the colour that the
    caption gives the shape asked about, before it ('question', 'chain', 'before') or after it
    ('after'), checked by parsing the caption's words."""
    sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
    from lookup_direction import lookup
    rng = np.random.default_rng(0)
    for form in ("question", "chain", "before", "after"):
        for _ in range(100):
            prompt, answer = lookup(rng, form)
            caption, asked = prompt.split("\n")
            if form == "chain":                        # '... a: the circle is' -> the question's
                asked, chain = asked.split(" a: ")
                asked += " a:"
                assert chain == f"the {asked.split(' ')[-2][:-1]} is"
            words = caption.split(" ")                 # 'a red circle above a blue square'
            pairs = [(words[1], words[2]), (words[-2], words[-1])]
            if form == "after":                        # 'a circle red above a square blue'
                pairs = [(second, first) for first, second in pairs]
            shape = asked.rstrip("? a:").split(" ")[-1]
            assert [answer] == [f" {colour}" for colour, s in pairs if s == shape]
            assert asked == (f"q: what colour is the {shape}? a:" if form in ("question", "chain")
                             else f"q: {shape}")
