"""tools/curriculum_compare: every arm's config runs on the same start and budget; its figures by hand."""

from __future__ import annotations

import pytest
import yaml

from lit_align.cli import main
from tools import curriculum_compare as cc


def test_each_arm_changes_only_what_it_names(tmp_path):
    configs = {name: yaml.safe_load(cc.arm_config(name, "START", 7, tmp_path).read_text()) for name in cc.ARMS}
    for name, c in configs.items():
        assert c["model"]["init_args"]["model"] == "START" and c["trainer"]["limit_train_batches"] == 7
        assert c["trainer"]["callbacks"] == [] and c["trainer"]["max_time"] is None
        assert c["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path / name)
    curriculum = {name: c["data"]["curriculum"]["init_args"] for name, c in configs.items()}
    assert curriculum["uniform"] == curriculum["dynamic"] == {"strategy": "uniform"}
    assert curriculum["curriculum"]["adaptive_k"] is False and curriculum["curriculum_k"]["adaptive_k"] is True
    dynamic = {name: c["model"]["init_args"]["dynamic_sampling"] for name, c in configs.items()}
    assert dynamic == {"uniform": False, "dynamic": True, "curriculum": False, "curriculum_k": False}
    # apart from those, the arms are one config
    strip = lambda c: {**c, "data": {**c["data"], "curriculum": None},
                       "model": {**c["model"], "init_args": {k: v for k, v in c["model"]["init_args"].items()
                                                             if k not in ("dynamic_sampling", "max_draws")}},
                       "trainer": {**c["trainer"], "logger": None}}
    assert all(strip(c) == strip(configs["uniform"]) for c in configs.values())


@pytest.mark.parametrize("arm", [pytest.param("dynamic", marks=pytest.mark.slow), "curriculum_k"])
def test_an_arm_runs_and_logs_the_figures_the_table_reads(arm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = cc.arm_config(arm, "tiny:causal-lm", 3, tmp_path)
    main(["fit", "--config", str(path), "--data.train.init_args.num_problems", "40", "--data.batch_size", "2",
          "--model.init_args.generation.max_new_tokens", "4", "--model.init_args.micro_batch_size", "4"])
    figures = cc.summarise(cc._rows(tmp_path / arm))
    assert figures["samples"] > 0 and figures["groups"] > 0
    assert figures["optimiser_steps"] >= 1 and 0 <= figures["signal_share"] <= 1


def test_the_summary_by_hand():
    rows = [{"curriculum/groups_drawn": "4", "curriculum/signal_share": "0.5", "curriculum/samples_drawn": "32",
             "curriculum/reward_drawn": str(r)} for r in (0.1, 0.2, 0.1, 0.3, 0.4)]
    rows.insert(2, {"curriculum/groups_drawn": "", "train/loss": "0.3"})  # a row without the curriculum's figures
    s = cc.summarise(rows)
    assert (s["optimiser_steps"], s["groups"], s["signal_groups"], s["samples"]) == (5, 20, 10, 160)
    assert s["signal_share"] == 0.5 and s["samples_per_signal_group"] == 16
    assert s["reward_slope"]["value"] == pytest.approx(0.07)  # least squares on 0.1, 0.2, 0.1, 0.3, 0.4
    assert "| uniform | 5 | 20 | 10 | 0.50 | 16.0 | +0.0700" in cc.table({"uniform": s})
