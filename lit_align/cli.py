"""``python -m lit_align {fit,validate,test,predict} --config FILE.yaml``.

``model.class_path`` picks the method (``lit_align.methods.SFT``, ...); ``data`` is always an
``AlignDataModule``, connected to the method once both exist (``connect``). Trainer flags
(accelerator, devices, strategy, precision, num_nodes) pick the hardware.

From the command line, a mistake in the user's config or data (a malformed or undecodable record, an
empty or missing file, a model or dataset that cannot be loaded, a refused setting) prints one
message naming the file, record and field, and exits with status 1; ``LIT_ALIGN_TRACEBACK=1`` shows
the full traceback instead. Called from Python, ``main`` raises as usual.

Repeatable digits (docs/reproducibility.md): building the config's objects leaves the seeded random
generators as ``seed_everything`` left them (``draws_untouched``), so a first run that converts an
embedded model into its cache trains from the same numbers as every later run; the thread counts the
digits depend on are logged at start, with a warning where OpenMP would size its teams by load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import warnings
from typing import Protocol, runtime_checkable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import LightningCLI

from lit_align.data.datamodule import AlignDataModule, UsesData
from lit_align.modeling import hardware
from lit_align.modeling.models import ModelLoadError

TRACEBACK_ENV = "LIT_ALIGN_TRACEBACK"
# The user's config, data or environment is at fault: DataError, RewardError and refused settings are
# ValueErrors; a missing optional package (vLLM) is an ImportError whose message says what to install.
USER_ERRORS = (ValueError, ModelLoadError, FileNotFoundError, ImportError)


@contextlib.contextmanager
def plain_errors(program: str = "lit_align"):
    """Print a user error as one line and exit 1, unless ``LIT_ALIGN_TRACEBACK`` is set."""
    try:
        yield
    except USER_ERRORS as e:
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"{program}: error: {e}\n(set {TRACEBACK_ENV}=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(1) from None


def connect(data: AlignDataModule, method: L.LightningModule) -> AlignDataModule:
    """The handshake between the data and the method, made once before any run; returns ``data``.

    The data is told the method's ``tokenizer`` and ``batch_kind``; a method that declares it uses its
    data (``UsesData``: DPO's precomputed reference, the reward model's exported length) is handed the
    data's ``view()``. Each value goes one way, here: the data never looks into the trainer or the
    method, and the method never reads ``trainer.datamodule``. From Python:
    ``trainer.fit(method, connect(data, method))``.
    """
    data.connect(method.tokenizer, method.batch_kind)
    if isinstance(method, UsesData):
        method.use_data(data.view())
    return data


@contextlib.contextmanager
def draws_untouched():
    """Leave the seeded generators (torch's CPU one, Python's, NumPy's) as they were before the block.

    Building a config's objects may draw random numbers once only: the first use of an embedded model
    converts its GGUF file into the cache, and that builds a randomly initialised model before loading
    the weights into it. Those draws moved torch's generator between the seed and the LoRA
    initialisation, so a first run on a machine trained from other adapters than every later run (the
    quickstart's loss at step 4: 0.9093 against 0.9108, issue 36). CUDA generators are not touched here.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)


@runtime_checkable
class ClipsByHand(Protocol):
    """A method that optimises by hand (``automatic_optimization`` off) and clips gradients itself."""

    automatic_optimization: bool
    max_grad_norm: float | None


class AlignCLI(LightningCLI):
    """LightningCLI that connects the data and the method (``connect``) once both are built, before
    any subcommand runs."""

    def instantiate_classes(self) -> None:
        with draws_untouched():  # the seeded draws start with the run, whatever building the objects did
            super().instantiate_classes()
        if self.datamodule is not None:
            connect(self.datamodule, self.model)
        if isinstance(self.model, ClipsByHand) and not self.model.automatic_optimization:
            hand_over_gradient_clipping(self.trainer, self.model)


def hand_over_gradient_clipping(trainer: L.Trainer, method: ClipsByHand) -> None:
    """A method that optimises by hand (online RL: several steps per generation batch) is refused Lightning's
    automatic clipping: ``trainer.gradient_clip_val`` becomes the method's ``max_grad_norm``."""
    if not trainer.gradient_clip_val:
        return
    if trainer.gradient_clip_algorithm not in (None, "norm"):
        raise ValueError(f"{type(method).__name__} clips the gradient norm only; trainer.gradient_clip_algorithm "
                         f"{trainer.gradient_clip_algorithm!r} is not supported (use model.max_grad_norm)")
    if method.max_grad_norm is not None and method.max_grad_norm != trainer.gradient_clip_val:
        raise ValueError(f"trainer.gradient_clip_val {trainer.gradient_clip_val} and model.max_grad_norm "
                         f"{method.max_grad_norm} disagree: set one of them")
    logging.getLogger(__name__).info("trainer.gradient_clip_val %s is applied by %s as max_grad_norm",
                                     trainer.gradient_clip_val, type(method).__name__)
    method.max_grad_norm, trainer.gradient_clip_val = float(trainer.gradient_clip_val), None


def main(args: list[str] | None = None) -> AlignCLI:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(__name__).info(hardware.thread_settings())
    if reason := hardware.load_dependent_threads():
        warnings.warn(reason, stacklevel=2)
    return AlignCLI(
        L.LightningModule,
        AlignDataModule,
        subclass_mode_model=True,
        # The window sampler shards data across ranks itself (see lit_align/data/sampler.py).
        trainer_defaults={"use_distributed_sampler": False},
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def run(args: list[str] | None = None) -> None:
    """The console entry point (``lit-align``, ``python -m lit_align``): ``main`` with plain errors."""
    with plain_errors():
        main(args)


if __name__ == "__main__":
    run()
