"""What checking an output folder's owner adds to a create, against the create's own
validation, with many runs in the history.

Prints figures; asserts nothing. The same tiny config is validated (`created_data`
without the ownership check, the reference) and checked against N known runs and a
folder on disk (`outputs.check`), in the same run, so the ratio is meaningful on a noisy
machine. The first check resolves every known run's folder (then cached for the process):
it is reported apart.

Last line: `runs=<n> validate_ms=<ms> first_check_ms=<ms> owner_check_ms=<ms>
ratio=<check/validate>`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backend import outputs
from backend.demo import make_demo_dataset
from backend.runspec import created_data


@dataclass
class Known:
    output_path: str | None
    name: str
    created_at: float | None


def best_ms(func: Callable[[], object], repeat: int) -> float:
    """The fastest of `repeat` calls, in milliseconds (the least disturbed by the machine)."""
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - began)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # The demo config (a bench must not need tests/ on the path to run as a script).
        request = {"config": make_demo_dataset(root / "data").config_2d.read_text()}
        runs = {
            f"{i:012x}": Known(str(root / "out" / f"run{i}"), f"run {i}", float(i))
            for i in range(args.runs)
        }
        validate_ms = best_ms(lambda: created_data(request, "f" * 12, check_paths=False), 5)
        folder = str(root / "out" / "new")
        first_ms = best_ms(lambda: outputs.check(folder, "f" * 12, runs), 1)
        check_ms = best_ms(lambda: outputs.check(folder, "f" * 12, runs), args.repeat)
    print(
        f"runs={args.runs} validate_ms={validate_ms:.2f} first_check_ms={first_ms:.2f} "
        f"owner_check_ms={check_ms:.2f} ratio={check_ms / validate_ms:.3f}"
    )


if __name__ == "__main__":
    main()
