"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al., 2024), online.

For each prompt x the policy samples k completions y_1..y_k (eval mode, no_grad). Each gets a
reward R_i from the configured reward source, optionally penalised by its KL to the reference:

    R_i = r(x, y_i) - kl_coef * KL_i            (kl_in_reward: true; KL_i summed over tokens)
    A_i = R_i - 1/(k-1) * sum_{j != i} R_j      (sums to zero within each group)

and one optimiser step is taken on

    sequence normalisation:  L = -(1/Bk) sum_i A_i * sum_t log pi(y_i,t | x, y_i,<t)
    token normalisation:     L = -(1/N)  sum_i A_i * sum_t log pi(y_i,t | ...),  N = completion tokens
    (+ kl_coef * mean token KL when kl_in_reward is false; - entropy_coef * mean token entropy)

KL estimators per token: k1 = log pi - log ref, k3 = ref/pi - log(ref/pi) - 1. The reference is the
policy with its LoRA adapter off, or a frozen copy of the start model. Simplifications: one
optimisation step per generation batch (so the samples are exactly on-policy and no importance
ratio or clipping is needed); rewards are not normalised.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.strategies import FSDPStrategy

from lit_align import ops
from lit_align.data.collate import PromptBatch
from lit_align.data.formats import IGNORE_INDEX
from lit_align.generation import Samples, SamplingParams, sample
from lit_align.methods.base import PolicyModule
from lit_align.rewards.base import Reward, score_samples


class RLOO(PolicyModule):
    """Online RL with k samples per prompt and leave-one-out advantages."""

    data_format = "prompt"

    def __init__(
        self,
        *args,
        reward: Reward,
        rloo_k: int = 4,
        kl_coef: float = 0.03,
        kl_estimator: Literal["k1", "k3"] = "k1",
        kl_in_reward: bool = True,
        entropy_coef: float = 0.0,
        normalization: Literal["sequence", "token"] = "sequence",
        reference: Literal["adapter_off", "copy"] = "copy",
        **kwargs,
    ):
        """
        Args:
            reward: reward source: CountdownVerifier, RewardModelScorer, WeightedSum, ...
            rloo_k: completions sampled per prompt (at least 2).
            kl_coef: weight of the KL to the reference.
            kl_estimator: per-token KL estimate: "k1" (log-ratio) or "k3" (non-negative).
            kl_in_reward: subtract the KL from the reward (true) or add it to the loss (false).
            entropy_coef: weight of an entropy bonus (0: off).
            normalization: "sequence" (mean over completions) or "token" (mean over completion tokens).
            reference: "adapter_off" (policy with LoRA disabled; needs lora) or "copy" (frozen start model).
        """
        super().__init__(*args, **kwargs)
        if rloo_k < 2:
            raise ValueError(f"rloo_k must be at least 2, got {rloo_k}")
        self.init_reference(reference)
        self.reward, self.rloo_k, self.kl_coef = reward, rloo_k, kl_coef
        self.kl_estimator = ops.kl_k1 if kl_estimator == "k1" else ops.kl_k3
        self.kl_in_reward, self.entropy_coef, self.normalization = kl_in_reward, entropy_coef, normalization
        self.sampling = SamplingParams(
            max_new_tokens=self.generation.max_new_tokens, temperature=self.generation.temperature,
            top_p=self.generation.top_p, n=rloo_k,
        )
        self.prompts_seen = self.completions_seen = 0

    def configure_model(self) -> None:
        super().configure_model()
        self.load_reference_copy()

    def _logps(self, model, samples: Samples, with_entropy: bool = False):
        """(N, C) log-probs (and entropies) of the sampled completion tokens under ``model``."""
        input_ids = torch.cat([samples.prompt_ids, samples.completion_ids], dim=1)
        mask = torch.cat([samples.prompt_mask, samples.completion_mask], dim=1)
        labels = torch.cat([torch.full_like(samples.prompt_ids, IGNORE_INDEX),
                            samples.completion_ids.masked_fill(samples.completion_mask == 0, IGNORE_INDEX)], dim=1)
        logps, entropy = ops.model_token_logprobs(
            model, input_ids, mask, labels, ops.position_ids_from_mask(mask), with_entropy=with_entropy
        )
        start = samples.prompt_ids.size(1) - 1  # position t-1 predicts token t
        return logps[:, start:], (entropy[:, start:] if entropy is not None else None)

    def _reference_logps(self, samples: Samples) -> torch.Tensor:
        return self.with_reference(lambda model: self._logps(model, samples)[0])

    def _score(self, batch: PromptBatch, samples: Samples) -> torch.Tensor:
        with torch.no_grad():
            return score_samples(self.reward, batch.records, samples.texts, self.rloo_k)[0].to(self.device)

    def _sharded(self) -> bool:
        return isinstance(self.trainer.strategy, FSDPStrategy) and self.trainer.world_size > 1

    def on_fit_start(self) -> None:
        # A reward model is not a submodule (it is not trained or sharded): put it on this rank's device.
        self.reward.to(self.device)

    def training_step(self, batch: PromptBatch, batch_idx: int):
        samples = sample(self.policy, self.tokenizer, batch.input_ids, batch.attention_mask, self.sampling,
                         seed=self.global_step * 100_003 + self.global_rank, synced=self._sharded())
        rewards = self._score(batch, samples)
        mask = samples.completion_mask.float()
        logps, entropy = self._logps(self.policy, samples, with_entropy=True)
        token_kl = self.kl_estimator(logps, self._reference_logps(samples)) * mask
        seq_kl = token_kl.sum(-1)
        shaped = rewards - self.kl_coef * seq_kl.detach() if self.kl_in_reward else rewards
        advantages = ops.rloo_advantages(shaped, self.rloo_k)
        weighted = advantages[:, None] * logps * mask
        n_tokens = mask.sum().clamp(min=1)
        loss = -(weighted.sum() / n_tokens if self.normalization == "token" else weighted.sum(-1).mean())
        if not self.kl_in_reward:
            loss = loss + self.kl_coef * token_kl.sum() / n_tokens
        entropy = (entropy * mask).sum() / n_tokens
        if self.entropy_coef:
            loss = loss - self.entropy_coef * entropy
        self._log_step(batch, rewards, seq_kl, entropy, mask, loss)
        return loss

    def _log_step(self, batch, rewards, seq_kl, entropy, mask, loss) -> None:
        self.prompts_seen += len(batch.records)
        self.completions_seen += rewards.numel()
        groups = rewards.view(-1, self.rloo_k)
        self.log_dict(
            {
                "train/loss": loss.detach(),
                "train/reward_mean": rewards.mean(),
                "train/reward_std": rewards.std(),
                "train/kl": seq_kl.mean().detach(),
                "train/entropy": entropy.detach(),
                "train/completion_length": mask.sum(-1).mean(),
                "train/zero_variance_groups": (groups.std(dim=1) == 0).float().mean(),
                "train/prompts_seen": float(self.prompts_seen),
                "train/completions_seen": float(self.completions_seen),
                "train/optimizer_steps": float(self.global_step),
            },
            prog_bar=True,
            batch_size=len(batch.records),
        )
