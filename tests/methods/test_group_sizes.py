"""Per-prompt group sizes (``PromptBatch.group_sizes``, chosen by a curriculum before generating) reach
every part of the online-RL loop: advantages by hand, dynamic sampling, the micro-batch and sampling-pass
plans, the engine's draw, the SGD update against a group-by-group oracle, and the outcomes a step returns."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from lit_align.data.collate import collate_prompts
from lit_align.data.formats import prompt_ids
from lit_align.methods import GRPO, micro_batches
from lit_align.methods.rollouts import DynamicSampling, Plan, RolloutBatch, Rollouts, plan_sampling_pass
from lit_align.methods.rl_metrics import completion_rows
from lit_align.objectives import logprobs
from lit_align.objectives import policy_gradient as pg
from lit_align.objectives.rl import PolicyGradientBatch
from lit_align.rewards.base import Reward
from lit_align.sampling.engines import HFGenerate
from lit_align.sampling.generate import Samples, SamplingParams, sample

from conftest import step_outputs_recorder, trainer

SIZES = [2, 3, 4]
REWARDS = torch.tensor([1.0, 3.0, 0.0, 0.0, 3.0, 1.0, 2.0, 3.0, 6.0])


# --- advantages --------------------------------------------------------------------------------------
def test_advantages_of_groups_of_different_sizes_by_hand():
    # group means 2, 1, 3; centred: [-1, 1], [-1, -1, 2], [-2, -1, 0, 3]
    centred = [-1.0, 1.0, -1.0, -1.0, 2.0, -2.0, -1.0, 0.0, 3.0]
    # leave-one-out: [1-3, 3-1], [0-3/2, 0-3/2, 3-0], [1-11/3, 2-10/3, 3-9/3, 6-6/3]
    rloo = [-2.0, 2.0, -1.5, -1.5, 3.0, -8 / 3, -4 / 3, 0.0, 4.0]
    assert pg.group_advantages(REWARDS, SIZES, "rloo").tolist() == pytest.approx(rloo)
    assert pg.rloo_advantages(REWARDS, torch.tensor(SIZES)).tolist() == pytest.approx(rloo)
    assert pg.group_advantages(REWARDS, SIZES, "dr_grpo").tolist() == pytest.approx(centred)
    assert pg.group_advantages(REWARDS, SIZES, "grpo", "none").tolist() == pytest.approx(centred)
    # unbiased group stds: sqrt(2 / 1), sqrt(6 / 2), sqrt(14 / 3)
    stds = [math.sqrt(2)] * 2 + [math.sqrt(3)] * 3 + [math.sqrt(14 / 3)] * 4
    assert pg.group_advantages(REWARDS, SIZES, "grpo", "group").tolist() == pytest.approx(
        [c / (s + 1e-4) for c, s in zip(centred, stds)])
    batch_std = statistics.stdev(REWARDS.tolist())
    assert pg.group_advantages(REWARDS, SIZES, "grpo", "batch").tolist() == pytest.approx(
        [c / (batch_std + 1e-4) for c in centred])
    assert pg.uniform_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0, 2.0]), SIZES).tolist() == [
        True, False, True]
    with pytest.raises(ValueError, match="at least 2"):
        pg.group_advantages(REWARDS, [1, 4, 4], "grpo")
    with pytest.raises(ValueError, match="do not cover"):
        pg.group_advantages(REWARDS, [2, 3, 3], "grpo")


@pytest.mark.parametrize("estimator, scale", [("rloo", "group"), ("grpo", "group"), ("grpo", "batch"),
                                              ("grpo", "none"), ("dr_grpo", "group")])
def test_equal_sizes_give_the_int_path_bit_for_bit(estimator, scale):
    rewards = torch.randn(24, generator=torch.Generator().manual_seed(0))
    whole = pg.group_advantages(rewards, 4, estimator, scale)
    assert torch.equal(pg.group_advantages(rewards, [4] * 6, estimator, scale), whole)
    assert torch.equal(pg.group_advantages(rewards, torch.full((6,), 4), estimator, scale), whole)
    assert torch.equal(pg.uniform_groups(rewards, [4] * 6), pg.uniform_groups(rewards, 4))
    if scale != "batch":  # runs of one size are blocks of their own: each as the int path computes it
        mixed = pg.group_advantages(rewards, [4, 4, 8, 8], estimator, scale)
        assert torch.equal(mixed[:8], pg.group_advantages(rewards[:8], 4, estimator, scale))
        assert torch.equal(mixed[8:], pg.group_advantages(rewards[8:], 8, estimator, scale))


# --- rollouts, dynamic sampling, plans ----------------------------------------------------------------
def _rollouts(sizes: list[int], rewards: list[float], tag: str) -> Rollouts:
    """Rollouts whose rows name their group and place (texts "tag:g.j"), prompt g being token 10 + g."""
    groups = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    n = len(groups)
    samples = Samples(prompt_ids=(10 + groups)[:, None], prompt_mask=torch.ones(n, 1, dtype=torch.long),
                      completion_ids=torch.ones(n, 2, dtype=torch.long), completion_mask=torch.ones(n, 2, dtype=torch.long),
                      texts=[f"{tag}:{g}.{j}" for g, s in enumerate(sizes) for j in range(s)],
                      truncated=torch.zeros(n, dtype=torch.bool))
    return Rollouts(samples, torch.tensor(rewards), [f"{tag}:{g}" for g in range(len(sizes))], sizes)


def test_dynamic_sampling_keeps_and_sets_aside_groups_of_different_sizes():
    dynamic = DynamicSampling(max_draws=4)
    # draw a: no signal in group 0 (2 rows), signal in 1 (3 rows) and 2 (2 rows)
    assert dynamic.add(_rollouts([2, 3, 2], [1, 1, 0, 1, 0, 2, 3], "a")) == 2
    # draw b: signal in group 0 (4 rows), none in group 1 (2 rows)
    assert dynamic.add(_rollouts([4, 2], [1, 2, 1, 1, 5, 5], "b")) == 3
    state = dynamic.state()
    out = dynamic.take(3, pad_id=0)
    assert out.prompts == ["a:1", "a:2", "b:0"] and out.sizes == [3, 2, 4]
    assert out.samples.texts == ["a:1.0", "a:1.1", "a:1.2", "a:2.0", "a:2.1"] + [f"b:0.{j}" for j in range(4)]
    assert out.rewards.tolist() == [0, 1, 0, 2, 3, 1, 2, 1, 1]
    assert out.drawn == 2 and out.dropped == 3
    # at the draw cap the set-aside groups fill up, with their own sizes; a checkpoint keeps the sizes
    dynamic.load_state(state)
    full = dynamic.take(5, pad_id=0)
    assert full.prompts == ["a:1", "a:2", "b:0", "a:0", "b:1"] and full.sizes == [3, 2, 4, 2, 2]
    assert full.samples.texts[-4:] == ["a:0.0", "a:0.1", "b:1.0", "b:1.1"]


def test_a_rollout_batch_knows_each_rows_group_and_prompt():
    rollouts = _rollouts([2, 3], [0, 1, 2, 3, 4], "p")
    batch = RolloutBatch(rollouts, loss_mask=torch.ones(5, 2), plan=Plan.NOT_NEEDED, reason="",
                         advantages=torch.zeros(5))
    assert batch.group_ids.tolist() == [0, 0, 1, 1, 1]
    assert [r["prompt"] for r in completion_rows(batch, step=0, count=4)] == ["p:0", "p:0", "p:1", "p:1"]
    with pytest.raises(ValueError, match="do not match"):
        Rollouts(rollouts.samples, rollouts.rewards, rollouts.prompts, [2, 2])


def test_the_plans_read_the_real_group_boundaries():
    whole = [range(0, 2), range(2, 8)]
    split = [range(0, 3), range(3, 8)]
    assert plan_sampling_pass(True, True, False, whole, [2, 6])[0] is Plan.TRAINING_FORWARD
    assert plan_sampling_pass(True, True, False, split, [2, 6])[0] is Plan.SEPARATE_PASS
    assert plan_sampling_pass(True, True, False, split, [3, 5])[0] is Plan.TRAINING_FORWARD
    t = micro_batches.RowTokens(completion=[3] * 8, prompt=[4] * 8)
    # groups [2, 6]: 4 + 2*2 = 8 and 4 + 6*2 = 16 tokens, the prompt once each
    assert micro_batches.plan_micro_batches(range(8), t, [2, 6], None, 16) == [range(0, 2), range(2, 8)]
    assert micro_batches.plan_micro_batches(range(8), t, [2, 6], None, 24) == [range(0, 8)]
    assert micro_batches.plan_micro_batches(range(8), t, [2, 6], None, 12) == [range(0, 2), range(2, 6), range(6, 8)]
    assert t.forwarded(range(1, 5), True, [2, 6]) == 4 * 2 + 4 + 4


# --- the engine ---------------------------------------------------------------------------------------
def _prompts(tokenizer, texts: list[str]):
    records = [{"prompt": t} for t in texts]
    return collate_prompts([prompt_ids(r, "m", tokenizer) for r in records], records, tokenizer.pad_token_id, texts)


@pytest.mark.parametrize("engine", [HFGenerate(), HFGenerate(max_batch_rows=4)], ids=["whole", "chunked"])
def test_an_engine_draws_each_prompts_own_number_of_completions(tokenizer, tiny_lm, engine):
    batch = _prompts(tokenizer, ["hello", "the quick brown fox", "say a"])
    params = SamplingParams(max_new_tokens=4, temperature=1.0, n=7)  # n is not read
    out = engine.sample_groups(tiny_lm, tokenizer, batch.input_ids, batch.attention_mask, params, [2, 6, 4], seed=3)
    assert len(out) == 12 and len(out.texts) == 12
    for row, prompt in enumerate([0] * 2 + [1] * 6 + [2] * 4):
        assert torch.equal(out.prompt_ids[row], batch.input_ids[prompt])
    again = engine.sample_groups(tiny_lm, tokenizer, batch.input_ids, batch.attention_mask, params, [2, 6, 4], seed=3)
    assert torch.equal(again.completion_ids, out.completion_ids)
    assert len(set(out.texts[2:8])) > 1, "a group's samples are drawn, not copied"
    equal = engine.sample_groups(tiny_lm, tokenizer, batch.input_ids, batch.attention_mask, params, [3, 3, 3], seed=5)
    plain = engine.sample(tiny_lm, tokenizer, batch.input_ids, batch.attention_mask,
                          SamplingParams(max_new_tokens=4, temperature=1.0, n=3), seed=5)
    assert torch.equal(equal.completion_ids, plain.completion_ids)


# --- the loop -----------------------------------------------------------------------------------------
RECORDS = [{"prompt": "hello"}, {"prompt": "the quick brown fox jumps over the lazy dog"}, {"prompt": "say a"}]
GROUPS = [2, 6, 4]


class CharSum(Reward):
    def __call__(self, prompts, completions, records):
        return torch.tensor([float(sum(map(ord, c)) % 7) for c in completions])


def _batch(tokenizer, sizes, problem_ids=None, draw_index=None):
    batch = _prompts(tokenizer, [r["prompt"] for r in RECORDS])
    batch.group_sizes, batch.problem_ids, batch.draw_index = sizes, problem_ids, draw_index
    return batch


def _loader(batches):
    return torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)


def _grpo(loss_type: str, **loop) -> GRPO:
    torch.manual_seed(0)
    module = GRPO(model="tiny:causal-lm", reward=CharSum(), num_generations=3, loss_type=loss_type, beta=0.1,
                  generation=SamplingParams(max_new_tokens=8, temperature=0.7),
                  optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
                  scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0), **loop)
    module.configure_model()
    return module


def _update(monkeypatch, tokenizer, loss_type, pinned, ref, **loop):
    """The weights' change after one plain-SGD step (lr 1) on pinned samples and reference log-probs, and
    the micro-batches learnt."""
    module = _grpo(loss_type, **loop)
    start = {n: t.detach().clone() for n, t in module.policy.named_parameters() if t.requires_grad}
    monkeypatch.setattr(module.rollout, "sample_groups", lambda *a, **k: pinned)
    monkeypatch.setattr(module, "with_reference", lambda fn: ref)
    learnt: list[list[range]] = []
    plan = micro_batches.plan_micro_batches
    monkeypatch.setattr(micro_batches, "plan_micro_batches", lambda *a, **k: learnt.append(plan(*a, **k)) or learnt[-1])
    trainer(max_steps=1, limit_val_batches=0).fit(module, _loader([_batch(tokenizer, GROUPS)]))
    return {n: start[n] - p.detach() for n, p in module.policy.named_parameters() if p.requires_grad}, learnt[-1]


def _oracle(loss_type, pinned, ref) -> dict:
    """The gradient summed group by group: each group's plain forward, its advantages from its own rewards
    (the int path), the normalisers the whole step's."""
    module = _grpo(loss_type)
    objective, mask = module.objective, pinned.completion_mask.float()
    totals = float(mask.size(0)), float(mask.sum())
    start = 0
    for size in GROUPS:
        rows = slice(start, start + size)
        group = pinned.select(rows)
        logps, _ = logprobs.completion_logprobs(module.policy, group)
        advantages = objective.advantages(CharSum()(None, group.texts, None), size)
        out = objective(PolicyGradientBatch(logps=logps, mask=mask[rows], advantages=advantages, step_sequences=totals[0],
                                            step_tokens=totals[1], max_new_tokens=8, ref_logps=ref[rows]))
        out.loss.backward()
        start += size
    return {n: p.grad for n, p in module.policy.named_parameters() if p.requires_grad}


def _largest_difference(a: dict, b: dict) -> float:
    scale = max(1.0, max(float(t.abs().max()) for t in b.values()))
    return max(float((a[n] - t).abs().max()) for n, t in b.items()) / scale


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo", "cispo"])
def test_one_step_over_groups_of_different_sizes_is_the_group_by_group_update(monkeypatch, tokenizer, loss_type):
    engine_module = _grpo(loss_type)
    batch = _batch(tokenizer, GROUPS)
    pinned = engine_module.rollout.sample_groups(engine_module.policy, tokenizer, batch.input_ids, batch.attention_mask,
                                                 engine_module.sampling, GROUPS, seed=3)
    rewards = CharSum()(None, pinned.texts, None)
    assert all(g.std() > 0 for g in rewards.split(GROUPS)), "every group's rewards must vary"
    ref = -torch.rand(len(pinned), pinned.completion_ids.size(1), generator=torch.Generator().manual_seed(1))
    expected = _oracle(loss_type, pinned, ref)
    assert any(float(t.abs().max()) > 1e-4 for t in expected.values())
    tokens = micro_batches.RowTokens.of(pinned)
    starts = [0, 2, 8, 12]
    per_group = [tokens.forwarded(range(a, b), True, GROUPS) for a, b in zip(starts, starts[1:])]
    for budget, whole_groups in ((max(per_group), True), (per_group[1] - 1, False)):
        got, learnt = _update(monkeypatch, tokenizer, loss_type, pinned, ref, max_tokens_per_micro_batch=budget)
        assert len(learnt) > 1
        assert all(r.start in starts and r.stop in starts for r in learnt) == whole_groups, learnt
        assert _largest_difference(got, expected) <= 1e-5, (budget, learnt)


class HalfConstant(Reward):
    """The first prompt scores 1 for every completion (no signal); the others their length."""

    def __call__(self, prompts, completions, records):
        return torch.tensor([1.0 if r == RECORDS[0] else float(len(c)) for c, r in zip(completions, records)])


def test_a_step_returns_each_draws_outcomes_also_while_dynamic_sampling_collects(monkeypatch, tokenizer):
    module = GRPO(model="tiny:causal-lm", reward=HalfConstant(), num_generations=2, dynamic_sampling=True,
                  max_draws=2, overlong_buffer=4, generation=SamplingParams(max_new_tokens=4, temperature=1.0))
    module.configure_model()
    drawn = []
    engine_draw = module.rollout.sample_groups
    monkeypatch.setattr(module.rollout, "sample_groups", lambda *a, **k: drawn.append(engine_draw(*a, **k)) or drawn[-1])
    batches = [_batch(tokenizer, [2, 3, 4], problem_ids=[7, 1, 4], draw_index=0),
               _batch(tokenizer, [3, 2, 2], problem_ids=[2, 5, 0], draw_index=1)]
    seen = step_outputs_recorder()
    trainer(max_steps=1, limit_val_batches=0, callbacks=[seen]).fit(module, _loader(batches))
    first, second = seen.outputs
    assert set(first) == {"outcomes"}, "a draw that only collects returns its outcomes alone"
    assert "metrics" in second and "outcomes" in second
    for out, b, samples in zip((first, second), batches, drawn):
        (outcome,) = out["outcomes"]  # one per rank
        assert outcome["problem_ids"] == b.problem_ids and outcome["draw_index"] == b.draw_index
        assert outcome["group_sizes"] == b.group_sizes and len(samples) == sum(b.group_sizes)
        records = [r for r, s in zip(RECORDS, b.group_sizes) for _ in range(s)]
        expected = HalfConstant()(None, samples.texts, records).tolist()  # before the overlong penalty
        assert outcome["rewards"] == expected and all(isinstance(r, float) for r in outcome["rewards"])
    lengths = drawn[0].completion_mask.sum(-1)
    assert (lengths > 0).all(), "every completion is penalised as overlong here, or the check says nothing"


def test_group_sizes_below_two_are_refused(tokenizer):
    module = _grpo("dapo")
    with pytest.raises(ValueError, match="group_sizes must be whole numbers of at least 2"):
        module._start_draw(_batch(tokenizer, [2, 1, 3]), 0)
    with pytest.raises(ValueError, match="3 prompts"):
        module._start_draw(_batch(tokenizer, [2, 2]), 0)


def test_every_ranks_values_are_gathered_whatever_their_lengths(monkeypatch):
    """Groups of different sizes leave ranks with different row counts: the gather pads and trims."""
    module = GRPO(model="tiny:causal-lm", reward=CharSum(), num_generations=2)
    mine, theirs = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0, 5.0, 6.0])

    def two_ranks(t):  # rank 0 holds ``mine``; rank 1 answers with its length, or ``theirs`` padded alike
        peer = torch.tensor([len(theirs)]) if t.dtype == torch.long else torch.nn.functional.pad(
            theirs, (0, len(t) - len(theirs)))
        return torch.stack([t, peer])

    monkeypatch.setattr(GRPO, "_world_size", property(lambda self: 2))
    monkeypatch.setattr(module, "all_gather", two_ranks)
    assert module._gather(mine).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
