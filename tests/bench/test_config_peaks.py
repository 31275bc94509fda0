"""The config peak-memory tool's own logic: the command each config runs with, the order, the child's own peak."""

import sys

from tools.bench import config_peaks


def test_each_kind_of_config_runs_for_a_few_steps_with_its_own_command():
    fit = config_peaks.command("configs/dpo/embedded.yaml", 2, 8)
    assert fit[1:5] == ["-m", "lit_align", "fit", "--config"] and "--trainer.max_steps=2" in fit
    assert "--trainer.max_time=null" in fit  # a config bounded by time runs its steps, not its minutes
    pairs = config_peaks.command("configs/pairs/countdown_embedded.yaml", 2, 8)
    assert pairs[1:3] == ["-m", "lit_align.pairs"] and pairs[-2:] == ["--limit", "8"]
    test = config_peaks.command("configs/eval/instruction_embedded.yaml", 2, 8)
    assert test[3] == "test" and not any("max_steps" in a for a in test)


def test_a_child_process_peak_counts_what_the_child_holds(tmp_path, monkeypatch):
    # a child that touches 200 MiB: wait4's figure includes it. (It is at least the parent's RSS at the
    # spawn, too, which is why the tool itself imports nothing heavy: its own RSS is about 15 MiB.)
    monkeypatch.setattr(config_peaks, "command", lambda *a: [sys.executable, "-c", "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096])"])
    row = config_peaks.run("configs/x.yaml", 1, 1)
    assert row["exit_code"] == 0 and row["peak_rss_mib"] >= 200
