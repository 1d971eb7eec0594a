"""The training loop of one attempt: build everything from the resolved config, train,
validate, checkpoint, and report through the emitter.

Iterations are counted as PyTC does: `iteration` in an event is the number of iterations
done, and batch `i` (0-based, a function of (seed, i) alone, see `data.iteration_rng`)
feeds iteration `i + 1`. Per iteration: forward (float16 autocast under CUDA AMP), loss,
backward of `loss / ITERATION_STEP`; every ITERATION_STEP iterations the (unscaled,
clipped) gradients step the optimizer; the LR schedule steps every iteration, as PyTC's.

Reproducibility: model initialisation comes from the seed, batches from (seed, iteration),
and a checkpoint holds model, optimizer, schedule, scaler and RNG state; on the CPU with
deterministic algorithms a resumed run repeats the losses of an uninterrupted one. Stops
are honoured at gradient-accumulation boundaries, so no partial gradient is ever lost.

`TrainingLoop.run()` returns the final `Outcome` (completed, stopped or failed) instead
of emitting it: `child.main` emits exactly one final event, whatever happened.

Data-parallel (`backend.trainer.distributed`): every rank runs this loop on its own
device, its own patch stream (seed + rank) and SAMPLES_PER_BATCH patches (per GPU, as
PyTC), with the model in DistributedDataParallel (gradients averaged over ranks). The
ranks agree on a stop before every accumulation window, report the loss averaged over
ranks, split each validation's tiles between them (counts summed), and call `save`
together (their RNG states gathered); rank 0 alone emits events and writes files.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import signal
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from backend.events import (
    CHECKPOINT,
    COMPLETED,
    FAILED,
    LOG,
    METRIC,
    PROGRESS,
    STOPPED,
    TRAINER_READY,
    VALIDATION,
)
from backend.execution.job import TrainJob
from backend.trainer.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    TrainingState,
    best_path,
    checkpoint_path,
    load_pre_model,
    resume_own,
    save_checkpoint,
    save_dict,
    swa_path,
)
from backend.trainer.data import (
    Batch,
    DataError,
    TrainingData,
    ValBatch,
    count_validation_batches,
    data_workers,
    load_training_data,
    make_loader,
    validation_batches,
)
from backend.trainer.device import DeviceChoice, choose_device
from backend.trainer.distributed import (
    CLOSE_GRACE_S,
    GLOO_TIMEOUT_S,
    NCCL_TIMEOUT_S,
    Group,
    LocalRanks,
    RankFailed,
    RankFailure,
    World,
    backend_for,
    is_peer_error,
    local_world,
    rank_device,
)
from backend.trainer.losses import Criterion, build_criterion, foreground, foreground_truth
from backend.trainer.metrics import BinaryCounts, dice_score, iou_score
from backend.trainer.models import build_model, count_parameters, primary_output, training_output
from backend.trainer.optim import (
    Schedule,
    build_averaging,
    build_optimizer,
    build_schedule,
    clip_gradients,
)
from backend.volumes import VolumeError, preview_png

Config = Mapping[str, Any]
ShouldStop = Callable[[], bool]

PROGRESS_INTERVAL = 0.25  # seconds between progress events (at most ~4 per second)
RATE_SMOOTHING = 0.3  # weight of the newest interval in the its/s moving average
PREVIEW_DIR = "previews"
PREVIEW_NAME = "val_%05d.png"
PEER_FAILURE_WAIT_S = 5.0  # after a failed collective, how long to wait for the dead rank


class Events(Protocol):
    """Where the loop's events go: the child's `Emitter` on rank 0, nowhere elsewhere."""

    def emit(self, type_: str, data: dict[str, Any]) -> None: ...
    def flush(self, *, sync: bool = False) -> None: ...
    def finish(self, type_: str, data: dict[str, Any]) -> bool: ...
    def close(self) -> None: ...


class SilentEvents:
    """The events of ranks other than 0: dropped (rank 0 reports for the run)."""

    def emit(self, type_: str, data: dict[str, Any]) -> None:
        pass

    def flush(self, *, sync: bool = False) -> None:
        pass

    def finish(self, type_: str, data: dict[str, Any]) -> bool:
        return False

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Outcome:
    """How the attempt ended: the final event's type and data, and the exit code."""

    type: str
    data: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return 1 if self.type == FAILED else 0


class NonFiniteLoss(ArithmeticError):
    """The loss became NaN or infinite: training diverged."""

    def __init__(self, iteration: int, lr: float, value: float) -> None:
        super().__init__(f"the loss is {value} at iteration {iteration} (learning rate {lr:g})")
        self.iteration, self.lr, self.value = iteration, lr, value


@dataclass
class _Validation:
    """The result of one validation pass."""

    loss: float
    dice: float
    iou: float
    preview: str | None


@dataclass
class _Rate:
    """Smoothed iterations per second for progress events."""

    t0: float
    it0: int
    last_t: float = 0.0
    last_it: int = 0
    value: float | None = None
    next_at: float = 0.0

    def update(self, now: float, iteration: int) -> float:
        dt = now - (self.last_t or self.t0)
        di = iteration - (self.last_it or self.it0)
        if dt > 0 and di > 0:
            rate = di / dt
            old = self.value
            self.value = rate if old is None else old + RATE_SMOOTHING * (rate - old)
        self.last_t, self.last_it = now, iteration
        return self.value or 0.0


class TrainingLoop:
    """One attempt of one run. `run()` never raises: failures become a `failed` Outcome."""

    def __init__(
        self,
        job: TrainJob,
        emitter: Events,
        should_stop: ShouldStop,
        *,
        world: World | None = None,
    ) -> None:
        self.job = job
        self.cfg: Config = job.config
        self.emitter = emitter
        self.should_stop = should_stop
        # Data-parallel: this process's place (None: a single process), the process group
        # once set up, and (local rank 0 only) the ranks it started.
        self.world = world
        self.group: Group | None = None
        self.ranks: LocalRanks | None = None
        self.iteration = 0  # iterations done
        # Wall and process CPU time inside the iteration loop (benchmarks read them).
        self.train_seconds = 0.0
        self.train_cpu_seconds = 0.0
        self.best_dice: float | None = None
        self.last_validation: _Validation | None = None
        self._validated_at = -1
        self._saved: dict[int, str] = {}
        solver = self.cfg["SOLVER"]
        self.total = int(solver["ITERATION_TOTAL"])
        self.step_every = max(1, int(solver.get("ITERATION_STEP", 1)))
        self.save_every = max(1, int(solver["ITERATION_SAVE"]))
        self.val_every = max(1, int(solver["ITERATION_VAL"]))
        self.lr = float(solver["BASE_LR"])

    # --- the whole attempt -----------------------------------------------------------------

    def run(self) -> Outcome:
        outcome: Outcome | None = None
        try:
            self.setup()
            outcome = self.train()
        except Exception as exc:  # every failure becomes an event with a hint
            outcome = self.failure(exc)
        finally:
            # After a failure the ranks may wait on rank 0 in a collective: end them now.
            self.close_ranks(graceful=outcome is not None and outcome.exit_code == 0)
        return outcome

    @property
    def rank(self) -> int:
        return 0 if self.world is None else self.world.rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self) -> None:
        """Seeds, device, data, model, optimisation, resume or fine-tune; `trainer_ready`."""
        self._start_ranks()
        world = self.world
        seed_everything(self.job.seed + self.rank)  # each rank its own stream, as PyTC
        self.device = choose_device(
            self.cfg,
            threads=self.job.options.get("threads"),
            rank_device=None if world is None else rank_device(world),
            ranks=1 if world is None else world.local_size,
        )
        deterministic = self.job.options.get("deterministic", self.device.device.type == "cpu")
        configure_determinism(bool(deterministic), self.device)
        if world is not None:
            backend = backend_for(self.device.device, self.cfg)
            default_timeout = NCCL_TIMEOUT_S if backend == "nccl" else GLOO_TIMEOUT_S
            timeout = float(self.job.options.get("dist_timeout_s", default_timeout))
            self.group = Group(world, self.device.device, backend, timeout)
        shard = (0, 1) if world is None else (world.rank, world.size)
        self.data = load_training_data(self.cfg, shard)
        # The model's initial weights depend on the seed alone, not on what ran before
        # (nor on the rank: DDP would broadcast rank 0's anyway).
        torch.manual_seed(self.job.seed)
        model = self._distributed_norms(build_model(self.cfg)).to(self.device.device)
        self.net: nn.Module = model  # the bare model: checkpoints, validation, SWA
        self.model: nn.Module = model  # what training calls: wrapped by DDP / DataParallel
        self.criterion: Criterion = build_criterion(self.cfg)
        optimizer = build_optimizer(self.cfg, model)
        self.schedule: Schedule = build_schedule(self.cfg, optimizer)
        self.state = TrainingState(
            model=model,
            optimizer=optimizer,
            scheduler=self.schedule,
            scaler=self.device.grad_scaler(),
            meta={"run_id": self.job.run_id, "attempt": self.job.attempt, "seed": self.job.seed},
            averaging=build_averaging(self.cfg, model),
        )
        notes = list(self.device.notes) + self._load_weights() + self._wrap()
        self.emitter.emit(TRAINER_READY, self._ready_data())
        for level, message in [*notes, ("info", self.data.describe())]:
            self.emitter.emit(LOG, {"level": level, "message": message})

    # --- data parallelism ------------------------------------------------------------------

    def _start_ranks(self) -> None:
        """Local rank 0 of a DDP run starts ranks 1..n-1 first: they import torch and load
        their data while it does the same."""
        if self.world is None:
            self.world = local_world(self.job)
            if self.world is not None:
                self.ranks = LocalRanks(self.job, self.world)
                self.ranks.on_stuck = self._end_stuck

    def _distributed_norms(self, model: nn.Module) -> nn.Module:
        """NORM_MODE sync_bn under DDP on CUDA: SyncBatchNorm, as PyTC (batch statistics
        over every rank's samples). On the CPU torch has no SyncBatchNorm: plain batch norm."""
        sync = str(self.cfg["MODEL"].get("NORM_MODE")) == "sync_bn"
        if self.world is not None and sync and self.device.device.type == "cuda":
            converted: nn.Module = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
            return converted
        return model

    def _wrap(self) -> list[tuple[str, str]]:
        """DistributedDataParallel (a DDP rank) or nn.DataParallel (PARALLEL DP, one process
        on several GPUs) around the loaded model."""
        if self.group is not None and self.world is not None:
            self.model = self.group.wrap(self.net)
            per = int(self.cfg["SOLVER"]["SAMPLES_PER_BATCH"])
            message = (
                f"data-parallel (DDP): {self.world.size} processes, {self.group.backend} on "
                f"{self.device.device.type}; SOLVER.SAMPLES_PER_BATCH {per} per process, "
                f"{per * self.world.size} per iteration in all"
            )
            if self.ranks is not None:
                message += f"; ranks 1..{self.world.size - 1} are processes {self.ranks.pids}"
            return [("info", message)]
        if self.device.data_parallel:
            self.model = nn.DataParallel(self.net, device_ids=list(self.device.data_parallel))
        return []

    def _stop_now(self) -> bool:
        """The stop request, agreed by every rank (so all stop at the same iteration); a
        failed local rank ends the run instead."""
        local = self.should_stop()
        if self.ranks is not None and (failure := self.ranks.failure()) is not None:
            raise RankFailed(failure)
        return local if self.group is None else self.group.agree(local)

    def close_ranks(self, *, graceful: bool = True) -> None:
        """Reap the local ranks (before the final event: none is left behind); they get
        time to finish a stop or the end of training, none after a failure."""
        if self.ranks is not None:
            self.ranks.close(CLOSE_GRACE_S if graceful else 0.0)
        if self.group is not None:
            self.group.close()

    def _end_stuck(self, failure: RankFailure) -> None:
        """Rank 0 hangs in a collective after a rank died (NCCL waits for its timeout):
        report the failure from the watchdog thread and end the process."""
        data = {**failure.event(), "traceback": "", "iteration": self.iteration}
        with contextlib.suppress(Exception):
            self.emitter.finish(FAILED, data)
            self.emitter.close()
        os._exit(1)

    def _load_weights(self) -> list[tuple[str, str]]:
        restart = bool(self.cfg["SOLVER"].get("ITERATION_RESTART", False))
        start = int(self.cfg["MODEL"].get("PRE_MODEL_ITER") or 0)
        pre_model = str(self.cfg["MODEL"].get("PRE_MODEL") or "")
        if self.job.resume_from:
            candidates = [self.job.resume_from, *self._own_checkpoints()]
            restored = resume_own(
                self.state,
                candidates,
                self.job.run_id,
                restart=restart,
                start_iteration=start,
                rank=self.rank,
            )
        elif pre_model:
            restored = load_pre_model(self.state, pre_model, restart=restart, start_iteration=start)
        else:
            return []
        self.iteration, self.best_dice = restored.iteration, restored.best_dice
        return restored.notes

    def _own_checkpoints(self) -> list[str]:
        """Fallbacks for a resume, newest first: the run's own paths (`TrainJob`, from its
        `checkpoint` events), else every numbered checkpoint in the output folder
        (`resume_own` reads the owner of each before loading it)."""
        if self.job.own_checkpoints:
            return list(self.job.own_checkpoints)
        folder = Path(self.job.output_path)
        found = folder.glob(CHECKPOINT_NAME.replace("%05d", "*")) if folder.is_dir() else []
        numbered = [(p.name[len("checkpoint_") : -len(".pth.tar")], p) for p in found]
        return [str(p) for n, p in sorted(numbered, reverse=True) if n.isdigit()]

    def _ready_data(self) -> dict[str, Any]:
        extra = {} if self.world is None else {"world_size": self.world.size}
        return extra | {
            "device": self.device.name,
            "amp": self.device.amp,
            "parameters": count_parameters(self.net),
            "train_shapes": [list(p.shape) for p in self.data.train],
            "val_shapes": [list(p.shape) for p in self.data.val],
            "torch": torch.__version__,
            "start_iteration": self.iteration,
        }

    # --- training --------------------------------------------------------------------------

    def train(self) -> Outcome:
        start = self.iteration
        batches = self._batches(start)
        self.model.train()
        rate = _Rate(t0=time.monotonic(), it0=start)
        rate.next_at = rate.t0 + PROGRESS_INTERVAL
        began, began_cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            # With accumulation or a skipped AMP step, the schedule steps before the
            # optimizer's first step; intended (the schedule counts iterations), not a bug.
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*optimizer.step")
            for index in range(start, self.total):
                if index % self.step_every == 0 and self._stop_now():
                    self._clock_out(began, began_cpu)
                    return self.stop()
                self._step(next(batches), index)
                self._progress(rate)
                self._periodic()
        self._clock_out(began, began_cpu)
        del batches  # shuts DataLoader workers down before validation
        return self.complete()

    def _clock_out(self, began: float, began_cpu: float) -> None:
        self.train_seconds += time.perf_counter() - began
        self.train_cpu_seconds += time.process_time() - began_cpu

    def _batches(self, start: int) -> Iterator[Batch]:
        # PyTC gives each rank NUM_CPUS // NUM_GPUS loader workers.
        share = 1 if self.world is None else self.world.local_size
        loader = make_loader(
            self.cfg,
            self.data,
            self.job.seed + self.rank,
            start,
            self.total,
            streams=int(self.job.options.get("data_streams", 1)),
            workers=data_workers(self.cfg) // share,
        )
        if isinstance(loader, DataLoader) and loader.num_workers > 0:
            loader.worker_init_fn = _ignore_stop_signals
        return iter(loader)

    def _step(self, batch: Batch, index: int) -> None:
        device = self.device.device
        batch = batch.to(device, non_blocking=device.type == "cuda")
        state = self.state
        done = index + 1
        stepping = done % self.step_every == 0 or done == self.total
        with self._accumulating(not stepping):
            with self.device.autocast():
                output = training_output(self.model(batch.image))  # dict for DeepLab's aux
            loss, parts = self.criterion.compute(output, batch.targets, batch.weights)
            scaled = loss / self.step_every if self.step_every > 1 else loss
            torch.autograd.backward(state.scaler.scale(scaled))
        self.lr = float(state.optimizer.param_groups[0]["lr"])
        if stepping:
            self._optimizer_step()
        reported = torch.stack([loss.detach(), *parts.values()])
        if self.group is not None:  # every rank reports, and schedules with, the mean
            reported = self.group.mean(reported)
        values = reported.tolist()  # one host sync for the loss and all its components
        self.schedule.step(index, values[0])  # ReduceLROnPlateau steps on the training loss
        if state.averaging is not None:
            state.averaging.maybe_update(index, self.net)
        self.iteration = done
        components = dict(zip(parts, values[1:], strict=True))
        self.emitter.emit(
            METRIC,
            {"iteration": done, "loss": values[0], "lr": self.lr, "components": components},
        )
        if not math.isfinite(values[0]):
            raise NonFiniteLoss(done, self.lr, values[0])

    def _accumulating(self, inside_window: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP averages gradients once per accumulation window, not at every backward."""
        no_sync = getattr(self.model, "no_sync", None)
        return no_sync() if inside_window and no_sync is not None else contextlib.nullcontext()

    def _optimizer_step(self) -> None:
        state = self.state
        if self.cfg["SOLVER"]["CLIP_GRADIENTS"]["ENABLED"]:
            state.scaler.unscale_(state.optimizer)  # clip true gradients, not scaled ones
            clip_gradients(self.cfg, self.net)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.optimizer.zero_grad(set_to_none=True)

    def _progress(self, rate: _Rate) -> None:
        now = time.monotonic()
        if now < rate.next_at and self.iteration != self.total:
            return
        rate.next_at = now + PROGRESS_INTERVAL
        its = rate.update(now, self.iteration)
        left = self.total - self.iteration
        self.emitter.emit(
            PROGRESS,
            {
                "iteration": self.iteration,
                "total": self.total,
                "its_per_s": its,
                "eta_s": left / its if its > 0 else None,
                "elapsed_s": now - rate.t0,
            },
        )

    def _periodic(self) -> None:
        # Validate first: the checkpoint then records whether this iteration was the best.
        if self.iteration % self.val_every == 0:
            self.validate()
        if self.iteration % self.save_every == 0:
            self.save()

    # --- endings ---------------------------------------------------------------------------

    def complete(self) -> Outcome:
        if self._validated_at != self.iteration:
            self.validate()
        self._memory_note()
        path = self._saved.get(self.iteration) or self.save()
        if self.is_main:
            self.save_average()
        result = self.last_validation
        metrics = {} if result is None else {"loss": result.loss, "dice": result.dice}
        if result is not None:
            metrics["iou"] = result.iou
        return Outcome(
            COMPLETED, {"iteration": self.iteration, "metrics": metrics, "checkpoint": path}
        )

    def _memory_note(self) -> None:
        """On CUDA: the peak memory this process's tensors took, for sizing batches."""
        device = self.device.device
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2**20
            message = (
                f"peak GPU memory {peak:.0f} MiB on {device} (torch.cuda.max_memory_allocated)"
            )
            self.emitter.emit(LOG, {"level": "info", "message": message})

    def stop(self) -> Outcome:
        path = self._saved.get(self.iteration) or self.save()
        return Outcome(STOPPED, {"iteration": self.iteration, "checkpoint": path})

    def failure(self, exc: BaseException) -> Outcome:
        if self.ranks is not None and is_peer_error(exc):
            # A collective failed: the rank that went away is the cause, not this one.
            lost = self.ranks.wait_failure(PEER_FAILURE_WAIT_S)
            exc = RankFailed(lost) if lost is not None else exc
        if self.world is not None and self.ranks is None and is_peer_error(exc):
            return Outcome(FAILED, self._lost_peers(exc))
        if isinstance(exc, RankFailed):
            return Outcome(
                FAILED,
                {
                    **exc.failure.event(),
                    "traceback": exc.failure.report.get("traceback") or "",
                    "iteration": self.iteration,
                },
            )
        failure = describe_failure(exc, self.cfg, self.lr)
        return Outcome(
            FAILED,
            {
                **failure.to_event(),
                "traceback": "".join(traceback.format_exception(exc)),
                "iteration": self.iteration,
            },
        )

    def _lost_peers(self, exc: BaseException) -> dict[str, Any]:
        """A launched rank (srun) whose collective failed: another task went away."""
        assert self.world is not None
        return {
            "message": f"rank {self.rank} of {self.world.size} lost the other ranks: "
            f"{_first_line(exc)}",
            "hint": "another task of this job failed or was killed; its own output (the "
            "job's log) says why. Resume from the last checkpoint to retry",
            "cause": "code",
            "key": None,
            "suggested": None,
            "traceback": "".join(traceback.format_exception(exc)),
            "iteration": self.iteration,
        }

    # --- checkpoints -----------------------------------------------------------------------

    def save(self, *, best: bool = False) -> str:
        """Write a checkpoint (rank 0). Under DDP every rank calls it for the numbered
        ones (their RNG states are gathered into it); the best one is rank 0's alone."""
        self.state.iteration = self.iteration
        self.state.best_dice = self.best_dice
        if self.group is not None and not best:
            self.state.rng_states = self.group.rng_states()
        target = best_path(self.job.output_path) if best else None
        target = target or checkpoint_path(self.job.output_path, self.iteration)
        path = str(save_checkpoint(self.state, target)) if self.is_main else str(target)
        if not best:
            self._saved[self.iteration] = path
        self.emitter.emit(CHECKPOINT, {"iteration": self.iteration, "path": path, "best": best})
        return path

    def save_average(self) -> str | None:
        """SOLVER.SWA: refresh batch-norm statistics of the averaged model on training batches
        (BN_UPDATE_ITER, with NORM_MODE bn / sync_bn, as PyTC), then `checkpoint_swa.pth.tar`."""
        averaging = self.state.averaging
        if averaging is None or averaging.updates == 0:
            return None
        if str(self.cfg["MODEL"].get("NORM_MODE")) in ("bn", "sync_bn"):
            batches = self._batches(0)
            averaging.model.train()
            with torch.no_grad():
                for _ in range(averaging.bn_update_iters):
                    averaging.model(next(batches).image.to(self.device.device))
            del batches
        weights = {"state_dict": averaging.model.module.state_dict()}
        path = str(save_dict(weights, swa_path(self.job.output_path)))
        message = f"SWA: {averaging.updates} averaged models saved to {path}"
        self.emitter.emit(LOG, {"level": "info", "message": message})
        return path

    # --- validation ------------------------------------------------------------------------

    def validate(self) -> _Validation | None:
        """Loss, Dice and IoU over the validation volumes, a preview PNG, `validation`.
        Returns None (and emits nothing) when a stop request interrupts it."""
        self._validated_at = self.iteration
        self.net.eval()
        try:
            result = self._evaluate()
        finally:
            self.net.train()
        if result is None:
            return None
        improved = self.best_dice is None or result.dice > self.best_dice
        if improved:
            self.best_dice = result.dice
        self.last_validation = result
        self.emitter.emit(
            VALIDATION,
            {
                "iteration": self.iteration,
                "loss": result.loss,
                "dice": result.dice,
                "iou": result.iou,
                "preview": result.preview,
                "best": improved,
            },
        )
        if improved and self.is_main:
            self.save(best=True)
        self.emitter.flush()  # validation is slow: show it now, not with the next metric
        return result

    def _evaluate(self) -> _Validation | None:
        """Under DDP rank r takes batches r, r + n, ...; each round of n batches starts with
        an agreed stop check, so every rank abandons a stopped validation at once; the
        sums (loss, tiles, TP/FP/FN, the preview's pixels) are then added over ranks."""
        counts = BinaryCounts()
        preview = _PreviewCanvas.for_data(self.data, self.cfg)
        loss_sum, tiles = torch.zeros((), device=self.device.device), 0
        ranks = 1 if self.world is None else self.world.size
        rounds = math.ceil(count_validation_batches(self.cfg, self.data) / ranks)
        batches = validation_batches(self.cfg, self.data, shard=(self.rank, ranks))
        with torch.no_grad():
            for _ in range(rounds):
                if self._stop_now():
                    return None
                vb = next(batches, None)
                if vb is None:  # this rank's share ended a round early
                    continue
                loss, probs = self._evaluate_batch(vb)
                loss_sum += loss * len(vb.tiles)
                tiles += len(vb.tiles)
                truth = foreground_truth(self.cfg, vb.targets[0]).to(probs.device)
                counts.add(probs, truth, vb.mask.to(probs.device))
                if preview is not None:
                    preview.paste(vb, probs)
        tp, fp, fn = counts.values
        if self.group is not None:
            sums = torch.tensor([float(loss_sum), tiles, tp, fp, fn], dtype=torch.float64)
            total = self.group.sum(sums).cpu().tolist()
            loss_sum, tiles = torch.tensor(total[0]), int(total[1])
            tp, fp, fn = (int(v) for v in total[2:])
            if preview is not None:  # each pixel comes from one tile, so from one rank
                preview.pred = self.group.sum(torch.from_numpy(preview.pred)).cpu().numpy()
        path = None
        if preview is not None and self.is_main:
            target = Path(self.job.log_path) / PREVIEW_DIR / (PREVIEW_NAME % self.iteration)
            path = preview.save(target)
        val_loss = float(loss_sum) / max(tiles, 1)
        return _Validation(val_loss, dice_score(tp, fp, fn), iou_score(tp, fp, fn), path)

    def _evaluate_batch(self, vb: ValBatch) -> tuple[Tensor, Tensor]:
        device = self.device.device
        with self.device.autocast():
            # The bare model: DDP's forward would broadcast buffers, a collective, and
            # the ranks evaluate different numbers of batches.
            output = training_output(self.net(vb.image.to(device)))
        targets = [t.to(device) for t in vb.targets]
        weights = [[None if w is None else w.to(device) for w in row] for row in vb.weights]
        loss, _ = self.criterion.compute(output, targets, weights)
        return loss, foreground(self.cfg, primary_output(output))


class _PreviewCanvas:
    """The middle slice of the first validation volume: image | label | prediction."""

    def __init__(self, image: np.ndarray, label: np.ndarray, z: int) -> None:
        self.image, self.label, self.z = image, label, z
        self.height, self.width = int(image.shape[0]), int(image.shape[1])
        self.pred = np.zeros((self.height, self.width), dtype=np.float32)

    @classmethod
    def for_data(cls, data: TrainingData, cfg: Config) -> _PreviewCanvas | None:
        if not data.val:
            return None
        pair = data.val[0]
        z = pair.shape[0] // 2
        label = np.asarray(pair.label[z])
        if str(cfg["MODEL"]["TARGET_OPT"][0]) == "0":
            label = (label > 0).astype(np.uint8)  # compare like with like: a mask
        return cls(np.asarray(pair.image[z]), label, z)

    def paste(self, vb: ValBatch, probs: Tensor) -> None:
        height, width = self.height, self.width
        for b, tile in enumerate(vb.tiles):
            z0, y0, x0 = tile.origin
            depth = 1 if probs.dim() == 4 else probs.shape[2]
            if tile.volume != 0 or not z0 <= self.z < z0 + depth:
                continue
            plane = probs[b, 0] if probs.dim() == 4 else probs[b, 0, self.z - z0]
            h, w = min(plane.shape[0], height - y0), min(plane.shape[1], width - x0)
            self.pred[y0 : y0 + h, x0 : x0 + w] = plane[:h, :w].float().cpu().numpy()

    def save(self, target: Path) -> str:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(preview_png(self.image, self.label, self.pred))
        partial.replace(target)  # a reader never sees half a PNG
        return str(target)


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM/SIGINT. A signal sent to the process group (Ctrl-C
    in the server's terminal, `timeout`, a supervisor killing the group) would otherwise
    kill them mid-batch, and PyTorch would raise "worker killed" inside the step: a failed
    run instead of the graceful stop the trainer is performing. The DataLoader still shuts
    them down, and they exit by themselves when the trainer dies."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# --- setup helpers -------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool, device: DeviceChoice) -> None:
    """Deterministic kernels where they are cheap (the CPU); cuDNN autotuning on GPUs."""
    # What `torch.use_deterministic_algorithms` does but for also setting Inductor's flag:
    # that import pulls in torch._dynamo (~3 s of every start), and nothing here compiles.
    torch._C._set_deterministic_algorithms(deterministic, warn_only=True)
    # Deterministic mode also NaN-fills every uninitialised allocation, a debugging aid
    # that cost ~4% of a CPU iteration here; correct kernels never read that memory.
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    if device.device.type == "cuda":
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic


# --- failures and their hints --------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """What a `failed` event says: what happened, what to change, and, for the browser's
    "Fix configuration and retry", the cause ("config", "data", "resources" or "code"),
    the key to change and a value for it that validates (None when there is none)."""

    message: str
    hint: str
    cause: str
    key: str | None = None
    suggested: Any = None

    def to_event(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "hint": self.hint,
            "cause": self.cause,
            "key": self.key,
            "suggested": self.suggested,
        }


def describe_failure(exc: BaseException, cfg: Config, lr: float) -> Failure:
    """What happened and what to change; config-caused failures name the key and a value."""
    solver, model, dataset = cfg["SOLVER"], cfg["MODEL"], cfg["DATASET"]
    if isinstance(exc, NonFiniteLoss):
        base = float(solver["BASE_LR"])
        lower = lower_learning_rate(base)
        return Failure(
            str(exc),
            f"training diverged: lower SOLVER.BASE_LR (now {base:g}), e.g. to {lower:g}, "
            "or enable SOLVER.CLIP_GRADIENTS",
            "config",
            "SOLVER.BASE_LR",
            lower,
        )
    if _is_out_of_memory(exc):
        where = "GPU" if isinstance(exc, torch.cuda.OutOfMemoryError) else "memory"
        batch = int(solver["SAMPLES_PER_BATCH"])
        key, value = ("SOLVER.SAMPLES_PER_BATCH", batch // 2) if batch > 1 else (None, None)
        return Failure(
            f"out of {where} memory: {_first_line(exc)}",
            f"lower SOLVER.SAMPLES_PER_BATCH (now {batch}) or "
            f"MODEL.INPUT_SIZE (now {list(model['INPUT_SIZE'])}), or use smaller MODEL.FILTERS",
            "resources",
            key,
            value,
        )
    if isinstance(exc, DataError | VolumeError):
        return Failure(
            f"cannot read the training data: {exc}",
            "check the file named in the message: it must exist, be readable and hold a "
            f"(z, y, x) volume. Data comes from DATASET.INPUT_PATH {dataset.get('INPUT_PATH')!r} "
            f"with IMAGE_NAME {dataset.get('IMAGE_NAME')!r}, LABEL_NAME "
            f"{dataset.get('LABEL_NAME')!r}, VAL_IMAGE_NAME {dataset.get('VAL_IMAGE_NAME')!r}",
            "data",
        )
    if isinstance(exc, OSError):
        name = exc.filename or "the file named in the message"
        return Failure(
            f"file error: {exc}",
            f"check {name}: inputs must exist and be readable, DATASET.OUTPUT_PATH and the "
            "log folder writable, and the disk not full",
            "resources",
        )
    if isinstance(exc, CheckpointError):
        pre_model = str(model.get("PRE_MODEL") or "")
        is_pre_model = bool(pre_model) and exc.path == pre_model
        return Failure(
            str(exc),
            f"check the checkpoint {exc.path}; to start without it clear MODEL.PRE_MODEL "
            "or create a new run",
            "config" if is_pre_model else "data",
            "MODEL.PRE_MODEL" if is_pre_model else None,
            "" if is_pre_model else None,
        )
    if isinstance(exc, ValueError):
        named = _CONFIG_KEY.search(str(exc))
        return Failure(
            f"invalid configuration: {exc}",
            "fix the config key named in the message (the config validator lists every "
            "problem) and start again",
            "config",
            named.group(0) if named else None,
        )
    return Failure(
        f"{type(exc).__name__}: {exc}",
        "an unexpected error stopped training; the traceback shows where. Resume from the "
        "last checkpoint to retry, or report the traceback with your config",
        "code",
    )


_CONFIG_KEY = re.compile(r"\b(?:SYSTEM|MODEL|DATASET|AUGMENTOR|SOLVER|MONITOR)(?:\.[A-Z0-9_]+)+")
DEFAULT_LR = 0.001  # PyTC's SOLVER.BASE_LR
MAX_SUGGESTED_LR = 0.01  # mid-range of the 0.001-0.04 that PyTC's published configs use


def lower_learning_rate(lr: float) -> float:
    """A tenth of `lr` in 3 significant digits, never above `MAX_SUGGESTED_LR` nor `lr`.

    A tenth of an absurd rate is still absurd (1e6 -> 1e5): past the cap the sane advice is
    a rate U-Nets are known to train with, not a smaller absurdity."""
    if not math.isfinite(lr) or lr <= 0:
        return DEFAULT_LR
    lower = min(float(f"{lr / 10:.3g}"), MAX_SUGGESTED_LR)
    return lower if 0 < lower <= lr else lr


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError | torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
