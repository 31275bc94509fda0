"""TRL contenders: SFTTrainer, RewardTrainer, DPOTrainer and RLOOTrainer on the same tokens and settings.

Settings are matched to lit_align's run, not left at TRL's defaults where those differ: float32 (TRL
defaults to bf16), no gradient checkpointing (TRL defaults to it on), dropout as loaded (TRL's DPO
and reward trainers switch it off by default), sequential sampling over data already in lit_align's
order, no saving, no reporting. Both sides use fused AdamW (TRL's default on this torch; the foreach
AdamW under bf16-mixed, where Lightning refuses clipping with a fused one) and clip gradients to norm 1
(TRL's default). Tokens come pre-tokenized from lit_align's data module; for DPO,
whose trainer always re-tokenizes text, a subclass skips that step (data preparation is not timed).
RLOOTrainer and GRPOTrainer get the RL task's prompts (as messages, which they template themselves) and a
reward function that calls the same scorer (``rl_task.py``); their steps are split into phases as
lit_align's are (``phases.py``).
"""

from __future__ import annotations

import tempfile

import torch
from datasets import Dataset
from transformers import TrainerCallback

from lit_align.modeling import models
from lit_align.data.formats import IGNORE_INDEX

from . import rl_task
from .common import POLICY, RM_BACKBONE, Spec, StepClock, summary
from .data import ordered_batches
from .phases import PhaseTimer, instrument_trl, split


class Clock(TrainerCallback):
    """Times each optimiser step; with a ``PhaseTimer`` (RLOO, GRPO) also splits it into phases."""

    def __init__(self, clock: StepClock, phases: PhaseTimer | None = None, trainer=None):
        self.clock, self.phases, self.trainer = clock, phases, trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if self.phases is not None:  # the optimiser exists from here on
            instrument_trl(self.phases, self.trainer)
        self.clock.begin()

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.step_done()
        if self.phases is not None:
            self.phases.step_done()


class CountingCollator:
    """Wraps the trainer's collator to count each batch's real tokens, in the order batches are made."""

    def __init__(self, collate, counts: list[int]):
        self.collate, self.counts = collate, counts

    def __call__(self, features):
        batch = self.collate(features)
        mask = batch.get("attention_mask")
        self.counts.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
        return batch


def _common_args(spec: Spec, batch: int, out: str) -> dict:
    s = spec.settings
    return {
        "output_dir": out, "per_device_train_batch_size": batch, "gradient_accumulation_steps": 1,
        "max_steps": s.steps_total(), "learning_rate": s.lr, "lr_scheduler_type": "constant", "weight_decay": 0.0,
        "max_grad_norm": 1.0, "gradient_checkpointing": False, "bf16": s.precision == "bf16-mixed", "fp16": False,
        "use_cpu": s.device == "cpu", "optim": "adamw_torch_fused" if s.fused_adamw else "adamw_torch",
        "report_to": "none", "save_strategy": "no", "eval_strategy": "no", "dataloader_num_workers": 0,
        "disable_tqdm": True, "seed": s.seed,
    }


def _split(example) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of a lit_align example whose labels mark the response."""
    start = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    return example.input_ids[:start], example.input_ids[start:]


def _sft(spec: Spec, out: str):
    from trl import SFTConfig, SFTTrainer

    _, batches = ordered_batches(spec)
    items = [e for b in batches for e in b]
    dataset = Dataset.from_dict({
        "input_ids": [e.input_ids for e in items],
        "completion_mask": [[int(label != IGNORE_INDEX) for label in e.labels] for e in items],
    })
    padding_free = spec.contender.endswith("+padding_free")
    args = SFTConfig(**_common_args(spec, spec.settings.sft_batch, out), train_sampling_strategy="sequential",
                     max_length=None, completion_only_loss=True, padding_free=padding_free)
    model = models.load_causal_lm(POLICY)
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=models.load_tokenizer(POLICY))


def _rm(spec: Spec, out: str):
    from trl import RewardConfig, RewardTrainer

    _, batches = ordered_batches(spec)
    items = [e for b in batches for e in b]
    dataset = Dataset.from_dict({"chosen_ids": [p.chosen.input_ids for p in items],
                                 "rejected_ids": [p.rejected.input_ids for p in items]})
    args = RewardConfig(**_common_args(spec, spec.settings.rm_batch, out), train_sampling_strategy="sequential",
                        max_length=None, disable_dropout=False)
    model = models.load_sequence_classifier(RM_BACKBONE)
    return RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=models.load_tokenizer(RM_BACKBONE))


def _dpo(spec: Spec, out: str):
    from trl import DPOConfig, DPOTrainer

    class PreTokenizedDPO(DPOTrainer):
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    _, batches = ordered_batches(spec)
    rows = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    for pair in (p for b in batches for p in b):
        prompt, chosen = _split(pair.chosen)
        prompt_r, rejected = _split(pair.rejected)
        assert prompt == prompt_r, "chosen and rejected must share the prompt tokens"
        for key, value in zip(rows, (prompt, chosen, rejected)):
            rows[key].append(value)
    args = DPOConfig(**_common_args(spec, spec.settings.dpo_batch, out), train_sampling_strategy="sequential",
                     max_length=None, beta=0.1, disable_dropout=False, precompute_ref_log_probs=False)
    return PreTokenizedDPO(model=models.load_causal_lm(POLICY), ref_model=models.load_causal_lm(POLICY), args=args,
                           train_dataset=Dataset.from_dict(rows), processing_class=models.load_tokenizer(POLICY))


def _vllm_args() -> dict:
    """TRL's colocated vLLM (the engine in the training process), sized as lit_align's engine is."""
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    return {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.25,
            "vllm_enable_sleep_mode": False}


def online_layout(s) -> dict:
    """TRL's batch arguments for lit_align's RL step: ``rl_rows`` completions sampled once per optimiser
    step (the generation batch) and learnt ``rl_micro_batch`` at a time."""
    accumulation = s.rl_accumulation()
    return {"per_device_train_batch_size": s.rl_rows() // accumulation, "gradient_accumulation_steps": accumulation,
            "steps_per_generation": accumulation, "gradient_checkpointing": bool(s.rl_checkpointing)}


def _online(spec: Spec, out: str, generated: list[int]):
    """TRL's RLOOTrainer or GRPOTrainer: one generation batch of prompts x k per optimiser step, learnt in
    ``rl_micro_batch`` micro-batches (``steps_per_generation`` = the accumulation, so it samples once a step)."""
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    s = spec.settings
    _, batches = ordered_batches(spec)
    records = [item.record for b in batches for item in b]

    def reward(prompts, completions, completion_ids, record_index, **kwargs):
        generated.append(sum(len(ids) for ids in completion_ids))
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        return rl_task.scores(s.rl_task, texts, [records[i] for i in record_index])

    common = _common_args(spec, 1, out) | online_layout(s)
    if spec.method == "grpo":  # TRL's defaults, spelt out: DAPO token mean, group std, clip 0.2, no KL
        config, trainer = GRPOConfig, GRPOTrainer
        objective = {"beta": 0.0, "loss_type": "dapo", "scale_rewards": "group", "epsilon": 0.2}
    else:
        config, trainer = RLOOConfig, RLOOTrainer
        objective = {"beta": s.kl_coef}
    args = config(**common, num_generations=s.rloo_k, max_completion_length=s.rloo_max_new_tokens, temperature=1.0,
                  top_p=1.0, top_k=0, shuffle_dataset=False, disable_dropout=False, **objective,
                  **(_vllm_args() if spec.contender.endswith("+vllm") else {}))
    peft = None
    if s.rl_lora_r:  # lit_align's LoRA: every linear layer but the head, alpha 2r, no dropout
        from peft import LoraConfig

        peft = LoraConfig(r=s.rl_lora_r, lora_alpha=2 * s.rl_lora_r, lora_dropout=0.0, target_modules="all-linear",
                          task_type="CAUSAL_LM")
    return trainer(model=models.load_causal_lm(POLICY), reward_funcs=reward, args=args, peft_config=peft,
                   train_dataset=Dataset.from_dict({"prompt": [r["prompt"] for r in records],
                                                    "record_index": list(range(len(records)))}),
                   processing_class=models.load_tokenizer(POLICY))


def run(spec: Spec) -> dict:
    torch.manual_seed(spec.settings.seed)
    clock, counts, phases = StepClock(), [], None
    with tempfile.TemporaryDirectory() as out:
        if spec.method in ("rloo", "grpo"):
            trainer, phases = _online(spec, out, counts), PhaseTimer()
        else:
            trainer = {"sft": _sft, "rm": _rm, "dpo": _dpo}[spec.method](spec, out)
            trainer.data_collator = CountingCollator(trainer.data_collator, counts)
        trainer.add_callback(Clock(clock, phases, trainer))
        trainer.train()
    clock.tokens = counts
    result = summary(clock, spec.settings.warmup)
    if phases is not None:
        result |= {"phases": split(result["step_s"], phases.steps[spec.settings.warmup :]), "phase_hooks": phases.hooked}
    return result
