"""Where an RL step's time goes, measured from the outside: timers around the calls a step makes.

Nothing in lit_align or TRL is edited: ``PhaseTimer.wrap`` puts a timed copy of a method on one instance
(or of a function in one module), so the same harness times the current tree and a ``--baseline`` tree,
which share these names. Only the outermost timed call counts: the reference pass's log-probs
(``_logps_no_grad`` inside ``with_reference``) are reference time, not old-policy time. Measured phases:

- ``sample``: the rollout engine's ``sample`` (TRL: ``_generate``);
- ``score``: the reward (``score_samples``; TRL: ``_calculate_rewards``);
- ``ref``: the reference log-probs (``with_reference``; TRL: no-grad log-probs of ``ref_model`` or under
  ``use_adapter``);
- ``old``: the sampling weights' log-probs in a separate no-grad pass (``_logps_no_grad`` outside the
  reference; TRL: its other no-grad log-probs);
- ``backward``: ``manual_backward`` (TRL: ``accelerator.backward``);
- ``optimizer``: gradient clipping and the optimiser's ``step``.

Derived per step (``split``): ``passes`` = step - sample - score, the issue's "training passes" (every
forward and backward, and the optimiser step); ``policy`` = passes - ref - old - optimizer, the training
forward and backward with the loop's own bookkeeping.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import defaultdict

from .common import _sync

MEASURED = ("sample", "score", "ref", "old", "backward", "optimizer")
DERIVED = ("passes", "policy")
# (attribute of the lit_align module, phase); a name the module lacks is left out and reported as missing
LIT_METHODS = (("with_reference", "ref"), ("_logps_no_grad", "old"), ("manual_backward", "backward"),
               ("clip_gradients", "optimizer"))


class PhaseTimer:
    """Seconds per phase, summed over each step; ``step_done`` closes a step."""

    def __init__(self):
        self.current: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []
        self.active: str | None = None
        self.hooked: list[str] = []
        self.missing: list[str] = []  # loop methods looked for and not found: their phase reads 0

    @contextlib.contextmanager
    def phase(self, name: str):
        if self.active is not None:  # nested in another phase: that one's time already covers it
            yield
            return
        self.active = name
        _sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.current[name] += time.perf_counter() - start
            self.active = None

    def timed(self, name: str, fn):
        def timed_call(*args, **kwargs):
            with self.phase(name):
                return fn(*args, **kwargs)

        return timed_call

    def wrap(self, owner, attribute: str, name: str) -> bool:
        """Replace ``owner.attribute`` by a timed copy; False if ``owner`` has no such attribute."""
        fn = getattr(owner, attribute, None)
        if fn is None:
            return False
        setattr(owner, attribute, self.timed(name, fn))
        self.hooked.append(f"{attribute}:{name}")
        return True

    def step_done(self) -> None:
        self.steps.append({name: self.current.get(name, 0.0) for name in MEASURED})
        self.current.clear()


def defining_modules(obj) -> list:
    """The modules that define ``obj``'s class and its bases (where its methods look up their globals)."""
    names = dict.fromkeys(cls.__module__ for cls in type(obj).__mro__)
    return [sys.modules[n] for n in names if n in sys.modules]


def instrument_lit(timer: PhaseTimer, module, optimizer) -> None:
    """Time a lit_align online-RL module's phases: its engine, its reward call, its passes, its optimiser."""
    timer.wrap(module.rollout, "sample", "sample")
    for owner in defining_modules(module):  # the loop calls score_samples by its module-level name
        if owner.__name__.startswith("lit_align.") and hasattr(owner, "score_samples"):
            timer.wrap(owner, "score_samples", "score")
    for attribute, name in LIT_METHODS:
        if not timer.wrap(module, attribute, name):
            timer.missing.append(attribute)
    timer.wrap(optimizer, "step", "optimizer")


def instrument_trl(timer: PhaseTimer, trainer) -> None:
    """Time a TRL GRPOTrainer's or RLOOTrainer's phases (call at ``on_train_begin``, once the optimiser exists)."""
    import torch

    timer.wrap(trainer, "_generate", "sample")
    timer.wrap(trainer, "_calculate_rewards", "score")
    logps = trainer._get_per_token_logps_and_entropies

    def no_grad_logps(model, *args, **kwargs):  # the training forward runs with grad and is not a phase here
        if torch.is_grad_enabled():
            return logps(model, *args, **kwargs)
        with timer.phase("ref" if model is not None and model is getattr(trainer, "ref_model", None) else "old"):
            return logps(model, *args, **kwargs)

    trainer._get_per_token_logps_and_entropies = no_grad_logps
    timer.hooked.append("_get_per_token_logps_and_entropies (no grad):ref/old")
    owner = sys.modules[type(trainer).__module__]
    if hasattr(owner, "use_adapter"):  # a LoRA policy's reference: the adapter switched off around the pass
        adapter = owner.use_adapter

        @contextlib.contextmanager
        def reference_adapter(*args, **kwargs):
            with timer.phase("ref"), adapter(*args, **kwargs):
                yield

        owner.use_adapter = reference_adapter
        timer.hooked.append("use_adapter:ref")
    timer.wrap(trainer.accelerator, "backward", "backward")
    timer.wrap(trainer.accelerator, "clip_grad_norm_", "optimizer")
    timer.wrap(trainer.optimizer, "step", "optimizer")


def split(step_s: list[float], steps: list[dict[str, float]]) -> dict[str, list[float]]:
    """Per-phase seconds of each measured step, the derived ``passes`` and ``policy`` included."""
    out = {name: [s[name] for s in steps] for name in MEASURED}
    out["passes"] = [t - s["sample"] - s["score"] for t, s in zip(step_s, steps)]
    out["policy"] = [p - s["ref"] - s["old"] - s["optimizer"] for p, s in zip(out["passes"], steps)]
    return out
