"""Autograder for the minivlp assignments.

    python tutorials/assignments/grade.py                 # every exercise, files in this folder
    python tutorials/assignments/grade.py --exercise 6    # one exercise (repeat the flag for more)
    python tutorials/assignments/grade.py --dir PATH      # a student's copies of the exNN files
    python tutorials/assignments/grade.py --json PATH     # also write Gradescope's results.json
    python tutorials/assignments/grade.py --seed 7 -v     # replay a run; list passed checks too

The checks live in checks.py, one section per exercise. They draw fresh random inputs (a new seed
each run, printed so that a run can be replayed) and compare the student's functions with
references worked out there. A check earns its points or none; a failed check prints one line
saying why.

Each exercise runs in a process of its own, and each check under a time limit, so whatever a
student's file does (a syntax error, an exception, NaN, an endless loop, exiting the interpreter)
costs that file's points with a one-line reason, never a traceback: grading always runs to the
end and exits with status 0.
"""

import argparse
import contextlib
import importlib.util
import io
import json
import multiprocessing
import os
import random
import sys
import traceback
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from checks import EXERCISES, Mismatch  # noqa: E402

NOT_WRITTEN = "not written yet (the body still raises NotImplementedError)"
TIME_LIMIT = 30.0   # seconds a check may take unless it says otherwise; tiny inputs need far less
# fork starts a child that already holds the loaded modules (and the tests' answer keys); where
# there is none (Windows), checks run in this process, without time limits
FORK = (multiprocessing.get_context("fork")
        if "fork" in multiprocessing.get_all_start_methods() else None)


# ------------------------------------------------------------------------------------------------
# Loading a student's files.
# ------------------------------------------------------------------------------------------------

def load_student(ex, source):
    """The functions exercise `ex` grades, as a namespace, or a str saying why they are missing.

    source: a folder holding the student's files, or {exercise number: namespace or reason}."""
    if not isinstance(source, (str, Path)):
        return source.get(ex.number, f"no functions given for exercise {ex.number}")
    functions = {}
    for file, names in ex.files.items():
        path = Path(source) / file
        if not path.is_file():
            return f"{file} not found in {source}"
        spec = importlib.util.spec_from_file_location(f"student_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as error:  # a syntax error, a sys.exit, a failed import
            return f"{file} could not be imported: {describe(error)}"
        for name in names:
            if not callable(getattr(module, name, None)):
                return f"{file} defines no function {name}"
            functions[name] = getattr(module, name)
    return SimpleNamespace(**functions)


def describe(error):
    """An exception as one line, with the student's file and line where it was raised."""
    if isinstance(error, NotImplementedError):
        return NOT_WRITTEN
    if isinstance(error, Mismatch):
        return str(error)
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0][:200] if lines else ''}".rstrip(": ")
    if isinstance(error, SyntaxError) and error.lineno:
        return f"{text} (line {error.lineno})"
    student_files = {file for ex in EXERCISES.values() for file in ex.files}
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if Path(frame.filename).name in student_files]
    if frames:
        text += f" ({Path(frames[-1].filename).name} line {frames[-1].lineno})"
    return text


# ------------------------------------------------------------------------------------------------
# Running the checks: in a child process, each check under a time limit.
# ------------------------------------------------------------------------------------------------

def run_checks(ex, student, seed, first):
    """Run checks first, first + 1, ... of `ex` on the student's functions (or the reason they
    did not load); yields (score, reason or note) for each, in order."""
    for number in range(first, len(ex.checks)):
        check = ex.checks[number]
        if isinstance(student, str):                                    # the file did not load
            yield 0, student
            continue
        g = torch.Generator().manual_seed(seed * 1000 + ex.number * 100 + number)
        try:
            # the check's own randomness is seeded; enable_grad undoes a student's no_grad
            with torch.random.fork_rng(devices=[]), torch.enable_grad():
                torch.manual_seed(seed)
                note = check.run(student, g)
            yield check.points, note or ""
        except (Exception, SystemExit) as error:  # a Mismatch, or what the student's code raised
            yield 0, describe(error)


def send_outcomes(ex, source, seed, first, sender):
    """A child process's work: the outcomes of run_checks, one message each, to the parent."""
    torch.set_num_threads(1)  # tensors here are tiny: more threads only wait on each other
    warnings.simplefilter("ignore")
    quiet = io.StringIO()     # what the student's code prints would break the report's lines
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            student = load_student(ex, source)
            sender.send("loaded")
            for outcome in run_checks(ex, student, seed, first):
                sender.send(outcome)
    except BaseException:     # raised past every check (KeyboardInterrupt, ...): the parent says so
        os._exit(1)
    sender.close()


def grade_exercise(ex, source, seed, time_limit=TIME_LIMIT):
    """[(check, score, reason or note)] for every check of `ex`.

    A child process loads the student's files and runs the checks from the first without an
    outcome. If a check runs past its limit, or the child dies, that check scores 0 and a new
    child takes the next one (for an exercise whose checks share one run, the rest fail with it).
    Loading past the time limit fails every check."""
    if FORK is None:
        student = load_student(ex, source)
        return [(check, *outcome) for check, outcome in zip(ex.checks, run_checks(ex, student,
                                                                                  seed, 0))]
    outcomes = []
    while len(outcomes) < len(ex.checks):
        receiver, sender = FORK.Pipe(duplex=False)
        sys.stdout.flush()                          # else the child would print our buffer again
        child = FORK.Process(target=send_outcomes, args=(ex, source, seed, len(outcomes), sender),
                             daemon=True)
        child.start()
        sender.close()
        try:
            if not receiver.poll(time_limit):
                reason = (f"loading {', '.join(ex.files)} took over {time_limit:g} s "
                          f"(an endless loop?)")
                outcomes += [(c, 0, reason) for c in ex.checks[len(outcomes):]]
            else:
                receiver.recv()                     # "loaded"
            while len(outcomes) < len(ex.checks):
                check = ex.checks[len(outcomes)]
                limit = check.limit_s or time_limit
                if not receiver.poll(limit):
                    reason = f"stopped after {limit:g} s: an endless loop, or far too slow"
                    failed = ex.checks[len(outcomes):] if ex.one_run else [check]
                    outcomes += [(c, 0, reason) for c in failed]
                    break
                score, text = receiver.recv()
                outcomes.append((check, score, text))
        except EOFError:                            # the child ended without a word
            child.join(1)
            outcomes.append((ex.checks[len(outcomes)], 0,
                             f"the grading process ended inside your code (exit code "
                             f"{child.exitcode}): a crash, or os._exit"))
        finally:
            child.kill()
            child.join()
            receiver.close()
    return outcomes


def grade(source, seed, numbers=None, time_limit=TIME_LIMIT):
    """{exercise number: [(check, score, reason or note)]} for the exercises `numbers` (all by
    default). source: a folder of student files, or {number: namespace of functions}."""
    return {n: grade_exercise(EXERCISES[n], source, seed, time_limit)
            for n in sorted(set(numbers or EXERCISES))}


# ------------------------------------------------------------------------------------------------
# Reporting: text for people, results.json for course platforms.
# ------------------------------------------------------------------------------------------------

def report(results, verbose=False):
    """Print a score per exercise, one line per failed check (one in all if every check failed
    for the same reason), and the total."""
    for number, outcomes in results.items():
        ex = EXERCISES[number]
        score, points = sum(o[1] for o in outcomes), ex.points
        print(f"{number:>2}. {ex.title:<36} {score}/{points}")
        failed = [(check, reason) for check, got, reason in outcomes if got < check.points]
        if failed and len({reason for _, reason in failed}) == 1 and score == 0:
            print(f"    x {failed[0][1]}")
        else:
            for check, reason in failed:
                print(f"    x {check.description}: {reason}")
        if verbose:
            for check, got, note in outcomes:
                if got == check.points:
                    print(f"    ok {check.description}" + (f" ({note})" if note else ""))
    score = sum(o[1] for outcomes in results.values() for o in outcomes)
    points = sum(EXERCISES[number].points for number in results)
    print(f"{'total':<40} {score}/{points}")


def results_json(results, seed):
    """Gradescope's results.json: the score, and one test per check."""
    tests = [{"name": f"{number}.{i + 1} {check.description}", "score": got,
              "max_score": check.points, "output": text or "passed"}
             for number, outcomes in results.items()
             for i, (check, got, text) in enumerate(outcomes)]
    return {"score": sum(t["score"] for t in tests),
            "output": f"graded with seed {seed} (grade.py --seed {seed} replays it)",
            "tests": tests}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Grade the minivlp assignments on fresh random "
                                                 "inputs.")
    parser.add_argument("--exercise", type=int, action="append", choices=list(EXERCISES),
                        metavar="N", help="an exercise to grade, 1 to "
                                          f"{max(EXERCISES)} (repeatable; default: all)")
    parser.add_argument("--dir", default=str(HERE),
                        help="folder holding the student's exNN_*.py files (default: this folder)")
    parser.add_argument("--json", metavar="PATH", help="also write the results there as JSON "
                                                       "(Gradescope's results.json)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the random inputs (default: a new one each run)")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT, metavar="S",
                        help=f"seconds a check may take (default {TIME_LIMIT:g}); the checks "
                             f"of exercise 11 keep their own limits, up to "
                             f"{max(c.limit_s for c in EXERCISES[11].checks):g} s for the run")
    parser.add_argument("-v", "--verbose", action="store_true", help="list the passed checks too")
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")                # τ on a console without UTF-8
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    print(f"grading {args.dir} (seed {seed}: --seed {seed} replays these inputs)")
    results = grade(args.dir, seed, args.exercise, args.time_limit)
    report(results, args.verbose)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results_json(results, seed), indent=1,
                                              ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
