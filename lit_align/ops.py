"""Tensor helpers shared by the methods: pure functions with documented shapes."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from lit_align.data.formats import IGNORE_INDEX


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Log-probability of each next token.

    Args:
        logits: (B, T, V) model outputs, any float dtype.
        labels: (B, T) token ids, ``IGNORE_INDEX`` where no loss.
        chunk_size: rows (positions) per float32 log-softmax, so at most ``chunk_size x V`` float32
            values exist at once instead of a full-vocabulary copy of the whole batch.

    Returns:
        (B, T-1) float32: ``log p(labels[:, t+1] | tokens[:, :t+1])``, 0 where the label is ignored.
    """
    shifted_logits = logits[:, :-1]
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe_targets = targets.masked_fill(~mask, 0)
    flat_logits = shifted_logits.reshape(-1, shifted_logits.size(-1))
    flat_targets = safe_targets.reshape(-1)
    out = torch.empty(flat_targets.shape, dtype=torch.float32, device=logits.device)
    for start in range(0, flat_targets.numel(), chunk_size):
        rows = flat_logits[start : start + chunk_size].float()
        picked = rows.gather(-1, flat_targets[start : start + chunk_size, None]).squeeze(-1)
        out[start : start + chunk_size] = picked - torch.logsumexp(rows, dim=-1)
    return out.view_as(targets) * mask


def loss_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) labels → (B, T-1) float mask of the positions that carry loss."""
    return (labels[:, 1:] != IGNORE_INDEX).float()


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over attended tokens only, so left padding does not shift them.

    >>> position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])).tolist()
    [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_entropy(logits: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Entropy of each position's next-token distribution, (B, T, V) → (B, T) float32, chunked like ``token_logprobs``."""
    flat = logits.reshape(-1, logits.size(-1))
    out = torch.empty(flat.size(0), dtype=torch.float32, device=logits.device)
    for start in range(0, flat.size(0), chunk_size):
        logp = torch.log_softmax(flat[start : start + chunk_size].float(), dim=-1)
        out[start : start + chunk_size] = -(logp.exp() * logp).sum(-1)
    return out.view(logits.shape[:-1])


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Leave-one-out advantages: each sample's reward minus the mean of the other k-1 in its group.

    Args:
        rewards: (B*k,) with the k samples of each prompt adjacent.
    Returns:
        (B*k,) advantages; each group of k sums to zero.

    >>> rloo_advantages(torch.tensor([1.0, 0.0, 2.0, 5.0]), k=2).tolist()
    [1.0, -1.0, -3.0, 3.0]
    """
    if k < 2:
        raise ValueError(f"RLOO needs at least 2 samples per prompt, got k={k}")
    groups = rewards.view(-1, k)
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (k - 1)
    return (groups - baseline).reshape(-1)


def kl_k1(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate ``log pi - log ref`` (unbiased, can be negative)."""
    return logps - ref_logps


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate ``r - log r - 1`` with ``r = ref / pi`` (unbiased, never negative)."""
    log_ratio = ref_logps - logps
    return log_ratio.exp() - log_ratio - 1


def _head_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, with_entropy: bool):
    logits = head(hidden).float()
    logz = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, targets[:, None]).squeeze(-1) - logz
    if not with_entropy:
        return picked, None
    probs = torch.softmax(logits, dim=-1)
    return picked, logz - (probs * logits).sum(-1)


def model_token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    chunk_size: int = 1024,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``token_logprobs`` of a causal LM without its full-vocabulary logits for the whole batch.

    The model returns only its final hidden states (``logits_to_keep=1``); the output head then runs
    on ``chunk_size`` positions at a time under activation checkpointing, so at most one chunk of
    ``chunk_size x V`` float32 logits exists at once, in forward and in backward.

    Returns:
        (B, T-1) log-probs of ``labels[:, 1:]`` (0 where ignored) and, if asked, (B, T-1) entropies.
    """
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
        logits_to_keep=1, output_hidden_states=True,
    )
    hidden = out.hidden_states[-1][:, :-1]
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    flat_hidden = hidden.reshape(-1, hidden.size(-1))
    flat_targets = targets.masked_fill(~mask, 0).reshape(-1)
    head = model.get_output_embeddings()
    picked, entropy = [], []
    for start in range(0, flat_targets.numel(), chunk_size):
        args = (head, flat_hidden[start : start + chunk_size], flat_targets[start : start + chunk_size], with_entropy)
        p, e = checkpoint(_head_logprobs, *args, use_reentrant=False) if torch.is_grad_enabled() else _head_logprobs(*args)
        picked.append(p)
        entropy.append(e)
    logps = torch.cat(picked).view_as(targets) * mask
    return logps, (torch.cat(entropy).view_as(targets) * mask if with_entropy else None)
