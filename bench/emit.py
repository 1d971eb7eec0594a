"""Cost of emitting one metric inside a training loop: Trainboard's emitter against
TensorBoard's `SummaryWriter.add_scalar` and `mlflow.log_metric` (local file store),
measured in the same process, one after another, repeated and interleaved.

Every figure is amortised over many calls and includes the flushing each logger does
in the calling thread (the emitter's pipe send and file writes; TensorBoard's final
`flush`; mlflow writes a file per call). The emitter sends to a real pipe drained by
another process, as in the trainer child.

    .venv/bin/python bench/emit.py   # needs: pip install tensorboard mlflow (bench only)

Last line: `emit_us=<n> tensorboard_us=<n> mlflow_us=<n> emit_call_us=<n>` (microseconds
per call, medians of the repeats; "nan" for a library that is not installed). `emit_us`
is everything the emitter costs the calling thread per event (its flushes included);
`emit_call_us` is the `emit` call alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipe_reader import start_reader  # bench/ is on sys.path: the script's folder

from backend.trainer.emitter import Emitter


def _metric(i: int) -> dict[str, object]:
    return {
        "iteration": i,
        "loss": 0.5 / (i + 1),
        "lr": 0.001,
        "components": {"0/WeightedBCEWithLogitsLoss": 0.3, "0/DiceLoss": 0.2},
    }


def bench_emitter(n: int, directory: Path, hot_only: bool = False) -> float:
    """µs per emit, including the pipe sends and file writes of every flush."""
    reader, sender = start_reader()
    emitter = Emitter(sender, directory, attempt=1, flush_interval=1e9 if hot_only else 0.25)
    events = [_metric(i) for i in range(n)]  # built outside the timing, as the loop's own
    emit = emitter.emit
    start = time.perf_counter()
    for i in range(n):
        emit("metric", events[i])
    if not hot_only:
        emitter.flush()
    elapsed = time.perf_counter() - start
    emitter.close()
    reader.join(30)
    if reader.is_alive():
        raise SystemExit("the pipe reader did not see the end of the stream")
    return elapsed / n * 1e6


def bench_tensorboard(n: int, directory: Path) -> float:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(directory))
    add = writer.add_scalar
    start = time.perf_counter()
    for i in range(n):
        add("train/loss", 0.5 / (i + 1), i)
    writer.flush()
    elapsed = time.perf_counter() - start
    writer.close()
    return elapsed / n * 1e6


def bench_mlflow(n: int, directory: Path) -> float:
    import os

    # mlflow 3 refuses the file store unless asked: the brief compares against it.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import mlflow

    mlflow.set_tracking_uri(directory.as_uri())
    with mlflow.start_run():
        log = mlflow.log_metric
        start = time.perf_counter()
        for i in range(n):
            log("loss", 0.5 / (i + 1), step=i)
        elapsed = time.perf_counter() - start
    return elapsed / n * 1e6


def _available(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        print(f"{module} is not installed: pip install tensorboard mlflow (bench-only deps)")
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="emits / add_scalar calls")
    parser.add_argument("--mlflow-n", type=int, default=2_000, help="mlflow calls (slow)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    benches: dict[str, Callable[[Path], float]] = {
        "emit": lambda d: bench_emitter(args.n, d),
        "emit_hot_path": lambda d: bench_emitter(args.n, d, hot_only=True),
    }
    if _available("tensorboard"):
        benches["tensorboard"] = lambda d: bench_tensorboard(args.n, d)
    if _available("mlflow"):
        benches["mlflow"] = lambda d: bench_mlflow(args.mlflow_n, d)
    results: dict[str, list[float]] = {name: [] for name in benches}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):  # interleaved: drift hits every contender alike
            for name, bench in benches.items():
                results[name].append(bench(Path(tmp) / f"{name}_{r}"))
    for name, values in results.items():
        print(
            f"{name:>14}: median {statistics.median(values):9.3f} µs/call  "
            f"min {min(values):9.3f}  (n={args.n if name != 'mlflow' else args.mlflow_n}, "
            f"{args.repeats} repeats)"
        )
    emit = statistics.median(results["emit"])
    others = {k: statistics.median(v) for k, v in results.items() if k in ("tensorboard", "mlflow")}
    for name, value in others.items():
        print(f"emit is {value / emit:.1f}x cheaper than {name}")
    figures = {"emit": emit, "tensorboard": float("nan"), "mlflow": float("nan"), **others}
    # The call alone (the flush's encoding and writes excluded), after the three above.
    figures["emit_call"] = statistics.median(results["emit_hot_path"])
    print(" ".join(f"{k}_us={v:.3f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
