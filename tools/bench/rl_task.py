"""The RL benchmark's prompts and reward, the same for every contender (``--rl-task``).

- ``countdown`` (the default): the Countdown problems of ``configs/grpo/countdown_embedded.yaml`` (its
  training source: 2,000 problems, seed 5, prompts without traces) through lit_align's data module, scored
  by ``CountdownVerifier``; completions stop when the model is done, so their lengths vary as in real use.
- ``words``: the synthetic "write a long story" prompts of ``data.write_data``, scored by word variety
  (distinct words / 20); completions almost always run to ``max_new_tokens``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lit_align.data.sources import LocalFile
from lit_align.rewards.base import Reward
from lit_align.tasks.countdown import CountdownSource, CountdownVerifier

TASKS = ("countdown", "words")
COUNTDOWN = {"num_problems": 2000, "seed": 5}  # configs/grpo/countdown_embedded.yaml's data.train


def word_variety(completions: list[str]) -> list[float]:
    """The ``words`` task's reward: distinct words / 20; cheap and rule-based."""
    return [len(set(text.lower().split())) / 20 for text in completions]


class WordVariety(Reward):
    """``word_variety`` as a lit_align reward source."""

    def __call__(self, prompts, completions, records):
        return torch.tensor(word_variety(completions))


def check(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"rl_task must be one of {', '.join(TASKS)}, got {task!r}")
    return task


def reward(task: str) -> Reward:
    """The lit_align reward source of ``task``."""
    return CountdownVerifier() if check(task) == "countdown" else WordVariety()


def source(task: str, data_dir: str):
    """Where ``task``'s prompt records come from (a lit_align data ``Source``)."""
    if check(task) == "countdown":
        return CountdownSource(**COUNTDOWN, with_traces=False)
    return LocalFile(str(Path(data_dir) / "prompt.jsonl"))


def limit(task: str, wanted: int) -> int | None:
    """Records the data module reads: every Countdown problem (the config's pool and order), else ``wanted``."""
    return None if check(task) == "countdown" else wanted


def scores(task: str, completions: list[str], records: list[dict]) -> list[float]:
    """One reward per completion; ``records[i]`` is the record ``completions[i]`` answers."""
    return [float(v) for v in reward(task)([None] * len(completions), completions, records)]
