"""The study's two tracks as a list of stages, for four profiles.

A stage is one run of an existing config (``configs/...``) with a few overrides: the model it
starts from (an earlier stage's export), the data it reads (an earlier stage's output), and, per
profile, its size. The runner points every output path of a stage into its own folder.

Instruction following (built-in constraint prompts, ``lit_align.tasks.constraints``):
    base samples (4 per prompt, scored by the constraint checkers) → verified responses (SFT data) and
    best-vs-worst pairs → SFT on the verified responses → RM on the pairs → DPO from SFT on the pairs →
    RLOO from SFT rewarded by the RM, and by the checkers → each policy evaluated by adherence and by
    win rate against the base model, judged by the RM.
Countdown:
    base → SFT on synthetic traces → more SFT on fresh synthetic traces → RLOO with the verifier →
    best-of-N with the verifier at several N (from the SFT + more data model).

Profiles: ``embedded`` (the embedded SmolLM2-135M + MiniLM models on CPU), ``smoke`` (tiny random
models and a handful of steps: the chain's plumbing, in the test suite) and ``paper`` (the configs in
``configs/paper/``: Qwen2.5-0.5B, smol-smoltalk, UltraFeedback, DeBERTa; hub access and a GPU).

``paper-smoke`` runs every config in ``configs/paper/`` once or more, in the study's order (see
``_study``), on CPU in float32 with a couple of steps each: the hub models and datasets are swapped
for tiny stand-ins and the local samples in ``tests/fixtures/``; besides those, only the trainer
(CPU, float32) and the sizes (``SMOKE_SIZES``) change.
"""

from __future__ import annotations

import copy
import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    name: str  # folder name under the output root
    command: str  # fit | test | pairs | split
    config: str  # base config, relative to the repository root (split: the JSONL file to split)
    label: str  # row name in the results
    overrides: dict = field(default_factory=dict)  # deep-merged into the base config (lists are replaced)
    # hub name → stand-in, wherever it appears: a model name by another name or folder, a HubDataset by a LocalFile
    stand_ins: dict = field(default_factory=dict)
    # overrides that depend on earlier stages' results (e.g. a temperature chosen on a validation
    # split), computed when the stage is about to run; merged over ``overrides``
    resolve: Callable[[], dict] | None = None


@dataclass
class Sizes:
    """What a profile changes besides models: steps, prompt counts, lengths, batch sizes."""

    policy: str | None  # None: keep each config's model
    rm_backbone: str | None
    if_prompts: int = 96  # instruction prompts sampled by the base model (4 samples each)
    if_eval_prompts: int = 48  # held-out instruction prompts (seed 1000)
    if_new_tokens: int = 128
    if_batch_size: int = 16  # prompts per generation batch when sampling and evaluating instructions
    sft_min_score: float = 1.0  # verified = every constraint met; smoke takes any sample (random models meet few)
    sft_steps: int = 30
    rm_steps: int = 60
    dpo_epochs: int = 2
    rloo_steps: int = 12
    rloo_checker_steps: int = 12  # RLOO rewarded by the constraint checkers
    cd_sft_steps: int = 40  # data scaling: three nested SFT sizes of 4 fresh traces per step,
    cd_more_steps: int = 20  # each stage continuing from the one before on problems of another seed
    cd_most_steps: int = 40
    cd_full_lr: float = 5e-5  # full fine-tuning (every weight) against LoRA at cd_sft_steps
    cd_rl_steps: int = 4  # Countdown RLOO and GRPO from the largest SFT, each this many optimiser steps
    cd_eval_problems: int = 32  # held-out test problems (seed 1234), greedy
    cd_eval_batch: int = 16
    cd_new_tokens: int = 160
    bon_n: list[int] = field(default_factory=lambda: [1, 2, 4])
    bon_temperatures: list[float] = field(default_factory=lambda: [0.7, 1.0])  # chosen on the validation split
    bon_val_problems: int = 16  # validation problems (seed 4321), never the test problems
    bon_batch: int = 4  # problems per best-of-N sampling batch (× max N sequences)
    trainer: dict = field(default_factory=dict)  # extra trainer settings for every fit stage


PROFILES = {
    # Sized from measured stage costs to finish within 90 minutes on a quiet 2-core CPU (docs/results.md),
    # sampling through vLLM where its environment is present (``--rollout-config configs/rollout/vllm.yaml``):
    # held-out sets of 128 Countdown problems and 128 instruction prompts, greedy evaluation in batches of 64
    # (about 90 s per Countdown set on a 2-core AMD EPYC); there a LoRA SFT step takes about 6 s, a Countdown
    # RL step 80-100 s with vLLM, best-of-8 on 128 problems about 13 min.
    "embedded": Sizes(
        policy=None, rm_backbone=None, if_prompts=160, if_eval_prompts=128, if_batch_size=64, sft_steps=30,
        rm_steps=40, rloo_steps=6, rloo_checker_steps=6, cd_sft_steps=20, cd_more_steps=30, cd_most_steps=50,
        cd_rl_steps=5, cd_eval_problems=128, cd_eval_batch=64, bon_n=[1, 2, 4, 8], bon_val_problems=16, bon_batch=8,
    ),
    "smoke": Sizes(
        policy="tiny:causal-lm", rm_backbone="tiny:classifier", if_prompts=48, if_eval_prompts=4, if_new_tokens=12,
        if_batch_size=8, sft_steps=2, rm_steps=2, dpo_epochs=1, rloo_steps=2, rloo_checker_steps=2, cd_sft_steps=2,
        cd_more_steps=2, cd_most_steps=2, cd_rl_steps=2, cd_eval_problems=4, cd_new_tokens=12, bon_n=[1, 2],
        bon_val_problems=4, sft_min_score=0.0, trainer={"log_every_n_steps": 1},
    ),
}


def merge(base: dict, override: dict) -> dict:
    """``base`` updated by ``override`` recursively; lists and scalars are replaced, dicts merged."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _verifier_eval(s: Sizes, before: bool = True) -> dict:
    return {"num_prompts": s.cd_eval_problems, "generation": {"max_new_tokens": s.cd_new_tokens},
            "batch_size": s.cd_eval_batch, "before": before, "source": {"init_args": {"num_problems": s.cd_eval_problems}}}


def choose_temperature(val_folders: dict[float, Path]) -> tuple[float, dict]:
    """The sampling temperature for best-of-N, from best-of-N runs on the validation problems at each
    temperature (``{temperature: folder with best_of_n.csv}``): the highest best-of-N accuracy at the
    largest N, ties broken by pass@N, then by the lower temperature. Returns it and the figures compared."""
    figures = {}
    for temperature, folder in val_folders.items():
        path = Path(folder) / "best_of_n.csv"
        if not path.is_file():
            raise FileNotFoundError(f"best-of-N on the validation problems at temperature {temperature} has not run: {path}")
        with open(path, newline="") as f:
            last = list(csv.DictReader(f))[-1]  # rows are sorted by N
        figures[temperature] = {"n": int(last["n"]), "best_of_n": float(last["best_of_n"]), "pass_at_n": float(last["pass_at_n"])}
    best = max(figures, key=lambda t: (figures[t]["best_of_n"], figures[t]["pass_at_n"], -t))
    return best, figures


# Countdown RL in the study: the settings docs/grpo.md chose on the 32 validation problems (GRPO, lr 1e-4
# constant, 4 prompts x 8 samples, DAPO token mean, clip 0.2 / 0.28, no KL, micro-batches of 8 with
# checkpointing), and RLOO with its own objective (leave-one-out advantages, sequence normaliser, KL 0.03
# in the reward) on the same batches, lr and steps, so the two rows differ by objective only. Dynamic
# sampling is off here (a second draw doubles a step's cost); instead both draw their problems through the
# self-paced curriculum of docs/grpo.md (samples per prompt chosen before generating, 32 a step). Every
# micro-batch recomputes its activations (layer by layer over the prompt's cache): without, at the learning
# run's 3 GiB budget, RLOO's stage peaked at 8.7 GB in its process and 9.2 GB machine-wide, over the study's 8.
_RL_SHARED = {"micro_batch_size": 8, "gradient_checkpointing": True, "activation_memory_budget_gib": None,
              "max_grad_norm": 1.0, "dynamic_sampling": False,
              "rollout": {"class_path": "lit_align.sampling.engines.HFGenerate", "init_args": {"max_batch_rows": 64}},
              "min_lr_ratio": 1.0, "warmup_steps": 0, "log_completions_every_n_steps": 0,
              "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-4, "weight_decay": 0.0}}}


# The curriculum learning run's config holds the sampler's settings; the study's RL stages draw with the same.
_CURRICULUM_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "grpo" / "countdown_curriculum_embedded.yaml"


def _curriculum() -> dict:
    """The ``data.curriculum`` block of ``_CURRICULUM_CONFIG`` (``SelfPaced``, samples per prompt chosen before generating)."""
    import yaml

    return yaml.safe_load(_CURRICULUM_CONFIG.read_text())["data"]["curriculum"]


def _countdown_rl(s: Sizes, sft: str) -> list[Stage]:
    """RLOO and GRPO with the verifier from the largest SFT model, matched in everything but the objective."""
    stages, curriculum = [], _curriculum()
    for name, config, label, init in (
        ("countdown_rloo", "configs/rloo/countdown_embedded.yaml", "RLOO with the verifier (from the largest SFT)",
         {"rloo_k": 8}),
        ("countdown_grpo", "configs/grpo/countdown_learning_embedded.yaml", "GRPO with the verifier (from the largest SFT)",
         {"num_generations": 8}),
    ):
        stages.append(Stage(name, "fit", config, label, {
            "trainer": {"max_steps": s.cd_rl_steps, "max_time": None, "log_every_n_steps": 1},
            "model": {"init_args": _RL_SHARED | init | {"model": sft, "generation": {"max_new_tokens": s.cd_new_tokens,
                                                                                      "temperature": 1.0}}},
            "data": {"batch_size": 4, "curriculum": curriculum},
            "callbacks": {"VerifierEval": _verifier_eval(s, before=False)}}))
    return stages


def _countdown(s: Sizes, out: str) -> list[Stage]:
    sft_config = "configs/quickstart.yaml"
    bon_config = "configs/eval/countdown_best_of_n.yaml"
    policy = {"model": s.policy} if s.policy else {}
    traces = lambda steps: steps * 4  # the quickstart's batch size: 4 fresh synthetic traces per step
    sizes = (s.cd_sft_steps, s.cd_sft_steps + s.cd_more_steps, s.cd_sft_steps + s.cd_more_steps + s.cd_most_steps)
    stages = [
        Stage("countdown_sft", "fit", sft_config, f"SFT, LoRA, {traces(sizes[0])} synthetic traces", {
            "trainer": {"max_steps": s.cd_sft_steps}, "model": {"init_args": policy},
            "callbacks": {"VerifierEval": _verifier_eval(s)}}),
    ]
    for name, steps, total, seed, start in (("countdown_sft_more", s.cd_more_steps, sizes[1], 1, "countdown_sft"),
                                            ("countdown_sft_most", s.cd_most_steps, sizes[2], 2, "countdown_sft_more")):
        stages.append(Stage(name, "fit", sft_config, f"SFT, LoRA, {traces(total)} synthetic traces", {
            "trainer": {"max_steps": steps},
            "model": {"init_args": {"model": f"{out}/{start}/export", "warmup_steps": 0}},
            "data": {"train": {"init_args": {"seed": seed}}},  # fresh problems, never seen by the stages before
            "callbacks": {"VerifierEval": _verifier_eval(s, before=False)}}))
    stages.append(Stage("countdown_sft_full", "fit", sft_config, f"SFT, full fine-tuning, {traces(sizes[0])} synthetic traces", {
        "trainer": {"max_steps": s.cd_sft_steps},
        "model": {"init_args": policy | {"lora": None, "optimizer": {"init_args": {"lr": s.cd_full_lr}}}},
        "callbacks": {"VerifierEval": _verifier_eval(s, before=False)}}))
    sft = f"{out}/countdown_sft_most/export"
    stages += _countdown_rl(s, sft)
    bon = lambda temperature, problems, seed: {
        "model": {"init_args": {"model": sft, "n_values": s.bon_n,
                                "generation": {"max_new_tokens": s.cd_new_tokens, "temperature": temperature}}},
        "data": {"test": {"init_args": {"num_problems": problems, "seed": seed}}, "val_batch_size": s.bon_batch}}
    val_folders = {}
    for temperature in s.bon_temperatures:
        name = f"countdown_best_of_n_val_t{temperature:g}"
        val_folders[temperature] = Path(out) / name
        stages.append(Stage(name, "test", bon_config, f"best-of-N on the validation problems, temperature {temperature:g}",
                            bon(temperature, s.bon_val_problems, 4321)))
    chosen = lambda: bon(choose_temperature(val_folders)[0], s.cd_eval_problems, 1234)
    stages.append(Stage("countdown_best_of_n", "test", bon_config, "best-of-N with the verifier (largest SFT model)",
                        bon(s.bon_temperatures[0], s.cd_eval_problems, 1234), resolve=chosen))
    return stages


def _instruction_eval(s: Sizes, out: str, name: str, label: str, model: str | None, base_eval: bool) -> Stage:
    init = {"judge": {"init_args": {"model": f"{out}/instruction_judge/export"}}}
    init |= {"model": model} if model else {}
    init |= {} if base_eval else {"reference_responses": f"{out}/instruction_eval_base/responses.jsonl"}
    init |= {"generation": {"max_new_tokens": s.if_new_tokens}}
    data = {"test": {"init_args": {"num_prompts": s.if_eval_prompts}}, "val_batch_size": s.if_batch_size}
    return Stage(name, "test", "configs/eval/instruction_embedded.yaml", label, {"model": {"init_args": init}, "data": data})


def _instruction(s: Sizes, out: str) -> list[Stage]:
    cfg = {
        "sft": "configs/sft/instruction_embedded.yaml",
        "rm": "configs/rm/instruction_embedded.yaml",
        "dpo": "configs/dpo/instruction_embedded.yaml",
        "rloo_rm": "configs/rloo/instruction_rm_embedded.yaml",
        "rloo_checker": "configs/rloo/instruction_checker_embedded.yaml",
    }
    sft = f"{out}/instruction_sft/export"
    samples = f"{out}/instruction_samples"
    pairs, verified = f"{out}/instruction_pairs/rm.jsonl", f"{samples}/sft.jsonl"
    policy = {"model": s.policy} if s.policy else {}
    stages = []
    stages.append(Stage("instruction_samples", "pairs", "configs/pairs/instruction_embedded.yaml",
                        "base samples → verified SFT data and pairs",
                        policy | {"limit": s.if_prompts, "source": {"init_args": {"num_prompts": s.if_prompts}},
                                  "generation": {"max_new_tokens": s.if_new_tokens},
                                  "sft_min_score": s.sft_min_score, "batch_size": max(1, s.if_batch_size // 4)}))  # 4 samples a prompt
    # the win-rate judge must be a reward model no policy was trained against: it learns from the
    # other half of the prompts' pairs than the RM that rewards RLOO (and whose pairs DPO learns from)
    stages.append(Stage("instruction_pairs", "split", f"{samples}/pairs.jsonl",
                        "pairs split by prompt: RM / judge", {"parts": ["rm.jsonl", "judge.jsonl"]}))
    data = lambda path: {"train": {"init_args": {"path": path}}}
    rm = lambda path: {"trainer": {"max_steps": s.rm_steps},
                       "model": {"init_args": {"model": s.rm_backbone} if s.rm_backbone else {}}, "data": data(path)}
    stages += [
        Stage("instruction_sft", "fit", cfg["sft"], "SFT", {
            "trainer": {"max_steps": s.sft_steps},
            "model": {"init_args": policy}, "data": data(verified)}),
        Stage("instruction_rm", "fit", cfg["rm"], "reward model (RLOO's reward)", rm(pairs)),
    ]
    stages.append(Stage("instruction_judge", "fit", cfg["rm"], "judge reward model (other prompts' pairs)",
                        rm(f"{out}/instruction_pairs/judge.jsonl")))
    stages.append(Stage("instruction_dpo", "fit", cfg["dpo"], "DPO (from SFT)", {
        "trainer": {"max_epochs": s.dpo_epochs},
        "model": {"init_args": {"model": sft}}, "data": data(pairs)}))
    for key, label, reward in (("rloo_rm", "RLOO, RM reward (from SFT)", {"init_args": {"model": f"{out}/instruction_rm/export"}}),
                               ("rloo_checker", "RLOO, checker reward (from SFT)", {})):
        init = {"model": sft, "reward": reward, "generation": {"max_new_tokens": s.if_new_tokens}}
        steps = s.rloo_steps if key == "rloo_rm" else s.rloo_checker_steps
        stages.append(Stage(f"instruction_{key}", "fit", cfg[key], label, {
            "trainer": {"max_steps": steps}, "model": {"init_args": init}}))
    stages.append(_instruction_eval(s, out, "instruction_eval_base", "base model", s.policy, base_eval=True))
    for key, label in (("sft", "SFT"), ("dpo", "DPO"), ("rloo_rm", "RLOO (RM reward)"), ("rloo_checker", "RLOO (checker reward)")):
        stages.append(_instruction_eval(s, out, f"instruction_eval_{key}", label, f"{out}/instruction_{key}/export", False))
    return stages


# ----------------------------------------------------------------------------- the study, every paper config

# paper-smoke: what stands in for each hub model and dataset. The RLOO reward model of the study
# (OpenAssistant's) becomes the DeBERTa RM trained in the run; datasets become local samples.
STAND_INS = {
    "Qwen/Qwen2.5-0.5B": "tiny:qwen2",
    "microsoft/deberta-v3-large": "tiny:deberta-v2",
    "distilbert/distilbert-base-uncased": "tiny:distilbert",
    "HuggingFaceH4/ultrafeedback_binarized": "tests/fixtures/ultrafeedback_binarized_sample.jsonl",
    "HuggingFaceTB/smol-smoltalk": "tests/fixtures/smol_smoltalk_sample.jsonl",
    "Jiayi-Pan/Countdown-Tasks-3to4": "tests/fixtures/countdown_tasks_3to4_sample.jsonl",
}
OPENASSISTANT_RM = "OpenAssistant/reward-model-deberta-v3-large"
CPU = {"accelerator": "cpu", "devices": 1, "precision": "32-true"}  # as configs/trainer/cpu.yaml
# No warm-up: two steps at the paper's peak lr, so every stage hands on weights it changed.
_FIT = {"trainer": {"max_steps": 2, "accumulate_grad_batches": 1, "val_check_interval": 1.0, "log_every_n_steps": 1},
        "model": {"init_args": {"warmup_steps": 0}}, "data": {"batch_size": 2, "val_batch_size": 2, "num_workers": 0}}
_ROLLOUTS = {"model": {"init_args": {"generation": {"max_new_tokens": 12}}}}
_HELD_OUT = {"callbacks": {"VerifierEval": {"num_prompts": 2, "generation": {"max_new_tokens": 12},
                                            "source": {"init_args": {"num_problems": 2}}}}}
_EVAL = {"data": {"test": {"init_args": {"num_prompts": 4}}, "val_batch_size": 4}} | _ROLLOUTS
_BEST_OF_N = merge(_ROLLOUTS, {"model": {"init_args": {"n_values": [1, 2]}},
                               "data": {"test": {"init_args": {"num_problems": 4}}, "val_batch_size": 4}})
# paper-smoke's sizes per paper config (besides the CPU trainer): a couple of steps, a few short samples.
SMOKE_SIZES = {
    "sft_qwen2.5-0.5b_smoltalk": _FIT,
    "sft_qwen2.5-0.5b_smoltalk_lora": _FIT,
    "rm_deberta_ultrafeedback": _FIT,
    "rm_distilbert_ultrafeedback": _FIT,
    "rm_distilbert_ultrafeedback_regression": _FIT,
    "dpo_qwen2.5-0.5b_ultrafeedback": _FIT,
    "dpo_qwen2.5-0.5b_ultrafeedback_lora": _FIT,
    "rloo_qwen2.5-0.5b_deberta": merge(_FIT, _ROLLOUTS),
    "rloo_qwen2.5-0.5b_constraints": merge(_FIT, _ROLLOUTS | {"data": {"train": {"init_args": {"num_prompts": 8}}}}),
    "eval_qwen2.5-0.5b_instruction": _EVAL,
    "sft_qwen2.5-0.5b_countdown_warmstart": merge(_FIT, _HELD_OUT | {"data": {
        "train": {"init_args": {"num_problems": 8}}, "val": {"init_args": {"num_problems": 4}}}}),
    "rloo_qwen2.5-0.5b_countdown": merge(_FIT, _ROLLOUTS | _HELD_OUT),
    "eval_qwen2.5-0.5b_countdown_best_of_n": _BEST_OF_N,
}


def _paper(name: str, command: str, stem: str, label: str, **init) -> Stage:
    """One run of ``configs/paper/<stem>.yaml``; ``init`` overrides its model's arguments."""
    return Stage(name, command, f"configs/paper/{stem}.yaml", label, {"model": {"init_args": init}} if init else {})


def _study_evals(out: str) -> list[Stage]:
    """The base model and every trained policy, judged by the DeBERTa RM; win rates against the base."""
    judge = {"init_args": {"model": f"{out}/instruction_rm_deberta/export"}}
    stages = [_paper("instruction_eval_base", "test", "eval_qwen2.5-0.5b_instruction", "base model", judge=judge)]
    base = f"{out}/instruction_eval_base/responses.jsonl"
    for key, label in (("sft", "SFT (full)"), ("sft_lora", "SFT (LoRA)"), ("dpo", "DPO (full)"), ("dpo_lora", "DPO (LoRA)"),
                       ("rloo_rm", "RLOO (RM reward)"), ("rloo_checker", "RLOO (checker reward)")):
        stages.append(_paper(f"instruction_eval_{key}", "test", "eval_qwen2.5-0.5b_instruction", label,
                             model=f"{out}/instruction_{key}/export", judge=judge, reference_responses=base))
    return stages


def _study(out: str) -> list[Stage]:
    """Every paper config in the study's order, each starting from the export it names."""
    sft, sft_lora, warm = (f"{out}/{name}/export" for name in ("instruction_sft", "instruction_sft_lora", "countdown_sft"))
    return [
        _paper("instruction_sft", "fit", "sft_qwen2.5-0.5b_smoltalk", "SFT (full)"),
        _paper("instruction_sft_lora", "fit", "sft_qwen2.5-0.5b_smoltalk_lora", "SFT (LoRA)"),
        _paper("instruction_rm_deberta", "fit", "rm_deberta_ultrafeedback", "RM: DeBERTa, Bradley-Terry"),
        _paper("instruction_rm_distilbert", "fit", "rm_distilbert_ultrafeedback", "RM: DistilBERT, Bradley-Terry"),
        _paper("instruction_rm_distilbert_regression", "fit", "rm_distilbert_ultrafeedback_regression", "RM: DistilBERT, regression"),
        _paper("instruction_dpo", "fit", "dpo_qwen2.5-0.5b_ultrafeedback", "DPO, full (from SFT)", model=sft),
        _paper("instruction_dpo_lora", "fit", "dpo_qwen2.5-0.5b_ultrafeedback_lora", "DPO, LoRA (from SFT)", model=sft),
        _paper("instruction_rloo_rm", "fit", "rloo_qwen2.5-0.5b_deberta", "RLOO, RM reward (from SFT)", model=sft),
        _paper("instruction_rloo_checker", "fit", "rloo_qwen2.5-0.5b_constraints", "RLOO, checker reward (from SFT LoRA)", model=sft_lora),
        *_study_evals(out),
        _paper("countdown_sft", "fit", "sft_qwen2.5-0.5b_countdown_warmstart", "SFT on synthetic traces (warm start)"),
        _paper("countdown_rloo", "fit", "rloo_qwen2.5-0.5b_countdown", "RLOO with the verifier (from the warm start)", model=warm),
        _paper("countdown_best_of_n", "test", "eval_qwen2.5-0.5b_countdown_best_of_n", "best-of-N with the verifier (warm start)", model=warm),
    ]


def _paper_smoke(out: str) -> list[Stage]:
    """The study on stand-ins: CPU, float32, tiny sizes; the judge and RLOO reward are the run's DeBERTa RM."""
    stand_ins = STAND_INS | {OPENASSISTANT_RM: f"{out}/instruction_rm_deberta/export"}
    stages = _study(out)
    for stage in stages:
        stem = stage.config.removeprefix("configs/paper/").removesuffix(".yaml")
        stage.overrides = merge(merge({"trainer": CPU}, SMOKE_SIZES[stem]), stage.overrides)
        stage.stand_ins = stand_ins
    return stages


PROFILE_NAMES = sorted([*PROFILES, "paper", "paper-smoke"])


def plan(profile: str, out: str) -> list[Stage]:
    """Every stage of both tracks, in the order they must run."""
    if profile not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {profile!r}: choose from {PROFILE_NAMES}")
    if profile == "paper-smoke":
        return _paper_smoke(out)
    if profile == "paper":  # the study itself: every paper config, the chain paper-smoke runs on stand-ins
        return _study(out)
    sizes = PROFILES[profile]
    stages = _instruction(sizes, out) + _countdown(sizes, out)
    for stage in stages:  # trainer settings of the profile (e.g. none on CPU) apply to every run
        if sizes.trainer and stage.command != "pairs":
            stage.overrides.setdefault("trainer", {}).update(sizes.trainer)
    return stages


# ----------------------------------------------------------------------------- expected stage times (dry run)

# Measured unit costs of the embedded profile on a quiet 2-core AMD EPYC (AVX2, no bf16 units), float32, in
# seconds, one table per sampling engine: each stage's wall time less its fixed part, divided by its size.
# HFGenerate: the embedded run at 94832fb (HF `generate` throughout; docs/study_data at that commit).
# VLLM: the embedded run named in docs/results.md (``--rollout-config configs/rollout/vllm.yaml``, eager).
# Stages that sample nothing (SFT, RM, DPO) cost the same under either engine. A new run's stage table is the
# check on them; a faster CPU (e.g. a Xeon with AVX-512) runs the HF stages about 1.3-1.9 x faster.
EMBEDDED_COSTS = {
    "HFGenerate": {
        "stage": 15.0,  # start-up of a stage: models loaded, data built
        "cd_base_eval_problem": 1.16,  # the base model, greedy: it never stops before 160 tokens
        "cd_eval_problem": 0.81,  # one held-out Countdown problem, greedy, 160 tokens, batches of 64
        "if_eval_prompt": 0.76,  # one held-out instruction prompt, greedy, 128 tokens, judged
        "if_sample_prompt": 3.0,  # one prompt's 4 base samples (128 tokens), checked
        "if_sft_step": 3.2,
        "rm_step": 1.75,
        "dpo_pair_epoch": 2.33,  # one pair, one epoch
        "if_rloo_step": 54.0,  # 4 prompts x k 4, 128 tokens
        "cd_sft_step": 5.6,  # LoRA, 4 traces of <= 384 tokens
        "cd_full_step": 8.7,  # every weight
        "cd_rloo_step": 142.0,  # 4 prompts x 8 samples, 160 tokens, micro-batches of 8 with checkpointing, KL
        "cd_grpo_step": 106.0,  # the same batches, no KL (no reference pass)
        "bon_sample": 1.0,  # one sample of best-of-N (problems x largest N), 160 tokens
    },
}
EMBEDDED_COSTS["VLLM"] = {  # the run at c2049a4 (docs/results.md): every sampling stage in a child process
    "stage": 15.0,
    "cd_base_eval_problem": 0.69,
    "cd_eval_problem": 0.875,
    "if_eval_prompt": 0.62,
    "if_sample_prompt": 2.14,
    "if_sft_step": 3.55,  # SFT, RM and DPO sample nothing: the same work as under HFGenerate, another day's timing
    "rm_step": 1.51,
    "dpo_pair_epoch": 2.45,
    "if_rloo_step": 35.8,
    "cd_sft_step": 5.0,
    "cd_full_step": 6.5,
    "cd_rloo_step": 104.5,
    "cd_grpo_step": 89.2,
    "bon_sample": 0.80,
}
PAIRS_PER_PROMPT = 97 / 160  # prompts whose 4 base samples did not all score the same (94 of 160 at 94832fb)


def expected_seconds(stage: Stage, s: Sizes, engine: str = "HFGenerate") -> float | None:
    """A stage's expected wall time from ``EMBEDDED_COSTS[engine]`` and the profile's sizes (None: no cost
    known). DPO's pairs are unknown before the base samples exist: ``PAIRS_PER_PROMPT`` of the prompts, half
    of them DPO's (the other half trains the judge)."""
    if engine not in EMBEDDED_COSTS:
        raise ValueError(f"no measured costs for the engine {engine!r}: choose from {sorted(EMBEDDED_COSTS)}")
    c = EMBEDDED_COSTS[engine]
    n, fixed = stage.name, c["stage"]
    cd_eval, if_eval = c["cd_eval_problem"] * s.cd_eval_problems, c["if_eval_prompt"] * s.if_eval_prompts
    pairs = round(s.if_prompts * PAIRS_PER_PROMPT)
    table = {
        "instruction_samples": fixed + c["if_sample_prompt"] * s.if_prompts,
        "instruction_pairs": 0.2,
        "instruction_sft": fixed + c["if_sft_step"] * s.sft_steps,
        "instruction_rm": fixed + c["rm_step"] * s.rm_steps,
        "instruction_judge": fixed + c["rm_step"] * s.rm_steps,
        "instruction_dpo": fixed + c["dpo_pair_epoch"] * (pairs // 2) * s.dpo_epochs,
        "instruction_rloo_rm": fixed + c["if_rloo_step"] * s.rloo_steps,
        "instruction_rloo_checker": fixed + c["if_rloo_step"] * s.rloo_checker_steps,
        "countdown_sft": fixed + c["cd_base_eval_problem"] * s.cd_eval_problems + cd_eval + c["cd_sft_step"] * s.cd_sft_steps,
        "countdown_sft_more": fixed + cd_eval + c["cd_sft_step"] * s.cd_more_steps,
        "countdown_sft_most": fixed + cd_eval + c["cd_sft_step"] * s.cd_most_steps,
        "countdown_sft_full": fixed + cd_eval + c["cd_full_step"] * s.cd_sft_steps,
        "countdown_rloo": fixed + cd_eval + c["cd_rloo_step"] * s.cd_rl_steps,
        "countdown_grpo": fixed + cd_eval + c["cd_grpo_step"] * s.cd_rl_steps,
        "countdown_best_of_n": fixed + c["bon_sample"] * s.cd_eval_problems * max(s.bon_n),
    }
    if n.startswith("instruction_eval_"):
        return fixed + if_eval
    if n.startswith("countdown_best_of_n_val_"):
        return fixed + c["bon_sample"] * s.bon_val_problems * max(s.bon_n)
    return table.get(n)
