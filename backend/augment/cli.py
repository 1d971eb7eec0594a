"""`trainboard augment-preview CONFIG [--base B] [KEY VALUE ...] --out grid.png`.

Loads the config as `validate` does, refuses it when its data or augmentation settings
have errors (`blocking_problems`; a model error does not stop a preview), and writes a
grid of augmented samples of its training data (`preview.grid_png`): one row per sample,
image and label, the augmentations that ran written under each row.
Relative volume paths are read from the working directory, as `train` reads them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from backend.augment.preview import (
    MAX_SAMPLES,
    PreviewError,
    blocking_problems,
    grid_png,
    preview,
)
from backend.config.cli import add_config_argument
from backend.config.load import load_config


def add_preview_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "augment-preview",
        help="draw augmented samples of a config's training data",
        usage="%(prog)s CONFIG [--base BASE] [KEY VALUE ...] --out GRID.png [--count N] [--seed S]",
        description="Cut a few samples from the config's training volumes, augment them "
        "as training would (PyTC's augmentor with the config's settings) and write the "
        "middle slice of each, image and label, to one PNG.",
    )
    add_config_argument(parser, _add_options)
    parser.set_defaults(func=run_preview)


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", type=Path, help="base config the file is merged over")
    # Checked in run_preview: argparse cannot require an option that may follow CONFIG.
    parser.add_argument("--out", type=Path, help="the PNG file to write (required)")
    parser.add_argument(
        "--count", type=int, default=4, help=f"samples to draw, 1 to {MAX_SAMPLES} (default 4)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")


def run_preview(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out, err = out or sys.stdout, sys.stderr if out is None else out
    if args.out is None:
        print("augment-preview: --out GRID.png is required: where to write the grid", file=err)
        return 2
    loaded = load_config(path=args.config, base_path=args.base, overrides=args.overrides)
    errors = blocking_problems(loaded)
    if errors:
        for problem in errors:
            print(problem.format(default_file=str(args.config)), file=err)
        print(f"augment-preview: {len(errors)} error(s) in the config; fix them first", file=err)
        return 1
    try:
        samples = preview(loaded.values, Path.cwd(), count=args.count, seed=args.seed)
        args.out.write_bytes(grid_png(samples))
    except PreviewError as exc:
        print(f"augment-preview: {exc}", file=err)
        return 1
    except OSError as exc:
        print(f"augment-preview: cannot write {args.out}: {exc.strerror or exc}", file=err)
        return 1
    for index, sample in enumerate(samples):
        print(f"sample {index}: {', '.join(sample.applied) or 'nothing applied'}", file=out)
    print(f"wrote {args.out}", file=out)
    return 0
