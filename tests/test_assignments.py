"""The assignments' autograder: the untouched stubs score 0, minivlp's own functions score full
marks, each deliberately wrong answer loses marks with a reason that names its mistake, and no
student file, however broken, makes the grader raise.

The answer key is minivlp's own code (its attention is CausalSelfAttention's, fed q, k and v),
graded by checks whose references are their own loops and hand-worked cases: a bug in minivlp
loses marks. The wrong answers are the mistakes their names say, written here."""

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import minivlp
import tokenizer

ASSIGNMENTS = Path(__file__).resolve().parent.parent / "tutorials" / "assignments"
spec = importlib.util.spec_from_file_location("assignments_grade", ASSIGNMENTS / "grade.py")
grade = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grade)
import checks  # noqa: E402  (grade.py put the assignments folder on sys.path)


@pytest.fixture(autouse=True)
def short_training_run(monkeypatch):
    """Exercise 11 trains at the dry run's size here: seconds, with no threshold to reach."""
    monkeypatch.setattr(checks, "RUN_SIZE", checks.DRY_RUN)


def recall_at_k(similarity, caption_index, k):
    metrics = minivlp.retrieval_metrics(similarity, caption_index, ks=(k,))
    return metrics[f"image_to_text_R@{k}"], metrics[f"text_to_image_R@{k}"]


def class_embeddings(prompt_emb, prompt_class, n_classes):
    prompts = F.normalize(prompt_emb, dim=-1)
    return F.normalize(torch.stack([prompts[prompt_class == c].mean(0) for c in range(n_classes)]),
                       dim=-1)


def mean_pairwise_cosine(x):
    x = F.normalize(x.double(), dim=-1)
    return ((x @ x.T).sum() - len(x)).item() / (len(x) * (len(x) - 1))


class Given(torch.nn.Module):
    """A layer that returns the tensor it was given, whatever its input."""

    def __init__(self, tensor):
        super().__init__()
        self.tensor = tensor

    def forward(self, x):
        return self.tensor


def minivlp_attention(q, k, v):
    """minivlp's own attention on (B, heads, T, d) q, k, v: a CausalSelfAttention whose input
    projection returns them, with one tap (no mixing over positions), and whose output
    projection is the identity."""
    B, heads, T, d = q.shape
    layer = minivlp.CausalSelfAttention(heads * d, heads, T, taps=1)
    layer.qkv = Given(torch.cat([z.transpose(1, 2).reshape(B, T, heads * d) for z in (q, k, v)],
                                dim=2))                                 # (B, T, 3C)
    layer.proj = torch.nn.Identity()
    return layer(q.new_zeros(B, T, heads * d)).view(B, T, heads, d).transpose(1, 2)


MINIVLP = SimpleNamespace(
    merge_pair=tokenizer.merge_pair,
    causal_attention=minivlp_attention,
    freeze=minivlp.freeze,
    reread_tokens=minivlp.reread_tokens, reread_features=minivlp.reread_features,
    fit_whitening=minivlp.fit_whitening, mean_pairwise_cosine=mean_pairwise_cosine,
    info_nce=lambda v, t, tau, symmetric=True, caption_ids=None, info_nce=minivlp.info_nce:
        info_nce(v, t, tau, symmetric, caption_ids),  # bound now: exercise 11 swaps minivlp's
    recall_at_k=recall_at_k,
    class_embeddings=class_embeddings,
    zeroshot_classify=lambda image_emb, class_emb: (image_emb @ class_emb.T).argmax(dim=1),
    forward_with_prefix=lambda lm, token_ids, prefix: lm(token_ids, prefix=prefix),
    prefix_loss=minivlp.prefix_loss)


def answer_key(**replaced):
    """minivlp's functions in the students' signatures, with some replaced by wrong ones."""
    return {number: SimpleNamespace(**{name: replaced.get(name, getattr(MINIVLP, name))
                                       for names in ex.files.values() for name in names})
            for number, ex in grade.EXERCISES.items()}


def scores(results):
    return {number: sum(score for _, score, _ in outcomes) for number, outcomes in results.items()}


def test_exercises_in_teaching_order_each_with_its_stub_and_points():
    assert list(grade.EXERCISES) == list(range(1, 12))
    for ex in grade.EXERCISES.values():
        assert len(ex.checks) >= 2 and ex.points >= 2, ex.title
        for file, names in ex.files.items():
            assert (ASSIGNMENTS / file).is_file(), file
            text = (ASSIGNMENTS / file).read_text()
            assert f"--exercise {ex.number}" in text or ex.number == 11, file
            assert all(f"def {name}(" in text for name in names), file


def test_untouched_stubs_score_zero_with_the_not_written_message():
    results = grade.grade(ASSIGNMENTS, seed=0)
    assert list(results) == list(grade.EXERCISES)
    assert sum(scores(results).values()) == 0
    for number, outcomes in results.items():
        reasons = {reason for _, _, reason in outcomes}
        assert reasons == ({grade.NOT_WRITTEN} if number < 11 else
                           {"reread_tokens in ex04_text_features.py is not written yet"}), reasons


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minivlps_own_functions_score_full_marks(seed):
    results = grade.grade(answer_key(), seed)
    failed = [(number, check.description, reason) for number, outcomes in results.items()
              for check, score, reason in outcomes if score < check.points]
    assert not failed


def test_the_training_run_calls_the_students_functions():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as grade.py runs it: more threads only wait on each other here
    try:
        _, calls = checks.train_with(MINIVLP, checks.DRY_RUN)
    finally:
        torch.set_num_threads(threads)
    assert set(calls) == set(checks.FROM_THE_STUDENT) and all(calls.values()), calls
    saved = {name: getattr(minivlp, name) for name in checks.FROM_THE_STUDENT}
    assert all(function.__module__ == "minivlp" for function in saved.values())  # restored


# Deliberately wrong answers, each the mistake its name says.

def merge_from_the_right(ids, pair, new_id):
    return tokenizer.merge_pair(ids[::-1], pair[::-1], new_id)[::-1]


def attention_without_the_mask(q, k, v):
    return (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(dim=-1) @ v


def attention_scaled_by_d(q, k, v):
    mask = torch.ones(q.shape[2], q.shape[2]).tril().bool()
    scores = (q @ k.transpose(-2, -1) / q.shape[-1]).masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


def freeze_forgetting_eval(lm):
    lm.requires_grad_(False)
    lm.zero_grad(set_to_none=True)
    return lm


def freeze_under_no_grad(lm):
    torch.set_grad_enabled(False)
    return minivlp.freeze(lm)


def reread_first_reading(tok, texts, context):
    ids, weights = minivlp.reread_tokens(tok, texts, context)
    n = weights.sum(1, keepdim=True)                                   # tokens of each reading
    positions = torch.arange(ids.shape[1])
    return ids, ((positions >= 1) & (positions < 1 + n)).float()


def reread_features_over_all_positions(lm, ids, weights):
    return lm(ids).float().mean(1)


def whitening_without_shrinkage(features):
    mean = features.mean(0)
    eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov((features - mean).T.double()))
    return mean, (eigenvectors @ torch.diag(eigenvalues.rsqrt()) @ eigenvectors.T).float()


def whitening_biased(features):
    mean, _ = minivlp.fit_whitening(features)
    M = len(features)
    return minivlp.fit_whitening(mean + (features - mean) * ((M - 1) / M) ** 0.5)


def cosine_with_the_diagonal(x):
    x = F.normalize(x.double(), dim=-1)
    return (x @ x.T).mean().item()


def info_nce_without_temperature(v, t, tau, symmetric=True, caption_ids=None):
    return minivlp.info_nce(v, t, 1.0, symmetric, caption_ids)


def info_nce_unstable(v, t, tau, symmetric=True, caption_ids=None):
    """Right at moderate τ, but exp(1/τ) overflows float32 once τ <= 0.01."""
    logits = (F.normalize(v, dim=1) @ F.normalize(t, dim=1).T / tau).exp()
    if caption_ids is not None:
        same = caption_ids[:, None] == caption_ids[None, :]
        logits = logits.masked_fill(same & ~torch.eye(len(v), dtype=torch.bool), 0)
    image_to_text = -(logits.diagonal() / logits.sum(dim=1)).log().mean()
    text_to_image = -(logits.diagonal() / logits.sum(dim=0)).log().mean()
    return (image_to_text + text_to_image) / 2 if symmetric else image_to_text


def info_nce_without_masking(v, t, tau, symmetric=True, caption_ids=None):
    return minivlp.info_nce(v, t, tau, symmetric)


def recall_ties_in_favour(similarity, caption_index, k):
    """Only strictly higher scores push a right answer down: right answers win every tie."""
    right = F.one_hot(caption_index, similarity.shape[1])
    return recall_at_k(similarity.double() + 1e-6 * right, caption_index, k)


def recall_first_image(similarity, caption_index, k):
    """Text -> image by each caption's first image rather than its best-placed one."""
    image_to_text, _ = recall_at_k(similarity, caption_index, k)
    M = similarity.shape[1]
    first = [int((caption_index == c).nonzero()[0]) for c in range(M)]
    wrong = caption_index[:, None] != torch.arange(M)[None, :]          # (N, M)
    ranks = [1 + int(((similarity[:, c] >= similarity[first[c], c]) & wrong[:, c]).sum())
             for c in range(M)]
    return image_to_text, sum(r <= k for r in ranks) / M


def classes_from_raw_prompts(prompt_emb, prompt_class, n_classes):
    means = torch.stack([prompt_emb[prompt_class == c].mean(0) for c in range(n_classes)])
    return F.normalize(means, dim=-1)


def prefix_positions_after_the_prefix(lm, token_ids, prefix):
    """Positions counted from the first token rather than from the first prefix embedding."""
    T = token_ids.shape[1]
    x = torch.cat([prefix, lm.token_emb(token_ids) + lm.pos_emb(torch.arange(T))], dim=1)
    for block in lm.blocks:
        x = block(x)
    return lm.ln_final(x)


def caption_loss_without_the_shift(lm, tok, prefix, tokens):
    context_emb = minivlp.image_context(lm, tok, prefix)
    hidden = lm(tokens.clamp(min=0), prefix=context_emb)[:, context_emb.shape[1]:]
    return F.cross_entropy(lm.logits(hidden).float().flatten(0, 1), tokens.flatten(),
                           ignore_index=minivlp.IGNORE)


def caption_loss_per_caption(lm, tok, prefix, tokens):
    return torch.stack([minivlp.prefix_loss(lm, tok, prefix[b:b + 1], tokens[b:b + 1])
                        for b in range(len(tokens))]).mean()


def caption_loss_detached(lm, tok, prefix, tokens):
    return minivlp.prefix_loss(lm, tok, prefix.detach(), tokens)


def caption_loss_unfreezing(lm, tok, prefix, tokens):
    lm.requires_grad_(True)
    return minivlp.prefix_loss(lm, tok, prefix, tokens)


@pytest.mark.parametrize("number, replaced, failing_check, named", [
    (1, {"merge_pair": merge_from_the_right}, "left to right", "scan from the right"),
    (2, {"causal_attention": attention_without_the_mask}, "causal", "position 0"),
    (2, {"causal_attention": attention_scaled_by_d}, "position-by-position", "divided by d"),
    (3, {"freeze": freeze_forgetting_eval}, "eval mode", "training mode"),
    (3, {"freeze": freeze_under_no_grad}, "a loss still flows", "autograd is switched off"),
    (4, {"reread_tokens": reread_first_reading}, "worked example", "first reading"),
    (4, {"reread_features": reread_features_over_all_positions}, "where weights are 1",
     "averaged every position"),
    (5, {"fit_whitening": whitening_without_shrinkage}, "anisotropic", "no shrinkage"),
    (5, {"fit_whitening": whitening_biased}, "anisotropic", "divide by M - 1"),
    (5, {"mean_pairwise_cosine": cosine_with_the_diagonal}, "double loop", "itself"),
    (6, {"info_nce": info_nce_without_temperature}, "τ = 1, 0.5, 0.07",
     "divide the similarities by τ"),
    (6, {"info_nce": info_nce_unstable}, "float32", "expected finite values"),
    (6, {"info_nce": info_nce_without_masking}, "shared captions", "without masking"),
    (7, {"recall_at_k": recall_ties_in_favour}, "ties", "in the model's favour"),
    (7, {"recall_at_k": recall_first_image}, "best-placed", "first image"),
    (8, {"class_embeddings": classes_from_raw_prompts}, "random prompts", "raw prompt"),
    (9, {"forward_with_prefix": prefix_positions_after_the_prefix}, "random K and T",
     "number the tokens only"),
    (10, {"prefix_loss": caption_loss_without_the_shift}, "one-token shift",
     "without the one-token shift"),
    (10, {"prefix_loss": caption_loss_per_caption}, "padding", "per-caption means"),
    (10, {"prefix_loss": caption_loss_detached}, "gradient", "records no gradient"),
    (10, {"prefix_loss": caption_loss_unfreezing}, "only the embedder", "must stay frozen"),
    (11, {"reread_tokens": lambda tok, texts, context: "ids"}, "a run of seconds",
     "just after your reread_tokens returned"),
])
def test_a_wrong_answer_loses_marks_with_a_reason_naming_the_mistake(number, replaced,
                                                                     failing_check, named):
    outcomes = grade.grade(answer_key(**replaced), seed=0, numbers=[number])[number]
    failed = {check.description: reason for check, score, reason in outcomes if score == 0}
    assert any(failing_check in description and named in reason
               for description, reason in failed.items()), failed


def test_a_weak_training_run_fails_exercise_11_with_its_numbers(monkeypatch):
    monkeypatch.setattr(checks, "RUN_SIZE", SimpleNamespace(**vars(checks.DRY_RUN) | {
        "min_recall": 1.01, "min_exact": 1.01}))
    monkeypatch.setattr(checks, "train_with", lambda student, size=None, calls=None: (
        {"R@1": 0.25, "exact": 0.0, "seconds": 1.0}, dict.fromkeys(checks.FROM_THE_STUDENT, 1)))
    outcomes = grade.grade(answer_key(), seed=0, numbers=[11])[11]
    assert [reason for _, _, reason in outcomes] == [
        "",
        "test image -> text R@1 0.250, below 1.01: check h(T), whitening and info_nce",
        "captions exactly right 0.000, below 1.01: check prefix_loss"]


BROKEN = {
    "a syntax error": "def merge_pair(ids, pair, new_id)\n    return ids\n",
    "an exception": "def merge_pair(ids, pair, new_id):\n    raise RuntimeError('oops')\n",
    "an endless loop": "def merge_pair(ids, pair, new_id):\n    while True:\n        pass\n",
    "an endless loop on import": "while True:\n    pass\n",
    "exiting the interpreter": "import os\ndef merge_pair(ids, pair, new_id):\n    os._exit(3)\n",
    "sys.exit on import": "import sys\nsys.exit(1)\n",
    "a missing function": "def merge(ids, pair, new_id):\n    return ids\n",
}


@pytest.mark.parametrize("broken", BROKEN)
def test_a_broken_file_scores_zero_with_one_line_and_no_traceback(tmp_path, broken):
    (tmp_path / "ex01_bpe_merge.py").write_text(BROKEN[broken])
    outcomes = grade.grade(tmp_path, seed=0, numbers=[1], time_limit=2)[1]
    reasons = [reason for _, _, reason in outcomes]
    assert sum(score for _, score, _ in outcomes) == 0
    assert all(reason and "\n" not in reason and "Traceback" not in reason for reason in reasons)
    if broken == "an exception":
        assert reasons[0] == "RuntimeError: oops (ex01_bpe_merge.py line 2)"


def test_nan_scores_zero_and_a_missing_file_is_named(tmp_path):
    (tmp_path / "ex06_info_nce.py").write_text(
        "import torch\ndef info_nce(v, t, tau, symmetric=True, caption_ids=None):\n"
        "    return torch.tensor(float('nan'))\n")
    results = grade.grade(tmp_path, seed=0, numbers=[6, 7])
    assert scores(results) == {6: 0, 7: 0}
    assert "got nan" in results[6][0][2]
    assert results[7][0][2] == f"ex07_retrieval.py not found in {tmp_path}"


def test_the_command_writes_results_json_that_sums(tmp_path):
    student = tmp_path / "student"
    student.mkdir()
    for file in ASSIGNMENTS.glob("ex*.py"):
        (student / file.name).write_text(file.read_text())
    (student / "ex01_bpe_merge.py").write_text(textwrap.dedent("""
        from tokenizer import merge_pair
        """))
    out = tmp_path / "results.json"
    run = subprocess.run([sys.executable, str(ASSIGNMENTS / "grade.py"), "--dir", str(student),
                          "--exercise", "1", "--exercise", "3", "--seed", "3", "--json", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[-1].split() == ["total", "3/5"]
    results = json.loads(out.read_text())
    assert results["score"] == sum(test["score"] for test in results["tests"]) == 3
    assert sum(test["max_score"] for test in results["tests"]) == 5
    assert all(set(test) == {"name", "score", "max_score", "output"} for test in results["tests"])
    names = [test["name"].split()[0] for test in results["tests"]]
    assert names == ["1.1", "1.2", "1.3", "3.1", "3.2"]
