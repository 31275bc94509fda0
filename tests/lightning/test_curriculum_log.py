"""CurriculumLog: an optimiser step's drawn groups summed over its draws, by hand."""

from types import SimpleNamespace

import math

import pytest

from lit_align.data.curriculum import SelfPaced
from lit_align.lightning.curriculum import CurriculumLog


def test_a_steps_row_gets_the_signal_share_samples_and_reward_of_all_its_draws():
    curriculum = SelfPaced()
    curriculum.reset(10)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(curriculum=curriculum))
    log = CurriculumLog()
    # draw 0 (only collects): a mixed group of 2 and a flat one of 3; two ranks at draw 1: one mixed group each
    first = {"outcomes": [{"problem_ids": [1, 2], "draw_index": 0, "group_sizes": [2, 3], "rewards": [1.0, 0.0, 0.5, 0.5, 0.5]}]}
    log.on_train_batch_end(trainer, None, first, None, 0)
    metrics = {"train/loss": 0.1}
    second = {"metrics": metrics, "outcomes": [
        {"problem_ids": [3], "draw_index": 1, "group_sizes": [2], "rewards": [0.0, 1.0]},
        {"problem_ids": [4], "draw_index": 1, "group_sizes": [4], "rewards": [0.0, 0.0, 0.0, 1.0]}]}
    curriculum.book(0, [1, 2], [2, 3], first["outcomes"][0]["rewards"])
    log.on_train_batch_end(trainer, None, second, None, 1)
    assert metrics["curriculum/signal_share"] == pytest.approx(3 / 4)  # 4 groups drawn, 3 with signal
    assert metrics["curriculum/samples_drawn"] == 11 and metrics["curriculum/groups_drawn"] == 4
    assert metrics["curriculum/samples_per_signal_group"] == pytest.approx(11 / 3)
    assert metrics["curriculum/reward_drawn"] == pytest.approx(4.5 / 11)
    assert metrics["curriculum/problems_seen"] == 2  # what the curriculum was told: draw 0
    # the next step starts from zero; a step of flat groups has no samples per signal group to give
    flat = {"metrics": {}, "outcomes": [{"problem_ids": [5], "draw_index": 2, "group_sizes": [2], "rewards": [0.0, 0.0]}]}
    log.on_train_batch_end(trainer, None, flat, None, 2)
    assert flat["metrics"]["curriculum/signal_share"] == 0 and math.isinf(flat["metrics"]["curriculum/samples_per_signal_group"])
    assert flat["metrics"]["curriculum/samples_drawn"] == 2
