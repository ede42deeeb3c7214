"""Run the tutorials' code cells top to bottom, without Jupyter (a notebook is JSON).

    python tutorials/run_notebooks.py           # run every notebook, report what failed
    python tutorials/run_notebooks.py --write   # also store each cell's printed output in it

The test suite runs every notebook with this, so the text and the code cannot drift apart.
"""

import argparse
import contextlib
import io
import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_notebook(path):
    """Execute the code cells of one notebook in a shared namespace, from the tutorials folder
    (where its imports expect to be). Returns the notebook with each cell's printed output."""
    notebook = json.loads(Path(path).read_text(encoding="utf-8"))
    namespace, previous = {"__name__": "__main__"}, os.getcwd()
    os.chdir(HERE)
    try:
        for number, cell in enumerate(c for c in notebook["cells"] if c["cell_type"] == "code"):
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile("".join(cell["source"]), f"{Path(path).name}, code cell {number + 1}",
                             "exec"), namespace)
            lines = printed.getvalue().splitlines(keepends=True)
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": lines}] if lines else []
            cell["execution_count"] = number + 1
    finally:
        os.chdir(previous)
    return notebook


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="store the outputs in the notebooks")
    args = parser.parse_args()
    for path in sorted(HERE.glob("*.ipynb")):
        notebook = run_notebook(path)
        if args.write:
            path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"ran {path.name}")


if __name__ == "__main__":
    main()
