"""`trainboard validate CONFIG [--base BASE] [KEY VALUE ...] [--json]`.

Prints one line per problem in the compiler style editors understand
(`FILE:LINE: error: KEY: message (expected ...; suggestion: ...)`) and a summary; the exit
status is 1 when any problem is an error, else 0, so scripts and CI can gate on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from backend.config.load import load_config
from backend.config.problems import Problem
from backend.config.validate import validate


def add_validate_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check a PyTC config and report every problem",
        usage="%(prog)s CONFIG [--base BASE] [KEY VALUE ...] [--json] [--no-check-paths]",
        description="Load a PyTorch Connectomics config (over an optional base, under "
        "optional KEY VALUE overrides such as SOLVER.BASE_LR 0.01) and report every problem "
        "at once. Exit status 1 when there is an error.",
    )
    add_config_argument(parser, _add_options)
    parser.set_defaults(func=run_validate)


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", type=Path, help="base config the file is merged over")
    parser.add_argument("--json", action="store_true", help="print the problems as JSON")
    parser.add_argument(
        "--no-check-paths",
        dest="check_paths",
        action="store_false",
        help="skip the checks of folders, volumes, output path and GPUs",
    )


Options = Callable[[argparse.ArgumentParser], None]


def add_config_argument(parser: argparse.ArgumentParser, add_options: Options) -> None:
    """CONFIG, then its options (`add_options`) and KEY VALUE overrides in any order:
    `c.yaml --base b.yaml SOLVER.BASE_LR 0.01` and `--base b.yaml c.yaml K V --json` alike.

    Plain argparse cannot take a `*` positional that comes after an option: it matches the
    overrides as empty at the first positional and rejects the rest. So CONFIG takes the
    rest of the line, which a second parser with the same options reads, intermixed."""
    add_options(parser)

    class ConfigThenRest(argparse.Action):
        def __call__(
            self,
            parser: argparse.ArgumentParser,
            namespace: argparse.Namespace,
            values: str | Sequence[Any] | None,
            option_string: str | None = None,
        ) -> None:
            config, *rest = list(values or [])
            namespace.config = Path(config)
            inner = argparse.ArgumentParser(prog=parser.prog, add_help=False)
            add_options(inner)
            inner.add_argument("overrides", nargs="*", metavar="KEY VALUE")
            # argparse fills only missing defaults: options given before CONFIG stay.
            inner.parse_intermixed_args(rest, namespace)
            namespace.overrides = list(namespace.overrides or [])

    parser.add_argument(
        "config",
        nargs=argparse.PARSER,
        action=ConfigThenRest,
        metavar="CONFIG",
        help="the config (overlay) YAML file, then KEY VALUE overrides (e.g. SOLVER.BASE_LR "
        "0.01) and options, in any order",
    )


def run_validate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    loaded = load_config(path=args.config, base_path=args.base, overrides=args.overrides)
    problems = validate(loaded, check_paths=args.check_paths)
    if args.json:
        print(json.dumps([p.to_json() for p in problems], indent=2), file=out)
    else:
        for problem in problems:
            print(problem.format(default_file=str(args.config)), file=out)
        print(summary(problems), file=out)
    return 1 if any(p.is_error for p in problems) else 0


def summary(problems: list[Problem]) -> str:
    errors = sum(p.is_error for p in problems)
    warnings = len(problems) - errors
    verdict = "invalid" if errors else "valid"
    return f"{verdict}: {_count(errors, 'error')}, {_count(warnings, 'warning')}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
