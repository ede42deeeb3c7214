"""The assignments' autograder: untouched stubs score 0, minivlp's own functions score full
marks, and a deliberately wrong answer loses marks, so the grader can both pass and fail."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import minivlp
import tokenizer

ASSIGNMENTS = Path(__file__).resolve().parent.parent / "tutorials" / "assignments"
spec = importlib.util.spec_from_file_location("assignments_grade", ASSIGNMENTS / "grade.py")
grade = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grade)


def solutions():
    """The answer key: minivlp's (and torch's) functions wrapped into the students' signatures."""
    def recall_at_k(similarity, k):
        metrics = minivlp.retrieval_metrics(similarity, torch.arange(len(similarity)), ks=(k,))
        return metrics[f"image_to_text_R@{k}"]
    return {
        "ex1": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "ex2": minivlp.info_nce,
        "ex3": minivlp.freeze,
        "ex4": recall_at_k,
        "ex5": lambda lm, token_ids, prefix: lm(token_ids, prefix=prefix),
        "ex6": tokenizer.merge_pair,
    }


def scores(results):
    return {r.key: (r.passed, r.total) for r in results}


def test_every_exercise_has_a_stub_and_at_least_three_checks():
    assert list(grade.EXERCISES) == ["ex1", "ex2", "ex3", "ex4", "ex5", "ex6"]
    for ex in grade.EXERCISES.values():
        assert (ASSIGNMENTS / ex.file).is_file(), ex.file
        assert len(ex.checks) >= 3, ex.key


def test_untouched_stubs_score_zero_with_the_not_written_message():
    results = grade.grade(grade.load_functions(ASSIGNMENTS), seed=0)
    assert [r.key for r in results] == list(grade.EXERCISES)
    for r in results:
        assert r.passed == 0 and r.total == len(grade.EXERCISES[r.key].checks)
        assert {reason for _, reason in r.failures} == {grade.NOT_WRITTEN}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minivlps_own_functions_score_full_marks(seed):
    results = grade.grade(solutions(), seed)
    assert all(r.passed == r.total for r in results), [r.failures for r in results if r.failures]


def attention_without_the_mask(q, k, v):
    return (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(dim=-1) @ v


def attention_scaled_by_d(q, k, v):
    mask = torch.ones(q.shape[2], q.shape[2]).tril().bool()
    scores = (q @ k.transpose(-2, -1) / q.shape[-1]).masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


def info_nce_without_temperature(image_emb, text_emb, temperature, symmetric=True):
    return minivlp.info_nce(image_emb, text_emb, 1.0, symmetric)


def info_nce_unstable(image_emb, text_emb, temperature, symmetric=True):
    """Right in float64 at moderate τ, but exp(1/τ) overflows float32 once τ <= 0.01."""
    logits = F.normalize(image_emb, dim=1) @ F.normalize(text_emb, dim=1).T / temperature
    image_to_text = -(logits.exp().diagonal() / logits.exp().sum(dim=1)).log().mean()
    text_to_image = -(logits.exp().diagonal() / logits.exp().sum(dim=0)).log().mean()
    return (image_to_text + text_to_image) / 2 if symmetric else image_to_text


def freeze_forgetting_eval(lm):
    lm.requires_grad_(False)
    lm.zero_grad(set_to_none=True)
    return lm


def recall_counting_ties_against(similarity, k):
    return (similarity.argsort(dim=1, descending=True, stable=True)[:, :k]
            == torch.arange(len(similarity))[:, None]).any(dim=1).float().mean().item()


def prefix_positions_after_the_prefix(lm, token_ids, prefix):
    """Positions counted from the first token rather than from the first prefix embedding."""
    T = token_ids.shape[1]
    x = torch.cat([prefix, lm.token_emb(token_ids) + lm.pos_emb(torch.arange(T))], dim=1)
    for block in lm.blocks:
        x = block(x)
    return lm.ln_final(x)


def merge_overlapping_from_the_right(ids, pair, new_id):
    return tokenizer.merge_pair(ids[::-1], pair[::-1], new_id)[::-1]


@pytest.mark.parametrize("key, wrong, failing_check", [
    ("ex1", attention_without_the_mask, "causal"),
    ("ex1", attention_scaled_by_d, "F.scaled_dot_product_attention"),
    ("ex2", info_nce_without_temperature, "τ = 1, 0.5, 0.07"),
    ("ex2", info_nce_unstable, "float32"),
    ("ex3", freeze_forgetting_eval, "eval mode"),
    ("ex4", recall_counting_ties_against, "ties"),
    ("ex5", prefix_positions_after_the_prefix, "equals lm("),
    ("ex6", merge_overlapping_from_the_right, "left to right"),
])
def test_a_wrong_answer_loses_marks_on_the_check_that_targets_it(key, wrong, failing_check):
    result, = grade.grade({key: wrong}, seed=0)
    failed = [description for description, _ in result.failures]
    assert result.passed < result.total
    assert any(failing_check in description for description in failed), failed


def test_student_errors_are_reported_per_check_not_raised(tmp_path):
    (tmp_path / "ex1_attention.py").write_text("def causal_attention(q, k, v):\n    return q[0]\n")
    (tmp_path / "ex2_info_nce.py").write_text("def info_nce(a, b, t, symmetric=True):\n"
                                              "    raise RuntimeError('oops')\n")
    (tmp_path / "ex3_freeze.py").write_text("def freeze(lm)\n    return lm\n")   # syntax error
    functions = grade.load_functions(tmp_path)
    results = {r.key: r for r in grade.grade(functions, seed=0)}
    assert results["ex1"].passed == 0
    assert "shape" in results["ex1"].failures[0][1]
    assert results["ex2"].failures[0][1] == "RuntimeError: oops (ex2_info_nce.py line 2)"
    assert "SyntaxError" in results["ex3"].failures[0][1]
    assert results["ex4"].failures[0][1] == f"ex4_recall.py not found in {tmp_path}"
    assert sum(r.passed for r in results.values()) == 0


def test_the_command_grades_the_stubs_prints_scores_and_exits_0():
    run = subprocess.run([sys.executable, str(ASSIGNMENTS / "grade.py"), "--seed", "3"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert "ex2 info_nce" in run.stdout and "total" in run.stdout
    total = sum(len(ex.checks) for ex in grade.EXERCISES.values())
    assert run.stdout.strip().splitlines()[-1].split() == ["total", f"0/{total}"]
