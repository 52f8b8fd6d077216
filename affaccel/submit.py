"""``python -m affaccel.submit``: the ABAW test-set submission, and its checker.

Build::

    python -m affaccel.submit --bundle B [--bundle B2 ...] --data-root D --out DIR [--tasks va,expr,au] [--zip]

one file per task (``<sample file name with sample -> predictions>``: header, the sample file's
rows in order, a valid value on every row), several bundles (one per fold) averaged before the
decision; ``--zip`` adds ``DIR/abaw_submission.zip``. Check::

    python -m affaccel.submit --check DIR_OR_ZIP --data-root D

verifies every submission file present against the sample files and names the first offending
line of each. Exit codes: 0 done / all files pass; 1 a file fails the check, or the run failed;
2 bad arguments or inputs (found before any heavy work). The library: ``affaccel.stages.submission``
(building) and ``affaccel.inference.abaw`` (the format and the checker).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from affaccel.data.layout import add_data_arguments, data_arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m affaccel.submit", description=(
        "Write the ABAW test-set submission files from model bundles, or --check a submission."))
    p.add_argument("--bundle", action="append", type=Path, default=[],
                   help="model bundle written by affaccel.train (repeat: one per fold; averaged)")
    add_data_arguments(p, default_help="required: the dataset whose test set is submitted")
    p.add_argument("--out", type=Path, help="output folder of the submission files")
    p.add_argument("--tasks", default=None, help="comma-separated subset of va,expr,au (default: every "
                                                 "task of the bundles)")
    p.add_argument("--zip", action="store_true", help="also write <out>/abaw_submission.zip")
    p.add_argument("--check", type=Path, metavar="DIR", help="check the submission in DIR (or a zip) "
                                                             "against the sample files instead of building one")
    p.add_argument("--device", default="auto", help="auto / cpu / cuda[:N]")
    p.add_argument("--batch-size", type=int, default=None, help="frames per encoder batch (feature extraction)")
    p.add_argument("--cache-root", type=Path, default=None, help="feature cache (default: $AFFACCEL_HOME/features)")
    p.add_argument("--frames-backend", choices=("auto", "dali", "pil"), default="auto",
                   help="frame image decoder for the test videos' features")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _argument_problem(args) -> str | None:
    if args.data_root is None and args.annotations is None:
        return "give the dataset: --data-root D (or --annotations A --frames F)"
    if args.check is not None:
        extra = [f for f, v in (("--bundle", args.bundle), ("--out", args.out), ("--zip", args.zip)) if v]
        return f"--check takes no {', '.join(extra)}" if extra else None
    if not args.bundle or args.out is None:
        return "give --bundle B (once per bundle) and --out DIR, or --check DIR"
    if args.batch_size is not None and args.batch_size < 1:
        return f"--batch-size must be >= 1, got {args.batch_size}"
    missing = [str(b) for b in args.bundle if not b.is_file()]
    if missing:
        return f"--bundle {missing[0]}: no such file (a bundle written by python -m affaccel.train)"
    if args.out.exists() and not args.out.is_dir():
        return f"--out {args.out} exists and is not a folder"
    return None


def check(args, data: dict) -> int:
    from affaccel.inference.abaw import check_submission
    from affaccel.stages.submission import load_samples, parse_tasks

    try:
        report = check_submission(args.check, load_samples(data, parse_tasks(args.tasks)))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, task, rows, err in report.results:
        print(f"ok    {name} ({task}, {rows} rows)" if err is None else f"FAIL  {err}")
    for note in report.notes:
        print(f"note  {note}")
    if report.problem:
        print(f"FAIL  {report.problem}")
    print("submission passes the check" if report.ok else "submission fails the check")
    return 0 if report.ok else 1


def submit(args, data: dict) -> int:
    from affaccel.device import resolve_device
    from affaccel.stages import submission

    try:
        resolve_device(args.device)
        plan = submission.plan_submission(args.bundle, data, submission.parse_tasks(args.tasks))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        summary = submission.run_submission(plan, args.out, device=args.device, cache_root=args.cache_root,
                                            batch_size=args.batch_size, backend=args.frames_backend,
                                            make_zip=args.zip, progress=not args.quiet)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for task, s in summary["tasks"].items():
        print(f"{task}: {args.out / s['file']} ({s['rows']} rows of {s['videos']} videos; "
              f"{s['rows_without_image']} without image took the nearest frame's prediction; "
              f"mean of {len(s['bundles'])} bundle(s))")
    if summary["zip"]:
        print(f"upload: {summary['zip']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = _argument_problem(args)
    if problem is None:
        try:
            data = data_arguments(args)
        except ValueError as e:
            problem = str(e)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return check(args, data) if args.check is not None else submit(args, data)


if __name__ == "__main__":
    sys.exit(main())
