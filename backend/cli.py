"""The `trainboard` command line. Subcommands import their modules lazily so that
`trainboard serve` starts fast and never pulls in torch."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (module, function that registers its subcommands); each sets `func` on its parser.
_REGISTRARS = [
    ("backend.config.cli", "add_validate_parser"),
    ("backend.demo", "add_demo_parser"),
    ("backend.trainer.cli", "add_train_parser"),
    ("backend.serve", "add_serve_parser"),
    ("backend.client_cli", "add_client_parsers"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainboard",
        description="Configure, run, watch and replay PyTorch Connectomics training runs.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, function_name in _REGISTRARS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        getattr(module, function_name)(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
