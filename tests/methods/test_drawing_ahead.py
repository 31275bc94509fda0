"""Drawing ahead (``max_staleness``): the online loop learns from batches drawn with older weights, never
older than the bound, corrects them with the engine's log-probs, and resumes exactly.

The engine here is a stand-in for one in another process: Hugging Face sampling that says it samples in the
background and reports its own log-probs, as vLLM's server does. It draws when asked, from the weights the
policy has then, which is what the server holds after the push before the draw. The real server is tested
in tests/sampling/test_rollout_server.py."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lit_align.data.datamodule import AlignDataModule
from lit_align.methods.grpo import GRPO
from lit_align.objectives import policy_gradient as pg
from lit_align.objectives.logprobs import completion_logprobs
from lit_align.sampling.engines import HFGenerate
from lit_align.sampling.generate import SamplingParams

from conftest import ChatPrompts, LengthReward, step_outputs_recorder
from fault_injection import SaveAtBatch


class Elsewhere(HFGenerate):
    """Sampling that stands for an engine in another process: it reports the log-probs it drew with."""

    samples_in_background = True

    def sample(self, model, tokenizer, input_ids, attention_mask, params, seed=0):
        samples = super().sample(model, tokenizer, input_ids, attention_mask, params, seed)
        with torch.no_grad():
            samples.engine_logps = completion_logprobs(model, samples)[0] * samples.completion_mask
        return samples



def _grpo(rollout=None, **kwargs) -> GRPO:
    torch.manual_seed(0)
    settings = dict(model="tiny:causal-lm", reward=LengthReward(), num_generations=2, rollout=rollout or Elsewhere(),
                    generation=SamplingParams(max_new_tokens=6, temperature=1.0), tis_cap=2.0,
                    optimizer=lambda p: torch.optim.Adam(p, lr=5e-2)) | kwargs
    return GRPO(**settings)


def _fit(module, steps, callbacks=(), ckpt_path=None):
    L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, use_distributed_sampler=False, limit_val_batches=0,
              callbacks=list(callbacks)).fit(
        module, AlignDataModule(ChatPrompts(), batch_size=2).connect(module.tokenizer, module.batch_kind),
        ckpt_path=ckpt_path)
    return {k: v.detach().clone() for k, v in module.policy.state_dict().items()}


def test_one_batch_ahead_each_batch_is_learnt_one_step_late_and_corrected_by_the_engines_log_probs(monkeypatch):
    corrections = []
    real = pg.tis_weights
    monkeypatch.setattr(pg, "tis_weights", lambda old, engine, cap: corrections.append((old, engine)) or real(old, engine, cap))
    module, seen = _grpo(max_staleness=1), step_outputs_recorder()
    _fit(module, steps=3, callbacks=[seen])
    assert module.depth == 1 and not seen.outputs[0]  # the first batch only drew (Lightning hands on {})
    staleness = [out["metrics"]["train/staleness"] for out in seen.outputs[1:]]
    assert staleness == [0.0, 1.0, 1.0] and module.global_step == 3
    assert len(corrections) == 3
    first_old, first_engine = corrections[0]  # drawn with the weights that learn: the ratio is one
    assert torch.allclose(first_old * (first_engine != 0), first_engine, atol=1e-5)
    for old, engine in corrections[1:]:  # drawn one step earlier: the engine's log-probs are the older weights'
        assert not torch.allclose(old * (engine != 0), engine, atol=1e-3)


def test_a_batch_older_than_the_bound_is_never_learnt_from():
    """A pipeline deeper than the bound allows (planted: depth 2 under max_staleness 1) makes batches two
    steps old: each is dropped and counted, and no step learns from one."""
    module, seen = _grpo(max_staleness=1), step_outputs_recorder()
    module.depth = 2
    _fit(module, steps=3, callbacks=[seen])
    learnt = [out["metrics"] for out in seen.outputs if out]
    assert learnt and all(m["train/staleness"] <= 1 for m in learnt)
    assert module.stale_batches_dropped > 0 and learnt[-1]["train/stale_batches_dropped"] > 0


def test_with_max_staleness_zero_the_background_engine_learns_what_the_synchronous_loop_learns():
    plain = _fit(_grpo(rollout=HFGenerate(), tis_cap=None), steps=2)
    background = _fit(_grpo(max_staleness=0, tis_cap=None), steps=2)
    assert all(torch.equal(plain[k], background[k]) for k in plain)


def test_a_run_resumed_with_a_draw_waiting_learns_from_the_saved_draw(tmp_path):
    whole = _fit(_grpo(max_staleness=1), steps=3)
    ckpt = tmp_path / "waiting.ckpt"
    _fit(_grpo(max_staleness=1), steps=3, callbacks=[SaveAtBatch(2, str(ckpt))])
    saved = torch.load(ckpt, weights_only=True, map_location="cpu")  # plain containers
    (waiting,) = saved["online_rl"]["ranks"][0]["queue"]
    # drawn at the second batch, before its step learnt from the first: one step older than the weights now
    assert waiting["version"] == 0 and saved["global_step"] == 1
    resumed = _fit(_grpo(max_staleness=1), steps=3, ckpt_path=str(ckpt))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    saved["online_rl"]["ranks"][0]["queue"] = []  # the waiting draw thrown away: the run ends elsewhere
    torch.save(saved, tmp_path / "emptied.ckpt")
    emptied = _fit(_grpo(max_staleness=1), steps=3, ckpt_path=str(tmp_path / "emptied.ckpt"))
    assert any(not torch.equal(whole[k], emptied[k]) for k in whole)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_staleness=1, rollout=HFGenerate()), "samples in another process.*HFGenerate samples here"),
    (dict(max_staleness=1, tis_cap=None), "needs tis_cap"),
    (dict(max_staleness=1, dynamic_sampling=True), "cannot be combined with dynamic_sampling"),
    (dict(max_staleness=1, steps_per_generation=2), "below the 2 optimiser steps one generation batch takes"),
    (dict(max_staleness=-1), "must be >= 0"),
])
def test_settings_that_cannot_draw_ahead_are_refused_naming_the_setting(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _grpo(**kwargs)
