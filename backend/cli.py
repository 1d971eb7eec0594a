"""The `trainboard` command line. Subcommands import their modules lazily so that
`trainboard serve` starts fast and never pulls in torch."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (module, function that registers its subcommands, the subcommands it registers);
# each registrar sets `func` on its parsers.
_REGISTRARS = [
    ("backend.serve", "add_serve_parser", ("serve",)),
    ("backend.config.cli", "add_validate_parser", ("validate",)),
    ("backend.augment.cli", "add_preview_parser", ("augment-preview",)),
    ("backend.trainer.cli", "add_train_parser", ("train",)),
    ("backend.demo", "add_demo_parser", ("demo-data",)),
    ("backend.experiments.sweep_cli", "add_sweep_parser", ("sweep",)),
    (
        "backend.client_cli",
        "add_client_parsers",
        (
            *("runs", "show", "start", "stop", "resume", "watch", "replay", "export"),
            *("rename", "tag", "notes", "archive", "unarchive", "delete"),
        ),
    ),
]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with a known `command`, only that command's module is imported."""
    parser = argparse.ArgumentParser(
        prog="trainboard",
        description="Configure, run, watch and replay PyTorch Connectomics training runs.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = [r for r in _REGISTRARS if command in r[2]] or _REGISTRARS
    for module_name, function_name, _ in wanted:
        module = importlib.import_module(module_name)
        getattr(module, function_name)(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
