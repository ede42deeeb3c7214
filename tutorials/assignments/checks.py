"""The checks of the minivlp assignments: one section per exercise, in teaching order.

A check is a function check(student, g). `student` holds the student's functions as attributes
(student.info_nce, ...); `g` is a seeded torch.Generator for the check's random inputs. A check
returns nothing, or a short note that `grade.py -v` shows, when the functions are right, and
raises Mismatch with one line a student can act on when they are not. Where a common mistake
gives a recognisable wrong answer, the check works that wrong answer out too and names the
mistake when the student's value matches it.

The references are worked out here, independently of the code under test: naive loops in
float64, the cases worked by hand in the stubs' docstrings, and properties a right answer must
have. minivlp's own functions serve as a second reference where they exist. grade.py loads the
student's files, runs these checks under a time limit and reports the scores.
"""

import copy
import math
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # minivlp.py: the repository root
import minivlp  # noqa: E402
import tokenizer  # noqa: E402


class Mismatch(Exception):
    """A check's one-line reason for failing."""


@dataclass
class Check:
    description: str
    points: int
    run: object                  # run(student, g) -> None or a note
    limit_s: float = None        # seconds it may take; None: the grader's default


@dataclass
class Exercise:
    number: int
    title: str
    files: dict                  # {file the student writes: (the functions it must define)}
    checks: list = field(default_factory=list)
    one_run: bool = False        # the checks share one long run: once it is stopped, all fail

    @property
    def points(self):
        return sum(c.points for c in self.checks)


EXERCISES = {}


def exercise(number, title, files, one_run=False):
    EXERCISES[number] = Exercise(number, title, files, one_run=one_run)


def check(number, description, points=1, limit_s=None):
    """Register the decorated function as a check of exercise `number`, worth `points`."""
    def register(run):
        EXERCISES[number].checks.append(Check(description, points, run, limit_s))
        return run
    return register


# ------------------------------------------------------------------------------------------------
# Helpers: each raises Mismatch with a message a student can act on.
# ------------------------------------------------------------------------------------------------

def randint(g, low, high):
    """A random int in [low, high], drawn from the check's generator."""
    return int(torch.randint(low, high + 1, (), generator=g))


def as_tensor(value, what):
    if not torch.is_tensor(value):
        raise Mismatch(f"{what}: expected a tensor, got {type(value).__name__}")
    return value


def expect_shape(value, shape, what):
    """value must be a tensor of this shape (checked before it is indexed or back-propagated)."""
    if as_tensor(value, what).shape != shape:
        raise Mismatch(f"{what}: shape {tuple(value.shape)}, expected {tuple(shape)}")


def assert_close(got, expected, what, rtol=1e-6, atol=1e-9, mistakes=()):
    """got must be a tensor of expected's shape, finite, and allclose to expected.

    mistakes: (wrong value, what the mistake is) pairs; a got that matches a wrong value is
    reported by naming the mistake."""
    expect_shape(got, expected.shape, what)
    got = got.detach().to(expected.dtype)
    if not torch.isfinite(got).all():
        raise Mismatch(f"{what}: got {got.flatten()[~torch.isfinite(got.flatten())][0].item()}, "
                       f"expected finite values")
    if torch.allclose(got, expected, rtol=rtol, atol=atol):
        return
    for wrong, mistake in mistakes:
        wrong = wrong.to(got.dtype)
        if wrong.shape == got.shape and torch.allclose(got, wrong, rtol=rtol, atol=atol):
            raise Mismatch(f"{what}: {mistake}")
    if got.numel() == 1:
        raise Mismatch(f"{what}: got {got.item():.6g}, expected {expected.item():.6g}")
    worst = (got - expected).abs().max().item()
    raise Mismatch(f"{what}: differs from the reference by up to {worst:.3g}")


def assert_grad(tensor, expected, what, **tolerance):
    if tensor.grad is None:
        raise Mismatch(f"{what}: no gradient reached it (is the result detached, or built "
                       f"with .item() / float()?)")
    assert_close(tensor.grad, expected, what, **tolerance)


def as_number(value, what):
    """A Python number or one-element tensor -> float."""
    if torch.is_tensor(value) and value.numel() == 1:
        return value.item()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise Mismatch(f"{what}: expected a number, got {type(value).__name__}")


def leaves(*tensors):
    """Fresh leaf copies that record gradients: the reference and the student get their own."""
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def unchanged(before, after, name, what):
    if not torch.equal(before, after):
        raise Mismatch(f"{what}: your function changed `{name}` in place")


TINY_LM = minivlp.LMConfig(vocab_size=40, context=16, width=16, depth=2, heads=2)


def tiny_lm(g, dtype=torch.float64):
    """A small frozen LM with random weights drawn from the check's generator."""
    torch.manual_seed(randint(g, 0, 2**31))                             # the LM's initial weights
    return minivlp.freeze(minivlp.LanguageModel(TINY_LM).to(dtype))


# ------------------------------------------------------------------------------------------------
# Exercise 1: one BPE merge (tutorial 1).
# ------------------------------------------------------------------------------------------------

exercise(1, "one BPE merge", {"ex01_bpe_merge.py": ("merge_pair",)})


def merged(ids, pair, new_id, from_the_right=False):
    """The reference: a left-to-right scan (or, to name that mistake, a right-to-left one)."""
    if from_the_right:
        return merged(ids[::-1], pair[::-1], new_id)[::-1]
    out, i = [], 0
    while i < len(ids):
        if tuple(ids[i:i + 2]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def compare_merge(student, ids, pair, new_id, expected=None):
    expected = merged(ids, pair, new_id) if expected is None else expected
    given = list(ids)
    got = student.merge_pair(given, pair, new_id)
    what = f"merge_pair({ids}, {pair}, {new_id})"
    if given != ids:
        raise Mismatch(f"{what} changed its input list to {given}: build a new list")
    if not isinstance(got, (list, tuple)) or list(got) != expected:
        if got == merged(ids, pair, new_id, from_the_right=True):
            raise Mismatch(f"{what}: got {got}, the merges of a scan from the right: scan left to "
                           f"right, expected {expected}")
        raise Mismatch(f"{what}: got {got}, expected {expected}")


@check(1, "random id lists, against a reference scan")
def merge_random_lists(student, g):
    for _ in range(5):
        # a small alphabet, so that pairs, runs and overlaps are common
        ids = torch.randint(0, 3, (randint(g, 2, 20),), generator=g).tolist()
        pair = tuple(torch.randint(0, 3, (2,), generator=g).tolist())
        new_id = 256 + randint(g, 0, 100)
        compare_merge(student, ids, pair, new_id)


@check(1, "overlapping runs merge left to right, worked by hand: [a, a, a] -> [X, a]")
def merge_overlapping_runs(student, g):
    a, X = randint(g, 0, 255), 256
    for ids, expected in (([a] * 3, [X, a]), ([a] * 4, [X, X]), ([a] * 5, [X, X, a])):
        compare_merge(student, ids, (a, a), X, expected)


@check(1, "edge cases: an empty list, one id, no occurrence, the pair at both ends")
def merge_edge_cases(student, g):
    a, b = randint(g, 0, 127), randint(g, 128, 255)
    for ids, expected in (([], []), ([a], [a]), ([b, a], [b, a]), ([a, b, b, a, b], [300, b, 300])):
        compare_merge(student, ids, (a, b), 300, expected)


# ------------------------------------------------------------------------------------------------
# Exercise 2: causal self-attention (tutorial 2).
# ------------------------------------------------------------------------------------------------

exercise(2, "causal self-attention", {"ex02_attention.py": ("causal_attention",)})


def random_qkv(g):
    B, heads, T, d = randint(g, 1, 3), randint(g, 1, 4), randint(g, 2, 12), randint(g, 2, 8)
    return [torch.randn(B, heads, T, d, generator=g, dtype=torch.float64) for _ in range(3)]


def naive_attention(q, k, v):
    """Position by position: softmax over s <= t of q_t . k_s / sqrt(d), times v_s."""
    out = torch.zeros_like(v)
    for t in range(q.shape[2]):
        scores = (q[:, :, t:t + 1] * k[:, :, :t + 1]).sum(-1) / math.sqrt(q.shape[-1])  # (B,h,t+1)
        out[:, :, t] = (scores.softmax(-1).unsqueeze(-1) * v[:, :, :t + 1]).sum(2)
    return out


@check(2, "values against a position-by-position loop and F.scaled_dot_product_attention")
def attention_values(student, g):
    for _ in range(3):
        q, k, v = random_qkv(g)
        expected = naive_attention(q, k, v)                             # (B, heads, T, d)
        assert torch.allclose(expected, F.scaled_dot_product_attention(q, k, v, is_causal=True))
        unscaled = naive_attention(q * math.sqrt(q.shape[-1]), k, v)
        by_d = naive_attention(q / math.sqrt(q.shape[-1]), k, v)
        got = student.causal_attention(q.clone(), k.clone(), v.clone())
        assert_close(got, expected, f"(B, heads, T, d) = {tuple(q.shape)}", mistakes=[
            (unscaled, "matches attention without the 1/sqrt(d) scale"),
            (by_d, "matches scores divided by d: divide by sqrt(d)")])


@check(2, "causal: position 0 returns v_0, and keys/values after t leave outputs up to t alone")
def attention_is_causal(student, g):
    q, k, v = random_qkv(g)
    T = q.shape[2]
    out = student.causal_attention(q.clone(), k.clone(), v.clone())
    expect_shape(out, q.shape, "output")
    assert_close(out[:, :, 0], v[:, :, 0],
                 "position 0 (it can only read itself, so its output is v_0)")
    t = randint(g, 0, T - 2)
    k_later, v_later = k.clone(), v.clone()
    k_later[:, :, t + 1:] = torch.randn(k[:, :, t + 1:].shape, generator=g, dtype=k.dtype)
    v_later[:, :, t + 1:] = torch.randn(v[:, :, t + 1:].shape, generator=g, dtype=v.dtype)
    changed = student.causal_attention(q.clone(), k_later, v_later)
    expect_shape(changed, q.shape, "output")
    assert_close(changed[:, :, :t + 1], out[:, :, :t + 1].detach(),
                 f"outputs 0..{t} after changing keys and values at {t + 1}..{T - 1} (the future)")


@check(2, "inside minivlp.CausalSelfAttention (q, k, v mixed over 4 taps), as the naive loop")
def attention_inside_the_layer(student, g):
    B, heads, d, T = randint(g, 1, 3), randint(g, 1, 4), randint(g, 2, 8), randint(g, 2, 12)
    C = heads * d
    layer = minivlp.CausalSelfAttention(C, heads, context=T + randint(g, 0, 4), taps=4).double()
    x = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    # the layer's own steps, with the student's function, and the naive loop, in its attention
    q, k, v = layer.mixed_qkv(x)                                        # 3 x (B, heads, T, d)
    expected = layer.proj(naive_attention(q, k, v).transpose(1, 2).reshape(B, T, C))
    out = student.causal_attention(q, k, v)
    expect_shape(out, q.shape, "output")
    got = layer.proj(out.transpose(1, 2).reshape(B, T, C))              # (B, T, C)
    assert_close(got, expected, f"layer output for (B, T, C) = {(B, T, C)}, {heads} heads")


@check(2, "gradients with respect to q, k and v")
def attention_gradients(student, g):
    q, k, v = random_qkv(g)
    upstream = torch.randn(q.shape, generator=g, dtype=q.dtype)
    ref = leaves(q, k, v)
    (naive_attention(*ref) * upstream).sum().backward()
    mine = leaves(q, k, v)
    out = student.causal_attention(*mine)
    expect_shape(out, q.shape, "output")
    if not out.requires_grad:
        raise Mismatch("the output does not record gradients (built outside autograd?)")
    (out * upstream).sum().backward()
    for name, got, expected in zip("qkv", mine, ref):
        assert_grad(got, expected.grad, f"gradient of {name}")


# ------------------------------------------------------------------------------------------------
# Exercise 3: freezing the LM (tutorial 2).
# ------------------------------------------------------------------------------------------------

exercise(3, "freezing the LM", {"ex03_freeze.py": ("freeze",)})


def pretrained_lm(g):
    """A tiny LM as pretraining leaves it: training mode, a gradient on every parameter."""
    lm = tiny_lm(g).train().requires_grad_(True)
    ids = torch.randint(TINY_LM.vocab_size, (2, 8), generator=g)
    lm.logits(lm(ids)).square().mean().backward()
    return lm


@check(3, "frozen: no parameter requires grad or keeps a gradient, every submodule in eval mode")
def freeze_freezes(student, g):
    lm = pretrained_lm(g)
    student.freeze(lm)
    for name, p in lm.named_parameters():
        if p.requires_grad:
            raise Mismatch(f"parameter {name} still has requires_grad=True")
        if p.grad is not None:
            raise Mismatch(f"parameter {name} still holds the gradient left from pretraining"
                           + (" (zeros: set it to None)" if not p.grad.any() else ""))
    for name, module in lm.named_modules():
        if module.training:
            raise Mismatch(f"{name or 'the LM itself'} is still in training mode")


@check(3, "the same module back, its weights unchanged, and a loss still flows into its input")
def freeze_keeps_the_lm_usable(student, g):
    lm = pretrained_lm(g)
    before = copy.deepcopy(lm.state_dict())
    returned = student.freeze(lm)
    if returned is not lm:
        raise Mismatch(f"returned {type(returned).__name__}, not the module passed in")
    for name, tensor in lm.state_dict().items():
        if not torch.equal(tensor, before[name]):
            raise Mismatch(f"freezing changed the weights of {name}")
    if not torch.is_grad_enabled():
        raise Mismatch("autograd is switched off everywhere: freezing the LM must not stop a loss "
                       "from flowing through it")
    prefix = torch.randn(2, 3, TINY_LM.width, generator=g, dtype=torch.float64, requires_grad=True)
    out = lm(torch.randint(TINY_LM.vocab_size, (2, 5), generator=g), prefix=prefix)
    if not out.requires_grad:
        raise Mismatch("the LM's output records no gradient for its input")
    out.square().sum().backward()
    if prefix.grad is None or not prefix.grad.any():
        raise Mismatch("no gradient reached an input prefix through the frozen LM")


# ------------------------------------------------------------------------------------------------
# Exercise 4: h(T) by re-reading and pooling (tutorial 4).
# ------------------------------------------------------------------------------------------------

exercise(4, "h(T) by re-reading", {"ex04_text_features.py": ("reread_tokens", "reread_features")})


class TableTokenizer:
    """A stand-in tokenizer that looks each text up in a table: the docstring's worked example."""

    def __init__(self, table, bos_id=1, pad_id=0):
        self.table, self.bos_id, self.pad_id = table, bos_id, pad_id

    def encode(self, text):
        return list(self.table[text])


class CharTokenizer:
    """A stand-in tokenizer with one id per character; '\\n' encodes to `newline` (1 or 2 ids)."""

    def __init__(self, newline, bos_id=1, pad_id=2):
        self.newline, self.bos_id, self.pad_id = list(newline), bos_id, pad_id

    def encode(self, text):
        ids = []
        for character in text:
            ids += self.newline if character == "\n" else [10 + ord(character) % 26]
        return ids


def reread_reference(tokenizer, texts, context):
    """'<bos> T \\n T' built row by row, and the weights of the mistakes a check can name:
    {name: (M, T) weights} with 'right' the answer."""
    newline = tokenizer.encode("\n")
    longest = (context - 1 - len(newline)) // 2
    rows, marks = [], {"right": [], "first reading": [], "both readings": [], "shifted": []}
    for text in texts:
        e = tokenizer.encode(text)[:longest]
        n, start = len(e), 1 + len(e) + len(newline)                    # the second reading starts
        rows.append([tokenizer.bos_id] + e + newline + e)
        length = len(rows[-1])
        marks["right"].append([float(start <= t < start + n) for t in range(length)])
        marks["first reading"].append([float(1 <= t < 1 + n) for t in range(length)])
        marks["both readings"].append([float(1 <= t < 1 + n or start <= t) for t in range(length)])
        marks["shifted"].append([float(start - 1 <= t < start - 1 + n) for t in range(length)])
    T = max(len(row) for row in rows)
    ids = torch.tensor([row + [tokenizer.pad_id] * (T - len(row)) for row in rows])
    weights = {name: torch.tensor([m + [0.0] * (T - len(m)) for m in rows_of])
               for name, rows_of in marks.items()}
    return ids, weights


WEIGHT_MISTAKES = {
    "first reading": "the weights mark the first reading of the text; they must mark the second",
    "both readings": "the weights mark both readings; only the second one counts",
    "shifted": "the weights start one position early (at the newline): they mark the second "
               "reading's own tokens"}


def compare_reread_tokens(student, tokenizer, texts, context):
    expected_ids, weights = reread_reference(tokenizer, texts, context)
    what = f"reread_tokens of {len(texts)} texts, context {context}"
    out = student.reread_tokens(tokenizer, list(texts), context)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mismatch(f"{what}: expected a pair (ids, weights), got {type(out).__name__}")
    ids, got = (as_tensor(x, what) for x in out)
    if ids.dtype != torch.long:
        raise Mismatch(f"{what}: ids have dtype {ids.dtype}, expected torch.long")
    if ids.shape != expected_ids.shape:
        longest = max(len(tokenizer.encode(text)) for text in texts)
        hint = (f" (a text of {longest} ids needs cutting to (context - 1 - len(newline)) // 2)"
                if ids.shape[1:] > expected_ids.shape[1:] else "")
        raise Mismatch(f"{what}: ids of shape {tuple(ids.shape)}, expected "
                       f"{tuple(expected_ids.shape)}{hint}")
    if not torch.equal(ids, expected_ids):
        row = int((ids != expected_ids).any(1).nonzero()[0])
        raise Mismatch(f"{what}: row {row} is {ids[row].tolist()}, expected "
                       f"{expected_ids[row].tolist()}")
    if not got.is_floating_point():
        raise Mismatch(f"{what}: weights have dtype {got.dtype}, expected a float dtype")
    assert_close(got, weights["right"], f"{what}: weights", mistakes=[
        (weights[name], mistake) for name, mistake in WEIGHT_MISTAKES.items()])


@check(4, "reread_tokens on the docstring's worked example: ids and weights", points=2)
def reread_tokens_by_hand(student, g):
    hand = TableTokenizer({"a red box": [7, 5, 9], "box": [9], "\n": [3]})
    expected_ids = torch.tensor([[1, 7, 5, 9, 3, 7, 5, 9], [1, 9, 3, 9, 0, 0, 0, 0]])
    expected_weights = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 0, 0, 0, 0.]])
    ids, weights = reread_reference(hand, ["a red box", "box"], 10)
    assert torch.equal(ids, expected_ids) and torch.equal(weights["right"], expected_weights)
    compare_reread_tokens(student, hand, ["a red box", "box"], 10)
    compare_reread_tokens(student, hand, ["a red box", "box"], 7)   # cut: [1, 7, 5, 3, 7, 5]


@check(4, "reread_tokens on random texts: long ones cut, empty ones, a newline of 1 or 2 ids")
def reread_tokens_random(student, g):
    for newline in ([3], [3, 4]):
        texts = ["".join(chr(97 + randint(g, 0, 25)) for _ in range(randint(g, 0, 14)))
                 for _ in range(randint(g, 2, 6))] + [""]
        compare_reread_tokens(student, CharTokenizer(newline), texts, randint(g, 8, 24))


def pooled_reference(lm, ids, weights):
    """The mean of the final states at weight-1 positions, by a loop; zeros where none is 1."""
    hidden = lm(ids).double()                                           # (M, T, C)
    rows = []
    for m in range(len(ids)):
        marked = [hidden[m, t] for t in range(ids.shape[1]) if weights[m, t] == 1]
        rows.append(torch.stack(marked).mean(0) if marked else torch.zeros(hidden.shape[-1],
                                                                           dtype=hidden.dtype))
    return torch.stack(rows), hidden


@check(4, "reread_features: the mean of the final states where weights are 1, against a loop",
       points=2)
def reread_features_values(student, g):
    lm = tiny_lm(g, torch.float32)
    texts = ["".join(chr(97 + randint(g, 0, 25)) for _ in range(randint(g, 1, 6)))
             for _ in range(randint(g, 2, 5))] + [""]               # the empty text: no weight
    ids, weights = reread_reference(CharTokenizer([3]), texts, TINY_LM.context)
    expected, hidden = pooled_reference(lm, ids, weights["right"])
    all_positions = hidden.mean(1)
    summed = (hidden * weights["right"].unsqueeze(-1).double()).sum(1)
    got = student.reread_features(lm, ids.clone(), weights["right"].clone())
    assert_close(got, expected, f"h(T) of {len(texts)} texts (the last one empty)",
                 rtol=1e-5, atol=1e-6, mistakes=[
                     (all_positions, "averaged every position: only those of weight 1 count"),
                     (summed, "summed the states: divide by the number of weight-1 positions")])


@check(4, "plugged into minivlp.text_features with a real tokenizer, h(T) as one text at a time")
def reread_in_text_features(student, g):
    documents = minivlp.make_corpus(40, seed=randint(g, 0, 1000))
    tok = tokenizer.Tokenizer.train("\n".join(documents), vocab_size=300)
    torch.manual_seed(randint(g, 0, 2**31))
    cfg = minivlp.LMConfig(vocab_size=tok.vocab_size, context=24, width=16, depth=1, heads=2)
    lm = minivlp.freeze(minivlp.LanguageModel(cfg))
    texts = [line for document in documents[:3] for line in document.splitlines()[:2]]
    # the reference, one text at a time and unpadded: the LM reads '<bos> T \n T' (T cut so that
    # both readings fit) and h(T) is the mean of its final states over the second T
    newline = tok.encode("\n")
    longest = (cfg.context - 1 - len(newline)) // 2
    expected = []
    for text in texts:
        ids = tok.encode(text)[:longest]
        with torch.no_grad():
            states = lm(torch.tensor([[tok.bos_id] + ids + newline + ids]))[0]  # (T, C)
        expected.append(states[1 + len(ids) + len(newline):].mean(0))
    expected = torch.stack(expected)
    saved = minivlp.reread_tokens, minivlp.reread_features
    try:
        minivlp.reread_tokens = student.reread_tokens
        minivlp.reread_features = student.reread_features
        got = minivlp.text_features(lm, tok, texts, torch.device("cpu"))
    finally:
        minivlp.reread_tokens, minivlp.reread_features = saved
    assert_close(got, expected, f"h(T) of {len(texts)} corpus lines", rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Exercise 5: whitening the text features (tutorial 4).
# ------------------------------------------------------------------------------------------------

exercise(5, "whitening", {"ex05_whitening.py": ("fit_whitening", "mean_pairwise_cosine")})


def whitening_reference(features):
    """μ, Σ by a loop over rows (unbiased), and W = (Σ + eps I)^(-1/2) with the mistakes a check
    can name: ({name: W}, mean)."""
    x = features.double()
    M, C = x.shape
    mean = x.sum(0) / M
    covariance = sum(torch.outer(row - mean, row - mean) for row in x) / (M - 1)   # (C, C)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    eigenvalues = eigenvalues.clamp(min=0)
    eps = eigenvalues.mean()
    assert torch.isclose(eps, torch.trace(covariance) / C)  # the mean eigenvalue is the trace / C

    def inverse_root(values, power=-0.5, rotate_back=True):
        scaled = eigenvectors @ torch.diag(values ** power)
        return scaled @ eigenvectors.T if rotate_back else scaled

    matrices = {"right": inverse_root(eigenvalues + eps),
                "biased": inverse_root(eigenvalues * (M - 1) / M + eps * (M - 1) / M),
                "no rotation back": inverse_root(eigenvalues + eps, rotate_back=False),
                "inverse": inverse_root(eigenvalues + eps, power=-1.0)}
    if eigenvalues.min() > 1e-9 * eigenvalues.max():                  # full rank: eps = 0 exists
        matrices["no shrinkage"] = inverse_root(eigenvalues)
    return matrices, mean


WHITENING_MISTAKES = {
    "biased": "the covariance divides by M; divide by M - 1 (as torch.cov does)",
    "no rotation back": "W = V diag(...) without the final V^T: it must be symmetric, "
                        "V diag(1 / sqrt(λ + eps)) V^T",
    "inverse": "W is the inverse of Σ + eps I; it must be its inverse square root",
    "no shrinkage": "no shrinkage: add eps = the mean eigenvalue before the inverse square root"}


def compare_whitening(student, features, what):
    matrices, mean = whitening_reference(features)
    given = features.clone()
    out = student.fit_whitening(given)
    unchanged(features, given, "features", what)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mismatch(f"{what}: expected a pair (mean, matrix), got {type(out).__name__}")
    got_mean, got_matrix = out
    assert_close(got_mean, mean, f"{what}: mean", rtol=1e-5, atol=1e-5 * mean.abs().max().item())
    right = matrices.pop("right")
    scale = right.abs().max().item()
    assert_close(got_matrix, right, f"{what}: matrix", rtol=1e-4, atol=1e-4 * scale, mistakes=[
        (matrix, WHITENING_MISTAKES[name]) for name, matrix in matrices.items()])
    return got_matrix.double(), mean


@check(5, "fit_whitening on the docstring's worked example: μ = (2, 0), W = 0.866 I")
def whitening_by_hand(student, g):
    features = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 1.0], [2.0, -1.0]])
    matrices, mean = whitening_reference(features)
    assert torch.allclose(matrices["right"], torch.eye(2, dtype=torch.float64) * 0.75 ** 0.5)
    compare_whitening(student, features, "4 features (C = 2)")


@check(5, "fit_whitening on anisotropic features: W symmetric, W (Σ + eps I) W = I", points=2)
def whitening_anisotropic(student, g):
    M, C = randint(g, 30, 60), randint(g, 4, 8)
    shared = torch.randn(C, generator=g) * 10                           # one large shared direction
    features = shared + torch.randn(M, C, generator=g) * torch.linspace(0.05, 2, C)
    matrix, mean = compare_whitening(student, features, f"{M} features of size {C}")
    x = features.double() - mean
    covariance = x.T @ x / (M - 1)
    eps = torch.trace(covariance) / C
    identity = matrix @ (covariance + eps * torch.eye(C, dtype=torch.float64)) @ matrix
    assert_close(identity, torch.eye(C, dtype=torch.float64), "W (Σ + eps I) W", atol=1e-3)


@check(5, "fit_whitening with fewer features than dimensions (zero eigenvalues): finite and right")
def whitening_rank_deficient(student, g):
    C = randint(g, 6, 10)
    features = torch.randn(randint(g, 3, C - 1), C, generator=g) + 3.0
    compare_whitening(student, features, f"{len(features)} features of size {C}")


def pairwise_cosines(x):
    """{name: value}: the mean over ordered pairs i != j by a double loop, and two mistakes."""
    x = x.double()
    M = len(x)
    cosine = [[float(x[i] @ x[j] / (x[i].norm() * x[j].norm())) for j in range(M)]
              for i in range(M)]
    dot = [[float(x[i] @ x[j]) for j in range(M)] for i in range(M)]
    off = [(i, j) for i in range(M) for j in range(M) if i != j]
    return {"right": sum(cosine[i][j] for i, j in off) / len(off),
            "the diagonal counted": sum(map(sum, cosine)) / M ** 2,
            "dot products": sum(dot[i][j] for i, j in off) / len(off)}


@check(5, "mean_pairwise_cosine against a double loop, and the worked example (0.863 -> -1/3)")
def pairwise_cosine_values(student, g):
    example = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 1.0], [2.0, -1.0]])
    whitened = (example - example.mean(0)) * 0.75 ** 0.5
    cases = [(example, 0.862952), (whitened, -1 / 3)]
    random = torch.randn(randint(g, 3, 12), randint(g, 2, 6), generator=g) * 3 + 1
    cases.append((random, pairwise_cosines(random)["right"]))
    for x, expected in cases:
        values = pairwise_cosines(x)
        assert math.isclose(values["right"], expected, abs_tol=1e-6)
        given = x.clone()
        got = as_number(student.mean_pairwise_cosine(given), "mean_pairwise_cosine")
        unchanged(x, given, "x", "mean_pairwise_cosine")
        if not math.isclose(got, expected, rel_tol=1e-5, abs_tol=1e-6):
            for name in ("the diagonal counted", "dot products"):
                if math.isclose(got, values[name], rel_tol=1e-5, abs_tol=1e-6):
                    raise Mismatch(f"mean_pairwise_cosine of {len(x)} vectors: got {got:.4f}: "
                                   + ("each vector was paired with itself too: average over "
                                      "i != j" if name == "the diagonal counted" else
                                      "the mean dot product: divide by both lengths (cosine)"))
            raise Mismatch(f"mean_pairwise_cosine of {len(x)} vectors: got {got:.6f}, "
                           f"expected {expected:.6f}")


# ------------------------------------------------------------------------------------------------
# Exercise 6: InfoNCE with shared captions (tutorial 5).
# ------------------------------------------------------------------------------------------------

exercise(6, "InfoNCE with shared captions", {"ex06_info_nce.py": ("info_nce",)})


def random_pairs(g, dtype=torch.float64):
    """(N, C) image and text embeddings, rows of very different lengths (cosine must not care)."""
    N, C = randint(g, 2, 10), randint(g, 2, 16)
    scales = [torch.exp(torch.empty(N, 1, dtype=dtype).uniform_(-2, 2, generator=g))
              for _ in range(2)]
    return (torch.randn(N, C, generator=g, dtype=dtype) * scales[0],
            torch.randn(N, C, generator=g, dtype=dtype) * scales[1])


def naive_info_nce(v, t, tau, symmetric=True, caption_ids=None, mask=True, dot=False):
    """§4.2 by a double loop in float64, differentiable. A row j is left out of row i's
    denominator when it shares i's caption (j != i). mask=False and dot=True name mistakes."""
    v, t = v.double(), t.double()
    tau = tau.double() if torch.is_tensor(tau) else tau
    N = len(v)
    same = (lambda i, j: False) if caption_ids is None or not mask else (
        lambda i, j: i != j and caption_ids[i] == caption_ids[j])

    def sim(a, b):
        return a @ b if dot else a @ b / (a.norm() * b.norm())

    def one_way(queries, keys):
        total = 0.0
        for i in range(N):
            logits = torch.stack([sim(queries[i], keys[j]) / tau
                                  for j in range(N) if not same(i, j)])
            total = total + torch.logsumexp(logits, 0) - sim(queries[i], keys[i]) / tau
        return total / N

    if not symmetric:
        return one_way(v, t)
    return (one_way(v, t) + one_way(t, v)) / 2


def compare_info_nce(student, v, t, tau, symmetric, caption_ids=None, what="", **tolerance):
    given = [x.clone() for x in (v, t)] + ([caption_ids.clone()] if caption_ids is not None else [])
    kwargs = {"symmetric": symmetric}
    if caption_ids is not None:
        kwargs["caption_ids"] = given[2]
    got = student.info_nce(given[0], given[1], tau, **kwargs)
    for name, before, after in zip(("image_emb", "text_emb", "caption_ids"), (v, t, caption_ids),
                                   given):
        unchanged(before, after, name, what)
    expected = naive_info_nce(v, t, tau, symmetric, caption_ids)
    mistakes = [(naive_info_nce(v, t, 1.0, symmetric, caption_ids),
                 "equals the loss at τ = 1: divide the similarities by τ"),
                (naive_info_nce(v, t, tau, symmetric, caption_ids, dot=True),
                 "equals the loss with dot products: use cosine similarity (unit vectors first)")]
    if caption_ids is not None:
        mistakes.append((naive_info_nce(v, t, tau, symmetric, caption_ids, mask=False),
                         "equals the loss without masking: a row that shares a caption with row i "
                         "must be left out of row i's denominator"))
    if symmetric:
        mistakes += [(naive_info_nce(v, t, tau, False, caption_ids),
                      "equals image -> text alone: symmetric=True averages both directions"),
                     (2 * expected, "equals the sum of both directions: average them")]
    else:
        mistakes.append((naive_info_nce(t, v, tau, False, caption_ids),
                         "equals text -> image: symmetric=False is image -> text "
                         "(each image's row over all texts)"))
    expect_shape(got, torch.Size([]), f"{what}: loss")
    assert_close(got, expected.detach(), what, mistakes=[(w.detach(), m) for w, m in mistakes],
                 **tolerance)


@check(6, "value image -> text (symmetric=False) at τ = 1, 0.5, 0.07, against a double loop",
       points=2)
def info_nce_one_direction(student, g):
    for tau in (1.0, 0.5, 0.07):
        v, t = random_pairs(g)
        compare_info_nce(student, v, t, tau, False, what=f"τ={tau}, symmetric=False, N={len(v)}")


@check(6, "value of both directions averaged (symmetric=True, the default)")
def info_nce_symmetric(student, g):
    for tau in (1.0, 0.1):
        v, t = random_pairs(g)
        compare_info_nce(student, v, t, tau, True, what=f"τ={tau}, symmetric=True, N={len(v)}")
        got = student.info_nce(v.clone(), t.clone(), tau)
        assert_close(as_tensor(got, "loss"), naive_info_nce(v, t, tau).detach(),
                     f"τ={tau} with symmetric left at its default")


@check(6, "gradients with respect to image_emb, text_emb and a learned τ", points=2)
def info_nce_gradients(student, g):
    v, t = random_pairs(g)
    caption_ids = torch.randint(0, len(v), (len(v),), generator=g)
    tau = torch.tensor(0.2, dtype=torch.float64)
    ref = leaves(v, t, tau)
    naive_info_nce(*ref, caption_ids=caption_ids).backward()
    mine = leaves(v, t, tau)
    loss = student.info_nce(*mine, caption_ids=caption_ids.clone())
    expect_shape(loss, torch.Size([]), "loss")
    if not loss.requires_grad:
        raise Mismatch("the loss does not record gradients (built with .item() or numpy?)")
    loss.backward()
    for name, got, expected in zip(("image_emb", "text_emb", "τ"), mine, ref):
        assert_grad(got, expected.grad, f"gradient of {name}", rtol=1e-5, atol=1e-8)


@check(6, "finite and right in float32 at τ = 0.01 and 0.001 (no overflow in exp)")
def info_nce_small_temperature(student, g):
    for tau in (0.01, 0.001):
        v, t = random_pairs(g)
        compare_info_nce(student, v.float(), t.float(), tau, True, what=f"float32, τ={tau}",
                         rtol=1e-4, atol=1e-3)


@check(6, "shared captions left out of the denominators, both ways: the worked example and random",
       points=2)
def info_nce_shared_captions(student, g):
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    ids = torch.tensor([0, 0, 1])
    worked = (2 * math.log(1 + math.exp(-1)) + math.log(1 + 2 * math.exp(-1))) / 3   # 0.392656
    assert math.isclose(naive_info_nce(v, v, 1.0, False, ids).item(), worked)
    compare_info_nce(student, v, v.clone(), 1.0, False, ids, what="the worked example")
    for symmetric in (False, True):
        v, t = random_pairs(g)
        ids = torch.randint(0, max(1, len(v) // 2), (len(v),), generator=g)  # many shared
        compare_info_nce(student, v, t, 0.3, symmetric, ids,
                         what=f"caption_ids {ids.tolist()}, symmetric={symmetric}")


@check(6, "caption_ids all distinct gives the plain loss; one caption for all gives 0")
def info_nce_caption_edge_cases(student, g):
    v, t = random_pairs(g)
    N = len(v)
    distinct = torch.randperm(N, generator=g) + 5
    compare_info_nce(student, v, t, 0.5, True, distinct, what=f"caption_ids {distinct.tolist()}")
    got = student.info_nce(v.clone(), t.clone(), 0.5, caption_ids=torch.zeros(N, dtype=torch.long))
    assert_close(as_tensor(got, "loss"), torch.tensor(0.0, dtype=torch.float64),
                 f"all {N} rows sharing one caption (each denominator is its own pair: -log 1)",
                 atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Exercise 7: Recall@K with shared captions (tutorial 6).
# ------------------------------------------------------------------------------------------------

exercise(7, "Recall@K with shared captions", {"ex07_retrieval.py": ("recall_at_k",)})


def naive_ranks(similarity, caption_index, ties_count_against=True, text_by="best"):
    """Ranks by counting, both ways: (N,) image -> text, (M,) text -> image. A rank is 1 + the
    number of wrong candidates scoring at least as high as the best right one. The other
    settings name mistakes: ties in the model's favour; text -> image by an image other than
    the best-placed ('first', 'worst')."""
    s, index = similarity.tolist(), caption_index.tolist()
    N, M = similarity.shape
    beats = (lambda a, b: a >= b) if ties_count_against else (lambda a, b: a > b)
    image_to_text = [1 + sum(beats(s[i][j], s[i][index[i]]) for j in range(M) if j != index[i])
                     for i in range(N)]
    text_to_image = []
    for c in range(M):
        right = [s[i][c] for i in range(N) if index[i] == c]
        score = {"best": max(right), "first": right[0], "worst": min(right)}[text_by]
        text_to_image.append(1 + sum(beats(s[i][c], score) for i in range(N) if index[i] != c))
    return image_to_text, text_to_image


def recalls(ranks, k):
    return tuple(sum(r <= k for r in side) / len(side) for side in ranks)


RECALL_MISTAKES = {
    (False, "best"): "ties counted in the model's favour: a wrong caption scoring *equal* to the "
                     "right one must push it down too",
    (True, "first"): "text -> image scored by the caption's first image: score it by its "
                     "best-placed image",
    (True, "worst"): "text -> image scored by the caption's worst-placed image: score it by its "
                     "best-placed image"}


def compare_recall(student, similarity, caption_index, k, what):
    expected = recalls(naive_ranks(similarity, caption_index), k)
    given, index = similarity.clone(), caption_index.clone()
    out = student.recall_at_k(given, index, k)
    unchanged(similarity, given, "similarity", what)
    unchanged(caption_index, index, "caption_index", what)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mismatch(f"{what}: expected a pair (image -> text, text -> image), got "
                       f"{type(out).__name__}")
    got = tuple(as_number(x, what) for x in out)
    if all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(got, expected)):
        return
    for (against, text_by), mistake in RECALL_MISTAKES.items():
        wrong = recalls(naive_ranks(similarity, caption_index, against, text_by), k)
        if wrong != expected and all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(got, wrong)):
            raise Mismatch(f"{what}: {mistake}")
    raise Mismatch(f"{what}: got (image -> text {got[0]:.4f}, text -> image {got[1]:.4f}), "
                   f"expected ({expected[0]:.4f}, {expected[1]:.4f})")


HAND_SIMILARITY = torch.tensor([[0.9, 0.9, 0.1],      # image 0, caption 0: a tie with caption 1
                                [0.5, 0.2, 0.4],      # image 1, caption 0 (shared with image 0)
                                [0.3, 0.8, 0.3],      # image 2, caption 1
                                [0.4, 0.4, 0.4]])     # image 3, caption 2: a three-way tie
HAND_INDEX = torch.tensor([0, 0, 1, 2])


@check(7, "the docstring's worked example: ties and a shared caption, R@1 and R@2 both ways")
def recall_by_hand(student, g):
    ranks = naive_ranks(HAND_SIMILARITY, HAND_INDEX)
    assert ranks == ([2, 1, 1, 3], [1, 2, 2])                          # worked out in the stub
    for k, expected in ((1, (0.5, 1 / 3)), (2, (0.75, 1.0))):
        assert recalls(ranks, k) == expected
        compare_recall(student, HAND_SIMILARITY, HAND_INDEX, k, f"the worked example, R@{k}")


@check(7, "one caption per image: random similarities, k = 1, 5 and k >= M")
def recall_one_caption_each(student, g):
    for k in (1, 5, None):
        N = randint(g, 2, 30)
        index = torch.randperm(N, generator=g)
        boost = float(torch.empty(()).uniform_(0, 2.5, generator=g))
        similarity = torch.randn(N, N, generator=g)
        similarity[torch.arange(N), index] += boost                    # the right one often wins
        k = k or N + randint(g, 0, 3)
        compare_recall(student, similarity, index, k, f"R@{k}, N = M = {N}")


def shared_captions(g):
    """(N, M) similarities and (N,) caption_index in which captions have 1 to 4 images each."""
    M = randint(g, 3, 12)
    index = torch.cat([torch.arange(M), torch.randint(0, M, (randint(g, 2, 2 * M),), generator=g)])
    index = index[torch.randperm(len(index), generator=g)]
    similarity = torch.randn(len(index), M, generator=g)
    similarity[torch.arange(len(index)), index] += 1.0
    return similarity, index


@check(7, "shared captions, image -> text and text -> image by the best-placed image", points=2)
def recall_shared_captions(student, g):
    for k in (1, 3):
        similarity, index = shared_captions(g)
        compare_recall(student, similarity, index, k,
                       f"R@{k}, {len(index)} images sharing {similarity.shape[1]} captions")


@check(7, "ties count against the model (many equal scores)")
def recall_ties(student, g):
    for k in (1, 3):
        similarity, index = shared_captions(g)
        similarity = similarity.round()                                 # many equal scores
        compare_recall(student, similarity, index, k, f"R@{k} with tied scores")


# ------------------------------------------------------------------------------------------------
# Exercise 8: zero-shot classification with prompt ensembling (tutorial 6).
# ------------------------------------------------------------------------------------------------

exercise(8, "zero-shot with prompt ensembling",
         {"ex08_zeroshot.py": ("class_embeddings", "zeroshot_classify")})


def naive_classes(prompt_emb, prompt_class, n_classes, normalise_prompts=True, normalise_mean=True):
    """Class c: the mean of its prompts' unit vectors, made unit length again, by a loop."""
    rows = []
    for c in range(n_classes):
        members = [p.double() / (p.double().norm() if normalise_prompts else 1.0)
                   for p, pc in zip(prompt_emb, prompt_class.tolist()) if pc == c]
        mean = sum(members) / len(members)
        rows.append(mean / mean.norm() if normalise_mean else mean)
    return torch.stack(rows)


def random_prompts(g):
    """Prompts of very different lengths, 1 to 5 per class, C-dimensional."""
    n_classes, C = randint(g, 2, 6), randint(g, 2, 8)
    prompt_class = torch.cat([torch.arange(n_classes),
                              torch.randint(0, n_classes, (randint(g, 0, 12),), generator=g)])
    lengths = torch.exp(torch.empty(len(prompt_class), 1).uniform_(-2, 2, generator=g))
    return torch.randn(len(prompt_class), C, generator=g) * lengths, prompt_class, n_classes


def compare_classes(student, prompt_emb, prompt_class, n_classes, what):
    given, classes = prompt_emb.clone(), prompt_class.clone()
    got = student.class_embeddings(given, classes, n_classes)
    unchanged(prompt_emb, given, "prompt_emb", what)
    assert_close(got, naive_classes(prompt_emb, prompt_class, n_classes), what, rtol=1e-5,
                 atol=1e-6, mistakes=[
                     (naive_classes(prompt_emb, prompt_class, n_classes, normalise_prompts=False),
                      "the mean of the raw prompt embeddings: make each unit length first, so "
                      "that no prompt outweighs the others"),
                     (naive_classes(prompt_emb, prompt_class, n_classes, normalise_mean=False),
                      "the class means are not unit length: normalise them after averaging")])


@check(8, "class_embeddings on the docstring's worked example")
def classes_by_hand(student, g):
    prompts = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    expected = torch.tensor([[0.5 ** 0.5, 0.5 ** 0.5], [-1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(naive_classes(prompts, torch.tensor([0, 0, 1]), 2), expected)
    compare_classes(student, prompts, torch.tensor([0, 0, 1]), 2, "the worked example")


@check(8, "class_embeddings on random prompts of very different lengths, against a loop")
def classes_random(student, g):
    for _ in range(3):
        prompts, prompt_class, n_classes = random_prompts(g)
        compare_classes(student, prompts, prompt_class, n_classes,
                        f"{len(prompts)} prompts for {n_classes} classes")


@check(8, "zeroshot_classify: each image takes the class of highest cosine, against a loop")
def classify_random(student, g):
    for _ in range(3):
        prompts, prompt_class, n_classes = random_prompts(g)
        classes = naive_classes(prompts, prompt_class, n_classes).float()
        lengths = torch.exp(torch.empty(randint(g, 1, 20), 1).uniform_(-2, 2, generator=g))
        images = torch.randn(len(lengths), prompts.shape[1], generator=g) * lengths
        # the loop: each image's cosine with each class, and the best class
        expected = torch.tensor([max(range(n_classes), key=lambda c: float(
            image.double() @ classes[c].double() / image.double().norm())) for image in images])
        given_images, given_classes = images.clone(), classes.clone()
        got = student.zeroshot_classify(given_images, given_classes)
        what = f"{len(images)} images, {n_classes} classes"
        unchanged(images, given_images, "image_emb", what)
        unchanged(classes, given_classes, "class_emb", what)
        expect_shape(got, expected.shape, what)
        if got.dtype != torch.long:
            raise Mismatch(f"{what}: predictions of dtype {got.dtype}, expected torch.long")
        if not torch.equal(got, expected):
            wrong = int((got != expected).nonzero()[0])
            raise Mismatch(f"{what}: image {wrong} predicted class {got[wrong].item()}, expected "
                           f"{expected[wrong].item()}")


# ------------------------------------------------------------------------------------------------
# Exercise 9: the frozen LM reading a prefix (tutorial 7).
# ------------------------------------------------------------------------------------------------

exercise(9, "the prefix forward", {"ex09_prefix_forward.py": ("forward_with_prefix",)})


def naive_prefix_forward(lm, token_ids, prefix, positions_from_the_prefix=True):
    """The LM's parts in order; positions_from_the_prefix=False names the mistake of numbering
    the tokens only."""
    K, T = prefix.shape[1], token_ids.shape[1]
    x = torch.cat([prefix, lm.token_emb(token_ids)], dim=1)             # (B, K + T, C)
    if positions_from_the_prefix:
        x = x + lm.pos_emb(torch.arange(K + T))
    else:
        x = x + torch.cat([torch.zeros(K, x.shape[-1], dtype=x.dtype), lm.pos_emb(torch.arange(T))])
    for block in lm.blocks:
        x = block(x)
    return lm.ln_final(x)


def prefix_inputs(g, K, T, B=None):
    B = B or randint(g, 1, 3)
    token_ids = torch.randint(TINY_LM.vocab_size, (B, T), generator=g)
    prefix = torch.randn(B, K, TINY_LM.width, generator=g, dtype=torch.float64) * 0.02
    return token_ids, prefix


def compare_prefix_forward(student, lm, token_ids, prefix):
    K, T = prefix.shape[1], token_ids.shape[1]
    expected = naive_prefix_forward(lm, token_ids, prefix)              # (B, K + T, C)
    assert torch.allclose(expected, lm(token_ids, prefix=prefix))
    got = student.forward_with_prefix(lm, token_ids.clone(), prefix.clone())
    assert_close(got, expected, f"hidden states for K={K} prefix embeddings, T={T} tokens",
                 mistakes=[(naive_prefix_forward(lm, token_ids, prefix, False),
                            "the position embeddings number the tokens only: they number all "
                            "K + T inputs, prefix first (0..K+T-1)")])


@check(9, "the LM's hidden states for random K and T", points=2)
def prefix_forward_values(student, g):
    lm = tiny_lm(g)
    for _ in range(3):
        K = randint(g, 1, 5)
        T = randint(g, 1, TINY_LM.context - K)
        compare_prefix_forward(student, lm, *prefix_inputs(g, K, T))


@check(9, "prefix and tokens filling the whole context (K + T = lm.context)")
def prefix_forward_full_context(student, g):
    lm = tiny_lm(g)
    K = randint(g, 1, 6)
    compare_prefix_forward(student, lm, *prefix_inputs(g, K, TINY_LM.context - K))


@check(9, "the gradient reaches the prefix and equals the reference's")
def prefix_forward_gradient(student, g):
    lm = tiny_lm(g)
    token_ids, prefix = prefix_inputs(g, randint(g, 1, 4), randint(g, 2, 8))
    upstream = torch.randn(len(prefix), prefix.shape[1] + token_ids.shape[1], TINY_LM.width,
                           generator=g, dtype=torch.float64)
    mine, ref = leaves(prefix, prefix)
    (naive_prefix_forward(lm, token_ids, ref) * upstream).sum().backward()
    out = student.forward_with_prefix(lm, token_ids, mine)
    expect_shape(out, upstream.shape, "hidden states")
    if not out.requires_grad:
        raise Mismatch("the output records no gradient: the prefix cannot learn through it")
    (out * upstream).sum().backward()
    assert_grad(mine, ref.grad, "gradient of the prefix")


# ------------------------------------------------------------------------------------------------
# Exercise 10: the captioning loss through the frozen LM (tutorial 7).
# ------------------------------------------------------------------------------------------------

exercise(10, "the captioning loss", {"ex10_prefix_loss.py": ("prefix_loss",)})

IGNORE = minivlp.IGNORE
STAND_IN = SimpleNamespace(bos_id=1, pad_id=2, eos_id=3)  # image_context reads bos_id only


def naive_caption_loss(lm, prefix, tokens, mistake=None):
    """The loss caption by caption and target by target, in float64, on each caption's tokens
    without their padding: the state of token j (at P + j) predicts token j + 1. `mistake`
    names a wrong answer: 'no shift', 'first too', 'per caption', 'raw prefix', 'padding'."""
    if mistake == "raw prefix":
        bos = lm.token_emb.weight[STAND_IN.bos_id].expand(len(prefix), 1, -1)
        context = torch.cat([bos, prefix.to(bos.dtype)], dim=1)
    else:
        context = minivlp.image_context(lm, STAND_IN, prefix)           # (B, P, C)
    P = context.shape[1]
    losses = []                                                          # one list per caption
    for b in range(len(tokens)):
        row = tokens[b].tolist()
        real = row if mistake == "padding" else [t for t in row if t != IGNORE]
        real = [max(t, 0) for t in real]                                # padding read as id 0
        hidden = lm(torch.tensor([real]), prefix=context[b:b + 1])[0]   # (P + n, C)
        log_p = lm.logits(hidden).double().log_softmax(-1)
        if mistake == "no shift":
            pairs = [(P + j, real[j]) for j in range(len(real))]
        elif mistake == "first too":
            pairs = [(P + j - 1, real[j]) for j in range(len(real))]
        else:
            pairs = [(P + j, real[j + 1]) for j in range(len(real) - 1)]
        losses.append([-log_p[position, target] for position, target in pairs])
    if mistake == "per caption":
        return sum(sum(row) / len(row) for row in losses) / len(losses)
    return sum(sum(row) for row in losses) / sum(len(row) for row in losses)


CAPTION_MISTAKES = {
    "no shift": "equals the loss without the one-token shift: the state of token j must "
                "predict token j + 1, not token j itself",
    "first too": "equals the loss that also predicts the opening newline from the last image "
                 "position: the first token is given, not predicted",
    "per caption": "equals the mean of per-caption means: average over all target tokens of "
                   "the batch at once",
    "raw prefix": "equals the loss on the raw prefix: the LM must read image_context(lm, "
                  "tokenizer, prefix)",
    "padding": "counts the padding: targets equal to IGNORE (-100) must be skipped"}


def caption_batch(g, K, lengths, L=None):
    """(B, K, C) prefixes and (B, L) caption tokens of the given lengths, padded with IGNORE;
    each caption opens and closes with the same 'newline' id, as '\\n caption \\n' does."""
    L = L or max(lengths)
    tokens = torch.full((len(lengths), L), IGNORE)
    for b, n in enumerate(lengths):
        tokens[b, :n] = torch.randint(4, TINY_LM.vocab_size, (n,), generator=g)
        tokens[b, 0] = tokens[b, n - 1] = 3
    prefix = torch.randn(len(lengths), K, TINY_LM.width, generator=g, dtype=torch.float64)
    return prefix, tokens


def compare_caption_loss(student, lm, prefix, tokens, what, mistakes=CAPTION_MISTAKES):
    given_prefix, given_tokens = prefix.clone(), tokens.clone()
    got = student.prefix_loss(lm, STAND_IN, given_prefix, given_tokens)
    unchanged(tokens, given_tokens, "tokens", what)
    expected = naive_caption_loss(lm, prefix, tokens)
    expect_shape(got, torch.Size([]), f"{what}: loss")
    assert_close(got, expected.detach(), what, rtol=1e-5, mistakes=[
        (naive_caption_loss(lm, prefix, tokens, name).detach(), message)
        for name, message in mistakes.items()])


@check(10, "value against a loop over captions and targets (the one-token shift)", points=2)
def caption_loss_value(student, g):
    lm = tiny_lm(g)
    for _ in range(2):
        K, B = randint(g, 1, 4), randint(g, 1, 3)
        n = randint(g, 3, TINY_LM.context - 1 - K)
        compare_caption_loss(student, lm, *caption_batch(g, K, [n] * B),
                             f"{B} captions of {n} tokens, K={K}")


@check(10, "padding: captions of different lengths, one mean over all their targets", points=2)
def caption_loss_padding(student, g):
    lm = tiny_lm(g)
    K = randint(g, 1, 3)
    room = TINY_LM.context - 1 - K
    lengths = [3, room] + [randint(g, 3, room) for _ in range(randint(g, 0, 2))]
    compare_caption_loss(student, lm, *caption_batch(g, K, lengths),
                         f"captions of {lengths} tokens, padded to {room}, K={K}")


@check(10, "the gradient reaches the embedder through the frozen LM, and only the embedder",
       points=2)
def caption_loss_gradient(student, g):
    lm = tiny_lm(g)
    before = copy.deepcopy(lm.state_dict())
    K, features = randint(g, 1, 3), torch.randn(3, 6, generator=g, dtype=torch.float64)
    embedder = nn.Linear(6, K * TINY_LM.width).double()                 # a stand-in visual embedder
    reference = copy.deepcopy(embedder)
    _, tokens = caption_batch(g, K, [randint(g, 3, 8) for _ in range(3)])
    naive_caption_loss(lm, reference(features).view(3, K, -1), tokens).backward()
    loss = student.prefix_loss(lm, STAND_IN, embedder(features).view(3, K, -1), tokens.clone())
    expect_shape(loss, torch.Size([]), "loss")
    if not loss.requires_grad:
        raise Mismatch("the loss records no gradient: do not detach the LM's output or run it "
                       "under torch.no_grad(); frozen weights still pass gradients on")
    loss.backward()
    for name, p in lm.named_parameters():
        if p.requires_grad or p.grad is not None:
            raise Mismatch(f"the LM's {name} now learns: the LM must stay frozen")
    for name, tensor in lm.state_dict().items():
        if not torch.equal(tensor, before[name]):
            raise Mismatch(f"the LM's {name} changed")
    assert_grad(embedder.weight, reference.weight.grad, "gradient of the embedder's weight",
                rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# Exercise 11: your functions train a model (tutorials 6 to 8).
# ------------------------------------------------------------------------------------------------

@dataclass
class RunSize:
    """The integrative run: a corpus, a tokenizer and an LM trained by minivlp, then alignment
    with objective 'both' through the student's functions, evaluated on the test split."""
    documents: int = 4000        # corpus documents for the tokenizer and the LM
    vocab_size: int = 420
    lm_width: int = 128
    lm_steps: int = 600
    train_images: int = 4000
    eval_images: int = 300
    align_steps: int = 300
    batch_size: int = 64
    min_recall: float = 0.5      # test image -> text R@1 to pass
    min_exact: float = 0.05      # captions exactly right (greedy, after the image) to pass


RUN_SIZE = RunSize()
# a run of seconds first, so that an unwritten or failing function shows before the long run
DRY_RUN = RunSize(documents=40, vocab_size=300, lm_width=16, lm_steps=2, train_images=64,
                  eval_images=16, align_steps=2, batch_size=16, min_recall=0.0, min_exact=0.0)
RUN_SEED = 0                     # the run is the same for every grading seed: a rerun reproduces it
FROM_THE_STUDENT = {"reread_tokens": "ex04_text_features.py",
                    "reread_features": "ex04_text_features.py",
                    "fit_whitening": "ex05_whitening.py", "info_nce": "ex06_info_nce.py",
                    "prefix_loss": "ex10_prefix_loss.py"}

exercise(11, "your functions train a model",
         {file: tuple(n for n, f in FROM_THE_STUDENT.items() if f == file)
          for file in dict.fromkeys(FROM_THE_STUDENT.values())}, one_run=True)


def spy(name, function, calls):
    """function, counting its calls in `calls` (the last called last), and naming its file when
    it is not written."""
    def call(*args, **kwargs):
        calls[name] = calls.pop(name, 0) + 1
        try:
            return function(*args, **kwargs)
        except NotImplementedError:
            raise Mismatch(f"{name} in {FROM_THE_STUDENT[name]} is not written yet") from None
    return call


def train_with(student, size=None, seed=RUN_SEED, calls=None):
    """Train a model at `size` with the student's functions in place of minivlp's; returns
    ({'R@1', 'exact', 'seconds'}, {function name: calls during the run})."""
    from eval import describe                                          # eval.py's greedy captions
    size, device, calls = size or RUN_SIZE, torch.device("cpu"), {} if calls is None else calls
    torch.manual_seed(seed)
    documents = minivlp.make_corpus(size.documents, seed=seed)
    tok = tokenizer.Tokenizer.train("\n".join(documents), vocab_size=size.vocab_size)
    lm_cfg = minivlp.LMConfig(vocab_size=tok.vocab_size, width=size.lm_width, depth=2, heads=4,
                              steps=size.lm_steps)
    lm = minivlp.LanguageModel(lm_cfg)
    held_out = len(documents) // 20
    minivlp.pretrain_lm(lm, minivlp.encode_corpus(tok, documents[held_out:]),
                        minivlp.encode_corpus(tok, documents[:held_out]), lm_cfg, device, seed)
    minivlp.freeze(lm)
    world = minivlp.make_world(minivlp.WorldConfig(train_images=size.train_images,
                                                   eval_images=size.eval_images), seed=seed)
    train, test = world["train"], world["test"]
    mine = {name: spy(name, getattr(student, name), calls) for name in FROM_THE_STUDENT}
    saved = {name: getattr(minivlp, name) for name in FROM_THE_STUDENT}
    try:
        for name in ("reread_tokens", "reread_features", "info_nce", "prefix_loss"):
            setattr(minivlp, name, mine[name])         # minivlp's loops look these up as globals
        mean, matrix = mine["fit_whitening"](minivlp.text_features(lm, tok, train.captions, device))
        tower = minivlp.TextTower(lm, tok, torch.as_tensor(mean).float(),
                                  torch.as_tensor(matrix).float(), device)
        embedder = minivlp.VisualEmbedder(32, lm_cfg.width, prefix_tokens=4)
        temperature = minivlp.Temperature(0.07, learn=True)
        align_cfg = minivlp.AlignConfig(steps=size.align_steps, batch_size=size.batch_size,
                                        warmup_steps=max(1, size.align_steps // 10))
        history = minivlp.align(embedder, temperature, tower, train.images, train.caption_index,
                                train.captions, align_cfg, "both", device, seed)
        image_emb, prefixes = minivlp.embed_images(embedder, test.images, device)
        text_emb = F.normalize(tower(test.captions).float(), dim=-1)
    finally:
        for name, function in saved.items():
            setattr(minivlp, name, function)
    similarity = image_emb @ text_emb.T                                 # (N, M)
    if not torch.isfinite(similarity).all():
        raise Mismatch("the trained embeddings are not finite (NaN or inf)")
    recall = minivlp.retrieval_metrics(similarity, test.caption_index, ks=(1,))["image_to_text_R@1"]
    truth = [test.captions[j] for j in test.caption_index.tolist()]
    exact = sum(a == b for a, b in zip(describe(lm, tok, prefixes), truth)) / len(truth)
    return {"R@1": recall, "exact": exact, "seconds": history["seconds"]}, calls


_runs = {}  # each run once: the checks of exercise 11 run in one process, one after the other


def trained(student, size):
    """train_with(student, size), run once for all checks; an error is raised again to each."""
    key, calls = (id(student), id(size)), {}
    if key not in _runs:
        try:
            _runs[key] = train_with(student, size, calls=calls)
        except Exception as error:
            in_student_code = any(Path(frame.filename).name in FROM_THE_STUDENT.values()
                                  for frame in traceback.extract_tb(error.__traceback__))
            said = (str(error).splitlines() or [""])[0][:120]
            _runs[key] = (error if in_student_code or isinstance(error, Mismatch) or not calls
                          else Mismatch(f"{type(error).__name__} in minivlp's training loop just "
                                        f"after your {list(calls)[-1]} returned ({said}): does "
                                        f"it return what its docstring says?"))
    if isinstance(_runs[key], Exception):
        raise _runs[key]
    return _runs[key]


@check(11, "a run of seconds: your functions work inside minivlp's training loop", limit_s=120)
def dry_run(student, g):
    _runs.clear()                              # the first check: runs of another student go
    _, calls = trained(student, DRY_RUN)
    unused = [name for name in FROM_THE_STUDENT if not calls.get(name)]
    if unused:  # the grader's own plumbing: minivlp no longer calls these by name
        raise RuntimeError(f"the training run never called {', '.join(unused)}")


@check(11, "your h(T), whitening, info_nce and prefix_loss train a model: test image -> text "
           "R@1 above the threshold", points=3, limit_s=900)
def trained_retrieval(student, g):
    trained(student, DRY_RUN)                  # its error, if it failed, rather than a long run
    metrics, _ = trained(student, RUN_SIZE)
    if metrics["R@1"] < RUN_SIZE.min_recall:
        raise Mismatch(f"test image -> text R@1 {metrics['R@1']:.3f}, below "
                       f"{RUN_SIZE.min_recall}: check h(T), whitening and info_nce")
    return (f"R@1 {metrics['R@1']:.3f} (at least {RUN_SIZE.min_recall}), alignment "
            f"{metrics['seconds']:.0f} s")


@check(11, "the same model captions test images: exact match above the threshold", points=3,
       limit_s=900)
def trained_captions(student, g):
    trained(student, DRY_RUN)
    metrics, _ = trained(student, RUN_SIZE)
    if metrics["exact"] < RUN_SIZE.min_exact:
        raise Mismatch(f"captions exactly right {metrics['exact']:.3f}, below "
                       f"{RUN_SIZE.min_exact}: check prefix_loss")
    return f"exact match {metrics['exact']:.3f} (at least {RUN_SIZE.min_exact})"
