"""A real single-node Slurm cluster in a temporary folder, for tests and benchmarks.

`SlurmCluster(root).start()` writes a `slurm.conf` for this machine (one node named
after `hostname -s` with every CPU this process may use, one partition `debug`), a
fresh munge key, and starts `munged`, `slurmctld` and `slurmd` in the foreground as
children of this process, on free loopback ports, everything they write under `root`.
It returns once `sinfo` shows the node idle. `stop()` cancels every job left, then ends
the daemons by their PIDs (SIGTERM, then SIGKILL after a bounded wait) and reaps them.

`env` is what a client needs (`SLURM_CONF`); Slurm's own CLI (`sbatch`, `squeue`,
`scancel`, `scontrol`, `sinfo`) then talks to this cluster only. It runs as root with
`ProctrackType=proctrack/linuxproc` and `TaskPlugin=task/none`, which need no cgroups,
and `select/cons_tres` with CR_CPU so that jobs share the node by CPUs. Accounting is
off, so `scontrol show job` (kept for MinJobAge) is the only record of an ended job.

Debian's `slurm-wlm` and `munge` packages provide the programs (`.ci/run` installs them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PROGRAMS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo", "slurmctld", "slurmd", "munged")
PARTITION = "debug"
_READY_S = 30.0  # bounded waits: the daemons start in well under a second here
_STOP_S = 10.0


_shared: SlurmCluster | None = None
_users = 0


@contextlib.contextmanager
def shared_cluster(make_root: Callable[[], Path]) -> Iterator[SlurmCluster]:
    """One cluster per process however many fixtures ask (a module importing the fixture
    registers it again): started by the first, stopped when the last is done."""
    global _shared, _users
    if _shared is None:
        _shared = SlurmCluster(make_root()).start()
    _users += 1
    try:
        yield _shared
    finally:
        _users -= 1
        if _users == 0:
            _shared.stop()
            _shared = None


def missing_programs() -> list[str]:
    """The programs a cluster needs that are not on PATH (slurmctld etc. live in sbin)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [name for name in PROGRAMS if shutil.which(name, path=path) is None]


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


class SlurmCluster:
    """munged + slurmctld + slurmd for one node, rooted in a folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        self.cpus = cpu_count()
        self.partition = PARTITION
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.env = {"SLURM_CONF": str(self.conf)}
        self._daemons: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> SlurmCluster:
        try:
            self._write_files()
            self._start_munge()
            self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
            self._spawn("slurmd", ["slurmd", "-D"])
            self._wait_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel every job, then end the daemons by their PIDs, newest first."""
        if "slurmctld" in self._daemons and self._daemons["slurmctld"].poll() is None:
            for how in (["--full", "--signal=KILL"], []):  # every process, then every job
                subprocess.run(
                    ["scancel", *how, f"--partition={self.partition}"],
                    env=self.client_env(),
                    capture_output=True,
                    timeout=_STOP_S,
                    check=False,
                )
            self._wait(lambda: not self.squeue(), _STOP_S)
        for name in reversed(list(self._daemons)):
            _end(self._daemons.pop(name))

    def client_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def squeue(self) -> str:
        done = subprocess.run(
            ["squeue", "-h", "-o", "%i|%T|%r"],
            env=self.client_env(),
            capture_output=True,
            text=True,
            timeout=_STOP_S,
            check=False,
        )
        return done.stdout.strip()

    def hold_every_cpu(self, seconds: int = 300) -> str:
        """Submit a job that takes every CPU of the node (so the next one waits); its id."""
        done = subprocess.run(
            [
                "sbatch",
                "--parsable",
                f"--cpus-per-task={self.cpus}",
                "--output=/dev/null",  # not slurm-<id>.out in the working directory
                "--job-name=hold-every-cpu",
                "--wrap",
                f"sleep {seconds}",
            ],
            env=self.client_env(),
            capture_output=True,
            text=True,
            timeout=_STOP_S,
            check=True,
        )
        return done.stdout.strip().split(";")[0]

    def log_tail(self, lines: int = 20) -> str:
        """The end of each daemon's log (for failure messages)."""
        parts = []
        for log in sorted((self.root / "log").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(parts)

    # --- starting ---------------------------------------------------------------------------

    def _write_files(self) -> None:
        for name in ("munge", "state", "spool", "log"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        ctld_port, slurmd_port = _free_port(), _free_port()
        settings = {
            "ClusterName": "trainboard-test",
            "SlurmctldHost": f"{self.node}(127.0.0.1)",
            "SlurmctldPort": ctld_port,
            "SlurmdPort": slurmd_port,
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={self.munge_socket}",
            "StateSaveLocation": self.root / "state",
            "SlurmdSpoolDir": self.root / "spool",
            "SlurmctldPidFile": self.root / "slurmctld.pid",
            "SlurmdPidFile": self.root / "slurmd.pid",
            "SlurmctldLogFile": self.root / "log" / "slurmctld.log",
            "SlurmdLogFile": self.root / "log" / "slurmd.log",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_CPU",
            "SchedulerType": "sched/backfill",
            "SchedulerParameters": "sched_interval=1",
            "MpiDefault": "none",
            "ReturnToService": 2,
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "KillWait": 5,
            "MinJobAge": 600,  # keep ended jobs in `scontrol show job` for the tests
            "SlurmctldTimeout": 10,
            "SlurmdTimeout": 10,
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        lines.append(f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN")
        lines.append(
            f"PartitionName={self.partition} Nodes={self.node} Default=YES "
            "MaxTime=INFINITE State=UP"
        )
        self.conf.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _start_munge(self) -> None:
        munge = self.root / "munge"
        key = munge / "munge.key"
        subprocess.run(
            ["mungekey", "--create", f"--keyfile={key}", "--force"],
            capture_output=True,
            timeout=_STOP_S,
            check=True,
        )
        key.chmod(0o400)
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",  # as root, in a folder under /tmp
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
        )
        self._wait(self.munge_socket.exists, _READY_S, "munged did not create its socket")

    def _spawn(self, name: str, argv: list[str]) -> None:
        path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
        program = shutil.which(argv[0], path=path) or argv[0]
        out = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115
        with out:
            self._daemons[name] = subprocess.Popen(
                [program, *argv[1:]],
                env=self.client_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest reaches them through stop()
            )

    def _wait_idle(self) -> None:
        def idle() -> bool:
            for name, daemon in self._daemons.items():
                if daemon.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {daemon.returncode}:\n{self.log_tail()}"
                    )
            done = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%t"],
                env=self.client_env(),
                capture_output=True,
                text=True,
                timeout=_STOP_S,
                check=False,
            )
            return done.stdout.strip() == "idle"

        self._wait(idle, _READY_S, "the Slurm node did not become idle")

    def _wait(self, ready: Callable[[], bool], seconds: float, failure: str | None = None) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if ready():
                return True
            time.sleep(0.1)
        if failure is not None:
            raise RuntimeError(f"{failure} within {seconds:.0f} s:\n{self.log_tail()}")
        return False


def _end(daemon: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited in time; always reaped."""
    if daemon.poll() is not None:
        return
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(_STOP_S)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait(_STOP_S)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
