"""Every tutorial notebook runs top to bottom, and is stored with the output of its cells."""

import json
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
sys.path.insert(0, str(TUTORIALS))
from run_notebooks import run_notebook  # noqa: E402


@pytest.mark.parametrize("path", sorted(TUTORIALS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_runs_and_is_stored_with_its_outputs(path):
    stored = json.loads(path.read_text(encoding="utf-8"))
    ran = run_notebook(path)                                           # raises if a cell fails
    for stored_cell, ran_cell in zip(stored["cells"], ran["cells"]):
        if ran_cell["cell_type"] == "code" and ran_cell["outputs"]:
            assert stored_cell["outputs"], f"{path.name}: a cell that prints has no stored output"


def test_there_is_at_least_one_notebook():
    assert list(TUTORIALS.glob("*.ipynb"))
