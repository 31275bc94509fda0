"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al., 2024), online.

For each prompt x the policy samples k completions y_1..y_k at temperature T (eval mode, no_grad)
from pi_T = softmax(z / T). Each gets a reward r(x, y_i) from the configured reward source and,
with the default KL placement, a penalty on its KL to the reference at the same temperature:

    R_i = r(x, y_i) - kl_coef * sum_t [log pi_T(y_it) - log ref_T(y_it)]     (k1 in the reward)
    A_i = R_i - 1/(k-1) * sum_{j != i} R_j                                     (sums to zero per group)
    L   = -(1/D) sum_i A_i * sum_t log pi_T(y_it | x, y_i,<t)                  (D = Bk: "sequence")

whose expected gradient is exactly grad(E[r] - kl_coef * KL(pi_T || ref_T)). Log-probs, the
reference's included, are taken at the sampling temperature; temperature 0 (greedy) is refused,
since k identical samples have zero advantages. The KL may instead sit in the loss as k2 (exact
gradient of the same KL) or k3 (GRPO's per-token form, the reverse KL's gradient);
``losses.check_kl_setting`` refuses the placements whose gradient is not a KL's. Completions cut
at ``max_new_tokens`` can be kept out of the loss (``mask_truncated_completions``); their share is
logged every step. The objective is ``losses.rloo_loss``; this module samples, scores, takes
log-probs and logs. Simplifications: one optimisation step per generation batch (so the samples
are exactly on-policy and no importance ratio or clipping is needed); rewards are not normalised.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from lightning.pytorch.strategies import FSDPStrategy

from lit_align.objectives import logprobs, losses, ops
from lit_align.data.collate import PromptBatch
from lit_align.data.formats import IGNORE_INDEX
from lit_align.data.kinds import PromptKind
from lit_align.sampling.generate import Samples
from lit_align.methods.base import PolicyModule
from lit_align.rewards.base import Reward, score_samples


def sampling_seed(step: int, batch_idx: int, rank: int) -> int:
    """A seed of its own for every micro-batch: accumulated micro-batches share a step, not a batch index."""
    return (step * 1_000_003 + batch_idx) * 65_537 + rank


class RLOO(PolicyModule):
    """Online RL with k samples per prompt and leave-one-out advantages."""

    batch_kind = PromptKind()

    def __init__(
        self,
        *args,
        reward: Reward,
        rloo_k: int = 4,
        kl_coef: float = 0.03,
        kl_estimator: Literal["k1", "k2", "k3"] = "k1",
        kl_in_reward: bool = True,
        entropy_coef: float = 0.0,
        normalization: Literal["sequence", "token"] = "sequence",
        reference: Literal["adapter_off", "copy"] = "copy",
        mask_truncated_completions: bool = False,
        disable_dropout: bool = True,
        **kwargs,
    ):
        """
        Args:
            reward: reward source: CountdownVerifier, RewardModelScorer, WeightedSum, ...
            rloo_k: completions sampled per prompt (at least 2).
            kl_coef: weight of the KL to the reference.
            kl_estimator: "k1" (log-ratio; in the reward), "k2" (half squared sequence log-ratio; in the
                loss) or "k3" (per-token r - log r - 1; in the loss).
            kl_in_reward: subtract the KL from the reward (true; k1) or add it to the loss (false; k2, k3).
            entropy_coef: weight of an entropy bonus (0: off).
            normalization: "sequence" (mean over completions; unbiased) or "token" (mean over completion tokens).
            reference: "adapter_off" (policy with LoRA disabled; needs lora) or "copy" (frozen start model).
            mask_truncated_completions: completions cut at max_new_tokens carry no loss (they still
                count in their group's baselines).
            disable_dropout: switch the policy's dropout off (LoRA's included), so the log-probs and
                the KL are not noisy.
        """
        super().__init__(*args, disable_dropout=disable_dropout, **kwargs)
        if rloo_k < 2:
            raise ValueError(f"rloo_k must be at least 2, got {rloo_k}")
        if self.generation.temperature <= 0:
            raise ValueError(
                f"RLOO samples at generation.temperature {self.generation.temperature}: greedy decoding gives k "
                "identical completions, hence zero advantages and no learning; set a temperature > 0 (the study: 0.7)"
            )
        losses.check_kl_setting(kl_estimator, kl_in_reward)
        self.init_reference(reference)
        self.reward, self.rloo_k, self.kl_coef = reward, rloo_k, kl_coef
        self.kl_estimator, self.kl_in_reward = kl_estimator, kl_in_reward
        self.entropy_coef, self.normalization = entropy_coef, normalization
        self.mask_truncated_completions = mask_truncated_completions
        self.sampling = dataclasses.replace(self.generation, n=rloo_k)
        self.prompts_seen = self.completions_seen = 0

    def configure_model(self) -> None:
        super().configure_model()
        self.load_reference_copy()

    def _logps(self, model, samples: Samples, with_entropy: bool = False):
        """(N, C) log-probs (and entropies) of the sampled completion tokens under ``model``, at the
        temperature they were sampled at."""
        input_ids = torch.cat([samples.prompt_ids, samples.completion_ids], dim=1)
        mask = torch.cat([samples.prompt_mask, samples.completion_mask], dim=1)
        labels = torch.cat([torch.full_like(samples.prompt_ids, IGNORE_INDEX),
                            samples.completion_ids.masked_fill(samples.completion_mask == 0, IGNORE_INDEX)], dim=1)
        logps, entropy = logprobs.model_token_logprobs(
            model, input_ids, mask, labels, ops.position_ids_from_mask(mask), with_entropy=with_entropy,
            temperature=samples.temperature or 1.0,  # greedy samples: the model's own distribution
        )
        start = samples.prompt_ids.size(1) - 1  # position t-1 predicts token t
        return logps[:, start:], (entropy[:, start:] if entropy is not None else None)

    def _reference_logps(self, samples: Samples) -> torch.Tensor:
        return self.with_reference(lambda model: self._logps(model, samples)[0])

    def _score(self, batch: PromptBatch, samples: Samples) -> torch.Tensor:
        with torch.no_grad():
            return score_samples(self.reward, batch.records, samples.texts, self.rloo_k, batch.prompts)[0].to(self.device)

    def _sharded(self) -> bool:
        return isinstance(self.trainer.strategy, FSDPStrategy) and self.trainer.world_size > 1

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # A reward model is not a submodule (it is not trained or sharded): put it on this rank's device.
        self.reward.to(self.device)

    def training_step(self, batch: PromptBatch, batch_idx: int):
        samples = self.rollout.sample(self.policy, self.tokenizer, batch.input_ids, batch.attention_mask, self.sampling,
                                      seed=sampling_seed(self.global_step, batch_idx, self.global_rank),
                                      synced=self._sharded())
        rewards = self._score(batch, samples)
        mask = samples.completion_mask.float()
        logps, entropy = self._logps(self.policy, samples, with_entropy=True)
        keep = ~samples.truncated if self.mask_truncated_completions else None
        out = losses.rloo_loss(
            logps, self._reference_logps(samples), mask, rewards, self.rloo_k, self.kl_coef, self.kl_estimator,
            self.kl_in_reward, self.normalization, entropy, self.entropy_coef, keep,
        )
        self._log_step(batch, rewards, out, (entropy * mask).sum() / mask.sum().clamp(min=1), mask, samples.truncated)
        if samples.engine_logps is not None:  # does the engine sample from the policy it trains?
            gap = ((logps.detach() - samples.engine_logps).abs() * mask).sum() / mask.sum().clamp(min=1)
            self.log("train/engine_logprob_gap", gap, batch_size=len(batch.records))
        return out.loss

    def _log_step(self, batch, rewards, out: losses.RLOOLoss, entropy, mask, truncated) -> None:
        self.prompts_seen += len(batch.records)
        self.completions_seen += rewards.numel()
        groups = rewards.view(-1, self.rloo_k)
        self.log_dict(
            {
                "train/loss": out.loss.detach(),
                "train/policy_loss": out.policy_loss,
                "train/kl_loss": out.kl_loss,
                "train/reward_mean": rewards.mean(),
                "train/reward_std": rewards.std(),
                "train/kl": out.kl.mean(),
                "train/entropy": entropy.detach(),
                "train/completion_length": mask.sum(-1).mean(),
                "train/truncated_share": truncated.float().mean(),
                "train/zero_variance_groups": (groups.std(dim=1) == 0).float().mean(),
                "train/prompts_seen": float(self.prompts_seen),
                "train/completions_seen": float(self.completions_seen),
                "train/optimizer_steps": float(self.global_step),
            },
            prog_bar=True,
            batch_size=len(batch.records),
        )
