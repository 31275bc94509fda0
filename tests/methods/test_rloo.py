import pytest
import torch

from lit_align.objectives import ops, policy_gradient
from lit_align.data.collate import collate_prompts
from lit_align.data.datamodule import AlignDataModule
from lit_align.data.formats import prompt_ids
from lit_align.sampling.generate import SamplingParams, sample
from lit_align.methods.rloo import RLOO
from lit_align.methods.rollouts import Plan
from lit_align.modeling.models import LoRA
from lit_align.rewards.base import Reward

from conftest import completion_logits, trainer
from oracles import rloo_loss


def test_rloo_advantages_by_hand_for_two_groups_of_three():
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    # group 1: 1 - (2+6)/2 = -3, 2 - (1+6)/2 = -1.5, 6 - (1+2)/2 = 4.5; group 2: -1.5, -1.5, 3
    expected = torch.tensor([-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])
    got = policy_gradient.rloo_advantages(rewards, k=3)
    assert torch.allclose(got, expected)
    assert torch.allclose(got.view(2, 3).sum(1), torch.zeros(2))
    with pytest.raises(ValueError):
        policy_gradient.rloo_advantages(rewards, k=1)


def test_training_forward_scores_exactly_what_was_sampled(tokenizer, tiny_lm):
    """Left-padded prompts: the training forward must reproduce generation's distribution."""
    records = [{"prompt": "hello"}, {"prompt": [{"role": "user", "content": "the quick brown fox"}]}]
    batch = collate_prompts([prompt_ids(r, "m", tokenizer) for r in records], records, tokenizer.pad_token_id)
    samples = sample(tiny_lm, tokenizer, batch.input_ids, batch.attention_mask, SamplingParams(max_new_tokens=6, temperature=0.0))
    module = RLOO(model="tiny:causal-lm", reward=TokenShare(), rloo_k=2)
    module.policy = tiny_lm.eval()
    with torch.no_grad():
        logps, _ = module._logps(tiny_lm, samples)
    greedy = completion_logits(tiny_lm, samples).argmax(-1)
    keep = samples.completion_mask.bool()
    assert torch.equal(greedy[keep], samples.completion_ids[keep]), "greedy tokens must be the argmax of the training forward"
    assert (logps[keep] < 0).all() and (logps[~keep] == 0).all()


class TokenShare(Reward):
    """Trivially learnable: the share of completion characters that are the letter 'a'."""

    def __call__(self, prompts, completions, records):
        return torch.tensor([c.count("a") / max(1, len(c)) for c in completions])


class Prompts:
    def __init__(self, n):
        self.n = n

    def records(self):
        for i in range(self.n):
            yield f"p:{i}", {"prompt": [{"role": "user", "content": "say something"}]}


def mean_reward(module, n=32):
    records = list(Prompts(n).records())
    batch = collate_prompts([prompt_ids(r, o, module.tokenizer) for o, r in records], [r for _, r in records], module.tokenizer.pad_token_id)
    out = sample(module.policy, module.tokenizer, batch.input_ids, batch.attention_mask, module.sampling, seed=123)
    return TokenShare()(None, out.texts, None).mean().item()


def test_rloo_raises_a_trivially_learnable_reward_and_counts_match():
    torch.manual_seed(0)
    module = RLOO(model="tiny:causal-lm", reward=TokenShare(), rloo_k=4, kl_coef=0.01,
                  generation=SamplingParams(max_new_tokens=12, temperature=1.0),
                  optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    module.configure_model()
    before = mean_reward(module)
    t = trainer(max_steps=25, limit_val_batches=0)
    t.fit(module, AlignDataModule(Prompts(8 * 25), batch_size=8).connect(module.tokenizer, module.batch_kind))
    after = mean_reward(module)
    assert after > before + 0.05, (before, after)
    metrics = t.callback_metrics
    assert metrics["train/prompts_seen"] == 8 * 25 and metrics["train/completions_seen"] == 8 * 25 * 4
    assert t.global_step == 25 and metrics["train/optimizer_steps"] == 25  # logged after the step


def test_adapter_off_reference_starts_at_zero_kl_and_drifts():
    torch.manual_seed(0)
    module = RLOO(model="tiny:causal-lm", reward=TokenShare(), rloo_k=2, reference="adapter_off",
                  lora=LoRA(r=4, alpha=8, dropout=0.0), generation=SamplingParams(max_new_tokens=8),
                  optimizer=lambda p: torch.optim.Adam(p, lr=5e-2))
    t = trainer(max_steps=1, limit_val_batches=0)
    t.fit(module, AlignDataModule(Prompts(4), batch_size=4).connect(module.tokenizer, module.batch_kind))
    assert t.callback_metrics["train/kl"].abs() < 1e-6, "policy == reference before the first step"
    t = trainer(max_steps=4, limit_val_batches=0)
    t.fit(module, AlignDataModule(Prompts(16), batch_size=4).connect(module.tokenizer, module.batch_kind))
    assert t.callback_metrics["train/kl"].abs() > 1e-4


class Length(Reward):
    """Varies with every sample, so advantages are never all zero."""

    def __call__(self, prompts, completions, records):
        return torch.tensor([float(len(c)) for c in completions])


class Constant(Reward):
    """Every completion scores the same: every group is without signal."""

    def __call__(self, prompts, completions, records):
        return torch.ones(len(completions))


def test_draws_of_one_generation_batch_draw_different_samples(monkeypatch):
    """Dynamic sampling draws a second prompt batch for the same step, on the same weights and the
    same prompt: its samples differ only if each draw has a random stream of its own."""
    import lit_align.sampling.engines as rollout_module

    drawn = []

    def recording(*args, **kwargs):
        out = sample(*args, **kwargs)
        drawn.append(out.completion_ids)
        return out

    monkeypatch.setattr(rollout_module, "sample", recording)
    module = RLOO(model="tiny:causal-lm", reward=Constant(), rloo_k=2, generation=SamplingParams(max_new_tokens=8),
                  dynamic_sampling=True, max_draws=2)
    t = trainer(max_steps=1, limit_val_batches=0)
    t.fit(module, AlignDataModule(Prompts(2), batch_size=1).connect(module.tokenizer, module.batch_kind))
    assert len(drawn) == 2 and not torch.equal(drawn[0], drawn[1])
    assert t.global_step == 1, "the draw cap fills the batch with zero-signal groups and steps"


def test_truncated_completions_carry_no_loss_when_masked():
    """tiny:causal-lm almost never emits EOS in 3 tokens: every completion is cut, so with masking on
    the loss is exactly zero and no gradient flows; without it, they are trained on."""
    losses_seen = {}
    for masked in (True, False):
        torch.manual_seed(0)
        module = RLOO(model="tiny:causal-lm", reward=Length(), rloo_k=2, mask_truncated_completions=masked,
                      generation=SamplingParams(max_new_tokens=3))
        t = trainer(max_steps=1, limit_val_batches=0)
        t.fit(module, AlignDataModule(Prompts(4), batch_size=4).connect(module.tokenizer, module.batch_kind))
        assert t.callback_metrics["train/truncated_share"] == 1.0
        losses_seen[masked] = t.callback_metrics["train/loss"].item()
    assert losses_seen[True] == 0.0 and losses_seen[False] != 0.0


def test_greedy_sampling_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="temperature.*zero advantages"):
        RLOO(model="tiny:causal-lm", reward=Length(), generation=SamplingParams(temperature=0.0))


def test_unsound_kl_placement_is_refused_at_construction():
    with pytest.raises(ValueError, match="k1 in the reward"):
        RLOO(model="tiny:causal-lm", reward=Length(), kl_estimator="k1", kl_in_reward=False)


class CharSum(Reward):
    def __call__(self, prompts, completions, records):
        return torch.tensor([float(sum(map(ord, c)) % 7) for c in completions])


SETTINGS = [
    dict(),
    dict(normalization="token"),
    dict(kl_estimator="k3", kl_in_reward=False, entropy_coef=0.1),
    dict(kl_estimator="k2", kl_in_reward=False, mask_truncated_completions=True),
]
SETTING_IDS = ["default", "token", "k3-loss-entropy", "k2-loss-masked"]


def _pinned_update(monkeypatch, tokenizer, settings, engine_gap: float = 0.0, **loop):
    """One optimiser step of plain SGD (lr 1) on pinned samples, rewards and reference log-probs:
    the weights' change is minus the gradient. Returns it with what the one-batch ``rloo_loss``
    gives on the same inputs from the same start."""
    from lit_align.objectives import logprobs

    torch.manual_seed(0)
    module = RLOO(model="tiny:causal-lm", reward=CharSum(), rloo_k=2, kl_coef=0.2,
                  generation=SamplingParams(max_new_tokens=5, temperature=0.7),
                  optimizer=lambda p: torch.optim.SGD(p, lr=1.0), scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0),
                  **settings, **loop)
    module.configure_model()
    start = {n: t.detach().clone() for n, t in module.policy.state_dict().items()}
    records = [{"prompt": "hello"}, {"prompt": "the quick brown fox"}]
    batch = collate_prompts([prompt_ids(r, "m", tokenizer) for r in records], records, tokenizer.pad_token_id)
    pinned = sample(module.policy, tokenizer, batch.input_ids, batch.attention_mask, module.sampling, seed=4)
    pinned.truncated = torch.tensor([True, False, False, True])
    if engine_gap:  # an engine whose log-probs differ from the trainer's by up to engine_gap nats a token
        with torch.no_grad():
            trainer_logps, _ = logprobs.completion_logprobs(module.policy, pinned)
        gap = (torch.rand(trainer_logps.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1) * engine_gap
        pinned.engine_logps = trainer_logps + gap
    ref = -torch.rand(4, pinned.completion_ids.size(1))
    monkeypatch.setattr(module.rollout, "sample", lambda *a, **k: pinned)
    monkeypatch.setattr(module, "with_reference", lambda fn: ref)

    class Once:
        def records(self):
            yield from (("m", r) for r in records)

    trainer(max_steps=1, limit_val_batches=0).fit(
        module, AlignDataModule(Once(), batch_size=2).connect(module.tokenizer, module.batch_kind))
    update = {n: start[n] - p.detach() for n, p in module.policy.named_parameters()}

    fresh = RLOO(model="tiny:causal-lm", reward=CharSum(), rloo_k=2, kl_coef=0.2,
                 generation=SamplingParams(max_new_tokens=5, temperature=0.7), **settings)
    fresh.configure_model()
    fresh.policy.load_state_dict(start)
    # the oracle's entropies carry their gradient (the default), whatever the method builds for itself
    logps, entropy = logprobs.completion_logprobs(fresh.policy, pinned, with_entropy=True)
    rewards = CharSum()(None, pinned.texts, None)
    keep = ~pinned.truncated if settings.get("mask_truncated_completions") else None
    is_weights = None
    if loop.get("tis_cap") is not None and pinned.engine_logps is not None:
        is_weights = policy_gradient.tis_weights(logps.detach(), pinned.engine_logps, loop["tis_cap"])
        assert is_weights.max() > 1.05 and is_weights.min() < 0.95, "weights away from 1 for the check to mean something"
    expected = rloo_loss(logps, ref, pinned.completion_mask.float(), rewards, 2, 0.2,
                                         settings.get("kl_estimator", "k1"), settings.get("kl_in_reward", True),
                                         settings.get("normalization", "sequence"), entropy,
                                         settings.get("entropy_coef", 0.0), keep, is_weights)
    expected.loss.backward()
    assert rewards.std() > 0, "rewards must vary for the check to mean something"
    return update, {n: p.grad for n, p in fresh.policy.named_parameters()}


@pytest.mark.parametrize("settings", SETTINGS, ids=SETTING_IDS)
def test_one_step_over_one_pass_is_the_update_of_rloo_loss(monkeypatch, tokenizer, settings):
    """The method hands what it sampled, scored and set to the objective unchanged: with the samples,
    rewards and reference log-probs pinned, its SGD update is the one-batch ``rloo_loss`` gradient."""
    update, grads = _pinned_update(monkeypatch, tokenizer, settings)
    assert any(g.abs().max() > 1e-4 for g in grads.values())
    assert _largest_difference(update, grads) <= 1e-6  # float32 rounding of a different summation order


@pytest.mark.parametrize("settings", SETTINGS, ids=SETTING_IDS)
def test_micro_batches_add_up_to_the_one_batch_update(monkeypatch, tokenizer, settings):
    """Four sequences learnt one at a time (and over two passes' worth of steps' normalisers) give the
    one-batch gradient: every normaliser is the optimiser step's, not the micro-batch's."""
    update, grads = _pinned_update(monkeypatch, tokenizer, settings, micro_batch_size=1)
    assert _largest_difference(update, grads) <= 1e-5


def test_tis_weights_against_the_engine_reach_the_update(monkeypatch, tokenizer):
    """An engine whose log-probs are off the trainer's: with ``tis_cap`` the one-batch gradient weighted by
    min(pi_old / pi_engine, cap) per token is the update, also in micro-batches (a separate no-grad pass
    gives pi_old)."""
    calls = _count_sampling_passes(monkeypatch)
    for micro in (None, 1):
        update, grads = _pinned_update(monkeypatch, tokenizer, {}, engine_gap=0.4, tis_cap=1.2, micro_batch_size=micro)
        assert _largest_difference(update, grads) <= 1e-5
    assert calls == [4, 4]


def _largest_difference(update: dict, grads: dict) -> float:
    """Largest |update - gradient| over every weight, relative to the largest gradient entry (at least 1)."""
    scale = max(1.0, max(float(g.abs().max()) for g in grads.values()))
    return max(float((update[n] - g).abs().max()) for n, g in grads.items()) / scale


def test_gradient_checkpointing_and_micro_batches_give_the_one_batch_update(monkeypatch, tokenizer):
    update, grads = _pinned_update(monkeypatch, tokenizer, {}, micro_batch_size=2, gradient_checkpointing=True)
    assert _largest_difference(update, grads) <= 1e-5


def _count_sampling_passes(monkeypatch) -> list[int]:
    """Rows of every no-grad pass the method runs for the sampling weights' log-probs (the reference's
    are pinned by ``_pinned_update``)."""
    calls: list[int] = []
    original = RLOO._logps_no_grad

    def counted(self, model, samples, *sizes):
        calls.append(len(samples))
        return original(self, model, samples, *sizes)

    monkeypatch.setattr(RLOO, "_logps_no_grad", counted)
    return calls


@pytest.mark.parametrize("settings", SETTINGS, ids=SETTING_IDS)
def test_micro_batches_of_whole_groups_shape_rewards_from_their_own_training_forward(monkeypatch, tokenizer, settings):
    """k 2 in micro-batches of 2: each micro-batch holds whole groups, so its training forward gives the
    log-probs for the KL in its rewards and its advantages, no separate no-grad pass over the batch runs,
    and the update is still the one-batch gradient."""
    calls = _count_sampling_passes(monkeypatch)
    update, grads = _pinned_update(monkeypatch, tokenizer, settings, micro_batch_size=2)
    assert calls == []
    assert _largest_difference(update, grads) <= 1e-5


def test_shaping_per_micro_batch_gives_the_update_of_the_separate_pass(monkeypatch, tokenizer):
    """The same step with the separate no-grad pass (the plan forced to it) and without it: the sampling
    log-probs are the same rows in the same micro-batches, so the updates agree to rounding."""
    import lit_align.methods.online as online

    calls = _count_sampling_passes(monkeypatch)
    chosen = online.plan_sampling_pass
    monkeypatch.setattr(online, "plan_sampling_pass", lambda *a: (Plan.SEPARATE_PASS, "forced by the test"))
    separate, _ = _pinned_update(monkeypatch, tokenizer, {}, micro_batch_size=2)
    assert calls == [4]  # the whole batch, once
    monkeypatch.setattr(online, "plan_sampling_pass", chosen)
    fused, grads = _pinned_update(monkeypatch, tokenizer, {}, micro_batch_size=2)
    assert calls == [4]
    assert _largest_difference(fused, separate) <= 1e-6
    assert any(float(u.abs().max()) > 1e-4 for u in fused.values())


def test_micro_batches_that_split_a_group_still_run_the_separate_pass(monkeypatch, tokenizer):
    """Micro-batches of 1 with k 2 cut every group in two: a group's advantages need both samples' KL
    before either's loss, so the no-grad pass over the whole batch runs first."""
    calls = _count_sampling_passes(monkeypatch)
    _pinned_update(monkeypatch, tokenizer, {}, micro_batch_size=1)
    assert calls == [4]


def test_draw_seeds_never_overflow_and_differ_per_step_draw_and_chunk(monkeypatch, tokenizer):
    """Every draw's seed comes from its optimiser step, batch index and rank, and every chunk of an engine
    call from that seed: at step 282 and far beyond (where a product of the coordinates overflowed a 64-bit
    seed) sampling still runs, and no two draws or chunks share a seed."""
    import lit_align.sampling.engines as engines
    from lit_align.sampling.engines import HFGenerate

    seeds = []

    def recording(*args, seed=0, **kwargs):
        seeds.append(seed)
        return sample(*args, seed=seed, **kwargs)

    monkeypatch.setattr(engines, "sample", recording)
    module = RLOO(model="tiny:causal-lm", reward=CharSum(), rloo_k=2, kl_coef=0.0, rollout=HFGenerate(max_batch_rows=2),
                  generation=SamplingParams(max_new_tokens=3, temperature=0.7))
    module.configure_model()
    draws, engine_sample = [], module.rollout.sample

    def draw(*args, seed=0, **kwargs):
        draws.append(seed)
        return engine_sample(*args, seed=seed, **kwargs)

    monkeypatch.setattr(module.rollout, "sample", draw)
    records = [{"prompt": "hello"}, {"prompt": "the quick brown fox"}]
    batch = collate_prompts([prompt_ids(r, "m", tokenizer) for r in records], records, tokenizer.pad_token_id,
                            [r["prompt"] for r in records])
    for step in (0, 1, 282, 10**9):
        monkeypatch.setattr(RLOO, "global_step", property(lambda self, step=step: step))
        for batch_idx in (0, 1):
            assert len(module._draw(batch, batch_idx).samples) == 4
    assert len(seeds) == 4 * 2 * 2  # two chunks of one prompt each per draw
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**63 for s in seeds)
    assert len(set(draws)) == len(draws) == 8 and all(0 <= s < 2**63 for s in draws)  # a signed 64-bit seed
