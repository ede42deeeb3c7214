"""Run the tutorials' code cells top to bottom, without Jupyter (a notebook is JSON).

    python tutorials/run_notebooks.py                 # run every notebook, report what failed
    python tutorials/run_notebooks.py --write         # also store each cell's outputs in it
    python tutorials/run_notebooks.py 04 08 --write   # only the notebooks whose names start so

A cell's outputs are what it prints and the pictures it passes to `show`. A printed line of the
form `name = number` is a *key number*: tests/test_tutorials.py reruns every notebook and compares
its key numbers with the stored ones, so the text and the code cannot drift apart.
"""

import argparse
import base64
import io
import json
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEY_NUMBER = re.compile(r"^([A-Za-z][^=]*?)\s+=\s+(-?[\d,]*\.?\d+)$")   # 'perplexity = 1.81'


def show(image):
    """Display a PIL image as the cell's output: in Jupyter directly, under this runner as a PNG
    stored in the notebook (where Jupyter and GitHub render it)."""
    if hasattr(sys.stdout, "show_image"):                     # a cell run by run_notebook
        sys.stdout.show_image(image)
    else:
        from IPython.display import display                   # present wherever Jupyter is
        display(image)


class CellOutputs:
    """Stands in for sys.stdout while one cell runs: its printed text and pictures, in the order
    they came, as the outputs Jupyter would store."""

    def __init__(self):
        self.outputs, self.text = [], []

    def write(self, text):
        self.text.append(text)
        return len(text)

    def flush(self):
        pass

    def end_text(self):
        lines = "".join(self.text).splitlines(keepends=True)
        if lines:
            self.outputs.append({"output_type": "stream", "name": "stdout", "text": lines})
        self.text = []

    def show_image(self, image):
        self.end_text()
        png = io.BytesIO()
        image.save(png, format="PNG", optimize=True)
        self.outputs.append({"output_type": "display_data", "metadata": {},
                             "data": {"image/png": base64.b64encode(png.getvalue()).decode(),
                                      "text/plain": [f"<image {image.width} x {image.height}>"]}})


def run_notebook(path):
    """Execute the code cells of one notebook in a shared namespace, from the tutorials folder
    (where its imports expect to be). Returns the notebook with each cell's outputs."""
    notebook = json.loads(Path(path).read_text(encoding="utf-8"))
    namespace, previous, stdout = {"__name__": "__main__"}, os.getcwd(), sys.stdout
    os.chdir(HERE)
    try:
        for number, cell in enumerate(c for c in notebook["cells"] if c["cell_type"] == "code"):
            sys.stdout = outputs = CellOutputs()
            try:
                exec(compile("".join(cell["source"]), f"{Path(path).name}, code cell {number + 1}",
                             "exec"), namespace)
            finally:
                sys.stdout = stdout
            outputs.end_text()
            cell["outputs"], cell["execution_count"] = outputs.outputs, number + 1
    finally:
        os.chdir(previous)
    return notebook


def key_numbers(notebook):
    """{name: value} of the lines printed as 'name = number' in a notebook's outputs."""
    found = {}
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            for line in "".join(output.get("text", [])).splitlines():
                match = KEY_NUMBER.match(line.strip())
                if match:
                    if match[1] in found:  # one name, one number: else the comparison is ambiguous
                        raise ValueError(f"key number {match[1]!r} printed twice")
                    found[match[1]] = float(match[2].replace(",", ""))
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="run only the notebooks whose names start so")
    parser.add_argument("--write", action="store_true", help="store the outputs in the notebooks")
    args = parser.parse_args()
    for path in sorted(HERE.glob("*.ipynb")):
        if args.names and not any(path.name.startswith(name) for name in args.names):
            continue
        start = time.perf_counter()
        notebook = run_notebook(path)
        if args.write:
            path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"ran {path.name} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
