"""Cost of emitting one metric inside a training loop: Trainboard's emitter against
TensorBoard's `SummaryWriter.add_scalar` and `mlflow.log_metric` (local file store),
measured in the same process, one after another, repeated and interleaved.

Every figure is amortised over many calls and includes the flushing each logger does
(the emitter's orjson encoding, spool and train.log writes and pipe sends, done on its
writer thread, waited for before the clock stops; TensorBoard's final `flush`; mlflow
writes a file per call). The emitter sends to a real pipe drained and decoded by another
process, as in the trainer child.

    .venv/bin/python bench/emit.py   # needs: pip install tensorboard mlflow (bench only)

Figures line: `emit_us emit_wall_us emit_cpu_us tensorboard_us tensorboard_wall_us
tensorboard_cpu_us mlflow_us emit_call_us` (microseconds per call, medians of the
repeats; nan for a library that is not installed):

- `emit_us`: the CPU the emitter costs the calling (training) thread per event, flushes
  included (the encoding and the I/O run on the emitter's writer thread);
- `emit_wall_us`: wall time until the writer has written and sent every event; in this
  pure-Python loop it also pays for the writer holding the GIL (torch releases it);
- `emit_cpu_us`: the CPU of every thread of the process, the writer's included;
- `emit_call_us`: the `emit` call alone. TensorBoard is measured the same three ways.

Last line: `tensorboard_ratio=<n> tensorboard_wall_ratio=<n>` (TensorBoard's cost per
call over the emitter's, calling thread's CPU and wall, in the same run).
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


Cost = dict[str, float]  # "wall", "thread" (the calling thread's CPU), "cpu" (all threads)


class _Clock:
    def __init__(self) -> None:
        self.wall, self.thread = time.perf_counter(), time.thread_time()
        self.cpu = time.process_time()

    def per_call(self, n: int) -> Cost:
        return {
            "wall": (time.perf_counter() - self.wall) / n * 1e6,
            "thread": (time.thread_time() - self.thread) / n * 1e6,
            "cpu": (time.process_time() - self.cpu) / n * 1e6,
        }


def bench_emitter(n: int, directory: Path, hot_only: bool = False) -> Cost:
    """µs per emit: wall time until the writer thread has encoded, written and sent every
    event; and the CPU time of the calling (training) thread alone."""
    reader, sender = start_reader()
    emitter = Emitter(sender, directory, attempt=1, flush_interval=1e9 if hot_only else 0.25)
    events = [_metric(i) for i in range(n)]  # built outside the timing, as the loop's own
    emit = emitter.emit
    clock = _Clock()
    for i in range(n):
        emit("metric", events[i])
    if not hot_only:
        emitter.drain()  # waits (no CPU of this thread) for the writer thread
    cost = clock.per_call(n)
    emitter.close()
    reader.join(30)
    if reader.is_alive():
        raise SystemExit("the pipe reader did not see the end of the stream")
    return cost


def bench_tensorboard(n: int, directory: Path) -> Cost:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(directory))
    add = writer.add_scalar
    clock = _Clock()
    for i in range(n):
        add("train/loss", 0.5 / (i + 1), i)
    writer.flush()
    cost = clock.per_call(n)
    writer.close()
    return cost


def bench_mlflow(n: int, directory: Path) -> Cost:
    import os

    # mlflow 3 refuses the file store unless asked: the brief compares against it.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import mlflow

    mlflow.set_tracking_uri(directory.as_uri())
    with mlflow.start_run():
        log = mlflow.log_metric
        clock = _Clock()
        for i in range(n):
            log("loss", 0.5 / (i + 1), step=i)
        return clock.per_call(n)


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
    benches: dict[str, Callable[[Path], Cost]] = {
        "emit": lambda d: bench_emitter(args.n, d),
        "emit_hot_path": lambda d: bench_emitter(args.n, d, hot_only=True),
    }
    if _available("tensorboard"):
        benches["tensorboard"] = lambda d: bench_tensorboard(args.n, d)
    if _available("mlflow"):
        benches["mlflow"] = lambda d: bench_mlflow(args.mlflow_n, d)
    results: dict[str, list[Cost]] = {name: [] for name in benches}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):  # interleaved: drift hits every contender alike
            for name, bench in benches.items():
                results[name].append(bench(Path(tmp) / f"{name}_{r}"))
    medians = {
        name: {k: statistics.median(c[k] for c in costs) for k in ("wall", "thread", "cpu")}
        for name, costs in results.items()
    }
    for name, cost in medians.items():
        calls = args.n if name != "mlflow" else args.mlflow_n
        print(
            f"{name:>14}: µs/call: {cost['thread']:8.3f} calling thread's CPU, "
            f"{cost['cpu']:8.3f} all threads' CPU, {cost['wall']:8.3f} wall "
            f"(medians; n={calls}, {args.repeats} repeats)"
        )
    nan = {"wall": float("nan"), "thread": float("nan"), "cpu": float("nan")}
    emit, board = medians["emit"], medians.get("tensorboard", nan)
    figures = {
        "emit_us": emit["thread"],
        "emit_wall_us": emit["wall"],
        "emit_cpu_us": emit["cpu"],
        "tensorboard_us": board["thread"],
        "tensorboard_wall_us": board["wall"],
        "tensorboard_cpu_us": board["cpu"],
        "mlflow_us": medians.get("mlflow", nan)["thread"],
        "emit_call_us": medians["emit_hot_path"]["thread"],
    }
    print(" ".join(f"{k}={v:.3f}" for k, v in figures.items()))
    print(
        f"tensorboard_ratio={board['thread'] / emit['thread']:.1f} "
        f"tensorboard_wall_ratio={board['wall'] / emit['wall']:.1f}"
    )


if __name__ == "__main__":
    main()
