"""Command line: ``python -m backdoor_sae run --profile cpu [-p NAME VALUE ...]``."""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from backdoor_sae.config import validate
from backdoor_sae.notebooks import EXECUTED_DIR, STAGE_NAMES, execute_stage, get_stage


def _value(text: str):
    """Parse ``-p`` values as papermill does for literals: numbers, lists, None; else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="backdoor-sae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the pipeline's notebooks in order")
    run.add_argument("--profile", default="cpu", help="smoke | cpu | paper (default: cpu)")
    run.add_argument("--run-dir", type=Path, help="where the run's artifacts go (default: runs/<profile>)")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="override one parameter, as papermill spells it (repeatable)")
    run.add_argument("--only", choices=STAGE_NAMES, action="append", help="run only this stage (repeatable)")
    run.add_argument("--executed-dir", type=Path, default=EXECUTED_DIR,
                     help="where executed notebooks are written (the book reads executed/)")
    args = parser.parse_args(argv)

    overrides = {name: _value(value) for name, value in args.parameter}
    try:  # every parameter is checked before any work starts
        validate(args.profile, **overrides)
    except ValueError as err:
        parser.error(str(err))
    run_dir = (args.run_dir or Path("runs") / args.profile).resolve()
    params = {"profile": args.profile, "run_dir": str(run_dir), **overrides}
    for name in args.only or STAGE_NAMES:
        print(f"[backdoor-sae] {name}: running with {params}", flush=True)
        out = execute_stage(get_stage(name), params, args.executed_dir)
        print(f"[backdoor-sae] {name}: wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
