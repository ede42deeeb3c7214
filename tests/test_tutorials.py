"""The tutorials cannot drift from the code: each notebook reruns to its stored key numbers, its
prose quotes only numbers that the cells it cites print, and the index lists every notebook in
order. References: the stored outputs, each prose number against the output of the cell it
cites (the one above it, or one named in CITES)."""

import base64
import json
import re
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
sys.path.insert(0, str(TUTORIALS))
from run_notebooks import key_numbers, run_notebook  # noqa: E402

NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))

# Notebooks that train nothing: a rerun prints the same text, to the last character, anywhere.
EXACT = {"01_tokens.ipynb", "03_visual_embedder.ipynb", "05_infonce_by_hand.ipynb"}

# How far a rerun's key number may be from the stored one, by the start of its name (the longest
# start that matches). On one machine with one thread count a rerun repeats every number exactly
# (the notebooks compute in float32 everywhere); another thread count or CPU adds its sums in
# another order, a few training steps go slightly differently, and a nearest caption or a greedy
# token can then flip. Each width is about twice the largest change seen between the stored run
# (2 threads) and a rerun with 1 thread or on another CPU (04, 07 and 08 were stored on a 2-core
# AMD EPYC with AVX2 and rerun on the CPU that stored them before: 04's synonym R@1 moved 0.24 and
# is given 0.35, not twice); numbers no training touches get 0.
TOLERANCES = {
    "02_language_model.ipynb": {"chance level": 0, "held-out loss": 0.01,
                                "held-out perplexity": 0.02},
    "04_text_tower.ipynb": {"pretrained held-out loss": 0.03, "chance": 0,
                            "mean pairwise cosine": 0.07, "mean pairwise cosine after": 0.01,
                            "nearest-caption cosine": 0.06, "synonym -> plain R@1": 0.35,
                            "mean pairwise cosine, random": 0, "nearest-caption cosine, random": 0,
                            "synonym -> plain R@1, random": 0,
                            "synonym -> plain R@1 without whitening, random": 0},
    "06_training_and_retrieval.ipynb": {"test": 0.08, "compositional": 0.08, "paraphrase": 0.08},
    # The short prefix training is the most sensitive: a held-out loss 0.002 apart gave an
    # untrained embedder's loss 0.59 apart and caption exact match 0.655 against 0.36.
    "07_visual_prefix.ipynb": {"held-out loss": 0.03, "held-out perplexity": 0.04,
                               "captioning loss of the untrained embedder": 1.2,
                               "caption exact match": 0.6, "VQA image": 0.3,
                               "VQA own caption": 0.22, "VQA blind": 0.03},
    # 1 thread against 2: R@1 on seen wording moved by up to 0.014, paraphrase R@1 by 0.107,
    # caption exact match by 0.200 (locked: 0.493 and 0.293); the other CPU: R@1 on seen wording
    # by up to 0.060 (finetune), paraphrase R@1 by 0.073, caption exact match by 0.120
    "08_experiments.ipynb": {"test image->text R@1": 0.1, "paraphrase image->text R@1": 0.22,
                             "caption exact match": 0.4},
    # Stored with 1 thread, rerun with 2 within these; no other machine measured yet, so the
    # widths are guesses (the step of the phase change and the induction score are printed, not
    # compared: a phase change a hundred steps off moves them most)
    "09_reading_context.ipynb": {"copy accuracy": 0.2, "names 2-way": 0.1, "held-out loss": 0.03},
}
# A number written with two or more decimals (0.42, 1.81), also at the end of a sentence, not part
# of a section number (§4.3) or a version (2.13.0).
DECIMAL = re.compile(r"(?<![\d.§])\d+\.\d{2,}(?!\d|\.\d)")


def load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def outputs_text(notebook):
    return "\n".join("".join(output.get("text", [])) for cell in notebook["cells"]
                     for output in cell.get("outputs", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_reruns_to_its_stored_outputs(path, request):
    if path.name not in EXACT and not request.config.getoption("--notebooks"):
        pytest.skip("this tutorial trains models: rerun it with --notebooks")
    stored = load(path)
    ran = run_notebook(path)                                           # raises if a cell fails
    for number, (before, after) in enumerate(zip(stored["cells"], ran["cells"])):
        kinds = lambda cell: [output["output_type"] for output in cell.get("outputs", [])]
        assert kinds(before) == kinds(after), f"cell {number}: outputs stored {kinds(before)}, " \
                                              f"rerun {kinds(after)} (rerun with --write)"
    if path.name in EXACT:
        assert outputs_text(ran) == outputs_text(stored), "the printed text changed (rerun with --write)"
    stored_keys, ran_keys = key_numbers(stored), key_numbers(ran)
    assert set(stored_keys) == set(ran_keys)
    for name, value in ran_keys.items():
        starts = [start for start in TOLERANCES.get(path.name, {}) if name.startswith(start)]
        assert starts, f"key number {name!r} has no tolerance in TOLERANCES"
        tolerance = TOLERANCES[path.name][max(starts, key=len)]
        assert abs(value - stored_keys[name]) <= tolerance + 1e-9, \
            f"{name}: stored {stored_keys[name]}, rerun {value} (tolerance {tolerance})"


# Prose quotes the outputs of the code cell just above it. These markdown cells (by index in the
# notebook) also quote others, {markdown cell: [code cells]}: a summary before the results, a
# paragraph that compares with an earlier run, a formula worked out just below.
CITES = {
    "02_language_model.ipynb": {8: [5]},
    "04_text_tower.ipynb": {20: [15, 17]},
    "05_infonce_by_hand.ipynb": {10: [11], 14: [9]},
    "07_visual_prefix.ipynb": {6: [21], 25: [21], 27: [21]},
    "08_experiments.ipynb": {10: [7]},
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_prose_quotes_only_numbers_the_cells_it_cites_show(path):
    """Each number in a markdown cell is printed by the code cell above it, or by a cell CITES
    names for it; a number printed only somewhere else in the notebook is a misquote."""
    cells = load(path)["cells"]
    shown = lambda i: set(DECIMAL.findall(outputs_text({"cells": [cells[i]]})))
    for k, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        quoted = set(DECIMAL.findall("".join(cell["source"])))
        above = max((i for i in range(k) if cells[i]["cell_type"] == "code"), default=None)
        cited = CITES.get(path.name, {}).get(k, [])
        for i in cited:                         # each citation is needed: no stale entries
            assert quoted & shown(i) - (shown(above) if above is not None else set()), (k, i)
        printed = set().union(*(shown(i) for i in [above, *cited] if i is not None))
        assert quoted <= printed, f"markdown cell {k} quotes {sorted(quoted - printed)}, which " \
                                  f"cells {[above, *cited]} do not print"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_pictures_are_small(path):
    for cell in load(path)["cells"]:
        for output in cell.get("outputs", []):
            if "image/png" in output.get("data", {}):
                assert len(base64.b64decode(output["data"]["image/png"])) < 60_000


def test_the_index_lists_every_notebook_in_order():
    index = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| (\d+) \| \[[^]]+\]\(([^)]+\.ipynb)\)", index, re.MULTILINE)
    assert listed == [(str(n), path.name) for n, path in enumerate(NOTEBOOKS, start=1)]
    for number, path in enumerate(NOTEBOOKS, start=1):
        assert path.name.startswith(f"{number:02d}_")
        assert "".join(load(path)["cells"][0]["source"]).startswith(f"# {number}. ")


def test_the_runner_stores_pictures_and_key_numbers(tmp_path):
    code = ("from PIL import Image\nfrom run_notebooks import show\n"
            "print('loss = 0.25')\nshow(Image.new('RGB', (4, 3)))\nprint('after')")
    notebook = {"cells": [{"cell_type": "code", "metadata": {}, "source": [code],
                           "execution_count": None, "outputs": []}],
                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "picture.ipynb"
    path.write_text(json.dumps(notebook), encoding="utf-8")
    outputs = run_notebook(path)["cells"][0]["outputs"]
    assert [output["output_type"] for output in outputs] == ["stream", "display_data", "stream"]
    assert base64.b64decode(outputs[1]["data"]["image/png"]).startswith(b"\x89PNG")
    assert key_numbers({"cells": [{"outputs": outputs}]}) == {"loss": 0.25}
