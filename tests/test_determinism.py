"""Same machine, same commit, same digits (issue 36, item 7; docs/reproducibility.md).

The quickstart's first run on a machine converts the embedded model into its cache, and that conversion
builds a randomly initialised model: the draws moved torch's generator after the seed, so the LoRA
adapters of a first run started elsewhere than every later run's. Here the first use of a model is made
to draw the same way, and the trained adapters must not notice.
"""

import random

import lightning as L
import numpy as np
import pytest
import torch

from lit_align.cli import AlignCLI, draws_untouched, main
from lit_align.data.datamodule import AlignDataModule
from lit_align.modeling import hardware, models
from tests.test_cli import TINY

FIT = ["fit", *TINY, "--trainer.callbacks", "[]", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
       "--trainer.enable_progress_bar", "false", "--data.batch_size", "2"]


def _first_use_draws(monkeypatch):
    """The first model name resolved draws from every seeded generator, as a cold cache's conversion does."""
    resolve, calls = models.resolve, []

    def drawing_resolve(name):
        if not calls:
            torch.randn(1000), random.random(), np.random.rand()
        calls.append(name)
        return resolve(name)

    monkeypatch.setattr(models, "resolve", drawing_resolve)
    return calls


def _adapters(method) -> list[torch.Tensor]:
    return [p.detach().clone() for n, p in method.named_parameters() if p.requires_grad]


def test_a_first_run_trains_the_same_adapters_as_later_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    later = _adapters(main(FIT).model)
    calls = _first_use_draws(monkeypatch)
    first = _adapters(main(FIT).model)
    assert calls, "the model name was never resolved: the simulated first use did not happen"
    assert len(first) == len(later) > 0
    assert all(torch.equal(a, b) for a, b in zip(first, later))


def test_building_the_objects_leaves_the_seeded_generators_where_the_seed_put_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _first_use_draws(monkeypatch)
    built = AlignCLI(L.LightningModule, AlignDataModule, subclass_mode_model=True, run=False,
                         trainer_defaults={"use_distributed_sampler": False}, args=TINY)
    after = torch.get_rng_state(), random.random(), np.random.rand()
    L.seed_everything(built.config["seed_everything"])
    seeded = torch.get_rng_state(), random.random(), np.random.rand()
    assert torch.equal(after[0], seeded[0]) and after[1:] == seeded[1:]


def test_draws_untouched_restores_every_seeded_generator():
    L.seed_everything(3)
    expected = torch.rand(2), random.random(), np.random.rand()
    L.seed_everything(3)
    with draws_untouched():
        torch.rand(5), random.random(), np.random.rand(7)
    got = torch.rand(2), random.random(), np.random.rand()
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_the_thread_count_the_digits_depend_on_is_named():
    """What the guard cannot pin: a sum split across threads adds in another order on 1 and on 2 threads
    (tests run on 1, conftest.py), so the run names its thread count; a repeated count repeats the bits."""
    x = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = x.sum()
        assert torch.equal(x.sum(), two)
        line = hardware.thread_settings({"OMP_NUM_THREADS": "2"})
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(x.sum(), two)  # the same number to float32 precision, not always the same bits
    assert line.startswith("torch threads: 2 intra-op") and "OMP_NUM_THREADS=2" in line


def test_load_sized_thread_teams_are_warned_of(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_DYNAMIC", "true")
    with pytest.warns(UserWarning, match="OMP_DYNAMIC"):
        main(["validate", *TINY, "--trainer.limit_val_batches", "1"])
