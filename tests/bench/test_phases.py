"""The RL benchmark's step phases, FLOP count, matmul peak and task (no benchmark is run here)."""

import pytest
import torch

import lit_align.methods
from tools.bench import common, flops, lit, peak, phases, report, rl_task


class Loop:
    """A stand-in online-RL module: a reference pass that runs the no-grad log-probs inside it."""

    def with_reference(self, fn):
        return fn()

    def _logps_no_grad(self):
        return 1


def test_a_pass_inside_the_reference_counts_as_reference_time_only(monkeypatch):
    ticks = iter(range(100))
    monkeypatch.setattr(phases.time, "perf_counter", lambda: float(next(ticks)))
    timer, loop = phases.PhaseTimer(), Loop()
    assert timer.wrap(loop, "with_reference", "ref") and timer.wrap(loop, "_logps_no_grad", "old")
    assert not timer.wrap(loop, "no_such_method", "old")
    loop.with_reference(loop._logps_no_grad)  # 1 tick, all of it reference
    loop._logps_no_grad()  # 1 tick of old-policy pass
    timer.step_done()
    assert timer.steps == [{"sample": 0, "score": 0, "ref": 1.0, "old": 1.0, "backward": 0, "optimizer": 0}]
    assert timer.hooked == ["with_reference:ref", "_logps_no_grad:old"]


def test_training_passes_are_the_step_less_sampling_and_scoring():
    step = {"sample": 5.0, "score": 1.0, "ref": 2.0, "old": 1.0, "backward": 3.0, "optimizer": 0.5}
    split = phases.split([20.0], [step])
    assert split["passes"] == [14.0] and split["policy"] == [10.5] and split["backward"] == [3.0]


def test_the_counter_counts_every_matmul_and_the_cpu_attention_of_a_forward_and_backward(tokenizer):
    from lit_align.modeling import tiny

    model = tiny.tiny_causal_lm(tokenizer).train()
    b, s = 2, 24
    ids = torch.randint(0, model.config.vocab_size, (b, s))
    mode = flops.counter()
    with mode:
        model(input_ids=ids).logits.sum().backward()
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    attention = 3 * 4 * c.num_hidden_layers * b * c.num_attention_heads * s * s * head_dim  # forward 4bhs^2d, backward 2x
    # forward 2 N per token; backward 4 N (the input's gradient and the weight's)
    assert mode.get_total_flops() == 6 * linear * b * s + attention
    if model.config._attn_implementation == "sdpa":  # torch has no formula of its own for this kernel
        assert "aten._scaled_dot_product_flash_attention_for_cpu" in flops.by_op(mode)


def test_replay_hands_back_the_recorded_samples_and_counts_only_the_replayed_steps():
    calls = []
    replay = flops.FlopReplay(first=1, n=1, replay_at=3)
    sample = replay._kept_or_run("sample", lambda: calls.append(1) or len(calls))
    step = replay._counted(lambda: torch.ones(4, 4) @ torch.ones(4, 4))
    got = []
    for _ in range(4):
        got.append(sample())
        step()
        replay.on_train_batch_end(None, None, None, None, 0)
    assert got == [1, 2, 3, 2] and len(calls) == 3  # step 3 replays step 1's samples without sampling
    assert replay.result()["steps"] == [0] and replay.result()["flops"] == [2 * 4 * 4 * 4]


def test_mfu_is_the_replayed_steps_flops_over_their_measured_passes_against_the_peak():
    def run(contender, passes, flop=None):
        steps = {name: [0.0] * len(passes) for name in phases.MEASURED}
        return {"method": "grpo", "contender": contender, "repeat": 0, "step_s": [p + 1 for p in passes],
                "tokens": [1] * len(passes), "process_peak_rss_mib": 1, "train_peak_rss_mib": 1, "busy": [],
                "phases": steps | {"passes": passes, "policy": passes}, **({"flops": flop} if flop else {})}

    runs = [run("lit_align", [2.0, 4.0], {"steps": [1], "flops": [8e11], "counted_s": [9.0], "by_op": {}}),
            run("lit_align@abc", [8.0, 8.0]), run("trl", [5.0, 5.0])]
    table = {"grpo": {c: report.aggregate([r for r in runs if r["contender"] == c]) for c in ("lit_align", "lit_align@abc", "trl")}}
    measured = {"threads": 2, "device": "cpu", "float32": {"gflops": 400.0, "by_size": {512: 400.0}}, "bfloat16": None}
    row = report.with_phases(report.with_ratios(table, runs), runs, measured)["grpo"]["lit_align"]
    assert row["phases"]["passes"] == 3.0
    assert row["passes_vs_baseline"] == pytest.approx(3 / 8) and row["passes_vs_trl"] == pytest.approx(3 / 5)
    # 0.8 TFLOP in the replay of measured step 1, whose passes took 4 s: 200 GFLOP/s of a 400 GFLOP/s peak
    assert row["passes_flops"]["gflops"] == pytest.approx(200) and row["passes_flops"]["mfu"] == pytest.approx(0.5)
    text = report.phase_markdown(table)
    assert "50.0%" in text and "passes ÷ lit_align@abc" in text
    assert "float32 400.0 GFLOP/s" in peak.describe(measured)


def test_the_peak_held_against_a_run_is_its_precisions():
    measured = {"float32": {"gflops": 100.0}, "bfloat16": None}
    assert peak.peak_gflops(measured, "32") == 100.0 and peak.peak_gflops(measured, "bf16-mixed") is None
    assert peak.matmul_gflops(64, torch.float32, "cpu", seconds=0.01) > 0


def test_new_loop_settings_go_to_the_current_tree_only_and_are_refused_where_missing(monkeypatch, tmp_path):
    def spec(contender, **settings):
        return common.Spec("grpo", contender, common.Settings(**settings), str(tmp_path))

    class Takes:
        def __init__(self, max_tokens_per_micro_batch=None, activation_memory_budget_gib=None): ...

    class Lacks:
        def __init__(self): ...

    monkeypatch.setattr(lit_align.methods, "OnlineRL", Takes)
    assert lit._new_loop_settings(spec("lit_align")) == {}
    assert lit._new_loop_settings(spec("lit_align", rl_max_tokens=512, rl_memory_budget=2.0)) == {
        "max_tokens_per_micro_batch": 512, "activation_memory_budget_gib": 2.0}
    assert lit._new_loop_settings(spec("lit_align@37faeba", rl_max_tokens=512)) == {}
    monkeypatch.setattr(lit_align.methods, "OnlineRL", Lacks)
    with pytest.raises(ValueError, match="max_tokens_per_micro_batch"):
        lit._new_loop_settings(spec("lit_align", rl_max_tokens=512))


def test_countdown_is_scored_by_its_verifier_and_an_unknown_task_is_refused():
    record = {"target": 6, "nums": [1, 2, 3]}
    assert rl_task.scores("countdown", ["<answer>1 + 2 + 3</answer>", "<answer>1+2</answer>", "no"], [record] * 3) == [
        1.0, pytest.approx(0.1), 0.0]
    assert rl_task.scores("words", ["a b a"], [{}]) == [pytest.approx(0.1)]
    with pytest.raises(ValueError, match="rl_task"):
        rl_task.reward("chess")


def test_a_loop_method_that_is_gone_is_reported_not_silently_zero():
    class Engine:
        def sample(self):
            return 0

    class Optimizer:
        def step(self):
            return 0

    loop, timer = Loop(), phases.PhaseTimer()
    loop.rollout = Engine()
    phases.instrument_lit(timer, loop, Optimizer())
    assert timer.missing == ["manual_backward", "clip_gradients"]
    assert {"sample:sample", "with_reference:ref", "_logps_no_grad:old", "step:optimizer"} <= set(timer.hooked)
