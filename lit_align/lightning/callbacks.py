"""Callbacks every method can use: Hugging Face export after fit, predictions to jsonl, requeue on a signal.

A callback that needs something of the module declares it (``Exportable``) and refuses a module
without it at setup, naming the module's class; none probes the module with ``getattr``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Protocol, runtime_checkable

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.strategies import FSDPStrategy

log = logging.getLogger(__name__)


@runtime_checkable
class Exportable(Protocol):
    """A module that writes its trained model in Hugging Face format (the policy methods, ``RewardModel``)."""

    def export(self, directory: str | Path) -> Path:
        """Write the model and its tokenizer to ``directory``; return the folder."""


class HFExport(L.Callback):
    """After ``fit``, save the trained model (LoRA merged) and tokenizer in Hugging Face format (``Exportable``)."""

    def __init__(self, dirpath: str = "outputs/export"):
        """
        Args:
            dirpath: folder for config.json, weights and tokenizer files; ``from_pretrained`` loads it.
        """
        self.dirpath = dirpath

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if stage == "fit" and not isinstance(pl_module, Exportable):  # refused before training, not after it
            raise TypeError(f"HFExport needs a module with export(directory) (an Exportable); "
                            f"{type(pl_module).__name__} has none")

    def on_fit_end(self, trainer: L.Trainer, pl_module: Exportable) -> None:
        with full_parameters(trainer):  # every rank takes part in gathering; rank 0 writes
            if trainer.is_global_zero:
                path = pl_module.export(Path(self.dirpath))
                log.info("exported the trained model to %s", path)
                print(f"[lit_align] exported the trained model in Hugging Face format to {path}")
        trainer.strategy.barrier()


def full_parameters(trainer: L.Trainer):
    """Context in which rank 0 holds whole (unsharded) parameters on CPU; a no-op unless FSDP shards them."""
    if not isinstance(trainer.strategy, FSDPStrategy):
        return contextlib.nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel.summon_full_params(
        trainer.strategy.model, writeback=False, rank0_only=True, offload_to_cpu=True
    )


class JsonlPredictionWriter(BasePredictionWriter):
    """Write each ``predict`` output row (record + completion) as one JSON line."""

    def __init__(self, path: str = "outputs/predictions.jsonl"):
        """
        Args:
            path: output file; with several devices each rank writes ``path`` with ``.rankN`` added.
        """
        super().__init__(write_interval="batch")
        self.path = path
        self._opened: set[str] = set()

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        path = Path(self.path if trainer.world_size == 1 else f"{self.path}.rank{trainer.global_rank}")
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = "a" if str(path) in self._opened else "w"
        self._opened.add(str(path))
        with path.open(mode, encoding="utf-8") as f:
            for row in prediction:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


class Preempted(SystemExit):
    """Raised by :class:`RequeueOnSignal` after its checkpoint: ends ``fit`` before ``on_fit_end``, so no export."""


class RequeueOnSignal(L.Callback):
    """On a signal (Slurm's pre-timeout ``SIGUSR1``), checkpoint at the next step boundary, requeue, and stop.

    Lightning's own Slurm auto-requeue saves inside the signal handler, i.e. possibly halfway through a
    training step, and such a checkpoint cannot resume exactly. Here the handler only sets a flag. When
    an optimiser step is complete (never inside a gradient-accumulation window) the ranks agree on the
    flag; then every rank takes part in ``trainer.save_checkpoint(DIRPATH/last.ckpt)``, rank 0 runs
    ``scontrol requeue`` on the job (inside Slurm), and every rank raises :class:`Preempted`, so the
    run ends without ``on_fit_end`` (no partial Hugging Face export). The requeued job starts again
    with ``--ckpt_path last`` and resumes from that step. Outside Slurm it saves and stops.

    The handler is installed at ``setup`` (before Lightning registers its handlers, so with
    ``SLURMEnvironment(auto_requeue=True)`` Lightning does not add its mid-step one) and checked again
    at train start; the previous handler is put back at teardown. Set ``auto_requeue: false`` anyway.
    """

    def __init__(self, signal_name: str = "SIGUSR1", dirpath: str | None = None):
        """
        Args:
            signal_name: the signal that asks for checkpoint-and-requeue; match sbatch ``--signal``.
            dirpath: folder for ``last.ckpt``; None: the ModelCheckpoint callback's, where ``--ckpt_path last`` looks.
        """
        self.signal_name, self.dirpath = signal_name, dirpath
        self.signum = getattr(signal, signal_name)
        self.requested = False
        self._previous = None
        self._installed = False
        self._step_at_batch_start = 0

    def _handler(self, signum, frame) -> None:
        self.requested = True  # only a flag: the checkpoint waits for the end of the step

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        current = signal.getsignal(self.signum)
        if current == self._handler:
            return
        if not self._installed:
            self._previous, self._installed = current, True
        signal.signal(self.signum, self._handler)

    def _restore(self) -> None:
        if self._installed and threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        if self.dirpath is None:
            checkpoint = trainer.checkpoint_callback
            if checkpoint is None:
                raise ValueError("RequeueOnSignal needs a ModelCheckpoint callback or its own dirpath")
            if getattr(checkpoint, "dirpath", None) is None and trainer.loggers:
                log.warning("ModelCheckpoint has no dirpath: it saves under the logger's version folder, which a "
                            "requeued run (a new version) does not look in; set its dirpath for --ckpt_path last")
        self.requested = False
        self._install()

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._install()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._step_at_batch_start:
            return  # inside a gradient-accumulation window: the step is not complete
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        path = Path(self.dirpath or trainer.checkpoint_callback.dirpath) / "last.ckpt"
        # Every rank takes part (sharded strategies write a shard each); it ends with a barrier.
        trainer.save_checkpoint(path, weights_only=False)
        if trainer.is_global_zero:
            job = requeue_slurm_job()
            if job:
                where = f"requeued Slurm job {job}"
            elif os.environ.get("SLURM_JOB_ID"):
                where = "the Slurm job was not requeued (see the warning): stopping; resubmit to resume"
            else:
                where = "not inside a Slurm job: stopping"
            print(f"[lit_align] {self.signal_name}: saved {path} at step {trainer.global_step}; {where}", flush=True)
        # No rank leaves before rank 0 has requeued (srun --kill-on-bad-exit would end rank 0 first).
        trainer.strategy.barrier("RequeueOnSignal")
        raise Preempted(f"[lit_align] stopped on {self.signal_name} at step {trainer.global_step}; "
                        f"resume with --ckpt_path {path} (or last)")

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        self._restore()

    def teardown(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        self._restore()


def requeue_slurm_job() -> str | None:
    """``scontrol requeue`` this Slurm job (array task: ``ARRAYJOB_TASK``); its id, or None outside Slurm or on failure."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job:
        job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    else:
        job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        result = subprocess.run(["scontrol", "requeue", job], check=False, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("could not requeue Slurm job %s: %s", job, error)
        return None
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed (%d): %s", job, result.returncode, result.stderr.strip())
        return None
    return job
