"""Bare PyTorch loops of the same maths: the floor that framework overhead is measured against.

Each loop reuses lit_align's pieces (collate functions, ``forward``, ``ops``, ``losses``, ``sample``) on the
same batches, with the same optimiser (AdamW, fused as in the other contenders) and gradient clipping, and nothing else: no
Trainer, no callbacks, no logging. The ``logprobs`` method compares the chunked output-head path
(``logprobs.model_token_logprobs``) with the naive one that materialises the full-vocabulary logits.
"""

from __future__ import annotations

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from lit_align.objectives import logprobs, losses, ops, policy_gradient
from lit_align.modeling import models
from lit_align.data.collate import (
    collate_preference,
    collate_prompts,
    collate_sft,
    collate_sft_packed,
)
from lit_align.data.formats import IGNORE_INDEX
from lit_align.sampling.generate import SamplingParams, sample
from lit_align.rewards.model import reward_scores

from . import rl_task
from .common import POLICY, RM_BACKBONE, Spec, StepClock, autocast, summary
from .data import ordered_batches


def _plain(spec: Spec) -> dict:
    """Keyword arguments that switch an optimisation off, for the ablation contenders (``bare+no_unpad``, ...)."""
    return {"unpad": not spec.contender.endswith("+no_unpad")}


def _loop(spec: Spec, model, batches, loss_fn, tokens_fn) -> dict:
    """Train ``model`` one optimiser step per batch; time each step."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.settings.lr, weight_decay=0.0, fused=spec.settings.fused_adamw or None)
    clock = StepClock()
    clock.begin()
    for batch in batches:
        batch = move_data_to_device(batch, spec.settings.device)
        with autocast(spec.settings):
            loss = loss_fn(batch)
        tokens = tokens_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        clock.step_done(tokens)
    return summary(clock, spec.settings.warmup)


def _sft(spec: Spec) -> dict:
    dm, batches = ordered_batches(spec)
    pad_id = dm.tokenizer.pad_token_id
    if spec.contender.endswith("+packing"):
        collated = [collate_sft_packed(b, pad_id, dm.max_length) for b in batches]
    else:
        collated = [collate_sft(b, pad_id) for b in batches]
    model = models.load_causal_lm(POLICY).to(spec.settings.device).train()
    model.config.use_cache = False  # no KV cache in training; packed rows need it off (see SFT)

    def loss_fn(b):
        mask = None if b.position_ids is not None else b.attention_mask
        logps, _ = logprobs.model_token_logprobs(model, b.input_ids, mask, b.labels, b.position_ids, **_plain(spec))
        return losses.sft_loss(logps, ops.loss_mask(b.labels), b.loss_normalizer)

    return _loop(spec, model, collated, loss_fn, lambda b: int(b.attention_mask.sum()))


def _dpo(spec: Spec) -> dict:
    dm, batches = ordered_batches(spec)
    collated = [collate_preference(b, dm.tokenizer.pad_token_id) for b in batches]
    model = models.load_causal_lm(POLICY).to(spec.settings.device).train()
    reference = models.load_causal_lm(POLICY).to(spec.settings.device).eval().requires_grad_(False)

    def loss_fn(b):
        logps = logprobs.model_token_logprobs(model, b.input_ids, b.attention_mask, b.labels, **_plain(spec))[0].sum(-1)
        with torch.no_grad():
            ref = logprobs.model_token_logprobs(reference, b.input_ids, b.attention_mask, b.labels, **_plain(spec))[0].sum(-1)
        (pc, pr), (rc, rr) = logps.split(b.num_pairs), ref.split(b.num_pairs)
        return losses.dpo_loss(losses.PreferenceLogps(pc, pr, rc, rr), beta=0.1).loss

    return _loop(spec, model, collated, loss_fn, lambda b: int(b.attention_mask.sum()))


def _rm(spec: Spec) -> dict:
    dm, batches = ordered_batches(spec)
    collated = [collate_preference(b, dm.tokenizer.pad_token_id) for b in batches]
    model = models.load_sequence_classifier(RM_BACKBONE).to(spec.settings.device).train()

    def loss_fn(b):
        rc, rr = reward_scores(model, b.input_ids, b.attention_mask, **_plain(spec)).split(b.num_pairs)
        return losses.bradley_terry_loss(rc, rr)

    return _loop(spec, model, collated, loss_fn, lambda b: int(b.attention_mask.sum()))


def _completion_logps(model, samples, unpad: bool = True) -> torch.Tensor:
    ids = torch.cat([samples.prompt_ids, samples.completion_ids], 1)
    mask = torch.cat([samples.prompt_mask, samples.completion_mask], 1)
    labels = torch.cat([torch.full_like(samples.prompt_ids, IGNORE_INDEX),
                        samples.completion_ids.masked_fill(samples.completion_mask == 0, IGNORE_INDEX)], 1)
    logps, _ = logprobs.model_token_logprobs(model, ids, mask, labels, ops.position_ids_from_mask(mask), unpad=unpad)
    return logps[:, samples.prompt_ids.size(1) - 1 :]


def _rloo(spec: Spec) -> dict:
    s = spec.settings
    dm, batches = ordered_batches(spec)
    prompt_batches = [collate_prompts([p.input_ids for p in b], [p.record for p in b], dm.tokenizer.pad_token_id) for b in batches]
    model = models.load_causal_lm(POLICY).to(spec.settings.device).train()
    reference = models.load_causal_lm(POLICY).to(spec.settings.device).eval().requires_grad_(False)
    params = SamplingParams(max_new_tokens=s.rloo_max_new_tokens, temperature=1.0, top_p=1.0, n=s.rloo_k)
    generated = []

    def loss_fn(b):
        samples = sample(model, dm.tokenizer, b.input_ids, b.attention_mask, params, seed=len(generated),
                         share_prompt=not spec.contender.endswith("+no_shared_prompt"))
        mask = samples.completion_mask.float()
        generated.append(int(mask.sum()))
        records = [r for r in b.records for _ in range(s.rloo_k)]
        rewards = torch.tensor(rl_task.scores(s.rl_task, samples.texts, records), device=mask.device)
        logps = _completion_logps(model, samples, **_plain(spec))
        with torch.no_grad():
            kl = ((logps - _completion_logps(reference, samples, **_plain(spec))) * mask).sum(-1)
        advantages = policy_gradient.rloo_advantages(rewards - s.kl_coef * kl, s.rloo_k)
        return -(advantages[:, None] * logps * mask).sum(-1).mean()

    return _loop(spec, model, prompt_batches, loss_fn, lambda b: generated[-1])


def _logprobs(spec: Spec) -> dict:
    """Forward + backward of the SFT log-probs only, at full length: chunked head vs full logits."""
    s = spec.settings
    torch.manual_seed(s.seed)
    model = models.load_causal_lm(POLICY).to(spec.settings.device).train()
    model.config.use_cache = False
    ids = torch.randint(100, model.config.vocab_size, (s.logprobs_batch, s.sft_max_length), device=s.device)
    labels = ids.clone()
    labels[:, : s.sft_max_length // 4] = IGNORE_INDEX
    mask = torch.ones_like(ids)
    clock = StepClock()
    clock.begin()
    for _ in range(s.steps_total()):
        with autocast(s):
            if spec.contender == "chunked":
                logps, _ = logprobs.model_token_logprobs(model, ids, mask, labels)
            else:
                logits = model(input_ids=ids, attention_mask=mask).logits
                logps = torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, labels[:, 1:, None].clamp(min=0)).squeeze(-1)
                logps = logps * (labels[:, 1:] != IGNORE_INDEX)
        (-logps.sum()).backward()
        model.zero_grad(set_to_none=True)
        clock.step_done(int(mask.sum()))
    return summary(clock, s.warmup)


def run(spec: Spec) -> dict:
    torch.manual_seed(spec.settings.seed)
    return {"sft": _sft, "dpo": _dpo, "rm": _rm, "rloo": _rloo, "logprobs": _logprobs}[spec.method](spec)
