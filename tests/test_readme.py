"""The README's result tables, the full tables of tutorials/results.md and the design choices
table of tutorials/design.md are the runs' own numbers: every cell is checked against the
metrics.json files that train.py wrote for those runs, stored in tutorials/runs/."""

import functools
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from eval import compare, flat

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
from compositional_pairs import MISSES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
RUNS = ROOT / "tutorials" / "runs"
KINDS = ["colour", "shape", "count", "position", "exists"]
CELL = re.compile(r"^(\d\.\d+)(?: \((\d\.\d+)–(\d\.\d+)\))?$")     # '0.68 (0.63–0.74)' or '1.00'


def runs(tower):
    return [json.loads(path.read_text()) for path in sorted((RUNS / tower).glob("seed*.json"))]


def table_rows(heading, page=README):
    """{first cell: [other cells]} of the markdown tables in the section `heading` of a page."""
    section = page.split(f"## {heading}\n")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and not set(cells[0]) <= {"-", " "}:
            rows[cells[0]] = cells[1:]
    return rows


def check(cell, values):
    """The cell states the mean (min–max) of the values, rounded to its decimals."""
    match = CELL.match(cell)
    assert match, f"not a number cell: {cell!r}"
    half_unit = 0.5 * 10.0 ** -len(match[1].split(".")[1]) + 1e-9
    stated = [float(x) for x in match.groups() if x is not None]
    actual = [np.mean(values)] + ([min(values), max(values)] if len(stated) == 3 else [])
    if len(stated) == 1:  # no range written: every run rounds to the same value
        stated, actual = stated * 3, [np.mean(values), min(values), max(values)]
    assert all(abs(s - a) <= half_unit for s, a in zip(stated, actual)), \
        f"{cell!r}: the runs give mean {np.mean(values):.4f}, min {min(values):.4f}, " \
        f"max {max(values):.4f}"


def mean_of(metrics, split, keys):
    return float(np.mean([metrics[split][key] for key in keys]))


def test_the_headline_tables_are_the_five_locked_runs():
    locked = runs("locked")
    assert len(locked) == 5 and "Seeds 0 to 4" in README
    rows = table_rows("Results")
    metrics_of_row = {
        "image → text R@1": ["image_to_text_R@1"], "text → image R@1": ["text_to_image_R@1"],
        "zero-shot, mean of 4 attributes": [f"zeroshot_{a}_acc"
                                            for a in ("colour", "shape", "size", "position")],
        "caption exact match": ["caption_exact_match"],
        "caption, re-ranked by v": ["caption_exact_match_reranked"]}
    for row, keys in metrics_of_row.items():
        for split, cell in zip(["test", "compositional", "paraphrase"], rows[row]):
            if cell:
                check(cell, [mean_of(m, split, keys) for m in locked])
    settings = {"image": "vqa_acc", "own caption": "vqa_describe_acc", "blind": "vqa_blind_acc",
                "image, examples first": "vqa_fewshot_acc", "true caption": "vqa_text_acc"}
    for row, prefix in settings.items():
        for kind, cell in zip(KINDS, rows[row], strict=True):
            check(cell, [m["test"][f"{prefix}_{kind}"] for m in locked])
    # the runs are the default's: the reading LM and the spelled prefix of 16
    assert {(m["run"]["config"]["lm"]["taps"], m["run"]["config"]["lm"]["steps"],
             m["run"]["config"]["align"]["prefix_tokens"], m["run"]["config"]["align"]["spelling"])
            for m in locked} == {(5, 3600, 16, 16.0)}
    assert {m["run"]["config"]["align"]["steps"] for m in locked} == {600}


@pytest.mark.parametrize("tower", ["locked", "random", "finetune", "scratch"])
def test_the_ablation_table_is_the_stored_runs(tower):
    rows = table_rows("What the pretrained LM buys: the text-tower ablation",
                      (ROOT / "tutorials" / "results.md").read_text(encoding="utf-8"))
    first = next(first for first in rows if first.startswith(f"`{tower}`"))  # '`locked` (0,1,2)'
    seeds = [int(seed) for seed in re.search(r"\(([\d,]+)\)", first)[1].split(",")]
    folder = "plain" if tower == "locked" else tower       # the plain LM's four towers
    stored = [m for m in runs(folder) if m["run"]["config"]["seed"] in seeds]
    assert [m["run"]["config"]["seed"] for m in stored] == seeds
    assert all(m["run"]["text_tower"] == tower for m in stored)
    columns = [("test", ["image_to_text_R@1"]), ("paraphrase", ["image_to_text_R@1"]),
               ("test", ["caption_exact_match"]), ("compositional", ["caption_exact_match"]),
               ("test", [f"vqa_describe_acc_{kind}" for kind in KINDS]),
               ("test", [f"vqa_blind_acc_{kind}" for kind in KINDS])]
    for (split, keys), cell in zip(columns, rows[first]):
        check(cell, [mean_of(m, split, keys) for m in stored])


def test_the_readmes_ablation_summary_is_the_stored_runs():
    """README, "What the pretrained LM buys": the figures of its summary, from the towers' runs."""
    section = " ".join(README.split("## What the pretrained LM buys")[1].split("\n## ")[0].split())
    mean = lambda folder, split, keys: np.mean([mean_of(m, split, keys) for m in runs(folder)
                                                if m["run"]["config"]["seed"] in (0, 1, 2)])
    para = {t: f"{mean(f, 'paraphrase', ['image_to_text_R@1']):.2f}"
            for t, f in {"locked": "plain", "random": "random", "finetune": "finetune"}.items()}
    assert (f"`locked` {para['locked']}, `random` {para['random']}, `finetune` "
            f"{para['finetune']}") in section
    own = {t: f"{mean(f, 'test', [f'vqa_describe_acc_{k}' for k in KINDS]):.2f}"
           for t, f in {"locked": "plain", "finetune": "finetune", "random": "random",
                        "scratch": "scratch"}.items()}
    assert own["random"] == own["scratch"] == "0.00"
    assert f"caption {own['locked']}, `finetune` {own['finetune']}, `random` and `scratch` 0.00" \
        in section


def test_the_reading_tables_are_the_stored_runs_and_benchmark():
    """results.md, "Reading by object": the section's runs are in tutorials/runs/reading/default,
    .../recipe and runs/locked, and what tests/benchmarks/lm_reading.py printed for their LMs in
    .../default.json, .../recipe.json and .../locked.json."""
    rows = table_rows("Reading by object",
                      (ROOT / "tutorials" / "results.md").read_text(encoding="utf-8"))
    by_object = ["colour_first", "colour_second", "shape_first", "shape_second", "exists_first",
                 "exists_second", "exists_absent"]
    lm = lambda name: [(m["run"]["config"]["lm"]["taps"], m["run"]["config"]["lm"]["steps"],
                        m["run"]["config"]["lm"]["reading_steps"]) for m in runs(name)]
    assert lm("reading/default") == [(1, 1800, 0)] * 5
    assert lm("reading/recipe") == [(4, 3600, 400)] * 5
    settings = {"image": "vqa_acc", "image, own caption": "vqa_describe_acc",
                "true caption": "vqa_text_acc", "blind": "vqa_blind_acc"}
    assert [(m["run"]["config"]["align"]["prefix_tokens"], m["run"]["config"]["align"]["spelling"])
            for m in runs("reading/spelled")] == [(16, 1.0)] * 5
    assert lm("reading/spelled") == [(4, 3600, 400)] * 5
    for name, label in {"default": "", "recipe": "reading recipe: ",
                        "spelled": "spelled prefix: "}.items():
        for row, prefix in settings.items():
            if f"{label}{row}" not in rows:            # the spelled prefix's LM is the recipe's
                assert name == "spelled" and row in ("true caption", "blind")
                continue
            for kind, cell in zip(by_object, rows[label + row], strict=True):
                check(cell, [m["test"][f"{prefix}_{kind}"] for m in runs(f"reading/{name}")])
    for first, name in {"plain LM (0–4)": "default", "reading recipe (0–4)": "recipe",
                        "default (0–4)": "locked"}.items():
        stored = runs(name if name == "locked" else f"reading/{name}")
        bench = json.loads((RUNS / "reading" / f"{name}.json").read_text())
        assert sorted(int(seed) for seed in bench) == [m["run"]["config"]["seed"] for m in stored]
        keys = ["copy", "names_2way", "names_5way", "colour_first", "colour_second",
                "shape_first", "shape_second", "exists_absent"]
        values = [[bench[seed][key] for seed in bench] for key in keys]
        values += [[m["run"]["lm_held_out_loss"] for m in stored],
                   [m["test"]["vqa_acc_colour"] for m in stored]]
        for cell, column in zip(rows[first], values, strict=True):
            check(cell, column)


def test_the_six_tap_comparison_is_the_stored_runs_and_benchmark():
    """results.md, "Reading by object", last table: the benchmark of each LM (recipe.json; the
    6-tap probes of probes.json) and the runs aligned against them (.../recipe, .../taps6)."""
    rows = table_rows("Reading by object",
                      (ROOT / "tutorials" / "results.md").read_text(encoding="utf-8"))
    probes = json.loads((RUNS / "reading" / "probes.json").read_text())
    bench = {"recipe": list(json.loads((RUNS / "reading" / "recipe.json").read_text()).values()),
             "taps6": [probes[f"6 taps, absent pairs from the line, seed {seed}"]
                       for seed in range(5)]}
    assert [m["run"]["config"]["lm"]["taps"] for m in runs("reading/taps6")] == [6] * 5
    for first, name in {"the reading recipe (4 taps)": "recipe",
                        "6 taps, absent pairs from the line": "taps6"}.items():
        stored = runs(f"reading/{name}")
        values = [[b[key] for b in bench[name]] for key in ("names_2way", "names_5way", "exists_absent")]
        values += [[m[split]["caption_exact_match"] for m in stored] for split in ("test", "compositional")]
        values += [[m["test"][f"vqa_describe_acc_{kind}"] for m in stored]
                   for kind in ("colour_first", "colour_second", "exists_absent")]
        for cell, column in zip(rows[first], values, strict=True):
            check(cell, column)


NAMING_ROWS = {"images": "binding_acc", "descriptions (`a red circle`)": "binding_text_acc",
               "no query image": "binding_blind_acc", "names shuffled": "binding_shuffled_acc"}
NAMING_COLUMNS = ["2way_1shot", "2way_2shot", "5way_1shot"]


def test_the_readmes_naming_table_is_the_five_locked_runs():
    """README, "Naming from a few examples": eval.py's binding_* of the default runs."""
    rows = table_rows("Naming from a few examples")
    locked = runs("locked")
    assert len(locked) == 5
    for first, prefix in NAMING_ROWS.items():
        for cell, column in zip(rows[first], NAMING_COLUMNS, strict=True):
            check(cell, [m["test"][f"{prefix}_{column}"] for m in locked])


def test_where_naming_breaks_is_the_stored_benchmark():
    """results.md, "Naming from a few examples": few_shot_naming.py's numbers for the default
    runs (tutorials/runs/naming/default.json), which eval.py's own match, and its walk through
    one prompt (show.txt) as printed."""
    page = (ROOT / "tutorials" / "results.md").read_text(encoding="utf-8")
    rows = table_rows("Naming from a few examples (Frozen's fast binding)", page)
    bench = json.loads((RUNS / "naming" / "default.json").read_text())
    assert sorted(bench) == ["0", "1", "2", "3", "4"]
    for m in runs("locked"):
        ours = bench[str(m["run"]["config"]["seed"])]
        assert {key: ours[key] for key in m["test"] if key.startswith("binding_")} == \
            {key: value for key, value in m["test"].items() if key.startswith("binding_")}
    lines = {"three prefix vectors": "image", "its description": "text",
             "support described, query an image": "support text, query image",
             "support images, query described": "support image, query text",
             "the prefix's first 6 vectors": "whole prefix (6)", "its whole caption": "whole caption"}
    for first, key in lines.items():
        check(rows[first][0], [bench[seed][key] for seed in bench])
    for first, setting in {"share of the episodes": "episodes sharing", "images": "image, share",
                           "descriptions": "text, share"}.items():
        for cell, part in zip(rows[first], ["shape", "colour", "neither"], strict=True):
            check(cell, [bench[seed][f"{setting} {part}"] for seed in bench])
    shown = (RUNS / "naming" / "show.txt").read_text()
    assert shown.strip() in page


def test_the_own_caption_table_is_the_stored_probe():
    """results.md, "Reading by object": answers after the image and its own caption, and after
    the own caption alone, as stored in tutorials/runs/reading/own_caption.json."""
    rows = table_rows("Reading by object",
                      (ROOT / "tutorials" / "results.md").read_text(encoding="utf-8"))
    probe = json.loads((RUNS / "reading" / "own_caption.json").read_text())
    kinds = ["colour_first", "colour_second", "shape_first", "shape_second", "exists_absent"]
    for name, label in {"default": "plain LM", "recipe": "reading recipe",
                        "taps6": "6 taps (not kept)", "spelled": "spelled prefix, weight 1"}.items():
        assert sorted(probe[name]) == ["0", "1", "2", "3", "4"]
        for setting, words in {"image + own caption": "image and own caption",
                               "own caption alone": "own caption alone"}.items():
            for kind, cell in zip(kinds, rows[f"{label}, {words}"], strict=True):
                check(cell, [probe[name][seed][setting][kind] for seed in probe[name]])


def test_the_spelled_prefix_with_the_default_lm_is_the_stored_runs():
    """design.md, "The prefix spelled as its caption": the default's LMs with the spelled prefix
    (tutorials/runs/reading/default_spelled) against the same LMs with the free one."""
    text = " ".join((ROOT / "tutorials" / "design.md").read_text(encoding="utf-8").split())
    spelled, free = runs("reading/default_spelled"), runs("reading/default")
    assert [m["run"]["config"]["lm"]["taps"] for m in spelled] == [1] * 5
    assert [m["run"]["config"]["align"]["spelling"] for m in spelled] == [1.0] * 5
    assert [m["run"]["config"]["align"]["prefix_tokens"] for m in spelled] == [16] * 5
    number = r"([0-9.]+ \([0-9.]+–[0-9.]+\))"
    cells = re.search(rf"`compositional` {number} against {number} for the same LMs with the "
                      rf"free prefix of 8, `test` {number} against {number}", text).groups()
    for cell, (split, ran) in zip(cells, [("compositional", spelled), ("compositional", free),
                                          ("test", spelled), ("test", free)]):
        check(cell, [m[split]["caption_exact_match"] for m in ran])


def test_how_hard_to_pull_is_the_stored_probes_and_runs():
    """design.md, "How hard to pull", measured with the 4-tap LMs: seed 1's probes (runs/spelling/,
    and runs/reading/taps4_pulled's seed 1 for weight 16) and the five seeds at weight 16
    (runs/reading/taps4_pulled) against weight 1 (runs/spelling/weight1)."""
    page = (ROOT / "tutorials" / "design.md").read_text(encoding="utf-8")
    section = page.split("**How hard to pull.**")[1].split("\n**")[0]
    probe = lambda name: json.loads((RUNS / "spelling" / f"seed1_{name}.json").read_text())
    seed1 = lambda folder: next(m for m in runs(folder) if m["run"]["config"]["seed"] == 1)
    files = {"weight 1 |": seed1("spelling/weight1"), "weight 4": probe("weight4"),
             "weight 16": seed1("reading/taps4_pulled"), "weight 1, 128 images": probe("question_rows128"),
             "weight 1, the teacher": probe("object_questions"),
             "weight 1, all 16": probe("repeated")}
    rows = [line for line in section.splitlines() if line.startswith("| weight")]
    assert len(rows) == len(files)
    kinds = ["colour_first", "colour_second", "shape_first", "shape_second", "exists_absent"]
    for line in rows:
        metrics = next(m for start, m in files.items() if line.startswith(f"| {start}"))
        cells = [cell.strip() for cell in line.strip("|").split("|")][1:]
        assert cells == [f"{metrics['test'][f'vqa_acc_{kind}']:.2f}" for kind in kinds] + [
            f"{metrics[split]['caption_exact_match']:.3f}" for split in ("test", "compositional")]
    assert [(files[name]["run"]["config"]["align"]["spelling"],
             files[name]["run"]["config"]["align"]["question_rows"])
            for name in ("weight 4", "weight 16", "weight 1, 128 images")] == [(4.0, 32), (16.0, 32),
                                                                                 (1.0, 128)]
    text = " ".join(section.split())
    pulled, weight1 = runs("reading/taps4_pulled"), runs("spelling/weight1")
    mean = lambda ran, split, key: f"{np.mean([m[split][key] for m in ran]):.2f}"
    assert (f"colour of the first and the second object {mean(pulled, 'test', 'vqa_acc_colour_first')}"
            f" and {mean(pulled, 'test', 'vqa_acc_colour_second')} against "
            f"{mean(weight1, 'test', 'vqa_acc_colour_first')} and "
            f"{mean(weight1, 'test', 'vqa_acc_colour_second')}, an absent pair denied "
            f"{mean(pulled, 'test', 'vqa_acc_exists_absent')} against "
            f"{mean(weight1, 'test', 'vqa_acc_exists_absent')}") in text
    number = r"([0-9.]+ \([0-9.]+–[0-9.]+\))"
    comp = re.search(rf"`compositional` captions {number} against (\d\.\d+)", text).groups()
    check(comp[0], [m["compositional"]["caption_exact_match"] for m in pulled])
    assert comp[1] == f"{np.mean([m['compositional']['caption_exact_match'] for m in weight1]):.3f}"
    para = re.search(rf"text to image {number} against {number}; image to text is (\d\.\d+) "
                     r"against (\d\.\d+)", text).groups()
    for cell, ran in zip(para[:2], [pulled, weight1]):
        check(cell, [m["paraphrase"]["text_to_image_R@1"] for m in ran])
    assert list(para[2:]) == [f"{np.mean([m['paraphrase']['image_to_text_R@1'] for m in ran]):.3f}"
                              for ran in (pulled, weight1)]


def test_what_composed_is_the_stored_runs():
    """design.md, "Captions of new pairs", measured with the 4-tap LMs: greedy and re-ranked
    `compositional` captions at weight 16 (runs/reading/taps4_pulled) against weight 1
    (runs/spelling/weight1) and the free prefix of 8 (runs/reading/recipe, the same LMs); then the
    default's (runs/locked)."""
    text = " ".join((ROOT / "tutorials" / "design.md").read_text(encoding="utf-8").split())
    found = re.search(r"greedy `compositional` captions are then (\d\.\d+ \(\d\.\d+–\d\.\d+\)) "
                      r"over seeds 0–4, every seed above (\d\.\d+), against (\d\.\d+) at weight 1 "
                      r"and (\d\.\d+) for the free prefix of 8 with the same LMs; re-ranked by v, "
                      r"(\d\.\d+)", text).groups()
    greedy = lambda folder: [m["compositional"]["caption_exact_match"] for m in runs(folder)]
    check(found[0], greedy("reading/taps4_pulled"))
    assert min(greedy("reading/taps4_pulled")) > float(found[1])
    assert [found[2], found[3]] == [f"{np.mean(greedy(f)):.3f}"
                                    for f in ("spelling/weight1", "reading/recipe")]
    assert found[4] == f"{np.mean([m['compositional']['caption_exact_match_reranked'] for m in runs('reading/taps4_pulled')]):.3f}"
    assert [m["run"]["config"]["lm"]["taps"] for m in runs("reading/recipe")] == [4] * 5
    five = re.search(r"five-tap LMs, aligned for 600 steps, caption them (\d\.\d+ \(\d\.\d+–\d\.\d+\)), re-ranked "
                     r"(\d\.\d+)", text).groups()
    check(five[0], greedy("locked"))
    assert five[1] == f"{np.mean([m['compositional']['caption_exact_match_reranked'] for m in runs('locked')]):.3f}"


def test_the_six_taps_pulled_at_16_are_the_stored_runs():
    """design.md, "Reading its context": the 6-tap LMs aligned as the default is
    (runs/reading/taps6_pulled) against the 4-tap LMs (runs/reading/taps4_pulled)."""
    text = " ".join((ROOT / "tutorials" / "design.md").read_text(encoding="utf-8").split())
    six, four = runs("reading/taps6_pulled"), runs("reading/taps4_pulled")
    assert {(m["run"]["config"]["lm"]["taps"], m["run"]["config"]["align"]["spelling"])
            for m in six} == {(6, 16.0)}
    number = r"([0-9.]+ \([0-9.]+–[0-9.]+\))"
    found = re.search(rf"object {number} and {number} against (\d\.\d+) and (\d\.\d+), an absent "
                      rf"pair denied (\d\.\d+) against (\d\.\d+); `compositional` captions {number} "
                      rf"against {number}; paraphrase retrieval, text to image, (\d\.\d+) against "
                      rf"(\d\.\d+); from the true caption, position (\d\.\d+) and count (\d\.\d+) "
                      rf"against (\d\.\d+) and (\d\.\d+)", text).groups()
    columns = [("test", "vqa_acc_colour_first"), ("test", "vqa_acc_colour_second")] * 2 + [
        ("test", "vqa_acc_exists_absent")] * 2 + [("compositional", "caption_exact_match")] * 2 + [
        ("paraphrase", "text_to_image_R@1")] * 2 + [("test", "vqa_text_acc_position"),
                                                   ("test", "vqa_text_acc_count")] * 2
    ran = [six, six, four, four, six, four, six, four, six, four, six, six, four, four]
    for cell, (split, key), stored in zip(found, columns, ran, strict=True):
        values = [m[split][key] for m in stored]
        if "(" in cell:
            check(cell, values)
        else:  # a mean alone
            assert cell == f"{np.mean(values):.{len(cell.split('.')[1])}f}", (cell, key)


def test_the_five_taps_pulled_at_16_are_the_stored_runs():
    """design.md, "Reading its context": the 5-tap LMs aligned as the default is
    (runs/reading/taps5_pulled) against the 4-tap LMs (runs/reading/taps4_pulled), each figure as
    written."""
    text = " ".join((ROOT / "tutorials" / "design.md").read_text(encoding="utf-8").split())
    text = text.split("Five taps alone, the same way")[1].split("A fifth tap alone")[0]
    five, four = runs("reading/taps5_pulled"), runs("reading/taps4_pulled")
    assert [m["run"]["config"]["lm"]["taps"] for m in five] == [5] * 5
    assert [m["run"]["config"]["seed"] for m in five] == [0, 1, 2, 3, 4]

    def cell(values):
        mean, low, high = (f"{x:.2f}" for x in (np.mean(values), min(values), max(values)))
        return mean if mean == low == high else f"{mean} ({low}–{high})"

    def both(split, key):
        return cell([m[split][key] for m in five]), f"{np.mean([m[split][key] for m in four]):.2f}"

    binding = [both("test", f"binding_acc_{k}") for k in ("2way_1shot", "2way_2shot", "5way_1shot")]
    assert (f"rises to {binding[0][0]} 2-way 1-shot, {binding[1][0]} 2-shot and {binding[2][0]} "
            f"5-way, against {binding[0][1]}, {binding[1][1]} and {binding[2][1]}") in text
    described = [both("test", f"binding_text_acc_{k}")[0] for k in ("2way_1shot", "5way_1shot")]
    assert f"from descriptions to {described[0]} and {described[1]};" in text
    position = both("test", "vqa_acc_position")
    assert f"position after the image to {position[0]} against {position[1]}" in text
    first, second = both("test", "vqa_acc_colour_first"), both("test", "vqa_acc_colour_second")
    absent, told = both("test", "vqa_acc_exists_absent"), both("test", "vqa_text_acc_exists_absent")
    assert (f"object {first[0]} and {second[0]} against {first[1]} and {second[1]}, an absent pair "
            f"denied {absent[0]} against {absent[1]}, and from the true caption {told[0]} against "
            f"{told[1]}") in text
    paraphrase = both("paraphrase", "text_to_image_R@1")
    assert f"text to image, {paraphrase[0]} against {paraphrase[1]}" in text
    captions = {f"{np.mean([m['compositional']['caption_exact_match'] for m in ran]):.2f}"
                for ran in (five, four)}
    assert len(captions) == 1 and f"captions stay ({captions.pop()})" in text


def test_five_taps_with_absent_pairs_from_the_line_are_the_stored_runs():
    """design.md, "Reading its context": the default LM, 5 taps and the lookup documents' absent
    pairs drawn from the line, aligned 300 steps as the 4-tap LMs were (runs/reading/taps5_line),
    each figure as written, against the 4-tap LMs' means (runs/reading/taps4_pulled)."""
    text = " ".join((ROOT / "tutorials" / "design.md").read_text(encoding="utf-8").split())
    text = text.split("Five taps with the lookup documents' absent pairs")[1].split("Six taps")[0]
    line, four = runs("reading/taps5_line"), runs("reading/taps4_pulled")
    assert [m["run"]["config"]["lm"]["taps"] for m in line] == [5] * 5
    assert [m["run"]["config"]["seed"] for m in line] == [0, 1, 2, 3, 4]

    def cell(split, key):
        values = [m[split][key] for m in line]
        mean, low, high = (f"{x:.2f}" for x in (np.mean(values), min(values), max(values)))
        return mean if mean == low == high else f"{mean} ({low}–{high})"

    default = lambda split, key: f"{np.mean([m[split][key] for m in four]):.2f}"
    expected = [
        f"names from images {cell('test', 'binding_acc_2way_1shot')} 2-way 1-shot and "
        f"{cell('test', 'binding_acc_5way_1shot')} 5-way",
        f"from the true caption the second object's colour "
        f"{cell('test', 'vqa_text_acc_colour_second')} and the absent pair "
        f"{cell('test', 'vqa_text_acc_exists_absent')}",
        f"own caption {cell('test', 'vqa_describe_acc_colour_second')} and "
        f"{cell('test', 'vqa_describe_acc_exists_absent')}",
        f"the first object's colour {cell('test', 'vqa_acc_colour_first')} and the absent pair "
        f"{cell('test', 'vqa_acc_exists_absent')}",
        f"`compositional` captions {cell('compositional', 'caption_exact_match')}",
        f"straight after the image, {cell('test', 'vqa_acc_colour_second')} against "
        f"{default('test', 'vqa_acc_colour_second')}",
        f"image to text {cell('paraphrase', 'image_to_text_R@1')} against "
        f"{default('paraphrase', 'image_to_text_R@1')}",
        f"text to image {cell('paraphrase', 'text_to_image_R@1')} against "
        f"{default('paraphrase', 'text_to_image_R@1')}"]
    for phrase in expected:
        assert phrase in text, phrase


def test_six_taps_with_absent_pairs_from_the_line_are_the_stored_runs():
    """design.md: the same lookup documents with 6 taps (runs/reading/taps6_line)."""
    text = " ".join((ROOT / "tutorials" / "design.md").read_text(encoding="utf-8").split())
    text = text.split("Six taps with the same lookup documents")[1].split("Five taps it is")[0]
    six = runs("reading/taps6_line")
    assert [m["run"]["config"]["lm"]["taps"] for m in six] == [6] * 5
    assert [m["run"]["config"]["seed"] for m in six] == [0, 1, 2, 3, 4]
    found = re.findall(r"\d\.\d\d \(\d\.\d\d–\d\.\d\d\)", text)
    keys = ["binding_acc_5way_1shot", "vqa_acc_colour_first", "vqa_acc_exists_absent",
            "vqa_acc_position", "vqa_text_acc_colour_second"]
    assert len(found) == len(keys)
    for cell, key in zip(found, keys):
        check(cell, [m["test"][key] for m in six])


def test_the_readmes_reading_tables_are_the_benchmark_and_the_default_runs():
    """README, "Does the frozen LM read what it is shown?": the first table is what lm_reading.py
    printed for the plain LMs (runs/reading/default.json) and for the LMs of the default runs
    (runs/reading/locked.json), the second the default runs' VQA by object."""
    heading = "Does the frozen LM read what it is shown?"
    rows = table_rows(heading)
    keys = ["copy", "names_2way", "names_5way", "colour_first", "colour_second", "exists_absent"]
    for first, name in {"plain LM": "default", "default": "locked"}.items():
        bench = json.loads((RUNS / "reading" / f"{name}.json").read_text())
        assert sorted(bench) == ["0", "1", "2", "3", "4"]
        for cell, key in zip(rows[first], keys, strict=True):
            check(cell, [bench[seed][key] for seed in bench])
    locked = runs("locked")
    for row, prefix in {"image": "vqa_acc", "own caption": "vqa_describe_acc",
                        "true caption": "vqa_text_acc"}.items():
        for cell, kind in zip(rows[row], ["colour_first", "colour_second", "exists_absent"],
                              strict=True):
            check(cell, [m["test"][f"{prefix}_{kind}"] for m in locked])
    described = {name: [f"{np.mean([m['test'][f'vqa_describe_acc_{kind}'] for m in runs(name)]):.2f}"
                        for kind in ("colour", "shape", "exists")]
                 for name in ("reading/recipe", "reading/default")}
    (colour, shape, exists), plain = described["reading/recipe"], described["reading/default"]
    results = " ".join((ROOT / "tutorials" / "results.md").read_text(encoding="utf-8").split())
    assert f"colour {colour}, shape {shape} and `exists` {exists}, against {plain[0]}, " \
           f"{plain[1]} and {plain[2]} for the plain LM" in results


def seeds(*towers):
    return [path for tower in towers for path in sorted((RUNS / tower).glob("seed*.json"))]


@pytest.mark.parametrize("section, block, towers", [
    ("## The shapes world, every setting", 3, ["locked"]),
    ("## The plain LM, every setting", 3, ["plain"]),
    ("## A second world: glyphs", 3, ["glyphs", "glyphs_random"]),
    ("## A second world: glyphs", 5, ["glyphs"])])
def test_the_full_tables_of_the_results_page_are_what_compare_prints_for_the_runs(section, block,
                                                                                    towers):
    page = (ROOT / "tutorials" / "results.md").read_text(encoding="utf-8")
    lines = page.split(section)[1].split("```")[block].strip("\n").splitlines()
    printed = {line.rstrip() for line in compare(seeds(*towers)).splitlines()}
    assert len(lines) > 2 and [line for line in lines if line.rstrip() not in printed] == []


# design.md's choices tables, one a subsection: a row's first cell names the flag; its runs, and
# the one setting of the run's config in which they differ from the default run of the same seed
# (the table's first row), with its value
CHOICES = {
    "### Around the plain LM": {
        "plain LM": ("plain", ("align", "question_rows"), 32),
        "`--question-rows 0`": ("choices/q0", ("align", "question_rows"), 0),
        "`--prefix-tokens 4`": ("choices/k4", ("align", "prefix_tokens"), 4),
        "`--objective prefix`": ("choices/prefix", ("objective",), "prefix"),
        "`--objective contrastive`": ("choices/contrastive", ("objective",), "contrastive")},
    "### Before the teacher: K = 4, captioning alone": {
        "default then": ("choices_k4/default", ("align", "prefix_tokens"), 4),
        "`--prefix-tokens 2`": ("choices_k4/k2", ("align", "prefix_tokens"), 2),
        "`--prefix-tokens 8`": ("choices_k4/k8", ("align", "prefix_tokens"), 8),
        "`--prefix-tokens 16`": ("choices_k4/k16", ("align", "prefix_tokens"), 16),
        "`--objective prefix`": ("choices_k4/prefix", ("objective",), "prefix"),
        "`--objective contrastive`": ("choices_k4/contrastive", ("objective",), "contrastive"),
        "`--lm-depth 4`": ("choices_k4/depth4", ("lm", "depth"), 4)}}


@pytest.mark.parametrize("heading", CHOICES)
def test_the_design_choices_tables_are_the_stored_runs(heading):
    page = (ROOT / "tutorials" / "design.md").read_text(encoding="utf-8")
    section = page.split(f"{heading}\n")[1].split("\n#")[0]
    choices = CHOICES[heading]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0].split(":")[0] in choices:
            rows[cells[0].split(":")[0]] = cells[1:]
    assert set(rows) == set(choices)
    default_folder = next(iter(choices.values()))[0]
    defaults = {m["run"]["config"]["seed"]: m["run"]["config"] for m in runs(default_folder)}
    columns = [("test", ["image_to_text_R@1"]), ("paraphrase", ["image_to_text_R@1"]),
               ("test", ["caption_exact_match"]), ("compositional", ["caption_exact_match"]),
               ("test", [f"vqa_acc_{kind}" for kind in KINDS]),
               ("test", [f"vqa_describe_acc_{kind}" for kind in KINDS]),
               ("test", [f"vqa_text_acc_{kind}" for kind in KINDS])]
    for choice, cells in rows.items():
        folder, setting, value = choices[choice]
        stored = [m for m in runs(folder) if m["run"]["config"]["seed"] in (0, 1, 2)]
        assert [m["run"]["config"]["seed"] for m in stored] == [0, 1, 2]
        for m in stored:
            config = m["run"]["config"]
            assert functools.reduce(dict.get, setting, config) == value, choice
            ours, default = flat(config), flat(defaults[config["seed"]])
            differ = {key for key in ours.keys() | default.keys()
                      if ours.get(key) != default.get(key)}
            # lm_checkpoint: a run may reuse the default run's LM (the same LM, pretrained once)
            assert differ - {"lm_checkpoint"} <= {".".join(setting)}, (choice, differ)
        assert len(cells) == len(columns)
        for (split, keys), cell in zip(columns, cells):
            if cell == "–":  # the run does not report it: its objective skips those rows
                assert all(keys[0] not in m[split] for m in stored)
            else:
                check(cell, [mean_of(m, split, keys) for m in stored])


def test_the_new_pairs_table_is_the_stored_benchmark():
    """results.md's per-pair table against what compositional_pairs.py wrote for the default runs
    (runs/locked/pairs.json) and for the plain LM's reruns (runs/reranked/pairs.json)."""
    stored = json.loads((RUNS / "locked" / "pairs.json").read_text())
    plain = json.loads((RUNS / "reranked" / "pairs.json").read_text())
    page = (ROOT / "tutorials" / "results.md").read_text(encoding="utf-8")
    rows = table_rows("Captions of new pairs", page)
    assert set(rows) - {"pair, objects in the scene"} == set(stored) == set(plain)
    for pair, counts in stored.items():
        images, greedy, reranked, *missed, plain_greedy, plain_reranked = rows[pair]
        assert int(images) == counts["images"] == plain[pair]["images"]
        for cell, ran, key in [(greedy, counts, "greedy"), (reranked, counts, "reranked"),
                               (plain_greedy, plain[pair], "greedy"),
                               (plain_reranked, plain[pair], "reranked")]:
            assert float(cell) == round(ran[key] / ran["images"], 3), (pair, key)
        assert [int(n) for n in missed] == [counts.get(name, 0) for name in MISSES]
    glyphs = json.loads((RUNS / "reranked" / "glyphs_seed2.json").read_text())["compositional"]
    assert f"pairs at {glyphs['caption_exact_match']:.3f}" in " ".join(page.split())
    assert glyphs["caption_exact_match_reranked"] == glyphs["caption_exact_match"]  # "alike"


def test_the_prefixes_tried_are_the_stored_probes():
    """design.md's table of prefixes tried for new pairs, and the swap's seeds 1 and 2 in its
    text, against the probes' metrics.json files (the default's seeds 1 and 2: the reruns)."""
    page = (ROOT / "tutorials" / "design.md").read_text(encoding="utf-8")
    section = page.split("**Captions of new pairs.**")[1].split("\n## ")[0]
    probe = lambda name: json.loads((RUNS / "prefixes" / f"{name}.json").read_text())
    files = {"the default: ": "default", "K learned queries": "queries",
             "the default plus": "default_plus_queries", "one vector per grid cell": "cells",
             "from the pooled feature and v": "pooled_and_v", "from v alone": "v_alone",
             "the default, each colour word": "swap_seed0"}
    rows = [line.strip("|").split("|") for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| prefix")]
    assert len(rows) == len(files)
    for first, *cells in rows:
        metrics = probe(next(name for start, name in files.items() if first.strip().startswith(start)))
        assert [float(cell) for cell in cells] == [
            round(metrics["test"]["caption_exact_match"], 3),
            round(metrics["compositional"]["caption_exact_match"], 3),
            round(metrics["compositional"]["caption_exact_match_reranked"], 3)], first
    text = " ".join(section.split())
    default = {m["run"]["config"]["seed"]: m["compositional"] for m in runs("reranked")}
    swapped = {seed: probe(f"swap_seed{seed}")["compositional"] for seed in (1, 2)}
    key, reranked = "caption_exact_match", "caption_exact_match_reranked"
    assert (f"from {default[1][key]:.3f} to {swapped[1][key]:.3f} and from {default[2][key]:.3f} "
            f"to {swapped[2][key]:.3f} (re-ranked {swapped[1][reranked]:.3f} and "
            f"{swapped[2][reranked]:.3f}, against {default[1][reranked]:.3f} and "
            f"{default[2][reranked]:.3f})") in text


def test_the_glyph_worlds_default_table_is_the_stored_runs():
    """results.md, glyphs: seeds 0-2 of the default (runs/glyphs_default), seed 0 of the plain LM."""
    page = (ROOT / "tutorials" / "results.md").read_text(encoding="utf-8")
    rows = table_rows("A second world: glyphs", page)
    kinds = ["colour", "letter", "background", "size", "exists"]
    labelled = {f"default, seed {seed}": ("glyphs_default", seed) for seed in (0, 1, 2)}
    labelled["plain LM, seed 0"] = ("glyphs", 0)
    for label, (folder, seed) in labelled.items():
        m = next(m for m in runs(folder) if m["run"]["config"]["seed"] == seed)
        values = [m["test"]["caption_exact_match"], m["compositional"]["caption_exact_match"]]
        values += [m["test"][f"vqa_acc_{kind}"] for kind in kinds]
        values += [m["test"]["vqa_text_acc_colour"], m["test"]["vqa_text_acc_letter"]]
        assert rows[label] == [f"{value:.3f}" for value in values], label
    assert {(m["run"]["config"]["world"]["dataset"], m["run"]["config"]["lm"]["taps"],
             m["run"]["config"]["align"]["spelling"]) for m in runs("glyphs_default")} == \
        {("glyphs", 5, 16.0)}
    comp = [m["compositional"]["caption_exact_match"] for m in runs("glyphs_default")]
    text = " ".join(page.split("## A second world: glyphs")[1].split())
    check(re.search(r"Captions of held-out pairs: (\d\.\d+ \(\d\.\d+–\d\.\d+\))", text)[1], comp)


def test_the_digits_table_is_the_stored_evaluations():
    page = (ROOT / "tutorials" / "results.md").read_text(encoding="utf-8")
    rows = {}
    for line in page.split("## Real scans: handwritten digits")[1].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| pretrained") or line.startswith("| random"):
            rows["digits" if cells[0].startswith("pretrained") else "digits_random"] = cells[1:]
    assert set(rows) == {"digits", "digits_random"}
    for run, cells in rows.items():
        val = json.loads((RUNS / run / "eval_val.json").read_text())["val"]
        numerals = json.loads((RUNS / run / "eval_numerals.json").read_text())["val_numerals"]
        values = [val["image_to_text_R@1"], val["zeroshot_acc"], val["caption_exact_match"],
                  numerals["image_to_text_R@1"], numerals["text_to_image_R@1"]]
        for cell, value in zip(cells, values):
            check(cell, [value])


def test_the_reading_recipes_probes_are_the_stored_ones():
    """design.md, "Reading its context": the probe table and the initialisation probes in its
    text, against tutorials/runs/reading/probes.json (what lm_reading.py printed for each probe)."""
    page = (ROOT / "tutorials" / "design.md").read_text(encoding="utf-8")
    rows = table_rows("Reading its context: copying and binding, the reading recipe", page)
    probes = json.loads((RUNS / "reading" / "probes.json").read_text())
    del rows["probe"]
    assert set(rows) <= set(probes) and len(rows) == 23
    two = lambda probe, key: f"{probe[f'{key}_first']:.2f} / {probe[f'{key}_second']:.2f}"
    for first, cells in rows.items():
        probe = probes[first]
        assert cells == [f"{probe['copy']:.2f}", f"{probe['names_2way']:.2f}", two(probe, "colour"),
                         two(probe, "shape"), f"{probe['exists_absent']:.2f}"], first
    text = " ".join(page.split())
    for first in set(probes) - set(rows):              # the N(0, 1/fan-in) probes
        assert two(probes[first], "colour") in text, first


def test_the_prefix_timing_table_is_the_stored_runs():
    """speed.md: the prefix's cost, against runs/timing/prefix_*.json (the 16 spelled vectors'
    run is the stored default seed 0, number for number)."""
    page = (ROOT / "tutorials" / "speed.md").read_text(encoding="utf-8")
    rows = table_rows("What the prefix costs", "## What the prefix costs\n" +
                      page.split("What the prefix costs")[1].split("\n\n", 2)[1])
    timed = [json.loads((RUNS / "timing" / f"prefix_{name}.json").read_text())
             for name in ("spelled16", "free8")]
    assert [(m["run"]["config"]["align"]["prefix_tokens"], m["run"]["config"]["align"]["spelling"])
            for m in timed] == [(16, 16.0), (8, 0.0)]
    for row, key in {"alignment": "align_seconds", "evaluation": "evaluation_seconds",
                     "whole run, the LM read from its file": "wall_seconds"}.items():
        assert rows[row] == [f"{m['run'][key]:.1f} s" for m in timed], row
    default = next(m for m in runs("locked") if m["run"]["config"]["seed"] == 0)
    for split in ("test", "compositional", "paraphrase"):
        assert timed[0][split] == default[split]


def test_why_a_solved_example_hurts_is_the_stored_benchmark():
    """results.md, "Why a solved example hurts": what fewshot_position.py wrote for the default's
    five runs (runs/reading/fewshot_position.json)."""
    page = (ROOT / "tutorials" / "results.md").read_text(encoding="utf-8")
    stored = json.loads((RUNS / "reading" / "fewshot_position.json").read_text())
    section = page.split("**Why a solved example hurts.**")[1].split("\n## ")[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")[1:]]
            for line in section.splitlines() if re.match(r"\| \d \|", line)}
    assert sorted(rows) == sorted(stored) == ["0", "1", "2", "3", "4"]
    pair = lambda r, name, k: " / ".join(f"{r[f'{name} example ({a}) first'][k]:.2f}" for a in ("one", "two"))
    for seed, r in stored.items():
        assert rows[seed] == [f"{r['image alone'][0]:.2f}", pair(r, "image", 0), pair(r, "text", 0),
                              pair(r, "short", 0), pair(r, "image", 2), pair(r, "short", 2)], seed
        assert {r[name][3] for name in r if name.startswith("image example")} <= {59, 60}
        assert {r[name][3] for name in r if name.startswith("short example")} <= set(range(50, 55))
    copied = {seed: max(r[f"{form} example ({a}) first"][2] for a in ("one", "two")
                        for form in ("image", "short")) for seed, r in stored.items()}  # a seed's most
    every = [seed for seed, share in copied.items() if f"{share:.2f}" == "1.00"]
    rest = [seed for seed in copied if seed not in every]
    text = " ".join(section.split())
    assert f"In seeds {', '.join(every[:-1])} and {every[-1]} one of the two examples is copied " \
           f"into every answer (1.00" in text
    assert f"Seeds {' and '.join(rest)} copy less (at most " \
           f"{' and '.join(f'{copied[seed]:.2f}' for seed in rest)})" in text
    alone = stored["0"]["image alone"]
    assert f"({alone[0]:.2f} after the image alone, where it runs its words on: ended as a word " \
           f"{alone[1]:.2f})" in text


def test_the_reading_tables_pulled_and_default_rows_are_the_stored_runs():
    """results.md, "Reading by object": the 4-tap LMs with the prefix pulled at 16
    (runs/reading/taps4_pulled) and the default (runs/locked), after the image and after the true
    caption."""
    rows = table_rows("Reading by object",
                      (ROOT / "tutorials" / "results.md").read_text(encoding="utf-8"))
    kinds = ["colour_first", "colour_second", "shape_first", "shape_second", "exists_first",
             "exists_second", "exists_absent"]
    for row, (folder, prefix) in {"4 taps, pulled at 16: image": ("reading/taps4_pulled", "vqa_acc"),
                                  "default: image": ("locked", "vqa_acc"),
                                  "default: true caption": ("locked", "vqa_text_acc")}.items():
        for kind, cell in zip(kinds, rows[row], strict=True):
            check(cell, [m["test"][f"{prefix}_{kind}"] for m in runs(folder)])


def test_how_long_to_align_is_the_stored_runs():
    """design.md, "How long to align": seed 2's probes (runs/reading/align_probes/) and the five
    seeds at 600 steps (runs/locked) against 300 (runs/reading/taps5_line), the same LMs."""
    page = (ROOT / "tutorials" / "design.md").read_text(encoding="utf-8")
    text = " ".join(page.split("**How long to align.**")[1].split("\n**")[0].split())
    long, short = runs("locked"), runs("reading/taps5_line")
    assert [m["run"]["config"]["align"]["steps"] for m in long + short] == [600] * 5 + [300] * 5
    assert [m["run"]["lm_held_out_loss"] for m in long] == [m["run"]["lm_held_out_loss"] for m in short]
    probe = lambda name: json.loads((RUNS / "reading" / "align_probes" / f"seed2_{name}.json").read_text())
    weight64, rows128 = probe("spelling64"), probe("question_rows128")
    seed2 = lambda ran: next(m for m in ran if m["run"]["config"]["seed"] == 2)
    assert (weight64["run"]["config"]["align"]["spelling"], rows128["run"]["config"]["align"]["question_rows"]) == (64.0, 128)
    second = lambda m: f"{m['test']['vqa_acc_colour_second']:.2f}"
    assert (f"Seed 2 ({second(seed2(short))}), one change at a time against the same LM "
            f"(`runs/reading/align_probes/`): the pull at weight 64, {second(weight64)}; 128 images "
            f"asked a step (`--question-rows 128`), {second(rows128)}, alignment "
            f"{rows128['run']['align_seconds']:.0f} s against {seed2(short)['run']['align_seconds']:.0f}"
            f" s; 600 steps, {second(seed2(long))}.") in text
    mean = lambda ran, split, key, d=2: f"{np.mean([m[split][key] for m in ran]):.{d}f}"
    number = r"(\d\.\d+ \(\d\.\d+–\d\.\d+\))"
    cells = re.search(rf"colour of the first and the second object {number} and {number} against "
                      rf"(\S+) and (\S+), an absent pair denied {number} against (\S+), "
                      rf"`compositional` captions {number} against (\S+); paraphrase retrieval, "
                      rf"text to image, (\S+) against (\S+)\.", text).groups()
    for cell, key in zip(cells[:2], ["vqa_acc_colour_first", "vqa_acc_colour_second"]):
        check(cell, [m["test"][key] for m in long])
    assert list(cells[2:4]) == [mean(short, "test", "vqa_acc_colour_first"),
                                mean(short, "test", "vqa_acc_colour_second")]
    check(cells[4], [m["test"]["vqa_acc_exists_absent"] for m in long])
    assert cells[5] == mean(short, "test", "vqa_acc_exists_absent")
    check(cells[6], [m["compositional"]["caption_exact_match"] for m in long])
    assert cells[7] == mean(short, "compositional", "caption_exact_match", 3)
    assert [cells[8], cells[9]] == [mean(ran, "paraphrase", "text_to_image_R@1", 3) for ran in (long, short)]
    seconds = lambda ran: f"{min(m['run']['align_seconds'] for m in ran):.0f} to " \
                          f"{max(m['run']['align_seconds'] for m in ran):.0f} s"
    assert f"It costs {seconds(long)} of alignment against {seconds(short)[:-2]} s." in text
