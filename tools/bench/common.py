"""Shared pieces of the benchmark: settings, the run spec, step clocks (memory readings: ``tools/study/memory.py``)."""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

from ..study.memory import peak_rss_mib, reset_peak_rss, rss_mib

# The models every contender trains; a machine without the embedded copies (a GPU box) may point these
# at folders of the same architecture (``tools/bench/random_models.py`` writes randomly initialised ones).
POLICY = os.environ.get("LIT_ALIGN_BENCH_POLICY", "embedded:smollm2-135m-instruct")
RM_BACKBONE = os.environ.get("LIT_ALIGN_BENCH_RM", "embedded:all-minilm-l6-v2")
RESULT_TAG = "BENCH_RESULT "

@dataclass
class Settings:
    """What one benchmark run trains on; identical for every contender of a method."""

    steps: int = 8  # measured optimiser steps per run
    warmup: int = 2  # optimiser steps run first and not measured
    threads: int = 2  # torch intra-op threads (and OMP_NUM_THREADS) in every contender
    seed: int = 0
    lr: float = 1e-5
    sft_batch: int = 4
    sft_max_length: int = 512
    sft_prompt_words: float = 25  # median words of a prompt (lognormal)
    sft_completion_words: float = 60  # median words of a response (lognormal)
    sigma: float = 1.0  # lognormal spread of every length
    dpo_batch: int = 2  # preference pairs per step (2x rows)
    dpo_max_length: int = 384
    rm_batch: int = 8
    rm_max_length: int = 512
    rloo_batch: int = 2  # prompts per step
    rloo_k: int = 4  # completions per prompt
    rloo_max_new_tokens: int = 48
    kl_coef: float = 0.05  # RLOO's KL weight (GRPO runs with beta 0, TRL's default: no reference model)
    rl_micro_batch: int = 0  # RLOO/GRPO: sequences per backward pass, accumulated to one step (0: the whole step)
    rl_checkpointing: int = 0  # RLOO/GRPO: 1 = activation checkpointing on both sides (TRL's default), 0 = off
    rl_lora_r: int = 0  # RLOO/GRPO: LoRA rank on every linear layer (alpha 2r, no dropout) on both sides; 0 = full fine-tuning
    rl_task: str = "countdown"  # RLOO/GRPO prompts and reward: "countdown" (the verifier) or "words" (word variety)
    rl_max_tokens: int = 0  # RLOO/GRPO: the current lit_align's max_tokens_per_micro_batch (0: not passed)
    rl_memory_budget: float = 0.0  # RLOO/GRPO: the current lit_align's activation_memory_budget_gib (0: not passed)
    rl_flop_steps: int = 1  # RLOO/GRPO, lit_align: measured steps replayed untimed under torch's FLOP counter (0: none)
    logprobs_batch: int = 4  # rows of the log-prob micro-benchmark (all at sft_max_length)
    device: str = "cpu"  # "cpu" or "cuda"
    precision: str = "32"  # "32" (float32) or "bf16-mixed" (float32 weights, bf16 autocast), on every side

    @property
    def fused_adamw(self) -> bool:
        """Fused AdamW (TRL's default) in float32; under bf16-mixed Lightning refuses gradient clipping with
        a fused optimizer, so every contender then uses the foreach AdamW."""
        return self.precision == "32"

    def rl_rows(self) -> int:
        """Completions per optimiser step of RLOO and GRPO: prompts x k."""
        return self.rloo_batch * self.rloo_k

    def rl_accumulation(self) -> int:
        """Backward passes per RL optimiser step: the step's completions in micro-batches of ``rl_micro_batch``."""
        if not self.rl_micro_batch:
            return 1
        if self.rl_rows() % self.rl_micro_batch:
            raise ValueError(f"rl_micro_batch {self.rl_micro_batch} must divide the {self.rl_rows()} completions per step")
        return self.rl_rows() // self.rl_micro_batch

    def steps_total(self) -> int:
        return self.warmup + self.steps

    def examples_needed(self, batch: int) -> int:
        """Records a method reads: a fixed pool of 64, so the first batches do not depend on ``steps``."""
        return max(64, batch * self.steps_total())


@dataclass
class Spec:
    """One run of one contender: what the orchestrator hands a worker process."""

    method: str
    contender: str
    settings: Settings
    data_dir: str
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> Spec:
        raw = json.loads(text)
        return Spec(raw["method"], raw["contender"], Settings(**raw["settings"]), raw["data_dir"], raw.get("extra", {}))


class StepClock:
    """Wall-clock time at the end of every optimiser step, and the real tokens of each step."""

    def __init__(self):
        self.start: float | None = None
        self.ends: list[float] = []
        self.tokens: list[int] = []
        self.base_rss_mib: float | None = None

    def begin(self) -> None:
        """Training starts: models are loaded; from here the peak RSS (and CUDA peak) is the training peak."""
        _sync()
        self.start = time.perf_counter()
        self.base_rss_mib = rss_mib()
        reset_peak_rss()
        if _cuda():
            import torch

            torch.cuda.reset_peak_memory_stats()

    def step_done(self, tokens: int | None = None) -> None:
        _sync()  # a GPU step has ended when its kernels have, not when they were queued
        self.ends.append(time.perf_counter())
        if tokens is not None:
            self.tokens.append(int(tokens))

    def durations(self) -> list[float]:
        marks = [self.start] + self.ends
        return [b - a for a, b in itertools.pairwise(marks)]


def _cuda() -> bool:
    torch = sys.modules.get("torch")  # only if this process uses torch; never imported here
    return torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()


def _sync() -> None:
    if _cuda():
        import torch

        torch.cuda.synchronize()


def set_threads(n: int) -> None:
    import torch

    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)


def summary(clock: StepClock, warmup: int, **extra) -> dict:
    """What a worker reports: measured step times (warm-up dropped), tokens, memory."""
    durations = clock.durations()[warmup:]
    tokens = clock.tokens[warmup : warmup + len(durations)] if clock.tokens else []
    return {
        "step_s": durations,
        "tokens": tokens,
        "base_rss_mib": clock.base_rss_mib,
        "train_peak_rss_mib": peak_rss_mib(),
        **({"cuda_peak_mib": _cuda_peak_mib()} if _cuda() else {}),
        **extra,
    }


def _cuda_peak_mib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def autocast(settings: Settings):
    """The bare loops' mixed precision: bf16 autocast where the run asks for it, else nothing."""
    import contextlib

    import torch

    if settings.precision == "bf16-mixed":
        return torch.autocast(settings.device, dtype=torch.bfloat16)
    if settings.precision != "32":
        raise ValueError(f"precision must be '32' or 'bf16-mixed', got {settings.precision!r}")
    return contextlib.nullcontext()


def emit(result: dict) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)
