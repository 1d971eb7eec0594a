"""The trainer entry point of a batch job: `python -m backend.trainer.batch JOB.json`.

A Slurm job (see `backend.execution.slurm`) runs this in the run's log folder. It reads
the `TrainJob` the server wrote (`TrainJob.to_json`), then trains exactly as the local
child does (`backend.trainer.child.run`) with no pipe: every event goes to the spool,
`<log_path>/events.jsonl`, which the server follows. SIGTERM (`scancel --signal=TERM`,
or Slurm's own warning before a time limit) is a graceful stop: checkpoint, `stopped`,
exit 0. The exit code is the child's: 0 after `completed` or `stopped`, 1 after `failed`;
2 when the job file cannot be read (nothing can be reported in the spool then).

Under `srun` with several tasks (one per GPU), each task is one DDP rank, its world read
from `SLURM_PROCID` / `SLURM_NTASKS` by `backend.trainer.distributed.from_environment`:
rank 0 runs the child as above (it alone writes the spool), the other ranks train
silently through `distributed.run_rank`.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from backend.execution.job import TrainJob


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m backend.trainer.batch JOB.json", file=sys.stderr)
        return 2
    try:
        job = TrainJob.from_json(Path(args[0]).read_bytes())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read the train job {args[0]}: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("SLURM_PROCID", "0") != "0" and int(os.environ.get("SLURM_NTASKS", 1)) > 1:
        # A rank other than 0 writes no spool (and imports torch here, in the job).
        distributed = importlib.import_module("backend.trainer.distributed")
        world = distributed.from_environment(os.environ)
        return int(distributed.run_rank(job, world, None))
    from backend.trainer.child import run

    return run(job, None, None, restore_signals=False)


if __name__ == "__main__":
    raise SystemExit(main())
