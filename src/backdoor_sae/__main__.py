"""Command line: ``python -m backdoor_sae run --profile cpu [-p NAME VALUE ...]``, then ``publish``.

``run`` executes the pipeline's notebooks in order with papermill into ``<run_dir>/executed``.
Every parameter is checked before any work starts (names, values, that some notebook reads it,
that the model can be loaded and has the layers); a stage whose notebook, parameters and upstream
stages are unchanged is skipped. ``publish`` copies a finished run's executed notebooks into the
book's ``executed/`` and its small results into ``results/``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from backdoor_sae.common.model import ModelUnavailableError, model_shape
from backdoor_sae.common.progress import duration
from backdoor_sae.config import ModelConfig, check_model_shape, stage_config, validate
from backdoor_sae.pipeline.publish import export
from backdoor_sae.pipeline.runner import (
    BOOK_EXECUTED_DIR,
    STAGE_NAMES,
    StageFailed,
    check_overrides_are_read,
    run_label,
    run_pipeline,
)
from backdoor_sae.pipeline.runner import publish as publish_notebooks


def parse_value(text: str):
    """Parse ``-p`` values as Python literals (numbers, lists, None, quoted strings); else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check_model(profile: str, overrides: dict) -> None:
    """The model can be had here, has the layers, and fits the dictionaries; from its config, in seconds."""
    n_layers, d_model = model_shape(stage_config(ModelConfig, profile, **overrides).model)
    check_model_shape(profile, n_layers, d_model, **overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="backdoor-sae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the pipeline's notebooks in order")
    run.add_argument("--profile", default="cpu", help="smoke | cpu | paper (default: cpu)")
    run.add_argument("--run-dir", type=Path, help="where the run's artifacts go (default: runs/<profile>)")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="override one parameter, as papermill spells it (repeatable)")
    which = run.add_mutually_exclusive_group()
    which.add_argument("--only", choices=STAGE_NAMES, action="append", help="run only this stage (repeatable)")
    which.add_argument("--from", dest="start", choices=STAGE_NAMES, help="run this stage and every later one")
    run.add_argument("--force", action="store_true", help="rerun the selected stages even if unchanged")
    publish = sub.add_parser("publish", help="put a finished run's executed notebooks and results where the book reads them")
    publish.add_argument("--run-dir", type=Path, default=Path("runs/cpu"))
    publish.add_argument("--executed", type=Path, default=BOOK_EXECUTED_DIR, help="the book's executed notebooks")
    publish.add_argument("--results", type=Path, default=Path("results"), help="the run's small results")
    args = parser.parse_args(argv)
    if args.command == "publish":
        try:
            provenance = publish_notebooks(args.run_dir, args.executed)
        except (FileNotFoundError, ValueError) as err:
            parser.error(str(err))
        print(f"[backdoor-sae] the book now shows {args.run_dir} ({provenance})")
        for path in export(args.run_dir, args.results):
            print(f"[backdoor-sae] wrote {path}")
        return 0

    overrides = {name: parse_value(value) for name, value in args.parameter}
    for reserved in ("profile", "run_dir"):
        if reserved in overrides:
            parser.error(f"set {reserved} with --{reserved.replace('_', '-')}, not -p")

    try:  # every parameter is checked before any work starts
        validate(args.profile, **overrides)
        check_overrides_are_read(args.profile, overrides)
        check_model(args.profile, overrides)
    except (ValueError, ModelUnavailableError) as err:
        parser.error(str(err))
    run_dir = (args.run_dir or Path("runs") / args.profile).resolve()
    if args.only or args.start:
        first = STAGE_NAMES.index(args.start or min(args.only, key=STAGE_NAMES.index))
        if first > 0 and not (run_dir / "data").exists():
            parser.error(f"run directory {run_dir} holds no dataset: run the earlier stages first "
                         f"(or point --run-dir at an existing run)")
    # relative to the repository (the notebooks' working directory) when inside it: no machine's
    # absolute path in the published notebooks
    params = {"profile": args.profile, "run_dir": run_label(run_dir), **overrides}
    try:
        records = run_pipeline(params, run_dir, stages=args.only, start=args.start, force=args.force,
                               log=lambda line: print(line, flush=True))
    except ValueError as err:  # an earlier stage of the run directory is of other parameters
        parser.error(str(err))
    except StageFailed as err:
        print(f"\n[backdoor-sae] FAILED: {err}", file=sys.stderr)
        return 1
    print(summary(records, run_label(run_dir)), flush=True)
    return 0


def summary(records: list[dict], run: str) -> str:
    """The closing lines of a run: each stage's time (or why it did not run), and the next step to the book."""
    lines = [f"[backdoor-sae] finished {run}:"]
    for r in records:
        lines.append(f"  {r['stage']:<24} " + (duration(r["seconds"]) if r["status"] == "ran" else r["status"]))
    total = sum(r["seconds"] for r in records)
    lines.append(f"  {'total':<24} {duration(total)}")
    lines.append(f"[backdoor-sae] executed notebooks: {run}/executed/. The book: `python -m backdoor_sae publish "
                 f"--run-dir {run}`, then `jupyter-book build .` (`make book` does both) → _build/html/index.html")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
