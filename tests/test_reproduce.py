"""The reproduction chain: the smoke profile runs every stage on tiny models; reruns skip; fit stages resume."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from lit_align.cli import main as cli_main
from study.plan import PROFILES, plan
from study.runner import HUB_DATASET, LOCAL_FILE, merge, run, stage_config, stand_in

STAGES = [s.name for s in plan("smoke", "out")]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    stages = run("smoke", str(out / "runs"), str(out / "results.md"), checkpoint_every=1)
    return out, stages


def test_smoke_profile_runs_every_stage_of_both_tracks(smoke):
    out, stages = smoke
    assert [s.name for s in stages] == STAGES
    assert {"instruction_samples", "instruction_pairs", "instruction_sft", "instruction_rm", "instruction_judge",
            "instruction_dpo", "instruction_rloo_rm", "instruction_rloo_checker", "countdown_sft", "countdown_sft_more",
            "countdown_sft_most", "countdown_sft_full", "countdown_rloo", "countdown_best_of_n_val_t0.7",
            "countdown_best_of_n_val_t1", "countdown_best_of_n"} <= set(STAGES)
    for stage in stages:
        folder = out / "runs" / stage.name
        assert (folder / "done.json").is_file() and (folder / "config.yaml").is_file(), stage.name
        if stage.command == "fit":
            assert (folder / "export" / "config.json").is_file(), stage.name
            assert (folder / "checkpoints" / "last.ckpt").is_file(), stage.name
            rows = list(csv.DictReader(open(next(folder.glob("logs/version_*/metrics.csv")))))
            assert any(r.get("train/loss") for r in rows), stage.name


def test_smoke_stages_chain_their_inputs_and_outputs(smoke):
    out, _ = smoke
    runs = out / "runs"
    config = lambda name: yaml.safe_load((runs / name / "config.yaml").read_text())
    assert config("instruction_dpo")["model"]["init_args"]["model"] == str(runs / "instruction_sft" / "export")
    assert config("instruction_rloo_rm")["model"]["init_args"]["reward"]["init_args"]["model"] == str(runs / "instruction_rm" / "export")
    assert config("instruction_sft")["data"]["train"]["init_args"]["path"] == str(runs / "instruction_samples" / "sft.jsonl")
    # the RM (RLOO's reward, DPO's pairs) and the judge learn from disjoint halves of the prompts' pairs
    for name, part in (("instruction_rm", "rm.jsonl"), ("instruction_dpo", "rm.jsonl"), ("instruction_judge", "judge.jsonl")):
        assert config(name)["data"]["train"]["init_args"]["path"] == str(runs / "instruction_pairs" / part), name
    pairs = [(runs / "instruction_pairs" / part).read_text().splitlines() for part in ("rm.jsonl", "judge.jsonl")]
    prompts = [{json.dumps(json.loads(line)["prompt"]) for line in part} for part in pairs]
    assert prompts[0] and prompts[1] and not prompts[0] & prompts[1]
    all_pairs = (runs / "instruction_samples" / "pairs.jsonl").read_text().splitlines()
    assert sorted(pairs[0] + pairs[1]) == sorted(all_pairs)
    # the data-scaling chain: each SFT stage continues the one before on fresh problems
    assert config("countdown_sft_more")["model"]["init_args"]["model"] == str(runs / "countdown_sft" / "export")
    assert config("countdown_sft_most")["model"]["init_args"]["model"] == str(runs / "countdown_sft_more" / "export")
    seeds = [config(n)["data"]["train"]["init_args"]["seed"] for n in ("countdown_sft", "countdown_sft_more", "countdown_sft_most")]
    assert len(set(seeds)) == 3
    assert config("countdown_sft_more")["trainer"]["max_steps"] == PROFILES["smoke"].cd_more_steps
    full = config("countdown_sft_full")["model"]["init_args"]
    assert full["lora"] is None and full["model"] == PROFILES["smoke"].policy
    assert config("countdown_rloo")["model"]["init_args"]["model"] == str(runs / "countdown_sft_most" / "export")
    # best-of-N: validation problems (another seed) at each temperature; the test at the temperature they chose
    test = config("countdown_best_of_n")
    for t in PROFILES["smoke"].bon_temperatures:
        val = config(f"countdown_best_of_n_val_t{t:g}")
        assert val["model"]["init_args"]["generation"]["temperature"] == t
        assert val["data"]["test"]["init_args"]["seed"] != test["data"]["test"]["init_args"]["seed"]
    from study.plan import choose_temperature

    chosen, _ = choose_temperature({t: runs / f"countdown_best_of_n_val_t{t:g}" for t in PROFILES["smoke"].bon_temperatures})
    assert test["model"]["init_args"]["generation"]["temperature"] == chosen
    evaluation = config("instruction_eval_dpo")["model"]["init_args"]
    assert evaluation["reference_responses"] == str(runs / "instruction_eval_base" / "responses.jsonl")
    assert evaluation["judge"]["init_args"]["model"] == str(runs / "instruction_judge" / "export")


def test_smoke_evaluations_write_their_metrics(smoke):
    out, _ = smoke
    runs = out / "runs"
    base = json.loads((runs / "instruction_eval_base" / "metrics.json").read_text())
    assert base["num_prompts"] == PROFILES["smoke"].if_eval_prompts and "win_rate" not in base
    for name in ("sft", "dpo", "rloo_rm", "rloo_checker"):
        m = json.loads((runs / f"instruction_eval_{name}" / "metrics.json").read_text())
        assert 0.0 <= m["win_rate"] <= 1.0
        for mode in ("strict", "loose"):  # IFEval's four numbers: a prompt counts only when all its instructions do
            assert 0.0 <= m[f"ifeval_prompt_level_{mode}"] <= m[f"ifeval_instruction_level_{mode}"] <= 1.0
        assert m["ifeval_prompt_level_strict"] <= m["ifeval_prompt_level_loose"]
        assert m["reference_reward_mean"] == pytest.approx(base["reward_mean"], abs=1e-5)  # the same base answers, re-judged
    assert set(json.loads((runs / "countdown_sft" / "eval.json").read_text())) == {"before", "after"}
    for name in ("countdown_sft_more", "countdown_sft_most", "countdown_sft_full", "countdown_rloo"):
        # their start was measured already (the base, or the stage they continue): only "after"
        assert set(json.loads((runs / name / "eval.json").read_text())) == {"after"}, name
    assert len((runs / "countdown_best_of_n" / "best_of_n.csv").read_text().splitlines()) == 1 + len(PROFILES["smoke"].bon_n)
    counts = json.loads((runs / "instruction_samples" / "pairs.counts.json").read_text())
    assert counts["prompts"] == PROFILES["smoke"].if_prompts and counts["completions"] == 4 * counts["prompts"]


def test_smoke_results_file_has_a_filled_table_row_per_stage(smoke):
    out, stages = smoke
    text = (out / "results.md").read_text()
    assert text.count("<!-- reproduce:smoke:begin -->") == 1
    for stage in stages:
        if stage.name.startswith("instruction_eval_"):
            row = next(line for line in text.splitlines() if line.startswith(f"| {stage.label} |"))
            assert "–" not in row, row  # every cell was measured
    assert (out / "reproduce_smoke_curves.png").is_file() and (out / "reproduce_smoke_best_of_n.png").is_file()
    assert (out / "reproduce_smoke_scaling.png").is_file()
    done = json.loads((out / "runs" / "countdown_sft" / "done.json").read_text())
    assert done["machine"] and f"Stages ran at commit {done['commit']}" in text  # provenance of every stage
    claims = [line for line in text.splitlines() if line.startswith("| ") and line.endswith(("| reproduced |", "| inconclusive |",
              "| not reproduced (the opposite holds) |", "| no difference resolved |", "| LoRA better |", "| full fine-tuning better |",
              "| GRPO better |", "| RLOO better |"))]
    assert len(claims) == 25 and not any("not run" in line for line in claims)
    assert sum("GRPO with the verifier beats its SFT start" in line for line in claims) == 2
    assert sum("RLOO against GRPO" in line for line in claims) == 2
    # the stage table names each stage's sampling engine and its own peak RSS
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert rows["countdown_grpo"][2] == "HFGenerate" and rows["instruction_samples"][2] == "HFGenerate"
    assert rows["instruction_rm"][2] == "–"  # a reward model samples nothing
    assert float(rows["countdown_grpo"][3].split()[0].replace(",", "")) > 100  # MiB, measured
    assert done["engine"] == "HFGenerate" and done["peak_rss_mib"] > 100
    # the online RL stages' training reward: one row each, its step count the stage's optimiser steps
    block = text.split("**Online RL training reward**")[1].split("\n\n")[1].splitlines()
    slopes = [line for line in block if line.startswith(("| RLOO with the verifier", "| GRPO with the verifier"))]
    assert len(slopes) == 2 and all(line.split(" | ")[1] == str(PROFILES["smoke"].cd_rl_steps) for line in slopes), slopes


def test_rerun_skips_finished_stages_and_a_fit_stage_resumes_from_its_checkpoint(smoke, capsys):
    out, _ = smoke
    runs = out / "runs"
    before = (runs / "countdown_sft" / "eval.json").read_text()
    (runs / "countdown_sft" / "done.json").unlink()
    capsys.readouterr()
    run("smoke", str(runs), str(out / "results.md"), checkpoint_every=1)
    printed = capsys.readouterr().out
    assert printed.count("done already") == len(STAGES) - 1
    assert f"resuming from {runs / 'countdown_sft' / 'checkpoints' / 'last.ckpt'}" in printed
    # the before-training figure came back from the checkpoint instead of being re-measured on trained weights
    assert json.loads((runs / "countdown_sft" / "eval.json").read_text())["before"] == json.loads(before)["before"]
    assert (out / "results.md").read_text().count("<!-- reproduce:smoke:begin -->") == 1


def test_paper_profile_writes_parseable_configs_for_every_stage(tmp_path, capsys):
    stages = run("paper", str(tmp_path), None, dry_run=True)
    assert "docs/results.md" in capsys.readouterr().out  # no CPU costs for the paper profile: where the GPU table is
    assert "instruction_samples" not in [s.name for s in stages]  # the paper's data are public datasets
    for stage in stages:
        config = tmp_path / stage.name / "config.yaml"
        with pytest.raises(SystemExit) as done:
            cli_main([stage.command, "--config", str(config), "--print_config"])
        assert done.value.code in (None, 0), stage.name
        parsed = yaml.safe_load(capsys.readouterr().out)
        assert parsed["trainer"]["accelerator"] == "gpu", stage.name
    sft = yaml.safe_load((tmp_path / "countdown_sft" / "config.yaml").read_text())
    assert sft["model"]["init_args"]["model"] == "Qwen/Qwen2.5-0.5B"


def test_merge_replaces_lists_and_merges_dicts():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert merge(base, {"a": {"c": [3]}, "e": 2}) == {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}  # not modified in place


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown profile 'laptop'"):
        plan("laptop", "out")


def test_paper_smoke_plan_runs_every_paper_config_and_each_reads_only_earlier_outputs():
    stages = plan("paper-smoke", "out")
    assert {s.config for s in stages} == {f"configs/paper/{p.name}" for p in (ROOT / "configs" / "paper").glob("*.yaml")}
    assert len({s.name for s in stages}) == len(stages)
    done, reads = set(), {}
    for stage in stages:  # every other run folder a stage reads (an export, the base responses) is an earlier stage's
        text = json.dumps(stage_config(stage, Path("out") / stage.name))
        assert "outputs/paper" not in text, stage.name  # no path of the paper's own layout is left unchained
        named = set(re.findall(r"\bout/(\w+)/", text)) - {stage.name}
        assert named <= done, (stage.name, named - done)
        reads[stage.name] = named
        assert {k: stage.overrides["trainer"][k] for k in ("accelerator", "devices", "precision")} == {
            "accelerator": "cpu", "devices": 1, "precision": "32-true"}, stage.name
        done.add(stage.name)
    assert reads["instruction_dpo"] == reads["instruction_dpo_lora"] == {"instruction_sft"}
    assert reads["instruction_rloo_rm"] == {"instruction_sft", "instruction_rm_deberta"}  # OpenAssistant's RM swapped
    assert reads["instruction_eval_dpo"] == {"instruction_dpo", "instruction_rm_deberta", "instruction_eval_base"}
    assert reads["countdown_rloo"] == reads["countdown_best_of_n"] == {"countdown_sft"}


def test_stand_ins_swap_model_names_and_hub_datasets_and_name_a_missing_sample(tmp_path):
    config = {"model": {"init_args": {"model": "Qwen/Qwen2.5-0.5B", "reward": {"init_args": {"model": "org/rm"}}}},
              "data": {"train": {"class_path": HUB_DATASET, "init_args": {"name": "org/data", "split": "train"}},
                       "val": {"class_path": HUB_DATASET, "init_args": {"name": "org/other", "split": "test"}}},
              "trainer": {"callbacks": [{"init_args": {"names": ["Qwen/Qwen2.5-0.5B"]}}]}}
    sample = tmp_path / "data.jsonl"
    sample.write_text("{}\n")
    swapped = stand_in(config, {"Qwen/Qwen2.5-0.5B": "tiny:qwen2", "org/rm": str(tmp_path / "rm"), "org/data": str(sample)})
    assert swapped["model"]["init_args"] == {"model": "tiny:qwen2", "reward": {"init_args": {"model": str(tmp_path / "rm")}}}
    assert swapped["data"]["train"] == {"class_path": LOCAL_FILE, "init_args": {"path": str(sample)}}
    assert swapped["data"]["val"] == config["data"]["val"]  # no stand-in named: left as it is
    assert swapped["trainer"]["callbacks"][0]["init_args"]["names"] == ["tiny:qwen2"]
    assert config["model"]["init_args"]["model"] == "Qwen/Qwen2.5-0.5B"  # not modified in place
    with pytest.raises(FileNotFoundError, match="stand-in for dataset 'org/data' is missing: .*gone.jsonl"):
        stand_in(config, {"org/data": str(tmp_path / "gone.jsonl")})


def test_a_rollout_config_reaches_every_sampling_stage_and_no_other(tmp_path):
    root = Path(__file__).resolve().parents[1]
    run("paper-smoke", str(tmp_path), None, dry_run=True, rollout_config=str(root / "configs" / "rollout" / "vllm.yaml"))
    engines = {}
    for folder in tmp_path.iterdir():
        init = yaml.safe_load((folder / "config.yaml").read_text())["model"]["init_args"]
        engines[folder.name] = init.get("rollout", {}).get("class_path")
    assert engines["instruction_rloo_rm"] == engines["countdown_best_of_n"] == "lit_align.sampling.engines.VLLM"
    assert engines["instruction_eval_base"] == "lit_align.sampling.engines.VLLM"
    assert engines["countdown_sft"] == "lit_align.sampling.engines.VLLM"  # SFT whose VerifierEval samples in fit
    assert engines["instruction_rm_deberta"] is None  # a reward model samples nothing and takes no engine
    assert engines["instruction_sft"] is engines["instruction_dpo"] is None  # nor SFT or DPO with nothing that samples


class GRPOLookalike:
    """Named like an RL method, and declares that it samples nothing."""

    uses_rollout_engine = False


class Drafts:
    """A name the runner has never heard of, and declares that it samples."""

    uses_rollout_engine = True


def _fit_config(model: str, *callbacks: str) -> dict:
    return {"model": {"class_path": model, "init_args": {}},
            "trainer": {"callbacks": [{"class_path": callback, "init_args": {}} for callback in callbacks]}}


def test_a_stage_samples_where_its_classes_declare_it_whatever_their_names():
    """The runner imports each class a stage names and reads its ``uses_rollout_engine``, never its name."""
    import study.runner as runner

    here, vllm = __name__, {"class_path": "lit_align.sampling.engines.VLLM"}
    assert runner.engine_of(_fit_config(f"{here}.GRPOLookalike"), "fit") is None
    assert runner.with_rollout(_fit_config(f"{here}.GRPOLookalike"), "fit", vllm)["model"]["init_args"] == {}
    assert runner.engine_of(_fit_config(f"{here}.Drafts"), "fit") == "HFGenerate"
    assert runner.engine_of(_fit_config("lit_align.methods.SFT", f"{here}.Drafts"), "fit") == "HFGenerate"  # a callback
    assert runner.with_rollout(_fit_config(f"{here}.Drafts"), "fit", vllm)["model"]["init_args"]["rollout"] == vllm
    assert runner.engine_of(_fit_config("lit_align.methods.reward.BradleyTerry"), "fit") is None  # no declaration: no sampling
    with pytest.raises(ValueError, match="'SFT': the study runner needs the full import path"):
        runner.engine_of(_fit_config("SFT"), "fit")


def test_the_package_declares_which_of_its_modules_and_callbacks_sample():
    from study.runner import declares_sampling

    sampling = ["lit_align.methods.RLOO", "lit_align.methods.GRPO", "lit_align.evaluation.best_of_n.BestOfN",
                "lit_align.evaluation.instruction.InstructionEval", "lit_align.evaluation.verifier.VerifierEval"]
    quiet = ["lit_align.methods.SFT", "lit_align.methods.DPO", "lit_align.methods.RewardModel",
             "lit_align.lightning.callbacks.HFExport", "lightning.pytorch.callbacks.ModelCheckpoint"]
    assert [declares_sampling(c) for c in sampling + quiet] == [True] * len(sampling) + [False] * len(quiet)


def test_a_rollout_config_replaces_a_stages_own_engine_whole(tmp_path):
    """The embedded RL stages name HFGenerate with ``max_batch_rows``; under another engine none of its
    arguments may be left over (vLLM's engine does not take them and the stage would not parse)."""
    file = Path(__file__).resolve().parents[1] / "configs" / "rollout" / "vllm.yaml"
    engine = yaml.safe_load(file.read_text())["model"]["init_args"]["rollout"]
    run("embedded", str(tmp_path), None, dry_run=True, rollout_config=str(file))
    sampling = {}
    for folder in tmp_path.iterdir():
        config = yaml.safe_load((folder / "config.yaml").read_text())
        rollout = config.get("rollout") or config.get("model", {}).get("init_args", {}).get("rollout")
        if rollout is not None:
            sampling[folder.name] = rollout
    assert {"countdown_rloo", "countdown_grpo", "instruction_samples", "countdown_best_of_n"} <= set(sampling)
    for name, rollout in sampling.items():
        assert rollout == engine, name


def test_embedded_profile_sizes_reach_every_config(tmp_path):
    """The held-out sets and sample counts the claims rest on are the ones the configs run with."""
    sizes = PROFILES["embedded"]
    run("embedded", str(tmp_path), None, dry_run=True)
    config = lambda name: yaml.safe_load((tmp_path / name / "config.yaml").read_text())  # noqa: E731
    samples = config("instruction_samples")
    assert samples["limit"] == samples["source"]["init_args"]["num_prompts"] == sizes.if_prompts >= 128
    for name in ("base", "sft", "dpo", "rloo_rm", "rloo_checker"):
        assert config(f"instruction_eval_{name}")["data"]["test"]["init_args"]["num_prompts"] == sizes.if_eval_prompts >= 128
    for name in ("countdown_sft", "countdown_sft_more", "countdown_sft_most", "countdown_sft_full", "countdown_rloo"):
        callback = next(c for c in config(name)["trainer"]["callbacks"] if c["class_path"].endswith("VerifierEval"))
        args = callback["init_args"]
        assert args["num_prompts"] == args["source"]["init_args"]["num_problems"] == sizes.cd_eval_problems >= 128, name
        assert args["source"]["init_args"]["seed"] == 1234
    test = config("countdown_best_of_n")["data"]["test"]["init_args"]
    assert (test["num_problems"], test["seed"]) == (sizes.cd_eval_problems, 1234)
    for name in ("countdown_best_of_n", "countdown_best_of_n_val_t0.7", "instruction_eval_base"):
        assert "val" not in config(name)["data"], f"{name}: an evaluation reads its test split only"


def test_a_stage_sampling_with_another_engine_runs_in_a_child_process(tmp_path, monkeypatch):
    """Not HF generate (vLLM): the stage runs in a process of its own, whose peak RSS the stage reports."""
    import lit_align.pairs
    import study.runner as runner

    stage = plan("smoke", str(tmp_path))[0]
    assert stage.name == "instruction_samples" and stage.command == "pairs"  # needs no earlier stage
    monkeypatch.setattr(runner, "engine_of", lambda config, command: "VLLM")
    monkeypatch.setattr(lit_align.pairs, "main", lambda *a, **k: pytest.fail("the stage ran in this process"))
    runner.run_stage(stage, tmp_path / stage.name, {"commit": "c", "dirty": False, "machine": "m"})
    done = json.loads((tmp_path / stage.name / "done.json").read_text())
    assert done["engine"] == "VLLM" and done["peak_rss_of_stage_alone"] is True and done["peak_rss_mib"] > 100
    assert (tmp_path / stage.name / "pairs.jsonl").read_text().strip()
    assert not runner.runs_in_child("HFGenerate") and not runner.runs_in_child(None)
    assert runner.runs_in_child("HFGenerate", every=True) and runner.runs_in_child(None, every=True)


def test_the_embedded_profile_runs_every_stage_in_a_child_and_the_smoke_profile_does_not(tmp_path, monkeypatch):
    import study.runner as runner

    seen = {}
    monkeypatch.setattr(runner, "run_stage", lambda stage, folder, where, every_n, rollout, every_in_child=False:
                        seen.setdefault(stage.name, every_in_child))
    monkeypatch.setattr(runner, "provenance", lambda: {})
    runner.run("embedded", str(tmp_path / "e"), None, only=["instruction_dpo", "countdown_sft"])
    assert seen == {"instruction_dpo": True, "countdown_sft": True}  # a training stage's leftovers stay out of the runner
    seen.clear()
    runner.run("smoke", str(tmp_path / "s"), None, only=["instruction_dpo"])
    assert seen == {"instruction_dpo": False}


def test_a_child_reports_its_own_peak_and_a_failing_child_stops_the_run(tmp_path, monkeypatch):
    import study.runner as runner

    monkeypatch.chdir(tmp_path)  # the child runs modules from its working directory, as ``python -m`` does
    (tmp_path / "big.py").write_text("b = bytearray(300 * 2**20)\nb[::4096] = b'1' * len(b[::4096])\n")
    (tmp_path / "small.py").write_text("x = 1\n")
    (tmp_path / "broken.py").write_text("import sys\nsys.exit(3)\n")
    keep = bytearray(400 * 2**20)  # this process, larger than the small child: its peak must not be reported
    keep[::4096] = b"1" * len(keep[::4096])
    assert runner.run_child("big", "big", []) >= 300
    assert runner.run_child("small", "small", []) < 200  # its own peak, not this process's nor the last child's
    with pytest.raises(RuntimeError, match=r"stage broken failed in its child process \(exit status 3\): python -m broken"):
        runner.run_child("broken", "broken", [])


def test_provenance_is_looked_up_once_per_run_and_recorded_by_every_stage(tmp_path, monkeypatch):
    import study.runner as runner
    from study.plan import Stage

    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(f'{{"prompt": "{i}"}}\n' for i in range(4)))
    split = lambda name: Stage(name, "split", str(source), name, {"parts": ["a.jsonl", "b.jsonl"]})  # noqa: E731
    monkeypatch.setattr(runner, "plan", lambda profile, out: [split("one"), split("two")])
    calls = []
    monkeypatch.setattr(runner, "provenance", lambda: calls.append(1) or {"commit": "abc", "dirty": False, "machine": "m"})
    run("smoke", str(tmp_path / "runs"), None)
    assert len(calls) == 1
    for name in ("one", "two"):
        assert json.loads((tmp_path / "runs" / name / "done.json").read_text())["commit"] == "abc"


def test_provenance_outside_a_git_checkout_records_unknown(tmp_path, monkeypatch):
    """A release archive has no .git: the commit is "unknown" and whether the tree was changed is not known."""
    import study.runner as runner

    monkeypatch.setattr(runner, "ROOT", tmp_path)  # a folder that is no repository
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    where = runner.provenance()
    assert where["commit"] == "unknown" and where["dirty"] is None and where["machine"]


def test_the_results_block_rebuilds_byte_for_byte_from_the_copied_outcomes(smoke, tmp_path):
    """The committed per-stage outcomes are enough: the block written from them alone, without a model or the
    run's folders, equals the block the run wrote."""
    from study.report import collect

    out, stages = smoke
    data = tmp_path / "data"
    copied = collect(stages, out / "runs", data)
    assert copied and not any(p.suffix in (".ckpt", ".safetensors", ".bin") for p in copied)
    assert sum(p.stat().st_size for p in copied) < 5_000_000
    rebuilt = tmp_path / "results.md"
    run("smoke", str(data), str(rebuilt), report_only=True)

    def block(path):
        text = path.read_text()
        return text[text.index("<!-- reproduce:smoke:begin -->"):text.index("<!-- reproduce:smoke:end -->")]

    assert block(rebuilt) == block(out / "results.md")


def test_report_only_refuses_a_folder_without_finished_stages(tmp_path):
    with pytest.raises(SystemExit, match="holds no finished stage of the smoke profile"):
        run("smoke", str(tmp_path / "empty"), str(tmp_path / "results.md"), report_only=True)
    assert not (tmp_path / "results.md").exists()


def test_dry_run_prints_each_stage_expected_time_from_the_measured_costs(tmp_path, capsys):
    from study.plan import EMBEDDED_COSTS, expected_seconds

    stages = run("embedded", str(tmp_path / "dry"), None, dry_run=True)
    printed = capsys.readouterr().out
    sizes = PROFILES["embedded"]
    for stage in stages:
        seconds = expected_seconds(stage, sizes)
        assert seconds is not None, stage.name  # every embedded stage has a cost
        assert re.search(rf"{re.escape(stage.name)}\s+expected\s+{seconds:.0f} s", printed), stage.name
    total = sum(expected_seconds(stage, sizes) for stage in stages)
    assert f"expected total: {total / 60:.1f} min" in printed
    # the figures follow the sizes: twice the RL steps cost twice the RL steps' time more
    rl = next(s for s in stages if s.name == "countdown_grpo")
    longer = dataclasses.replace(sizes, cd_rl_steps=2 * sizes.cd_rl_steps)
    assert expected_seconds(rl, longer) - expected_seconds(rl, sizes) == pytest.approx(
        EMBEDDED_COSTS["HFGenerate"]["cd_grpo_step"] * sizes.cd_rl_steps)


def test_dry_run_takes_the_costs_of_the_engine_it_will_sample_with(tmp_path, capsys):
    from study.plan import expected_seconds

    root = Path(__file__).resolve().parents[1]
    stages = run("embedded", str(tmp_path / "hf"), None, dry_run=True)
    hf = capsys.readouterr().out
    run("embedded", str(tmp_path / "vllm"), None, dry_run=True, rollout_config=str(root / "configs" / "rollout" / "vllm.yaml"))
    vllm = capsys.readouterr().out
    sizes = PROFILES["embedded"]
    for engine, printed in (("HFGenerate", hf), ("VLLM", vllm)):
        total = sum(expected_seconds(stage, sizes, engine) for stage in stages)
        assert f"expected total: {total / 60:.1f} min" in printed and f"sampling with {engine}" in printed
    bon = next(s for s in stages if s.name == "countdown_best_of_n")
    rloo = next(s for s in stages if s.name == "countdown_rloo")
    for stage in (bon, rloo):  # sampling stages: measured faster with vLLM, not a copy of HF's costs
        assert expected_seconds(stage, sizes, "VLLM") < 0.9 * expected_seconds(stage, sizes, "HFGenerate")
    with pytest.raises(ValueError, match="no measured costs for the engine 'Other'"):
        expected_seconds(bon, sizes, "Other")


def test_step_rewards_take_one_row_per_optimiser_step(tmp_path):
    from study.report import step_rewards

    log = tmp_path / "logs" / "version_0"
    log.mkdir(parents=True)
    (log / "metrics.csv").write_text("step,train/reward_mean,train/loss\n0,0.5,\n0,,0.1\n1,0.25,\n1,0.75,\n2,1.0,\n")
    assert step_rewards(tmp_path) == [0.5, 0.25, 1.0]  # a step's repeated row is not a second step
