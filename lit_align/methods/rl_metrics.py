"""Online RL's per-step metrics, over every rank's samples, as plain rows for the logging callback.

``StepStats`` adds up what the micro-batches of one generation batch report; ``step_metrics`` turns it
and the batch into one dict of floats, reduced over data-parallel ranks with the two collectives it is
handed (``gather``: every rank's 1-D tensor, concatenated; ``total``: a sum over ranks), so that a
metric logged under DDP is the one a single process with every rank's samples would log.
"""

from __future__ import annotations

from typing import Callable

import torch

from lit_align.objectives import policy_gradient as pg
from lit_align.objectives.rl import PolicyGradientResult


class StepStats:
    """What the micro-batches of one generation batch add up to."""

    def __init__(self):
        self.loss = self.policy_loss = self.kl_loss = self.clipped = 0.0
        self.entropy = self.entropy_tokens = self.engine_gap = self.engine_gap_tokens = 0.0
        self.steps = 0
        self.kl: list[torch.Tensor] = []  # (rows,) k1 sequence KL of each first-pass micro-batch

    def add(self, out: PolicyGradientResult) -> None:
        self.loss += float(out.loss.detach())
        self.policy_loss += float(out.policy_loss)
        self.kl_loss += float(out.kl_loss)
        self.clipped += float(out.clipped)

    def observe(self, logps: torch.Tensor, mask: torch.Tensor, entropy=None, ref_logps=None, engine_logps=None) -> None:
        """First pass only: the entropy, the KL to the reference and the gap to the engine's log-probs."""
        logps = logps.detach()
        if entropy is not None:
            self.entropy += float((entropy.detach() * mask).sum())
            self.entropy_tokens += float(mask.sum())
        if ref_logps is not None:
            self.kl.append(pg.sequence_kl(logps, ref_logps, mask))
        if engine_logps is not None:  # does the engine sample from the policy it trains?
            self.engine_gap += float(((logps - engine_logps).abs() * mask).sum())
            self.engine_gap_tokens += float(mask.sum())


def step_metrics(batch, stats: StepStats, counts: dict[str, float], num_iterations: int,
                 gather: Callable[[torch.Tensor], torch.Tensor],
                 total: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
    """``train/...`` metrics of one generation batch (a ``rollouts.RolloutBatch``) over every rank.

    ``counts``: this rank's cumulative ``prompts_seen`` and ``completions_seen`` (summed over ranks here)
    and the global ``optimizer_steps``.
    """
    rollouts = batch.rollouts
    rewards = gather(rollouts.rewards.float())
    sizes = gather(torch.tensor(rollouts.sizes, dtype=torch.long, device=rewards.device))
    group_stds = torch.cat([g.std(dim=1) for g in pg.grouped(rewards, sizes)])
    samples = batch.samples
    sums = total(torch.tensor([
        stats.loss, stats.policy_loss, stats.kl_loss, float(max(1, stats.steps)), stats.clipped,
        float(batch.loss_mask.sum()) * num_iterations, stats.entropy, stats.entropy_tokens, stats.engine_gap,
        stats.engine_gap_tokens, counts["prompts_seen"], counts["completions_seen"],
        float(rollouts.drawn * len(rollouts.prompts)), float(rollouts.dropped),
        float(rollouts.all_drawn_rewards.sum()), float(rollouts.all_drawn_rewards.numel()),
    ], dtype=torch.float64, device=rewards.device)).tolist()
    (loss, policy_loss, kl_loss, steps, clipped, tokens, entropy, entropy_tokens, gap, gap_tokens, prompts,
     completions, groups_drawn, dropped, drawn_sum, drawn_count) = sums
    uniform = pg.uniform_groups(rewards, sizes)
    metrics = {
        "train/loss": loss / steps, "train/policy_loss": policy_loss / steps, "train/kl_loss": kl_loss / steps,
        "train/reward_mean": rewards.mean(), "train/reward_std": rewards.std(),
        "train/drawn_reward_mean": drawn_sum / max(drawn_count, 1.0),
        "train/advantage_abs_mean": gather(batch.advantages.float()).abs().mean(),
        "train/completion_length": gather(samples.completion_mask.sum(-1).float()).mean(),
        "train/truncated_share": gather(samples.truncated.float()).mean(),
        "train/zero_variance_groups": uniform.float().mean(),
        "train/group_reward_std": group_stds.mean(),
        "train/clipped_share": clipped / max(1.0, tokens),
        "train/prompts_seen": prompts, "train/completions_seen": completions,
        "train/optimizer_steps": counts["optimizer_steps"],
    }
    if entropy_tokens:
        metrics["train/entropy"] = entropy / entropy_tokens
    if stats.kl:
        metrics["train/kl"] = gather(torch.cat(stats.kl).float()).mean()
    if gap_tokens:
        metrics["train/engine_logprob_gap"] = gap / gap_tokens
    if rollouts.drawn_rewards is not None:  # dynamic sampling
        metrics |= {"train/groups_drawn": groups_drawn, "train/groups_kept": float((~uniform).sum()),
                    "train/groups_dropped": dropped, "train/draws": float(rollouts.drawn)}
    return {key: float(value) for key, value in metrics.items()}


def completion_rows(batch, step: int, count: int) -> list[dict]:
    """The first ``count`` completions of this rank's batch, each with its prompt, reward and advantage."""
    rollouts = batch.rollouts
    n = min(count, len(rollouts.samples))
    group = batch.group_ids[:n].tolist()
    return [{"step": step, "prompt": _as_text(rollouts.prompts[group[i]]), "completion": rollouts.samples.texts[i],
             "reward": float(rollouts.rewards[i]), "advantage": float(batch.advantages[i])} for i in range(n)]


def _as_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in prompt)
