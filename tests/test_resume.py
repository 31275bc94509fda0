"""Kill a run mid-epoch (SIGKILL, SIGTERM), resume it with ``--ckpt_path``: it ends with an uninterrupted run's weights.

For every method (SFT, DPO, RewardModel, RLOO) and both signals, a real process is killed after
optimiser step 7 and the run is resumed here. The test asserts that the resumed process restored
that checkpoint (``trainer.ckpt_path`` and the step it starts at, recorded at train start by
``fault_injection.RunRecord``), trained only the remaining steps (it counts them), and ended with a
state dict bit-identical (``torch.equal``) to an uninterrupted run's, both saved at the end of ``fit``
(not read from a periodic checkpoint).

What makes each part of the resumed state matter in these runs. Each part was broken on purpose in a
scratch copy (data position not restored, RNG streams not restored, the skip of consumed batches
applied to later epochs too, ``--ckpt_path`` ignored), and each breakage failed all 8 cases.

- The data position. Every method has 5 batches per epoch (10 distinct records, 2 per batch) and
  checkpoints every 2 steps, so the SIGKILL run resumes from step 6 (epoch 1, 1 batch in) and the
  SIGTERM run from step 7 (epoch 1, 2 batches in): never at an epoch boundary. A resume that restarts
  epoch 1 from its first batch trains on other records (other prompts, for RLOO). The resumed part
  runs on into epoch 2, where nothing may be skipped.
- The RNG streams. Dropout is on in every run (LoRA dropout 0.1 with ``disable_dropout: false`` for SFT,
  DPO and RLOO; BERT's own dropout in the reward model), so every training forward draws from torch's
  global RNG. RLOO's sampling does not: it is seeded per micro-batch from (step, batch index, rank);
  its dropout does. With dropout off (the DPO and RLOO default) no training step draws from the
  global streams, and their restore would not show here.
- RLOO really trains. Its reward (``fault_injection.DistinctCharacters``) varies between samples, so the
  advantages are not zero; the uninterrupted run is checked to end with a non-zero reward spread and
  KL, and with every LoRA B matrix moved (they start at zero, and weight decay alone keeps them there).
- ``--ckpt_path`` itself. A run started from scratch with the same seed ends with exactly the
  uninterrupted run's weights, so only the record (checkpoint path, start step, steps trained) catches
  a resume that ignores ``--ckpt_path``. The checkpoint file name cannot: the version counter is off,
  so such a run would write ``last.ckpt``, not ``last-v1.ckpt``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_align.cli import main

ROOT = Path(__file__).resolve().parents[1]
LORA = {"r": 4, "alpha": 8, "dropout": 0.1}
# Ten distinct pairs. Not tests/fixtures/ultrafeedback_binarized_sample.jsonl: it repeats 4 pairs 3 times,
# so two different batches can hold the same pairs and a resume at the wrong data position go unseen.
PREFERENCES = {"train": {"class_path": "lit_align.tasks.countdown_pairs.CountdownPairSource",
                         "init_args": {"num_problems": 12}}, "limit": 10}

METHODS = {
    "SFT": ({"class_path": "lit_align.methods.SFT", "init_args": {"model": "tiny:causal-lm", "lora": LORA}},
            {"train": {"class_path": "lit_align.tasks.countdown.CountdownSource", "init_args": {"num_problems": 10}}}),
    "DPO": ({"class_path": "lit_align.methods.DPO", "init_args": {
                "model": "tiny:causal-lm", "lora": LORA, "reference": "adapter_off", "disable_dropout": False}},
            PREFERENCES),
    "RM": ({"class_path": "lit_align.methods.RewardModel", "init_args": {"model": "tiny:classifier"}}, PREFERENCES),
    "RLOO": ({"class_path": "lit_align.methods.RLOO", "init_args": {
                "model": "tiny:causal-lm", "lora": LORA, "reference": "adapter_off", "disable_dropout": False,
                "rloo_k": 2,
                "reward": {"class_path": "fault_injection.DistinctCharacters"},
                "generation": {"max_new_tokens": 6, "temperature": 1.0}}},
             {"train": {"class_path": "lit_align.tasks.countdown.CountdownSource",
                        "init_args": {"num_problems": 10, "with_traces": False}}}),
}
PER_EPOCH = 5  # batches: 10 records, 2 per batch, for every method
EVERY, KILL_AT, MAX_STEPS = 2, 7, 11  # checkpoint every 2 steps; killed after step 7 (epoch 1); ends in epoch 2


def _config(method: str, folder: Path, name: str, extra_callbacks: list | None = None) -> Path:
    """The run's config at ``folder/name.yaml``; its RunRecord writes ``folder/name.json`` (+ ``.pt``)."""
    model, data = METHODS[method]
    record = {"class_path": "fault_injection.RunRecord", "init_args": {"path": str(folder / f"{name}.json")}}
    config = {
        "seed_everything": 3,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": MAX_STEPS, "logger": False,
            "limit_val_batches": 0, "num_sanity_val_steps": 0, "enable_progress_bar": False,
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
                "dirpath": str(folder / "checkpoints"), "every_n_train_steps": EVERY, "save_top_k": 0,
                "save_last": True, "save_on_exception": True, "enable_version_counter": False}},
                record, *(extra_callbacks or [])],
            "default_root_dir": str(folder),
        },
        "model": model,
        "data": {**data, "batch_size": 2, "max_length": 1024},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _recorded(folder: Path, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """What RunRecord wrote at the end of a run: the record and the final state dict."""
    record = json.loads((folder / f"{name}.json").read_text())
    return record, torch.load(folder / f"{name}.json.pt", weights_only=True)


def _killed_run(method: str, folder: Path, signal_name: str) -> subprocess.CompletedProcess:
    kill = {"class_path": "fault_injection.KillAfterStep", "init_args": {"step": KILL_AT, "signal_name": signal_name}}
    config = _config(method, folder, "killed", [kill])
    # This checkout's lit_align and the helpers in tests/, whatever else is installed or on the path.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1")
    code = "import torch; torch.set_num_threads(1); from lit_align.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, "fit", "--config", str(config)], env=env, capture_output=True,
                          text=True, timeout=300, cwd=folder)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """``uninterrupted(method)``: the final state dict of a whole run (run once per method, then reused)."""
    runs: dict[str, dict[str, torch.Tensor]] = {}

    def run(method: str) -> dict[str, torch.Tensor]:
        if method not in runs:
            folder = tmp_path_factory.mktemp(f"whole_{method}")
            cli = main(["fit", "--config", str(_config(method, folder, "whole"))])
            record, weights = _recorded(folder, "whole")
            assert record == {"ckpt_path": None, "start_step": 0, "steps": list(range(1, MAX_STEPS + 1))}
            if method == "RLOO":  # it learns: rewards vary within a group, the policy leaves the reference
                metrics = cli.trainer.callback_metrics
                assert metrics["train/reward_std"] > 0 and metrics["train/kl"] != 0, dict(metrics)
            lora_b = [v for k, v in weights.items() if "lora_B" in k]
            assert method == "RM" or (lora_b and all(v.abs().sum() > 0 for v in lora_b)), "a LoRA B matrix never moved"
            runs[method] = weights
        return runs[method]

    return run


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("method", list(METHODS))
def test_killed_mid_epoch_and_resumed_run_ends_like_uninterrupted(method, signal_name, uninterrupted, tmp_path):
    whole = uninterrupted(method)

    proc = _killed_run(method, tmp_path, signal_name)
    if signal_name == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    else:  # Lightning stops at the end of the step, saves, and exits
        assert "Received SIGTERM" in proc.stderr and "saved checkpoint" in proc.stderr, proc.stderr[-3000:]
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False, map_location="cpu")
    # SIGKILL loses the steps since the last periodic checkpoint; SIGTERM checkpoints the step it stopped at.
    step = saved["global_step"]
    assert step == (KILL_AT - KILL_AT % EVERY if signal_name == "SIGKILL" else KILL_AT)
    epoch, consumed = saved["AlignDataModule"]["position"]
    assert (epoch, consumed) == (step // PER_EPOCH, step % PER_EPOCH) and 0 < consumed < PER_EPOCH  # mid-epoch

    main(["fit", "--config", str(_config(method, tmp_path, "resumed")), "--ckpt_path", str(ckpt)])
    record, resumed = _recorded(tmp_path, "resumed")
    assert record["ckpt_path"] is not None and Path(record["ckpt_path"]) == ckpt, record
    assert record["start_step"] == step, record
    assert record["steps"] == list(range(step + 1, MAX_STEPS + 1)), record  # only the remaining steps
    assert resumed.keys() == whole.keys()
    differ = [name for name in whole if not torch.equal(resumed[name], whole[name])]
    assert not differ, f"{len(differ)} of {len(whole)} tensors differ from the uninterrupted run's, e.g. {differ[:3]}"


# --- online RL killed between the draws of one generation batch -------------------------------------
GRPO_RUN = ({"class_path": "lit_align.methods.GRPO", "init_args": {
                "model": "tiny:causal-lm", "lora": LORA, "disable_dropout": False, "num_generations": 2,
                "dynamic_sampling": True, "max_draws": 3, "steps_per_generation": 2, "micro_batch_size": 1,
                "reward": {"class_path": "fault_injection.HalfFlat"},
                "generation": {"max_new_tokens": 6, "temperature": 1.0}}},
            {"train": {"class_path": "lit_align.tasks.countdown.CountdownSource",
                       "init_args": {"num_problems": 10, "with_traces": False}}})


def test_online_rl_resumes_from_a_checkpoint_between_the_draws_of_one_generation_batch(tmp_path, monkeypatch):
    """A checkpoint taken at a batch that only drew (mid-epoch, as a time-based checkpoint may be) holds the
    groups collected so far; a run resumed from it uses them and ends with the uninterrupted run's weights.
    Resumed with those groups thrown away, it ends elsewhere: the checkpointed buffer is what matters."""
    monkeypatch.setitem(METHODS, "GRPO", GRPO_RUN)
    ckpt = tmp_path / "between_draws.ckpt"
    main(["fit", "--config", str(_config("GRPO", tmp_path / "whole", "whole"))])
    record, whole = _recorded(tmp_path / "whole", "whole")
    steps = record["steps"]
    draw_only = [i + 1 for i in range(1, len(steps)) if steps[i] == steps[i - 1] and (i + 1) % PER_EPOCH]
    assert draw_only, f"no mid-epoch batch only drew; the test says nothing: {steps}"
    for batch in draw_only:  # the first batch that only drew and left groups with signal waiting
        save = {"class_path": "fault_injection.SaveAtBatch", "init_args": {"batch": batch, "path": str(ckpt)}}
        main(["fit", "--config", str(_config("GRPO", tmp_path / f"saving{batch}", "saving", [save]))])
        saved = torch.load(ckpt, weights_only=True, map_location="cpu")  # plain containers: loads with weights_only
        dynamic = saved["online_rl"]["ranks"][0]["dynamic"]  # one rank's state per rank
        if any(part["prompts"] for part in dynamic["pending"]):
            break
    assert dynamic["draws"] > 0 and any(part["prompts"] for part in dynamic["pending"]), "no groups waiting"
    main(["fit", "--config", str(_config("GRPO", tmp_path / "resumed", "resumed")), "--ckpt_path", str(ckpt)])
    resumed_record, resumed = _recorded(tmp_path / "resumed", "resumed")
    assert resumed_record["start_step"] == saved["global_step"]
    differ = [name for name in whole if not torch.equal(resumed[name], whole[name])]
    assert not differ, f"{len(differ)} of {len(whole)} tensors differ from the uninterrupted run's, e.g. {differ[:3]}"
    dynamic.update(pending=[], set_aside=[], rewards=[], draws=0)
    torch.save(saved, tmp_path / "emptied.ckpt")
    main(["fit", "--config", str(_config("GRPO", tmp_path / "emptied", "emptied")), "--ckpt_path", str(tmp_path / "emptied.ckpt")])
    _, emptied = _recorded(tmp_path / "emptied", "emptied")
    assert any(not torch.equal(emptied[name], whole[name]) for name in whole)


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_online_rl_killed_between_draws_resumes_like_uninterrupted(signal_name, tmp_path, monkeypatch):
    """GRPO with dynamic sampling (groups set aside, more prompts drawn) and two optimiser steps per
    generation batch, killed at a batch that only drew. The last checkpoint is the last optimiser step's
    (a batch that only drew does not move ``global_step``, so Lightning saves nothing new, SIGTERM
    included): the resumed run redraws the same prompts with the same seeds and ends with the
    uninterrupted run's weights bit for bit."""
    monkeypatch.setitem(METHODS, "GRPO", GRPO_RUN)
    whole_dir = tmp_path / "whole"
    main(["fit", "--config", str(_config("GRPO", whole_dir, "whole"))])
    record, whole = _recorded(whole_dir, "whole")
    batches = len(record["steps"])
    draw_only = [i + 1 for i in range(1, batches) if record["steps"][i] == record["steps"][i - 1]]
    assert draw_only, f"no batch only drew; the test says nothing: {record['steps']}"
    kill_at = draw_only[len(draw_only) // 2]  # a batch in the middle of the run that only drew

    folder = tmp_path / "killed"
    kill = {"class_path": "fault_injection.KillAfterBatch", "init_args": {"batch": kill_at, "signal_name": signal_name}}
    config = _config("GRPO", folder, "killed", [kill])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1")
    code = "import torch; torch.set_num_threads(1); from lit_align.cli import main; main()"
    proc = subprocess.run([sys.executable, "-c", code, "fit", "--config", str(config)], env=env, capture_output=True,
                          text=True, timeout=300, cwd=folder)
    assert proc.returncode == (-signal.SIGKILL if signal_name == "SIGKILL" else 0), proc.stderr[-3000:]
    ckpt = folder / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False, map_location="cpu")
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] < kill_at - 1  # not the kill batch
    main(["fit", "--config", str(_config("GRPO", folder, "resumed")), "--ckpt_path", str(ckpt)])
    resumed_record, resumed = _recorded(folder, "resumed")
    assert resumed_record["start_step"] == saved["global_step"]
    differ = [name for name in whole if not torch.equal(resumed[name], whole[name])]
    assert not differ, f"{len(differ)} of {len(whole)} tensors differ from the uninterrupted run's, e.g. {differ[:3]}"


def test_an_online_rl_module_built_in_python_checkpoints_plain_and_resumes(tmp_path):
    """Built in Python (no CLI), with a reward object, ``SamplingParams`` and ``LoRA`` as arguments: the
    checkpoint's hyperparameters hold plain containers, so it loads with ``weights_only`` (Lightning's
    default), a run resumes from it, and ``load_from_checkpoint`` gets the settings back."""
    import lightning as L

    from lit_align.data.datamodule import AlignDataModule
    from lit_align.methods import GRPO
    from lit_align.modeling.models import LoRA
    from lit_align.sampling.generate import SamplingParams
    from lit_align.tasks.countdown import CountdownSource
    from fault_injection import DistinctCharacters

    def build():
        return GRPO(model="tiny:causal-lm", reward=DistinctCharacters(), num_generations=2, lora=LoRA(r=4, alpha=8),
                    generation=SamplingParams(max_new_tokens=5, temperature=0.9))

    def fit(module, steps, ckpt_path=None):
        data = AlignDataModule(CountdownSource(num_problems=8, with_traces=False), batch_size=2)
        trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=tmp_path, use_distributed_sampler=False,
                            callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)])
        trainer.fit(module, data.connect(module.tokenizer, module.batch_kind), ckpt_path=ckpt_path)
        return trainer

    fit(build(), 1)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["generation"]["temperature"] == 0.9
    assert saved["hyper_parameters"]["lora"]["r"] == 4 and "reward" not in saved["hyper_parameters"]
    assert fit(build(), 2, ckpt_path=tmp_path / "last.ckpt").global_step == 2
    loaded = GRPO.load_from_checkpoint(tmp_path / "last.ckpt", reward=DistinctCharacters())
    assert loaded.generation == SamplingParams(max_new_tokens=5, temperature=0.9) and loaded.lora.r == 4


def test_an_online_rl_checkpoint_of_the_earlier_layout_still_loads():
    """Before every rank's state was kept, ``online_rl`` held rank 0's buffer and counters flat."""
    from lit_align.methods import GRPO
    from lit_align.methods.rollouts import Rollouts
    from lit_align.sampling.generate import Samples
    from fault_injection import DistinctCharacters

    module = GRPO(model="tiny:causal-lm", reward=DistinctCharacters(), num_generations=2, dynamic_sampling=True)
    samples = Samples(prompt_ids=torch.ones(2, 3, dtype=torch.long), prompt_mask=torch.ones(2, 3, dtype=torch.long),
                      completion_ids=torch.ones(2, 2, dtype=torch.long), completion_mask=torch.ones(2, 2, dtype=torch.long),
                      texts=["a", "b"], truncated=torch.zeros(2, dtype=torch.bool))
    waiting = Rollouts(samples, torch.tensor([0.0, 1.0]), ["p"]).state()
    module.on_load_checkpoint({"online_rl": {"pending": [waiting], "set_aside": [], "draws": 1, "prompts_seen": 6,
                                             "completions_seen": 12}})
    assert module.prompts_seen == 6 and module.completions_seen == 12
    assert module.dynamic.draws == 1 and module.dynamic.pending[0].prompts == ["p"]


# --- online RL with a self-paced curriculum -----------------------------------------------------------
def _curriculum_run(adaptive: bool):
    model, data = GRPO_RUN
    model = {**model, "init_args": {**model["init_args"], "num_generations": 4, "steps_per_generation": 1,
                                    "max_draws": 2}}
    curriculum = {"class_path": "lit_align.data.curriculum.SelfPaced", "init_args": {
        "explore": 0.5, "success_threshold": 0.8, "adaptive_k": adaptive, "k_min": 2, "k_max": 6, "k_unit": 2}}
    return model, {**data, "curriculum": curriculum}


@pytest.mark.parametrize("adaptive", [pytest.param(False, marks=pytest.mark.slow), True], ids=["fixed_k", "adaptive_k"])
def test_online_rl_with_a_curriculum_resumes_like_uninterrupted(adaptive, tmp_path, monkeypatch):
    """GRPO with dynamic sampling and the self-paced curriculum (posterior fed by every draw, samples per
    prompt chosen before generating): a run resumed from a checkpoint mid-epoch ends with the
    uninterrupted run's weights bit for bit; resumed with the curriculum's state emptied it does not."""
    monkeypatch.setitem(METHODS, "GRPO", _curriculum_run(adaptive))
    main(["fit", "--config", str(_config("GRPO", tmp_path / "whole", "whole"))])
    record, whole = _recorded(tmp_path / "whole", "whole")
    ckpt = tmp_path / "at_batch.ckpt"
    save = {"class_path": "fault_injection.SaveAtBatch", "init_args": {"batch": 6, "path": str(ckpt)}}
    main(["fit", "--config", str(_config("GRPO", tmp_path / "saving", "saving", [save]))])
    saved = torch.load(ckpt, weights_only=True, map_location="cpu")
    state = saved["AlignDataModule"]["curriculum"]
    assert sum(state["successes"]) + sum(state["failures"]) > 0 and state["pending"], "nothing booked"
    main(["fit", "--config", str(_config("GRPO", tmp_path / "resumed", "resumed")), "--ckpt_path", str(ckpt)])
    resumed_record, resumed = _recorded(tmp_path / "resumed", "resumed")
    assert resumed_record["start_step"] == saved["global_step"] > 0
    differ = [name for name in whole if not torch.equal(resumed[name], whole[name])]
    assert not differ, f"{len(differ)} of {len(whole)} tensors differ from the uninterrupted run's, e.g. {differ[:3]}"
    state.update(successes=[0] * len(state["successes"]), failures=[0] * len(state["failures"]), pending=[])
    torch.save(saved, tmp_path / "emptied.ckpt")
    main(["fit", "--config", str(_config("GRPO", tmp_path / "emptied", "emptied")), "--ckpt_path", str(tmp_path / "emptied.ckpt")])
    _, emptied = _recorded(tmp_path / "emptied", "emptied")
    assert any(not torch.equal(emptied[name], whole[name]) for name in whole)
