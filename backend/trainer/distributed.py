"""Data-parallel training (DDP): who this process is in a run, the process group, the
local ranks rank 0 starts itself, and the few collectives the training loop needs.

Where the world comes from:
- **launched** (srun, torchrun): `RANK`/`WORLD_SIZE`/`LOCAL_RANK`, or `SLURM_PROCID`/
  `SLURM_NTASKS`/`SLURM_LOCALID`; the master is `MASTER_ADDR`, else the first host of
  `SLURM_NODELIST` (`scontrol show hostnames`), its port `MASTER_PORT`, else one derived
  from `SLURM_JOB_ID` (every task computes the same).
- **local**: `TrainJob.options["world_size"]`, else the config (`ddp_processes`: NUM_GPUS
  with `SYSTEM.PARALLEL: DDP`, `SYSTEM.DISTRIBUTED` or `DATASET.DISTRIBUTED`, at most the
  GPUs this process sees). The trainer child is rank 0 and starts ranks 1..n-1 itself
  (`LocalRanks`, the spawn context), rendezvous on a free port of 127.0.0.1.

One GPU per rank (`cuda:LOCAL_RANK`), NCCL on CUDA and gloo on the CPU.

Guarantees:
- Rank 0 alone emits events and writes files (checkpoints, previews, the spool).
- Every rank stops at the same iteration: `Group.agree` (an all-reduce MAX of each rank's
  stop flag) runs before every accumulation window, so a stop seen by rank 0 (the parent's
  flag) or by any rank (SIGTERM from `scancel`) stops all of them at once.
- No rank is left behind: rank 0 watches its ranks' sentinels and reads the failure a rank
  reports before it exits; a failed rank ends the run in `failed`, naming the rank, its
  exit code and a hint; rank 0 always reaps its ranks before its final event (terminate,
  then kill). A rank whose rank 0 died reads EOF on its pipe and exits at once. If rank 0
  is stuck in a collective after a rank died (NCCL does not notice dead peers), its
  watchdog ends the attempt itself after `STUCK_GRACE_S`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from backend.execution.job import TrainJob

Config = Mapping[str, Any]

LOCALHOST = "127.0.0.1"
GLOO_TIMEOUT_S = 120.0  # a hung peer fails a gloo collective after this long
NCCL_TIMEOUT_S = 600.0
STUCK_GRACE_S = 30.0  # rank 0 still in a collective this long after a rank died: end it
CLOSE_GRACE_S = 30.0  # ranks finishing a stop or the end of training get this long
SLURM_PORT_BASE = 20000


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run."""

    rank: int
    size: int
    local_rank: int
    addr: str = LOCALHOST
    port: int = 0
    launched: bool = False  # started by srun / torchrun (True) or by rank 0 here (False)
    local_size: int = 1  # ranks on this machine (they share its CPUs)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        how = "launched by the cluster" if self.launched else "started by rank 0"
        return f"rank {self.rank} of {self.size} ({how}, master {self.addr}:{self.port})"


# --- where the world comes from ----------------------------------------------------------


def from_environment(env: Mapping[str, str] | None = None) -> World | None:
    """The world of a process launched by srun or torchrun; None when not launched so
    (or launched as a single task)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, size = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, size = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local = int(env.get("SLURM_LOCALID", rank))
    else:
        return None
    if size <= 1:
        return None
    addr = env.get("MASTER_ADDR") or _first_slurm_host(env.get("SLURM_NODELIST", "")) or LOCALHOST
    port = int(env.get("MASTER_PORT") or _slurm_port(env.get("SLURM_JOB_ID")))
    per_node = env.get("LOCAL_WORLD_SIZE") or env.get("SLURM_NTASKS_PER_NODE") or "1"
    digits = re.match(r"\d+", per_node)  # Slurm writes "2(x3)" for 2 per node on 3 nodes
    local_size = int(digits.group(0)) if digits else 1
    return World(rank, size, local, addr, port, launched=True, local_size=local_size)


def _first_slurm_host(nodelist: str) -> str | None:
    """The first host of a Slurm node list ("node[03-05],gpu1" -> "node03")."""
    if not nodelist:
        return None
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass  # no scontrol here: read the list ourselves
    match = re.match(r"([^,\[]+)(?:\[([^\],-]+))?", nodelist)
    return None if match is None else match.group(1) + (match.group(2) or "")


def _slurm_port(job_id: str | None) -> int:
    """A port every task of one job derives alike (no MASTER_PORT given)."""
    return SLURM_PORT_BASE + (int(job_id) % 20000 if job_id and job_id.isdigit() else 9)


def ddp_requested(cfg: Config) -> bool:
    """PyTC's switches: `SYSTEM.PARALLEL: DDP`, `SYSTEM.DISTRIBUTED` or `DATASET.DISTRIBUTED`."""
    system, dataset = cfg.get("SYSTEM", {}), cfg.get("DATASET", {})
    return (
        str(system.get("PARALLEL", "DP")) == "DDP"
        or bool(system.get("DISTRIBUTED", False))
        or bool(dataset.get("DISTRIBUTED", False))
    )


def ddp_processes(cfg: Config, visible_gpus: int) -> int:
    """Processes a local DDP run starts: one per GPU asked for and visible."""
    wanted = int(cfg["SYSTEM"]["NUM_GPUS"])
    if wanted <= 1 or not ddp_requested(cfg):
        return 1
    return max(1, min(wanted, visible_gpus))


def local_world(job: TrainJob) -> World | None:
    """Rank 0's world for a local run of more than one process, else None."""
    size = job.options.get("world_size")
    if size is None:
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        size = ddp_processes(job.config, visible)
    size = int(size)
    if size <= 1:
        return None
    return World(0, size, 0, LOCALHOST, free_port(), local_size=size)


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port free on `host` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# --- the process group ---------------------------------------------------------------------


def backend_for(device: torch.device, cfg: Config) -> str:
    """NCCL (or SYSTEM.DISTRIBUTED_BACKEND gloo) on CUDA; gloo on the CPU."""
    if device.type != "cuda":
        return "gloo"
    wanted = str(cfg.get("SYSTEM", {}).get("DISTRIBUTED_BACKEND", "nccl"))
    return wanted if wanted in ("nccl", "gloo") else "nccl"


def rank_device(world: World) -> torch.device:
    """`cuda:LOCAL_RANK` (or the only GPU when each task sees one), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    return torch.device("cuda", world.local_rank % count if count > 1 else 0)


class Group:
    """The initialised process group and the collectives the loop uses."""

    def __init__(self, world: World, device: torch.device, backend: str, timeout_s: float):
        self.world = world
        self.device = device
        self.backend = backend
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend,
            init_method=f"tcp://{world.addr}:{world.port}",
            rank=world.rank,
            world_size=world.size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )

    def agree(self, flag: bool) -> bool:
        """True on every rank when any rank's flag is set (one tiny all-reduce)."""
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def mean(self, values: Tensor) -> Tensor:
        """The element-wise mean over ranks (the reported loss, ReduceLROnPlateau's input)."""
        reduced = values.detach().clone()
        dist.all_reduce(reduced)
        return reduced / self.world.size

    def sum(self, values: Tensor) -> Tensor:
        reduced = values.detach().clone().to(self.device)
        dist.all_reduce(reduced)
        return reduced

    def rng_states(self) -> list[Tensor]:
        """Every rank's torch CPU RNG state, in rank order (for an exact resume)."""
        state = torch.get_rng_state()
        gathered = [torch.empty_like(state) for _ in range(self.world.size)]
        if self.backend == "nccl":  # NCCL gathers CUDA tensors only
            on_device = [g.to(self.device) for g in gathered]
            dist.all_gather(on_device, state.to(self.device))
            return [g.cpu() for g in on_device]
        dist.all_gather(gathered, state)
        return gathered

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel as PyTC builds it (`find_unused_parameters=False`);
        rank 0's weights are broadcast to every rank here."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=ids, output_device=ids[0] if ids else None
        )

    def close(self) -> None:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def is_peer_error(exc: BaseException) -> bool:
    """A collective failed because another rank went away (or hung)."""
    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and bool(_PEER_MARKS.search(str(exc)))


_PEER_MARKS = re.compile(
    r"closed by peer|reset by peer|Broken pipe|remote worker|NCCL|gloo|[Tt]imed? ?out", re.I
)


# --- rank failures -------------------------------------------------------------------------


@dataclass(frozen=True)
class RankFailure:
    """A rank that ended before rank 0: its exit code and, when it could say, why."""

    rank: int
    size: int
    exit_code: int | None
    report: dict[str, Any] = field(default_factory=dict)

    def describe_exit(self) -> str:
        code = self.exit_code
        if code is None:
            return "is gone"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"was killed by {signal.Signals(-code).name} (exit code {code})"
            return f"was killed by signal {-code} (exit code {code})"
        return f"exited with code {code}"

    def event(self) -> dict[str, Any]:
        """The `failed` event's data (message, hint, cause, key, suggested), rank named."""
        where = f"rank {self.rank} of {self.size}"
        if self.report.get("message"):
            return {
                "message": f"{where} failed: {self.report['message']}",
                "hint": f"{self.report.get('hint') or ''} (reported by {where}, which "
                f"{self.describe_exit()})".strip(),
                "cause": self.report.get("cause") or "code",
                "key": self.report.get("key"),
                "suggested": self.report.get("suggested"),
                "rank": self.rank,
                "exit_code": self.exit_code,
            }
        killed = self.exit_code is not None and self.exit_code < 0
        hint = (
            f"{where} was killed from outside: out of host memory (the OOM killer says so in "
            "the kernel log, `dmesg`), or someone signalled it; lower SOLVER.SAMPLES_PER_BATCH "
            "or the number of processes, then resume from the last checkpoint"
            if killed
            else f"{where} crashed without a report (its output is in the server's log); "
            "resume from the last checkpoint to retry"
        )
        return {
            "message": f"{where} {self.describe_exit()}: data-parallel training cannot "
            "continue without it",
            "hint": hint,
            "cause": "resources" if killed else "code",
            "key": None,
            "suggested": None,
            "rank": self.rank,
            "exit_code": self.exit_code,
        }


class RankFailed(RuntimeError):
    """Raised in rank 0 when one of its ranks failed."""

    def __init__(self, failure: RankFailure) -> None:
        super().__init__(failure.event()["message"])
        self.failure = failure


class LocalRanks:
    """Ranks 1..n-1 of a local run, started and watched by rank 0.

    Each rank gets one end of a duplex pipe: it sends its failure report there before it
    exits 1, and reads EOF from it when rank 0 dies (it then exits at once). A watchdog
    thread waits on the ranks' sentinels; after a death it calls `on_stuck` if rank 0 has
    not closed the group within `STUCK_GRACE_S` (rank 0 hangs in a collective)."""

    def __init__(self, job: TrainJob, world: World) -> None:
        self.world = world
        self.on_stuck: Callable[[RankFailure], None] | None = None
        self._failure: RankFailure | None = None
        self._closing = threading.Event()
        self._died = threading.Event()
        context = mp.get_context("spawn")
        self._processes: dict[int, Any] = {}
        self._conns: dict[int, Connection] = {}
        for rank in range(1, world.size):
            ours, theirs = context.Pipe(duplex=True)
            rank_world = replace(world, rank=rank, local_rank=rank)
            process = context.Process(
                target=rank_entry,
                args=(job, rank_world, theirs),
                name=f"trainboard-rank{rank}-{job.run_id}",
                daemon=False,  # a daemonic process may not start data-loader workers
            )
            process.start()
            theirs.close()
            self._processes[rank], self._conns[rank] = process, ours
        threading.Thread(target=self._watch, name="ddp-watchdog", daemon=True).start()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes.values() if p.pid is not None]

    def failure(self) -> RankFailure | None:
        return self._failure

    def wait_failure(self, timeout: float) -> RankFailure | None:
        """The first failed rank, waiting up to `timeout` for one (after a peer error)."""
        self._died.wait(timeout)
        return self._failure

    def _watch(self) -> None:
        alive = dict(self._processes)
        while alive and not self._closing.is_set():
            ready = wait([p.sentinel for p in alive.values()], timeout=0.5)
            for rank, process in list(alive.items()):
                if process.sentinel not in ready:
                    continue
                process.join()
                del alive[rank]
                if self._closing.is_set() or self._failure is not None:
                    continue
                self._failure = RankFailure(
                    rank, self.world.size, process.exitcode, self._report(rank)
                )
                self._died.set()
                threading.Thread(target=self._stuck_check, daemon=True).start()

    def _report(self, rank: int) -> dict[str, Any]:
        conn = self._conns[rank]
        try:
            if conn.poll(0.5):
                report: dict[str, Any] = json.loads(conn.recv_bytes())
                return report
        except (OSError, EOFError, ValueError):
            pass
        return {}

    def _stuck_check(self) -> None:
        if self._closing.wait(STUCK_GRACE_S) or self.on_stuck is None:
            return
        failure = self._failure
        self.kill_all()
        if failure is not None:
            self.on_stuck(failure)

    def close(self, grace: float = CLOSE_GRACE_S) -> None:
        """Reap every rank: wait `grace` for them to exit, then SIGTERM, then SIGKILL;
        with no grace (after a failure: they hold nothing to save) SIGKILL at once."""
        self._closing.set()
        deadline = time.monotonic() + grace
        for process in self._processes.values():
            if grace <= 0 and process.is_alive():
                process.kill()
            process.join(max(0.0, deadline - time.monotonic()) if grace > 0 else 5)
        self.kill_all()
        for conn in self._conns.values():
            with contextlib.suppress(OSError):
                conn.close()

    def kill_all(self) -> None:
        for process in self._processes.values():
            if process.is_alive():
                process.terminate()
        for process in self._processes.values():
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)


# --- what a rank other than 0 runs ---------------------------------------------------------


def rank_entry(job: TrainJob, world: World, conn: Connection | None) -> None:
    """Spawn target of ranks 1..n-1 (local), and the body of a launched rank > 0.

    Trains silently (no events, no files), exits 0 after a completed or stopped run and
    1 after a failure, whose report goes to rank 0 over `conn` first."""
    raise SystemExit(run_rank(job, world, conn))


def run_rank(job: TrainJob, world: World, conn: Connection | None) -> int:
    from backend.trainer.child import StopRequest, install_stop_handlers
    from backend.trainer.loop import SilentEvents, TrainingLoop

    request = StopRequest(None)
    install_stop_handlers(request)
    if conn is not None:
        threading.Thread(target=_exit_with_rank0, args=(conn,), daemon=True).start()
    outcome = TrainingLoop(job, SilentEvents(), request, world=world).run()
    if outcome.exit_code != 0 and conn is not None:
        report = {k: outcome.data.get(k) for k in ("message", "hint", "cause", "key", "suggested")}
        report["traceback"] = outcome.data.get("traceback")
        with contextlib.suppress(OSError, ValueError):
            conn.send_bytes(json.dumps(report, default=str).encode())
    return outcome.exit_code


def _exit_with_rank0(conn: Connection) -> None:
    """Rank 0 holds the other end: EOF means it died (or closed the group), so go too."""
    try:
        while True:
            conn.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(1)
