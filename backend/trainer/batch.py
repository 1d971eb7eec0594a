"""The trainer entry point of a batch job: `python -m backend.trainer.batch JOB.json`.

A Slurm job (see `backend.execution.slurm`) runs this in the run's log folder. It reads
the `TrainJob` the server wrote (`TrainJob.to_json`), then trains exactly as the local
child does (`backend.trainer.child.run`) with no pipe: every event goes to the spool,
`<log_path>/events.jsonl`, which the server follows. SIGTERM (`scancel --signal=TERM`,
or Slurm's own warning before a time limit) is a graceful stop: checkpoint, `stopped`,
exit 0. The exit code is the child's: 0 after `completed` or `stopped`, 1 after `failed`;
2 when the job file cannot be read (nothing can be reported in the spool then).

Under `srun` with several tasks (one per GPU), each task is one DDP rank: the rank and
world size come from `SLURM_PROCID` / `SLURM_NTASKS` and the rendezvous address from the
job's first node; they are exported as torch.distributed's `RANK`, `WORLD_SIZE`,
`LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, and `TrainJob.options["world_size"]` is set.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from backend.execution.job import TrainJob

MASTER_PORT_BASE = 29500  # torch's default, offset by the job id so jobs on a node differ


def ddp_environment(env: Mapping[str, str]) -> dict[str, str]:
    """torch.distributed's variables for this Slurm task ({} for a single task)."""
    tasks = int(env.get("SLURM_NTASKS", "1") or 1)
    if tasks <= 1:
        return {}
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
    job_id = int(env.get("SLURM_JOB_ID", "0") or 0)
    return {
        "RANK": env.get("SLURM_PROCID", "0"),
        "WORLD_SIZE": str(tasks),
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": env.get("MASTER_ADDR") or _first_node(nodes),
        "MASTER_PORT": env.get("MASTER_PORT") or str(MASTER_PORT_BASE + job_id % 10_000),
    }


def _first_node(nodelist: str) -> str:
    """The first host of a Slurm node list: `gpu[01-04],cpu1` → `gpu01`."""
    head = nodelist.split(",")[0]
    if "[" not in head:
        return head
    prefix, _, ranges = head.partition("[")
    return prefix + ranges.split("-")[0].split(",")[0].rstrip("]")


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
    ddp = ddp_environment(os.environ)
    if ddp:
        os.environ.update(ddp)
        job = replace(job, options={**job.options, "world_size": int(ddp["WORLD_SIZE"])})
        if ddp["RANK"] != "0":
            # A rank other than 0 writes no spool: H4's distributed module runs it.
            distributed = importlib.import_module("backend.trainer.distributed")
            return int(distributed.run_rank(job))
    from backend.trainer.child import run

    return run(job, None, None, restore_signals=False)


if __name__ == "__main__":
    raise SystemExit(main())
