"""The benchmark harness's own logic: data, clocks, aggregation and ratios (no model is trained here)."""

import json
import statistics

import pytest

from tools.bench import common, data, report, run, worker


def test_synthetic_data_is_fixed_by_the_seed_and_lengths_vary(tmp_path):
    s = common.Settings(steps=4, warmup=1)
    a = data.write_data(s, tmp_path / "a")
    b = data.write_data(s, tmp_path / "b")
    for name in ("sft", "preference", "prompt"):
        assert (a / f"{name}.jsonl").read_text() == (b / f"{name}.jsonl").read_text()
    rows = [json.loads(line) for line in (a / "sft.jsonl").read_text().splitlines()]
    words = [len(r["messages"][1]["content"].split()) for r in rows]
    assert len(rows) >= s.examples_needed(s.sft_batch)
    assert max(words) > 2 * statistics.median(words) > 2 * min(words)  # a long tail, not one length


def test_every_contender_sees_the_same_batches_in_lit_aligns_order(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(data.models, "load_tokenizer", lambda name: tokenizer)
    s = common.Settings(steps=3, warmup=1, sft_batch=2)
    spec = common.Spec("sft", "bare", s, str(data.write_data(s, tmp_path)))
    _, first = data.ordered_batches(spec)
    _, again = data.ordered_batches(spec)
    assert len(first) == s.steps_total() and all(len(b) == 2 for b in first)
    assert [[e.input_ids for e in b] for b in first] == [[e.input_ids for e in b] for b in again]


def test_step_clock_drops_warmup_and_keeps_tokens_aligned():
    clock = common.StepClock()
    clock.begin()
    clock.start = 0.0
    clock.ends, clock.tokens = [1.0, 3.0, 4.5], [10, 20, 30]
    out = common.summary(clock, warmup=1)
    assert out["step_s"] == [2.0, 1.5] and out["tokens"] == [20, 30]


def _run(contender, repeat, step_s, tokens, peak, error=None):
    base = {"method": "sft", "contender": contender, "repeat": repeat}
    if error:
        return base | {"error": error}
    return base | {"step_s": step_s, "tokens": tokens, "process_peak_rss_mib": peak, "train_peak_rss_mib": peak}


def _table(runs):
    names = dict.fromkeys(r["contender"] for r in runs)
    table = {"sft": {c: report.aggregate([r for r in runs if r["contender"] == c]) for c in names}}
    return report.with_ratios(table, runs)


def test_aggregate_takes_medians_over_repeats_and_ratios_pair_equal_steps():
    runs = [
        _run("lit_align", 0, [1.0, 4.0], [100, 100], 900), _run("lit_align", 1, [1.2, 4.4], [100, 100], 1000),
        _run("lit_align", 2, [1.1, 3.6], [100, 100], 950),
        _run("trl", 0, [2.0, 8.0], [100, 100], 1000), _run("trl", 1, [2.4, 8.8], [100, 100], 1000),
        _run("trl", 2, [2.2, 7.2], [100, 100], 1000),
        _run("lit_align+packing", 0, [0.5, 1.0], [100, 100], 900),
        _run("trl+padding_free", 0, [1.0, 2.0], [100, 100], 1000),
        _run("bare", 0, [1.0, 4.0], [100, 100], 800), _run("bare", 1, [1.0, 4.0], [100, 100], 800),
        _run("bare+packing", 0, [0.4, 0.8], [100, 100], 800),
    ]
    table = _table(runs)
    rows = table["sft"]
    assert rows["lit_align"]["step_s"] == pytest.approx(2.5) and rows["lit_align"]["step_s_max"] == pytest.approx(2.8)
    assert rows["lit_align"]["time_vs_trl"] == pytest.approx(0.5)  # every paired step is half TRL's
    assert rows["lit_align"]["mem_vs_trl"] == pytest.approx(0.95)
    assert rows["lit_align"]["time_vs_bare"] == pytest.approx(1.05)  # repeat 2 has no bare run to pair with
    assert rows["lit_align+packing"]["time_vs_trl_same_layout"] == pytest.approx(0.5)
    assert rows["lit_align+packing"]["time_vs_bare"] == pytest.approx(1.25)
    assert rows["lit_align"]["time_vs_trl_same_layout"] is None
    assert "| sft | lit_align | 2.50 |" in report.markdown(table)


def test_a_failed_contender_is_a_marked_row_not_a_crash():
    table = _table([_run("lit_align", 0, [1.0], [5], 900), _run("trl", 0, None, None, None, error="ValueError: nope")])
    rows = table["sft"]
    assert rows["trl"] == {"error": "ValueError: nope"}
    assert rows["lit_align"]["time_vs_trl"] is None and rows["lit_align"]["mem_vs_trl"] is None
    assert "failed: ValueError: nope" in report.markdown(table)


def test_worker_routes_each_contender_to_its_module():
    assert [worker.family(c) for c in ("lit_align+packing", "trl+padding_free", "bare", "chunked")] == [
        "lit", "trl_contenders", "bare", "bare"]


def test_gpu_runs_compare_gpu_memory_and_say_so():
    runs = [_run("lit_align", 0, [1.0], [5], 900) | {"cuda_peak_mib": 300.0},
            _run("trl", 0, [2.0], [5], 800) | {"cuda_peak_mib": 600.0}]
    table = _table(runs)
    assert table["sft"]["lit_align"]["mem_vs_trl"] == pytest.approx(0.5)  # GPU peak, not RSS (900 / 800)
    text = report.markdown(table)
    assert "peak GPU MiB" in text and "| 300 |" in text and "peak RSS" not in text


def test_bf16_mixed_runs_drop_the_fused_optimizer_everywhere():
    assert common.Settings().fused_adamw and not common.Settings(precision="bf16-mixed", device="cuda").fused_adamw


def test_ablation_rows_are_divided_by_the_bare_loop_with_every_optimisation_on():
    assert run.contenders("rloo", False) == run.CONTENDERS["rloo"]
    assert {"bare+no_unpad", "bare+no_shared_prompt"} <= set(run.contenders("rloo", True))
    runs = [_run("bare", 0, [1.0, 2.0], [5, 5], 800), _run("bare+no_unpad", 0, [1.5, 3.0], [5, 5], 900)]
    assert _table(runs)["sft"]["bare+no_unpad"]["time_vs_bare"] == pytest.approx(1.5)


def test_trl_rl_contenders_sample_once_per_step_and_learn_in_the_same_micro_batches():
    trl_contenders = pytest.importorskip("tools.bench.trl_contenders")
    s = common.Settings(rloo_batch=8, rloo_k=8, rl_micro_batch=8)
    layout = trl_contenders.online_layout(s)
    assert layout["per_device_train_batch_size"] == 8  # the micro-batch, in completions
    assert layout["per_device_train_batch_size"] * layout["gradient_accumulation_steps"] == 64 == s.rl_rows()
    assert layout["steps_per_generation"] == layout["gradient_accumulation_steps"]  # one generation batch per step
    whole = trl_contenders.online_layout(common.Settings(rloo_batch=2, rloo_k=4))  # 0: the whole step at once
    assert whole["per_device_train_batch_size"] == 8 and whole["gradient_accumulation_steps"] == 1
    with pytest.raises(ValueError, match="must divide"):
        common.Settings(rloo_batch=2, rloo_k=4, rl_micro_batch=3).rl_accumulation()


def test_a_contender_runs_in_a_worker_started_as_a_module_and_its_failure_is_a_row(tmp_path):
    """``run_one`` starts ``python -m tools.bench.worker``, which imports the contender's module of the package."""
    spec = common.Spec("no_such_method", "bare", common.Settings(threads=1), str(tmp_path))
    result = run.run_one(spec, tmp_path / "worker.log", timeout=300)
    assert result["error"] == "KeyError: 'no_such_method'", (tmp_path / "worker.log").read_text()
    assert result["process_peak_rss_mib"] > 0 and result["contender"] == "bare"
