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
from dataclasses import dataclass, field


@dataclass
class Stage:
    name: str  # folder name under the output root
    command: str  # fit | test | pairs
    config: str  # base config, relative to the repository root
    label: str  # row name in the results
    overrides: dict = field(default_factory=dict)  # deep-merged into the base config (lists are replaced)
    # hub name → stand-in, wherever it appears: a model name by another name or folder, a HubDataset by a LocalFile
    stand_ins: dict = field(default_factory=dict)


@dataclass
class Sizes:
    """What a profile changes besides models: steps, prompt counts, lengths."""

    policy: str | None  # None: keep each config's model
    rm_backbone: str | None
    if_prompts: int = 96  # instruction prompts sampled by the base model
    if_eval_prompts: int = 48
    if_new_tokens: int = 128
    sft_min_score: float = 1.0  # verified = every constraint met; smoke takes any sample (random models meet few)
    sft_steps: int = 30
    rm_steps: int = 60
    dpo_epochs: int = 2
    rloo_steps: int = 12
    rloo_checker_steps: int = 12  # RLOO rewarded by the constraint checkers
    cd_sft_steps: int = 40
    cd_more_steps: int = 20
    cd_rloo_steps: int = 4
    cd_eval_problems: int = 32
    cd_new_tokens: int = 160
    bon_n: list[int] = field(default_factory=lambda: [1, 2, 4])
    trainer: dict = field(default_factory=dict)  # extra trainer settings for every fit stage


PROFILES = {
    # Cut to fit a session on 2 shared cores: the checker-reward RLOO ran 4 steps, the RM-reward one 12.
    "embedded": Sizes(policy=None, rm_backbone=None, rloo_checker_steps=4),
    "smoke": Sizes(
        policy="tiny:causal-lm", rm_backbone="tiny:classifier", if_prompts=8, if_eval_prompts=4, if_new_tokens=12,
        sft_steps=2, rm_steps=2, dpo_epochs=1, rloo_steps=2, rloo_checker_steps=2, cd_sft_steps=2, cd_more_steps=2, cd_rloo_steps=2,
        cd_eval_problems=4, cd_new_tokens=12, bon_n=[1, 2], sft_min_score=0.0, trainer={"log_every_n_steps": 1},
    ),
    "paper": Sizes(policy=None, rm_backbone=None),
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


def _verifier_eval(s: Sizes) -> dict:
    return {"num_prompts": s.cd_eval_problems, "max_new_tokens": s.cd_new_tokens,
            "source": {"init_args": {"num_problems": s.cd_eval_problems}}}


def _countdown(s: Sizes, out: str, paper: bool) -> list[Stage]:
    sft_config = "configs/paper/sft_qwen2.5-0.5b_countdown_warmstart.yaml" if paper else "configs/quickstart.yaml"
    rloo_config = "configs/paper/rloo_qwen2.5-0.5b_countdown.yaml" if paper else "configs/rloo/countdown_embedded.yaml"
    bon_config = "configs/paper/eval_qwen2.5-0.5b_countdown_best_of_n.yaml" if paper else "configs/eval/countdown_best_of_n.yaml"
    sized = not paper
    return [
        Stage("countdown_sft", "fit", sft_config, "SFT on synthetic traces", {
            "trainer": {"max_steps": s.cd_sft_steps} if sized else {},
            "model": {"init_args": {"model": s.policy}} if s.policy else {},
            "callbacks": {"VerifierEval": _verifier_eval(s)} if sized else {},
        }),
        Stage("countdown_sft_more", "fit", sft_config, "SFT + more synthetic traces", {
            "trainer": {"max_steps": s.cd_more_steps} if sized else {},
            "model": {"init_args": {"model": f"{out}/countdown_sft/export", "warmup_steps": 0}},
            "data": {"train": {"init_args": {"seed": 1}}},  # fresh problems, never seen by the first SFT
            "callbacks": {"VerifierEval": _verifier_eval(s)} if sized else {},
        }),
        Stage("countdown_rloo", "fit", rloo_config, "RLOO with the verifier (from SFT + more)", {
            "trainer": {"max_steps": s.cd_rloo_steps} if sized else {},
            "model": {"init_args": {"model": f"{out}/countdown_sft_more/export"}
                      | ({"generation": {"max_new_tokens": s.cd_new_tokens}} if sized else {})},
            "callbacks": {"VerifierEval": _verifier_eval(s)} if sized else {},
        }),
        Stage("countdown_best_of_n", "test", bon_config, "best-of-N with the verifier (SFT + more model)", {
            "model": {"init_args": {"model": f"{out}/countdown_sft_more/export"}
                      | ({"n_values": s.bon_n, "generation": {"max_new_tokens": s.cd_new_tokens}} if sized else {})},
            "data": {"val": {"init_args": {"num_problems": s.cd_eval_problems}}} if sized else {},
        }),
    ]


def _instruction_eval(s: Sizes, out: str, name: str, label: str, model: str | None, paper: bool, base_eval: bool) -> Stage:
    config = "configs/paper/eval_qwen2.5-0.5b_instruction.yaml" if paper else "configs/eval/instruction_embedded.yaml"
    rm = f"{out}/instruction_rm/export"
    init = {"judge": {"init_args": {"model": rm}}}
    init |= {"model": model} if model else {}
    init |= {} if base_eval else {"reference_responses": f"{out}/instruction_eval_base/responses.jsonl"}
    init |= {} if paper else {"generation": {"max_new_tokens": s.if_new_tokens}}
    data = {} if paper else {"val": {"init_args": {"num_prompts": s.if_eval_prompts}}}
    return Stage(name, "test", config, label, {"model": {"init_args": init}, "data": data})


def _instruction(s: Sizes, out: str, paper: bool) -> list[Stage]:
    cfg = {
        "sft": "configs/paper/sft_qwen2.5-0.5b_smoltalk_lora.yaml" if paper else "configs/sft/instruction_embedded.yaml",
        "rm": "configs/paper/rm_deberta_ultrafeedback.yaml" if paper else "configs/rm/instruction_embedded.yaml",
        "dpo": "configs/paper/dpo_qwen2.5-0.5b_ultrafeedback_lora.yaml" if paper else "configs/dpo/instruction_embedded.yaml",
        "rloo_rm": "configs/paper/rloo_qwen2.5-0.5b_deberta.yaml" if paper else "configs/rloo/instruction_rm_embedded.yaml",
        "rloo_checker": "configs/paper/rloo_qwen2.5-0.5b_constraints.yaml" if paper else "configs/rloo/instruction_checker_embedded.yaml",
    }
    sized, sft = not paper, f"{out}/instruction_sft/export"
    pairs, verified = f"{out}/instruction_samples/pairs.jsonl", f"{out}/instruction_samples/sft.jsonl"
    policy = {"model": s.policy} if s.policy else {}
    stages = []
    if not paper:  # the paper's SFT and RM data are public datasets, not the base model's own samples
        stages.append(Stage("instruction_samples", "pairs", "configs/pairs/instruction_embedded.yaml",
                            "base samples → verified SFT data and pairs",
                            policy | {"limit": s.if_prompts, "max_new_tokens": s.if_new_tokens, "sft_min_score": s.sft_min_score}))
    data = (lambda path: {"train": {"init_args": {"path": path}}}) if sized else (lambda path: {})
    stages += [
        Stage("instruction_sft", "fit", cfg["sft"], "SFT", {
            "trainer": {"max_steps": s.sft_steps} if sized else {},
            "model": {"init_args": policy}, "data": data(verified)}),
        Stage("instruction_rm", "fit", cfg["rm"], "reward model", {
            "trainer": {"max_steps": s.rm_steps} if sized else {},
            "model": {"init_args": {"model": s.rm_backbone} if s.rm_backbone else {}}, "data": data(pairs)}),
        Stage("instruction_dpo", "fit", cfg["dpo"], "DPO (from SFT)", {
            "trainer": {"max_epochs": s.dpo_epochs} if sized else {},
            "model": {"init_args": {"model": sft}}, "data": data(pairs)}),
    ]
    for key, label, reward in (("rloo_rm", "RLOO, RM reward (from SFT)", {"init_args": {"model": f"{out}/instruction_rm/export"}}),
                               ("rloo_checker", "RLOO, checker reward (from SFT)", {})):
        init = {"model": sft, "reward": reward} | ({"generation": {"max_new_tokens": s.if_new_tokens}} if sized else {})
        steps = s.rloo_steps if key == "rloo_rm" else s.rloo_checker_steps
        stages.append(Stage(f"instruction_{key}", "fit", cfg[key], label, {
            "trainer": {"max_steps": steps} if sized else {}, "model": {"init_args": init}}))
    base = s.policy or ("Qwen/Qwen2.5-0.5B" if paper else None)
    stages.append(_instruction_eval(s, out, "instruction_eval_base", "base model", base, paper, base_eval=True))
    for key, label in (("sft", "SFT"), ("dpo", "DPO"), ("rloo_rm", "RLOO (RM reward)"), ("rloo_checker", "RLOO (checker reward)")):
        stages.append(_instruction_eval(s, out, f"instruction_eval_{key}", label, f"{out}/instruction_{key}/export", paper, False))
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
_HELD_OUT = {"callbacks": {"VerifierEval": {"num_prompts": 2, "max_new_tokens": 12, "source": {"init_args": {"num_problems": 2}}}}}
_EVAL = {"data": {"val": {"init_args": {"num_prompts": 4}}, "val_batch_size": 4}} | _ROLLOUTS
_BEST_OF_N = merge(_ROLLOUTS, {"model": {"init_args": {"n_values": [1, 2]}},
                               "data": {"val": {"init_args": {"num_problems": 4}}, "val_batch_size": 4}})
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


PROFILE_NAMES = sorted([*PROFILES, "paper-smoke"])


def plan(profile: str, out: str) -> list[Stage]:
    """Every stage of both tracks, in the order they must run."""
    if profile not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {profile!r}: choose from {PROFILE_NAMES}")
    if profile == "paper-smoke":
        return _paper_smoke(out)
    if profile == "paper":  # the study itself: every paper config, the chain paper-smoke runs on stand-ins
        return _study(out)
    sizes, paper = PROFILES[profile], profile == "paper"
    stages = _instruction(sizes, out, paper) + _countdown(sizes, out, paper)
    for stage in stages:  # trainer settings of the profile (e.g. none on CPU) apply to every run
        if sizes.trainer and stage.command != "pairs":
            stage.overrides.setdefault("trainer", {}).update(sizes.trainer)
    return stages
