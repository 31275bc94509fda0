"""Every YAML in configs/ parses; the CPU-capable ones run one step on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lit_align.cli import main
from lit_align.methods.rollouts import Plan

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAINER_OVERRIDES = sorted((CONFIGS / "trainer").glob("*.yaml"))
# configs/pairs/ configure the pairs tool, not a LightningCLI run (tests/test_pairs.py covers them).
# configs/rollout/ are engine overrides added to a method's config (tested below with the configs that sample).
METHOD_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name not in ("trainer", "pairs", "rollout"))
# Paper setups name hub models and GPU settings: parse-only here.
RUNNABLE = [p for p in METHOD_CONFIGS if "paper" not in p.parts]


def _id(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def _print_config(capsys, *configs: Path) -> dict:
    args = ["fit"] + [a for c in configs for a in ("--config", str(c))] + ["--print_config"]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code in (None, 0)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("config", METHOD_CONFIGS, ids=_id)
def test_config_parses(config, capsys):
    parsed = _print_config(capsys, config)
    assert parsed["model"]["class_path"].startswith(("lit_align.methods.", "lit_align.evaluation."))


# Hardware overrides (configs/trainer/) that change the model too apply to the policy methods only.
MODEL_OVERRIDES = {"qlora.yaml"}


@pytest.mark.parametrize("override", TRAINER_OVERRIDES, ids=_id)
@pytest.mark.parametrize("config", METHOD_CONFIGS, ids=_id)
def test_every_method_config_composes_with_every_trainer_override(config, override, capsys):
    args = ["fit", "--config", str(config), "--config", str(override), "--print_config"]
    wanted = yaml.safe_load(override.read_text())
    method = yaml.safe_load(config.read_text())["model"]["class_path"]
    if override.name in MODEL_OVERRIDES and method == "lit_align.methods.RewardModel":
        with pytest.raises(SystemExit) as failed:  # a reward model has no 4-bit base: a clear parse error
            main(args)
        assert failed.value.code != 0 and "load_in_4bit" in capsys.readouterr().err
        return
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code in (None, 0)
    parsed = yaml.safe_load(capsys.readouterr().out)
    assert _contains(parsed["trainer"], wanted["trainer"])
    assert _contains(parsed["model"], wanted.get("model", {}))


def _contains(parsed, wanted) -> bool:
    """Every key of ``wanted`` is in ``parsed`` with that value (parsed configs add defaults)."""
    if isinstance(wanted, dict):
        return isinstance(parsed, dict) and all(k in parsed and _contains(parsed[k], v) for k, v in wanted.items())
    return parsed == wanted


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _data_overrides(config: Path) -> list[str]:
    """Configs that read what another command writes (on-policy pairs, a trained RM) run on stand-ins."""
    parsed = yaml.safe_load(config.read_text())
    overrides = []
    for scorer in ("reward", "judge"):  # reward models trained by another config
        spec = parsed["model"].get("init_args", {}).get(scorer) or {}
        if str(spec.get("init_args", {}).get("model", "")).startswith("outputs/"):
            overrides += [f"--model.init_args.{scorer}.init_args.model", "tiny:classifier"]
    train = parsed["data"].get("train", {})
    path = train.get("init_args", {}).get("path", "")
    if train.get("class_path", "").endswith("LocalFile") and path.startswith("outputs/"):
        method = parsed["model"]["class_path"]
        assert method.endswith(("DPO", "RewardModel", "SFT")), "add a fixture for this kind of data"
        fixture = "smol_smoltalk_sample.jsonl" if method.endswith("SFT") else "ultrafeedback_binarized_sample.jsonl"
        overrides += ["--data.train.init_args.path", str(FIXTURES / fixture)]
    if parsed["model"].get("init_args", {}).get("dynamic_sampling"):  # one draw: a tiny model's groups rarely vary
        overrides += ["--model.init_args.max_draws", "1"]
    return overrides


@pytest.mark.parametrize("config", RUNNABLE, ids=_id)
def test_config_runs_one_step_on_tiny_model(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").symlink_to(CONFIGS.parent / "docs")  # configs name example data relative to the repo
    evaluation = "eval" in config.parts  # evaluation configs run `test`, the others `fit`
    cli = main([
        "test" if evaluation else "fit", "--config", str(config), "--config", str(CONFIGS / "trainer" / "cpu.yaml"),
        "--model.init_args.model", "tiny:causal-lm", "--trainer.fast_dev_run", "1",
        "--trainer.logger", "false", "--data.limit", "4", *_data_overrides(config),
    ])
    if evaluation:
        assert cli.trainer.callback_metrics, "an evaluation run must report metrics"
    else:
        assert cli.trainer.global_step == 1


def _samples(config: Path) -> bool:
    """The run samples from its policy: RLOO, an evaluation, or a VerifierEval callback."""
    text = config.read_text()
    return any(name in text for name in ("lit_align.methods.RLOO", "lit_align.methods.GRPO", "lit_align.methods.OnlineRL",
                                         "lit_align.evaluation.", "VerifierEval"))


SAMPLING_CONFIGS = [p for p in METHOD_CONFIGS if _samples(p)]


@pytest.mark.parametrize("config", SAMPLING_CONFIGS, ids=_id)
def test_every_sampling_config_takes_the_vllm_override(config, capsys):
    parsed = _print_config(capsys, config, CONFIGS / "rollout" / "vllm.yaml")
    assert parsed["model"]["init_args"]["rollout"]["class_path"] == "lit_align.sampling.engines.VLLM"


def test_sampling_configs_cover_rloo_evaluation_and_verifier_callbacks():
    names = {str(p.relative_to(CONFIGS)) for p in SAMPLING_CONFIGS}
    assert {"rloo/countdown_embedded.yaml", "grpo/countdown_embedded.yaml", "eval/countdown_best_of_n.yaml", "eval/instruction_embedded.yaml",
            "quickstart.yaml", "paper/rloo_qwen2.5-0.5b_deberta.yaml"} <= names


ONLINE_RL = [p for p in METHOD_CONFIGS if any(f"lit_align.methods.{m}" in p.read_text() for m in ("RLOO", "GRPO", "OnlineRL"))]


@pytest.mark.parametrize("config", ONLINE_RL, ids=_id)
def test_every_online_rl_config_checkpoints_so_that_a_run_can_resume(config, capsys):
    parsed = _print_config(capsys, config)
    checkpoints = [c for c in parsed["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    assert parsed["trainer"]["enable_checkpointing"] is not False and checkpoints  # None: on (the default)
    assert checkpoints[0]["init_args"]["save_last"] and checkpoints[0]["init_args"]["every_n_train_steps"] > 0


@pytest.mark.parametrize("name, objective", [("countdown_gspo_embedded.yaml", "GSPO"),
                                             ("countdown_cispo_embedded.yaml", "CISPO")])
def test_an_objective_chosen_by_class_path_reaches_the_loop(name, objective, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--config", str(CONFIGS / "grpo" / name), "--config", str(CONFIGS / "trainer" / "cpu.yaml"),
                "--model.init_args.model", "tiny:causal-lm", "--trainer.max_steps", "2", "--trainer.logger", "false",
                "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false", "--data.limit", "4"])
    assert type(cli.model.objective).__name__ == objective and cli.model.objective.estimator == "grpo"
    # one generation batch, two optimiser steps: the second off the sampling weights, whose log-probs a
    # separate pass took first
    assert cli.trainer.global_step == 2 and cli.model.prompts_seen == 4
    assert cli.model._plan_logged is Plan.SEPARATE_PASS


def test_trainer_gradient_clipping_is_applied_by_online_rl(tmp_path, monkeypatch):
    """Lightning refuses automatic clipping with manual optimisation: the command line hands
    ``trainer.gradient_clip_val`` to the method, which clips every optimiser step itself."""
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--config", str(CONFIGS / "grpo" / "countdown_embedded.yaml"), "--config", str(CONFIGS / "trainer" / "cpu.yaml"),
                "--model.init_args.model", "tiny:causal-lm", "--model.init_args.max_grad_norm", "null",
                "--model.init_args.max_draws", "1", "--trainer.gradient_clip_val", "0.5", "--trainer.fast_dev_run", "1",
                "--trainer.logger", "false", "--trainer.callbacks", "[]", "--data.limit", "4"])
    assert cli.model.max_grad_norm == 0.5 and cli.trainer.gradient_clip_val is None and cli.trainer.global_step == 1
    with pytest.raises(ValueError, match="disagree"):
        main(["fit", "--config", str(CONFIGS / "grpo" / "countdown_embedded.yaml"), "--model.init_args.model", "tiny:causal-lm",
              "--trainer.gradient_clip_val", "0.5"])  # the config's max_grad_norm is 1.0


def test_the_rollout_server_override_and_the_slurm_templates_arguments_parse(capsys):
    """configs/rollout/vllm_server.yaml on a sampling config, and the overrides the N + 1 node Slurm
    template (tools/slurm/rollout_server.sbatch) adds on the command line."""
    parsed = _print_config(capsys, CONFIGS / "grpo" / "countdown_embedded.yaml", CONFIGS / "rollout" / "vllm_server.yaml")
    rollout = parsed["model"]["init_args"]["rollout"]
    assert rollout["class_path"] == "lit_align.sampling.remote.VLLMServer"
    assert rollout["init_args"]["url"] == "http://127.0.0.1:8000" and rollout["init_args"]["weights_host"] == "127.0.0.1"
    script = (CONFIGS.parent / "tools" / "slurm" / "rollout_server.sbatch").read_text()
    overrides = [line.strip().rstrip("\\").strip().replace('"', "") for line in script.splitlines()
                 if line.strip().startswith("--model.init_args.rollout")]
    assert len(overrides) == 4
    overrides = [o.replace("${rollout}", "node7").replace("${port}", "9000").replace("${nodes[0]}", "node1")
                 .replace("$weights_port", "9001") for o in overrides]
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "grpo" / "countdown_embedded.yaml"), *overrides, "--print_config"])
    rollout = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["rollout"]
    assert rollout["class_path"] == "lit_align.sampling.remote.VLLMServer"
    assert rollout["init_args"]["url"] == "http://node7:9000"
    assert rollout["init_args"]["weights_host"] == "node1" and rollout["init_args"]["weights_port"] == 9001
