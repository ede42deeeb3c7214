"""Real scans as "your own data": 1,797 handwritten digits, written out as PNG files, TSV tables
in open_clip's layout, and a text corpus: the your-own-data benchmark of tutorials/results.md.

    python tests/benchmarks/digits.py --out data/digits
    python train.py --data data/digits/train.tsv --val-data data/digits/val.tsv \
        --text data/digits/corpus.txt --out out/digits
    python eval.py --ckpt out/digits/minivlp.pt --data data/digits/val.tsv \
        --classes zero,one,two,three,four,five,six,seven,eight,nine --templates "a handwritten {}"
    python eval.py --ckpt out/digits/minivlp.pt --data data/digits/val_numerals.tsv

The digits are the test set of the UCI "Optical Recognition of Handwritten Digits" data (Alpaydin
and Kaynak 1998: 8 x 8 images, 17 grey levels, from scanned forms of 43 writers), as shipped in
scikit-learn's wheel. The wheel is only read as a zip file (pip downloads it, nothing is
installed or imported): minivlp itself never needs scikit-learn.
"""

import argparse
import csv
import gzip
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGITS_IN_WHEEL = "sklearn/datasets/data/digits.csv.gz"


def read_digits(wheel):
    """(N, 8, 8) uint8 images in 0..16 and (N,) labels from the wheel's digits.csv.gz."""
    with zipfile.ZipFile(wheel) as archive:
        text = gzip.decompress(archive.read(DIGITS_IN_WHEEL)).decode("ascii")
    table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64)   # (N, 65)
    return table[:, :64].reshape(-1, 8, 8).astype(np.uint8), table[:, 64]


def corpus_lines(rng, n_lines):
    """Short lines of text about the ten digits: what their names mean and how they relate, the
    kind of knowledge an LM brings and a captioned scan does not."""
    lines = []
    for _ in range(n_lines):
        d = int(rng.integers(10))
        name, before, after = NAMES[d], NAMES[(d - 1) % 10], NAMES[(d + 1) % 10]
        a = int(rng.integers(d + 1))
        lines.append(str(rng.choice([
            f"a handwritten {name}",
            f"the digit {d} is called {name}.",
            f"{name} comes after {before} and before {after}.",
            f"{NAMES[a]} plus {NAMES[d - a]} is {name}.",
            f"someone wrote a {name} by hand: a handwritten {name}",
            f"{name} is {'an even' if d % 2 == 0 else 'an odd'} number.",
            f"a handwritten {d} is a handwritten {name}.",
        ])))
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="data/digits")
    parser.add_argument("--wheel", help="a scikit-learn wheel (default: pip downloads one)")
    parser.add_argument("--val", type=int, default=297, help="the last rows, held out")
    args = parser.parse_args()
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        wheel = args.wheel
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                            "scikit-learn==1.9.1", "-d", folder], check=True)
            wheel = next(Path(folder).glob("*.whl"))
        images, labels = read_digits(wheel)
    rows = []
    for i, (pixels, label) in enumerate(zip(images, labels)):
        # 16 is ink: dark ink on white paper, as the forms were scanned
        Image.fromarray(255 - pixels * 15, mode="L").save(out / "images" / f"{i:04d}.png")
        rows.append((f"images/{i:04d}.png", f"a handwritten {NAMES[label]}"))
    # the same held-out scans captioned with numerals, wording never paired with an image
    numerals = [(path, f"a handwritten {NAMES.index(text.split()[-1])}") for path, text in rows]
    for name, part in (("train.tsv", rows[:-args.val]), ("val.tsv", rows[-args.val:]),
                       ("val_numerals.tsv", numerals[-args.val:])):
        with open(out / name, "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file, delimiter="\t")
            writer.writerow(["filepath", "title"])
            writer.writerows(part)
    lines = corpus_lines(np.random.default_rng(0), 5000)
    (out / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} images ({len(rows) - args.val} train, {args.val} val) and "
          f"{len(lines)} corpus lines to {out}")


if __name__ == "__main__":
    main()
