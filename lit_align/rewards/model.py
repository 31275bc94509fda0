"""Scalar rewards from a sequence classifier, and a scorer for trained (exported) reward models.

Encoders (BERT, DeBERTa, MiniLM) score their pooled first token through their own head. Causal LMs
turned into reward models (``*ForSequenceClassification`` with a ``score`` head, e.g. Qwen or
SmolLM2) are scored at their last attended token: we find it from the attention mask rather than
from the pad id, because many causal tokenizers pad with their EOS token.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lit_align.objectives import logprobs
from lit_align.modeling import models
from lit_align.data.collate import pad
from lit_align.data.preference import reward_ids
from lit_align.rewards.base import Reward

METADATA = "lit_align_reward.json"


def reward_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, unpad: bool | None = None,
                  group_overhead: int | None = None) -> torch.Tensor:
    """(N, T) right-padded inputs → (N,) float32 rewards.

    With ``unpad`` (default: on CPU, ``logprobs.unpad_by_default``), rows are regrouped by length (``logprobs.plan_row_groups``) and each group is cut to
    its own longest row, so padding costs no compute; each row's reward is unchanged (rows never
    attend to each other), up to float rounding.
    """
    if unpad is None:
        unpad = logprobs.unpad_by_default(input_ids.device)
    with logprobs.cast_weights_once(input_ids.device):
        return _scores(model, input_ids, attention_mask, unpad, group_overhead)


def _scores(model, input_ids, attention_mask, unpad, group_overhead) -> torch.Tensor:
    if unpad and input_ids.size(0) > 1 and bool((attention_mask[:, 0] == 1).all()):
        lengths = attention_mask.sum(dim=1)
        groups = logprobs.regroup_plan(lengths.tolist(), input_ids.size(1), input_ids.device, group_overhead)
        if groups is not None:
            order = torch.tensor([i for g in groups for i in g], device=input_ids.device)
            parts = []
            for g in groups:
                rows = torch.tensor(g, device=input_ids.device)
                longest = max(int(lengths[g].max()), 1)
                parts.append(_dense_scores(model, input_ids[rows, :longest], attention_mask[rows, :longest]))
            return torch.cat(parts)[torch.argsort(order)]
    return _dense_scores(model, input_ids, attention_mask)


def _dense_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "score") and not hasattr(model, "classifier"):
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(dim=1) - 1
        pooled = hidden[torch.arange(hidden.size(0), device=hidden.device), last]
        return model.score(pooled).squeeze(-1).float()
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()


class RewardModelScorer(Reward):
    """Score (prompt, response) pairs with a reward model, formatting them exactly as in training.

    Also a reward source: ``scorer(prompts, completions, records) -> (N,) tensor``.
    """

    def __init__(self, model: str, max_length: int | None = None, batch_size: int = 16, dtype: str = "float32"):
        """
        Args:
            model: a reward model exported by lit_align, any sequence-classifier folder or hub id, or embedded:NAME.
            max_length: longest input in tokens (default: the value saved at export, else 512).
            batch_size: responses per forward pass.
            dtype: weight dtype.
        """
        meta_file = Path(models.resolve(model)) / METADATA
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        self.max_length = max_length or meta.get("max_length", 512)
        self.batch_size = batch_size
        self.tokenizer = models.load_tokenizer(model)
        self.model = models.load_sequence_classifier(model, dtype).eval()

    def to(self, device: torch.device | str) -> RewardModelScorer:
        self.model.to(device)
        return self

    @torch.no_grad()
    def score(self, prompts: list, responses: list) -> torch.Tensor:
        """Rewards for each ``(prompt, response)``; each is text, or a message list for chat models."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(prompts), self.batch_size):
            ids = [
                reward_ids(p, r, self.tokenizer, self.max_length)[0]
                for p, r in zip(prompts[start : start + self.batch_size], responses[start : start + self.batch_size])
            ]
            input_ids = pad(ids, self.tokenizer.pad_token_id).to(device)
            mask = pad([[1] * len(i) for i in ids], 0).to(device)
            out.append(reward_scores(self.model, input_ids, mask).cpu())
        return torch.cat(out) if out else torch.empty(0)

    def __call__(self, prompts: list, completions: list[str], records: list[dict]) -> torch.Tensor:
        responses = [c if isinstance(p, str) else [{"role": "assistant", "content": c}] for p, c in zip(prompts, completions)]
        return self.score(prompts, responses)
