"""Autograder for the minivlp assignments: each student function against minivlp's own.

    python tutorials/assignments/grade.py                # every exercise in this folder
    python tutorials/assignments/grade.py ex2 ex4        # only some exercises
    python tutorials/assignments/grade.py --dir PATH     # a student's copies of the exN_*.py files
    python tutorials/assignments/grade.py --seed 7 -v    # replay a run; list passing checks too

Each check draws fresh random inputs (a new seed each run, printed so that a run can be replayed),
runs the reference (minivlp.py, tokenizer.py or torch itself) and the student's function on copies
of them, and compares values, and gradients where the function is trained through. A check scores
1 or 0; a failing check prints one line saying why. An error raised by the student's code is
reported and scored 0, never raised: grading always runs to the end and exits with status 0.
"""

import argparse
import copy
import importlib.util
import math
import random
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # minivlp.py and tokenizer.py sit at the repository root
import minivlp  # noqa: E402
import tokenizer  # noqa: E402

NOT_WRITTEN = "not written yet (the body still raises NotImplementedError)"


class Mismatch(Exception):
    """A check's one-line reason for failing."""


@dataclass
class Exercise:
    key: str                     # "ex2": what the command line and the scores call it
    file: str                    # the student's file, in the graded folder
    function: str                # the function the student writes in that file
    checks: list = field(default_factory=list)  # (description, check(student_fn, generator))


EXERCISES = {}


def exercise(key, file, function):
    EXERCISES[key] = Exercise(key, file, function)


def check(key, description):
    """Register the decorated function as one check (one point) of exercise `key`."""
    def register(fn):
        EXERCISES[key].checks.append((description, fn))
        return fn
    return register


# ------------------------------------------------------------------------------------------------
# Comparison helpers: each raises Mismatch with a message a student can act on.
# ------------------------------------------------------------------------------------------------

def randint(g, low, high):
    """A random int in [low, high], drawn from the check's generator."""
    return int(torch.randint(low, high + 1, (), generator=g))


def assert_close(got, expected, what, rtol=1e-6, atol=1e-9):
    """got must be a tensor of expected's shape, finite, and allclose to expected."""
    if not torch.is_tensor(got):
        raise Mismatch(f"{what}: expected a tensor, got {type(got).__name__}")
    if got.shape != expected.shape:
        raise Mismatch(f"{what}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    got = got.detach().to(expected.dtype)
    if not torch.isfinite(got).all():
        raise Mismatch(f"{what}: got {got.flatten()[~torch.isfinite(got.flatten())][0].item()}, "
                       f"expected finite values")
    if not torch.allclose(got, expected, rtol=rtol, atol=atol):
        if got.numel() == 1:
            raise Mismatch(f"{what}: got {got.item():.6g}, expected {expected.item():.6g}")
        worst = (got - expected).abs().max().item()
        raise Mismatch(f"{what}: differs from the reference by up to {worst:.3g}")


def expect_shape(value, shape, what):
    """value must be a tensor of this shape (checked before it is indexed or back-propagated)."""
    if not torch.is_tensor(value):
        raise Mismatch(f"{what}: expected a tensor, got {type(value).__name__}")
    if value.shape != shape:
        raise Mismatch(f"{what}: shape {tuple(value.shape)}, expected {tuple(shape)}")


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


# ------------------------------------------------------------------------------------------------
# Exercise 1: causal self-attention, against F.scaled_dot_product_attention and minivlp's module.
# ------------------------------------------------------------------------------------------------

exercise("ex1", "ex1_attention.py", "causal_attention")


def random_qkv(g):
    B, heads, T, d = randint(g, 1, 3), randint(g, 1, 4), randint(g, 2, 12), randint(g, 2, 8)
    return [torch.randn(B, heads, T, d, generator=g, dtype=torch.float64) for _ in range(3)]


@check("ex1", "output equals F.scaled_dot_product_attention(is_causal=True)")
def attention_matches_sdpa(student, g):
    for _ in range(3):
        q, k, v = random_qkv(g)
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)   # (B, heads, T, d)
        assert_close(student(q.clone(), k.clone(), v.clone()), expected,
                     f"(B, heads, T, d) = {tuple(q.shape)}")


@check("ex1", "inside minivlp.CausalSelfAttention, the layer's output is unchanged")
def attention_inside_the_layer(student, g):
    B, heads, d, T = randint(g, 1, 3), randint(g, 1, 4), randint(g, 2, 8), randint(g, 2, 12)
    C = heads * d
    layer = minivlp.CausalSelfAttention(C, heads, context=T + randint(g, 0, 4)).double()
    x = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    expected = layer(x)                                                 # (B, T, C)
    # the layer's own steps, with the student's function in place of its attention
    q, k, v = layer.qkv(x).split(C, dim=2)                              # 3 x (B, T, C)
    q, k, v = (z.view(B, T, heads, d).transpose(1, 2) for z in (q, k, v))  # (B, heads, T, d)
    out = student(q, k, v)
    expect_shape(out, q.shape, "output")
    got = layer.proj(out.transpose(1, 2).reshape(B, T, C))              # (B, T, C)
    assert_close(got, expected, f"layer output for (B, T, C) = {(B, T, C)}, {heads} heads")


@check("ex1", "causal: position 0 returns v_0, and keys/values after t leave outputs up to t alone")
def attention_is_causal(student, g):
    q, k, v = random_qkv(g)
    T = q.shape[2]
    out = student(q.clone(), k.clone(), v.clone())
    expect_shape(out, q.shape, "output")
    assert_close(out[:, :, 0], v[:, :, 0],
                 "position 0 (it can only read itself, so its output is v_0)")
    t = randint(g, 0, T - 2)
    k_later, v_later = k.clone(), v.clone()
    k_later[:, :, t + 1:] = torch.randn(k[:, :, t + 1:].shape, generator=g, dtype=k.dtype)
    v_later[:, :, t + 1:] = torch.randn(v[:, :, t + 1:].shape, generator=g, dtype=v.dtype)
    changed = student(q.clone(), k_later, v_later)
    expect_shape(changed, q.shape, "output")
    assert_close(changed[:, :, :t + 1], out[:, :, :t + 1].detach(),
                 f"outputs 0..{t} after changing keys and values at {t + 1}..{T - 1} (the future)")


@check("ex1", "gradients with respect to q, k and v equal scaled_dot_product_attention's")
def attention_gradients(student, g):
    q, k, v = random_qkv(g)
    upstream = torch.randn(q.shape, generator=g, dtype=q.dtype)
    ref = leaves(q, k, v)
    (F.scaled_dot_product_attention(*ref, is_causal=True) * upstream).sum().backward()
    mine = leaves(q, k, v)
    out = student(*mine)
    expect_shape(out, q.shape, "output")
    if not out.requires_grad:
        raise Mismatch("the output does not record gradients (built outside autograd?)")
    (out * upstream).sum().backward()
    for name, got, expected in zip("qkv", mine, ref):
        assert_grad(got, expected.grad, f"gradient of {name}")


# ------------------------------------------------------------------------------------------------
# Exercise 2: InfoNCE, against minivlp.info_nce.
# ------------------------------------------------------------------------------------------------

exercise("ex2", "ex2_info_nce.py", "info_nce")


def random_pairs(g, dtype=torch.float64):
    """(N, C) image and text embeddings with rows of very different lengths (cosine must not care)."""
    N, C = randint(g, 2, 12), randint(g, 2, 16)
    scales = [torch.exp(torch.empty(N, 1, dtype=dtype).uniform_(-2, 2, generator=g)) for _ in range(2)]
    return (torch.randn(N, C, generator=g, dtype=dtype) * scales[0],
            torch.randn(N, C, generator=g, dtype=dtype) * scales[1])


@check("ex2", "value, image -> text (symmetric=False), at τ = 1, 0.5, 0.07")
def info_nce_one_direction(student, g):
    for tau in (1.0, 0.5, 0.07):
        v, t = random_pairs(g)
        expected = minivlp.info_nce(v, t, tau, symmetric=False)
        assert_close(student(v.clone(), t.clone(), tau, symmetric=False), expected,
                     f"value at τ={tau}, symmetric=False, N={len(v)}")


@check("ex2", "value, both directions averaged (symmetric=True, the default)")
def info_nce_symmetric(student, g):
    for tau in (1.0, 0.1):
        v, t = random_pairs(g)
        expected = minivlp.info_nce(v, t, tau)
        assert_close(student(v.clone(), t.clone(), tau), expected,
                     f"value at τ={tau}, symmetric=True, N={len(v)}")


@check("ex2", "gradients with respect to image_emb, text_emb and a learned τ")
def info_nce_gradients(student, g):
    v, t = random_pairs(g)
    tau = torch.tensor(0.2, dtype=torch.float64)
    ref = leaves(v, t, tau)
    minivlp.info_nce(*ref).backward()
    mine = leaves(v, t, tau)
    loss = student(*mine)
    expect_shape(loss, torch.Size([]), "loss")
    if not loss.requires_grad:
        raise Mismatch("the loss does not record gradients (built with .item() or numpy?)")
    loss.backward()
    for name, got, expected in zip(("image_emb", "text_emb", "τ"), mine, ref):
        assert_grad(got, expected.grad, f"gradient of {name}")


@check("ex2", "finite and right in float32 at τ = 0.01 and 0.001 (no exp overflow)")
def info_nce_small_temperature(student, g):
    for tau in (0.01, 0.001):
        v, t = random_pairs(g)
        expected = minivlp.info_nce(v, t, tau).float()                  # float64 reference
        assert_close(student(v.float(), t.float(), tau), expected,
                     f"float32 value at τ={tau}", rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Exercise 3: freeze, against minivlp.freeze.
# ------------------------------------------------------------------------------------------------

exercise("ex3", "ex3_freeze.py", "freeze")

TINY_LM = minivlp.LMConfig(vocab_size=40, context=16, width=16, depth=2, heads=2)


def trained_lm(g):
    """A tiny LM as pretraining leaves it: training mode, a gradient on every parameter."""
    lm = minivlp.LanguageModel(TINY_LM).double().train()
    ids = torch.randint(TINY_LM.vocab_size, (2, 8), generator=g)
    lm.logits(lm(ids)).square().mean().backward()
    return lm


def frozen_pair(student, g):
    """The same trained LM frozen by minivlp.freeze and by the student's function."""
    lm = trained_lm(g)
    reference = minivlp.freeze(copy.deepcopy(lm))
    return lm, student(lm), reference


@check("ex3", "returns the module it was given")
def freeze_returns_the_module(student, g):
    lm, returned, _ = frozen_pair(student, g)
    if returned is not lm:
        raise Mismatch(f"returned {type(returned).__name__}, not the module passed in")


@check("ex3", "no parameter requires grad")
def freeze_no_requires_grad(student, g):
    lm, _, reference = frozen_pair(student, g)
    for (name, p), (_, p_ref) in zip(lm.named_parameters(), reference.named_parameters()):
        if p.requires_grad != p_ref.requires_grad:
            raise Mismatch(f"parameter {name} has requires_grad={p.requires_grad}")


@check("ex3", "gradients left from pretraining are dropped (grad is None)")
def freeze_drops_gradients(student, g):
    lm, _, reference = frozen_pair(student, g)
    for (name, p), (_, p_ref) in zip(lm.named_parameters(), reference.named_parameters()):
        if (p.grad is None) != (p_ref.grad is None):
            raise Mismatch(f"parameter {name} still holds a gradient"
                           + (" (zeros: set it to None)" if not p.grad.any() else ""))


@check("ex3", "the module and every submodule are in eval mode")
def freeze_eval_mode(student, g):
    lm, _, reference = frozen_pair(student, g)
    for (name, module), (_, module_ref) in zip(lm.named_modules(), reference.named_modules()):
        if module.training != module_ref.training:
            raise Mismatch(f"{name or 'the LM itself'} is still in training mode")


@check("ex3", "weights unchanged, and a loss still flows through the frozen LM into its input")
def freeze_keeps_weights_and_flow(student, g):
    lm, _, reference = frozen_pair(student, g)
    for (name, p), (_, p_ref) in zip(lm.state_dict().items(), reference.state_dict().items()):
        if not torch.equal(p, p_ref):
            raise Mismatch(f"freezing changed the weights of {name}")
    prefix = torch.randn(2, 3, TINY_LM.width, generator=g, dtype=torch.float64)
    ids = torch.randint(TINY_LM.vocab_size, (2, 5), generator=g)
    if not torch.is_grad_enabled():
        raise Mismatch("autograd is switched off everywhere: freezing the LM must not stop a loss "
                       "from flowing through it")
    mine, ref = leaves(prefix, prefix)
    reference(ids, prefix=ref).sum().backward()
    out = lm(ids, prefix=mine)
    if not out.requires_grad:
        raise Mismatch("the LM's output records no gradient for its input")
    out.sum().backward()
    assert_grad(mine, ref.grad, "gradient of an input prefix through the frozen LM")


# ------------------------------------------------------------------------------------------------
# Exercise 4: Recall@K, against minivlp.retrieval_metrics.
# ------------------------------------------------------------------------------------------------

exercise("ex4", "ex4_recall.py", "recall_at_k")


def random_similarity(g):
    """(N, N) scores where the right caption is often, not always, on top."""
    N = randint(g, 2, 30)
    boost = float(torch.empty(()).uniform_(0, 2.5, generator=g))
    return torch.randn(N, N, generator=g) + boost * torch.eye(N)


def expected_recall(similarity, k):
    metrics = minivlp.retrieval_metrics(similarity, torch.arange(len(similarity)), ks=(k,))
    return metrics[f"image_to_text_R@{k}"]


def compare_recall(student, similarity, k, what):
    expected = expected_recall(similarity, k)
    given = similarity.clone()
    got = as_number(student(given, k), what)
    if not torch.equal(given, similarity):
        raise Mismatch(f"{what}: your function changed `similarity` in place")
    if not math.isclose(got, expected, abs_tol=1e-9):
        raise Mismatch(f"{what}: got {got:.4f}, expected {expected:.4f}")


@check("ex4", "R@1 on random similarities")
def recall_at_1(student, g):
    for _ in range(3):
        similarity = random_similarity(g)
        compare_recall(student, similarity, 1, f"R@1 with N={len(similarity)}")


@check("ex4", "R@k for k = 2, 5 and k >= N")
def recall_at_k_several(student, g):
    for k in (2, 5, None):
        similarity = random_similarity(g)
        k = k or len(similarity) + randint(g, 0, 3)
        compare_recall(student, similarity, k, f"R@{k} with N={len(similarity)}")


@check("ex4", "ties count in the model's favour (only strictly higher scores push a caption down)")
def recall_ties(student, g):
    for k in (1, 3):
        N = randint(g, 4, 20)
        similarity = torch.randint(0, 3, (N, N), generator=g).float()   # many equal scores
        compare_recall(student, similarity, k, f"R@{k} with tied scores, N={N}")


# ------------------------------------------------------------------------------------------------
# Exercise 5: the prefix forward, against minivlp.LanguageModel.forward(token_ids, prefix).
# ------------------------------------------------------------------------------------------------

exercise("ex5", "ex5_prefix.py", "forward_with_prefix")


def frozen_lm(g):
    torch.manual_seed(randint(g, 0, 2**31))                             # the LM's initial weights
    return minivlp.freeze(minivlp.LanguageModel(TINY_LM).double())


def prefix_inputs(g, K, T, B=None):
    B = B or randint(g, 1, 3)
    token_ids = torch.randint(TINY_LM.vocab_size, (B, T), generator=g)
    prefix = torch.randn(B, K, TINY_LM.width, generator=g, dtype=torch.float64) * 0.02
    return token_ids, prefix


def compare_prefix_forward(student, lm, token_ids, prefix):
    K, T = prefix.shape[1], token_ids.shape[1]
    expected = lm(token_ids, prefix=prefix)                             # (B, K + T, C)
    got = student(lm, token_ids.clone(), prefix.clone())
    assert_close(got, expected, f"hidden states for K={K} prefix embeddings, T={T} tokens")


@check("ex5", "equals lm(token_ids, prefix=prefix) for random K and T")
def prefix_forward_values(student, g):
    lm = frozen_lm(g)
    for _ in range(3):
        K = randint(g, 1, 5)
        compare_prefix_forward(student, lm, *prefix_inputs(g, K, randint(g, 1, TINY_LM.context - K)))


@check("ex5", "prefix and tokens filling the whole context (K + T = lm.context)")
def prefix_forward_full_context(student, g):
    lm = frozen_lm(g)
    K = randint(g, 1, 6)
    compare_prefix_forward(student, lm, *prefix_inputs(g, K, TINY_LM.context - K))


@check("ex5", "the gradient reaches the prefix and equals the reference's")
def prefix_forward_gradient(student, g):
    lm = frozen_lm(g)
    token_ids, prefix = prefix_inputs(g, randint(g, 1, 4), randint(g, 2, 8))
    upstream = torch.randn(*prefix.shape[:1], prefix.shape[1] + token_ids.shape[1],
                           TINY_LM.width, generator=g, dtype=torch.float64)
    mine, ref = leaves(prefix, prefix)
    (lm(token_ids, prefix=ref) * upstream).sum().backward()
    out = student(lm, token_ids, mine)
    expect_shape(out, upstream.shape, "hidden states")
    if not out.requires_grad:
        raise Mismatch("the output records no gradient: the prefix cannot learn through it")
    (out * upstream).sum().backward()
    assert_grad(mine, ref.grad, "gradient of the prefix")


# ------------------------------------------------------------------------------------------------
# Exercise 6 (optional): one BPE merge, against tokenizer.merge_pair.
# ------------------------------------------------------------------------------------------------

exercise("ex6", "ex6_bpe_merge.py", "merge_pair")


def compare_merge(student, ids, pair, new_id):
    expected = tokenizer.merge_pair(list(ids), pair, new_id)
    given = list(ids)
    got = student(given, pair, new_id)
    if given != ids:
        raise Mismatch(f"merge_pair({ids}, {pair}, {new_id}) changed its input list to {given}")
    if not isinstance(got, (list, tuple)) or list(got) != expected:
        raise Mismatch(f"merge_pair({ids}, {pair}, {new_id}): got {got}, expected {expected}")


@check("ex6", "matches tokenizer.merge_pair on random id lists")
def merge_random_lists(student, g):
    for _ in range(5):
        # a small alphabet, so that pairs, runs and overlaps are common
        ids = torch.randint(0, 3, (randint(g, 2, 20),), generator=g).tolist()
        pair = tuple(torch.randint(0, 3, (2,), generator=g).tolist())
        compare_merge(student, ids, pair, 256 + randint(g, 0, 100))


@check("ex6", "overlapping runs merge left to right: [a, a, a] -> [X, a]")
def merge_overlapping_runs(student, g):
    a = randint(g, 0, 255)
    for length in (3, 4, 5):
        compare_merge(student, [a] * length, (a, a), 256)


@check("ex6", "edge cases: an empty list, one id, no occurrence, the pair at both ends")
def merge_edge_cases(student, g):
    a, b = randint(g, 0, 127), randint(g, 128, 255)
    for ids in ([], [a], [b, a], [a, b, b, a, b]):
        compare_merge(student, ids, (a, b), 300)


# ------------------------------------------------------------------------------------------------
# Loading and grading.
# ------------------------------------------------------------------------------------------------

def load_functions(directory, keys=None):
    """{key: the student's function, or a string saying why it could not be loaded}."""
    functions = {}
    for key in keys or EXERCISES:
        ex = EXERCISES[key]
        path = Path(directory) / ex.file
        if not path.is_file():
            functions[key] = f"{ex.file} not found in {directory}"
            continue
        spec = importlib.util.spec_from_file_location(f"student_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as error:  # a syntax error, a sys.exit, a failed import
            functions[key] = f"{ex.file} could not be imported: {describe(error)}"
            continue
        functions[key] = getattr(module, ex.function, None) or f"{ex.file} defines no {ex.function}"
    return functions


def describe(error):
    """An exception as one line, with the student's file and line where it was raised."""
    if isinstance(error, NotImplementedError):
        return NOT_WRITTEN
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0][:200] if lines else ''}"
    if isinstance(error, SyntaxError) and error.lineno:
        return f"{text} (line {error.lineno})"
    student_files = {ex.file for ex in EXERCISES.values()}
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if Path(frame.filename).name in student_files]
    if frames:
        text += f" ({Path(frames[-1].filename).name} line {frames[-1].lineno})"
    return text


@dataclass
class Result:
    key: str
    function: str
    passed: int
    total: int
    failures: list               # (check description, reason), one per failed check
    passes: list                 # descriptions of the passed checks


def grade(functions, seed):
    """Run every check of the exercises in `functions` ({key: function or reason}); a list of Result."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors here are tiny: more threads only wait on each other
    try:
        return [grade_one(key, fn, seed) for key, fn in functions.items()]
    finally:
        torch.set_num_threads(threads)


def grade_one(key, fn, seed):
    ex, index = EXERCISES[key], list(EXERCISES).index(key)
    failures, passes = [], []
    for number, (description, run_check) in enumerate(ex.checks):
        if isinstance(fn, str):                                         # the file did not load
            failures.append((description, fn))
            continue
        g = torch.Generator().manual_seed(seed * 1000 + index * 100 + number)
        try:
            # the check's own randomness is seeded; enable_grad undoes a student's no_grad
            with torch.random.fork_rng(devices=[]), torch.enable_grad():
                torch.manual_seed(seed)
                run_check(fn, g)
            passes.append(description)
        except Mismatch as mismatch:
            failures.append((description, str(mismatch)))
        except (Exception, SystemExit) as error:  # whatever the student's code raised
            failures.append((description, describe(error)))
    return Result(key, ex.function, len(passes), len(ex.checks), failures, passes)


def report(results, verbose=False):
    """Print a score per exercise, one line per failed check, and the total."""
    for r in results:
        print(f"{r.key} {r.function:<20} {r.passed}/{r.total}")
        reasons = {reason for _, reason in r.failures}
        if r.failures and len(reasons) == 1 and r.passed == 0:
            print(f"    x {reasons.pop()}")                          # the same reason for every check
        else:
            for description, reason in r.failures:
                print(f"    x {description}: {reason}")
        if verbose:
            for description in r.passes:
                print(f"    ok {description}")
    passed, total = sum(r.passed for r in results), sum(r.total for r in results)
    print(f"{'total':<24} {passed}/{total}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Grade the minivlp assignments against minivlp's "
                                                 "own functions, on fresh random inputs.")
    parser.add_argument("exercises", nargs="*", metavar="exN", help=f"exercises to grade (default: all of {', '.join(EXERCISES)})")
    parser.add_argument("--dir", default=str(HERE),
                        help="folder holding the student's exN_*.py files (default: this folder)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the random inputs (default: a new one each run)")
    parser.add_argument("-v", "--verbose", action="store_true", help="list the passed checks too")
    args = parser.parse_args(argv)
    unknown = [key for key in args.exercises if key not in EXERCISES]
    if unknown:
        parser.error(f"unknown exercise {unknown[0]} (choose from {', '.join(EXERCISES)})")
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")                      # τ on a console without UTF-8
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    print(f"grading {args.dir} (seed {seed}: --seed {seed} replays these inputs)")
    report(grade(load_functions(args.dir, args.exercises), seed), args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
