"""Online RL that samples once and learns in micro-batches: the one loop RLOO and GRPO run on.

Each training step takes a batch of G prompts from the data module (``data.batch_size``) and:

1. **samples** k completions per prompt in one engine call (eval mode, no_grad) and scores them; with
   ``dynamic_sampling`` groups whose k rewards are all equal are set aside and further prompt batches
   are drawn (later training steps) until G groups with signal are collected or ``max_draws`` batches
   were drawn (then zero-signal groups fill the batch up to G, so every rank's step has one shape);
2. takes, without gradient and ``micro_batch_size`` sequences at a time, the reference log-probs (a
   KL is asked for) and the sampling weights' log-probs (the KL sits in the reward, the batch is used
   off the sampling weights, or TIS corrects an engine's numerics); then the advantages over the
   whole generation batch (``objectives.policy_gradient``);
3. **learns**: ``num_iterations`` passes over the batch, each split into ``steps_per_generation``
   optimiser steps over consecutive rows, each step a sum of ``micro_batch_size`` backward passes whose
   normalisers are the whole step's, so the accumulated gradient equals the one-batch gradient.

Memory therefore follows the micro-batch, not G x k: the batch itself is only token ids and a few
(N, C) tensors of log-probs. Optimisation is manual (Lightning's ``manual_backward``, ``clip_gradients``
and the optimiser and schedule it configured), so gradient clipping is this method's
``max_grad_norm`` (the command line moves ``trainer.gradient_clip_val`` there). One pass of one step
(the defaults) is plain on-policy REINFORCE with the chosen baseline; later passes and steps use PPO's
clipped ratio against the sampling weights' log-probs.

Logged once per training step, over all of its samples: reward, KL, entropy, length, truncation and
group statistics, the counts of prompts, completions and optimiser steps, the dynamic-sampling counts,
the clipped share of tokens and, for engines that report their own log-probs, the mean gap to the
trainer's. Every ``log_completions_every_n_steps`` steps a few prompts with their completions, rewards
and advantages go to the logger (TensorBoard text, a W&B table, else ``completions.jsonl`` in the
logger's folder).

Simplifications: rows are split into steps and micro-batches in order, not shuffled; with dynamic
sampling the surplus groups of the last draw are dropped (counted in ``dropped``).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.strategies import FSDPStrategy

from lit_align.data.collate import PromptBatch
from lit_align.data.kinds import PromptKind
from lit_align.methods.base import PolicyModule
from lit_align.objectives import logprobs
from lit_align.objectives import policy_gradient as pg
from lit_align.rewards.base import Reward, score_samples
from lit_align.sampling.generate import Samples, concat_samples

# Lightning warns that a checkpoint under manual optimisation holds the weights after the optimiser step;
# that is the state a resumed run continues from here (tests/test_resume.py), so the warning says nothing.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def sampling_seed(step: int, batch_idx: int, rank: int) -> int:
    """A seed of its own for every draw: several draws can share an optimiser step, not a batch index."""
    return (step * 1_000_003 + batch_idx) * 65_537 + rank


@dataclasses.dataclass
class Rollouts:
    """A generation batch: its samples (k per prompt, groups adjacent), rewards and prompts."""

    samples: Samples
    rewards: torch.Tensor  # (N,)
    prompts: list  # one per group
    drawn: int = 1  # prompt batches drawn for it
    dropped: int = 0  # groups set aside by dynamic sampling

    def groups(self, keep: torch.Tensor, k: int) -> Rollouts:
        """The groups where ``keep`` (G,) is true."""
        rows = keep.repeat_interleave(k).nonzero().flatten()
        return Rollouts(self.samples.select(rows), self.rewards[rows],
                        [p for p, kept in zip(self.prompts, keep.tolist()) if kept], self.drawn, self.dropped)


    def state(self) -> dict:
        """Plain containers only (tensors, lists, numbers, strings): checkpoints load with weights_only."""
        samples = {f.name: getattr(self.samples, f.name) for f in dataclasses.fields(Samples)}
        return {"samples": samples, "rewards": self.rewards, "prompts": self.prompts, "drawn": self.drawn,
                "dropped": self.dropped}

    @classmethod
    def from_state(cls, state: dict) -> Rollouts:
        return cls(Samples(**state["samples"]), state["rewards"], state["prompts"], state["drawn"], state["dropped"])


def concat_rollouts(parts: list[Rollouts], pad_id: int) -> Rollouts:
    return Rollouts(concat_samples([p.samples for p in parts], pad_id), torch.cat([p.rewards for p in parts]),
                    [q for p in parts for q in p.prompts])


class OnlineRL(PolicyModule):
    """Sample once, learn in micro-batches: the loop under ``RLOO`` and ``GRPO`` (use those)."""

    batch_kind = PromptKind()
    uses_rollout_engine = True
    # take the sampling weights' log-probs from each micro-batch's training forward where that is exact
    # (see _shapes_per_micro_batch); False runs the separate no-grad pass (the tests compare the two)
    fuse_sampling_pass = True

    def __init__(
        self,
        *args,
        reward: Reward,
        k: int = 4,
        estimator: pg.Estimator = "rloo",
        scale_rewards: pg.ScaleRewards = "group",
        loss_aggregation: pg.Aggregation = "sequence",
        kl_coef: float = 0.0,
        kl_estimator: Literal["k1", "k2", "k3"] = "k1",
        kl_in_reward: bool = True,
        entropy_coef: float = 0.0,
        reference: Literal["adapter_off", "copy"] = "copy",
        mask_truncated_completions: bool = False,
        micro_batch_size: int | None = None,
        steps_per_generation: int = 1,
        num_iterations: int = 1,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        dynamic_sampling: bool = False,
        max_draws: int = 4,
        overlong_buffer: int | None = None,
        overlong_penalty: float = 1.0,
        tis_cap: float | None = None,
        max_grad_norm: float | None = None,
        log_completions_every_n_steps: int = 0,
        log_completions_count: int = 4,
        disable_dropout: bool = True,
        **kwargs,
    ):
        """
        Args:
            reward: reward source: CountdownVerifier, RewardModelScorer, WeightedSum, ...
            k: completions sampled per prompt (at least 2).
            estimator: advantage estimator: "rloo" (leave-one-out), "grpo" (group mean, scaled), "dr_grpo".
            scale_rewards: grpo only: divide by the group's std, the batch's, or "none".
            loss_aggregation: "sequence", "sequence_mean", "token" (DAPO) or "dr_grpo" (constant normaliser).
            kl_coef: weight of the KL to the reference (0: no reference is loaded or run).
            kl_estimator: "k1" (in the reward), "k2" or "k3" (in the loss).
            kl_in_reward: subtract the KL from the reward (k1) or add it to the loss (k2, k3).
            entropy_coef: weight of a bonus on the mean token entropy (0: off).
            reference: "adapter_off" (policy with LoRA disabled; needs lora) or "copy" (frozen start model).
            mask_truncated_completions: completions cut at max_new_tokens carry no loss (they still
                count in their group's baselines).
            micro_batch_size: sequences per forward/backward pass (None: a whole optimiser step at once);
                peak memory follows it.
            steps_per_generation: optimiser steps each generation batch is split into.
            num_iterations: passes over each generation batch.
            epsilon: lower clip range of the importance ratio, used off the sampling weights.
            epsilon_high: upper clip range (None: epsilon).
            dynamic_sampling: drop groups whose rewards are all equal and draw more prompts (DAPO).
            max_draws: most prompt batches drawn for one generation batch with dynamic sampling.
            overlong_buffer: DAPO's soft overlong punishment over the last this many tokens (None: off).
            overlong_penalty: the punishment at max_new_tokens.
            tis_cap: truncated importance sampling against the engine's log-probs, capped here (None: off).
            max_grad_norm: clip the gradient norm of each optimiser step (None: no clipping).
            log_completions_every_n_steps: log a few prompts, completions, rewards and advantages
                every this many optimiser steps (0: never).
            log_completions_count: how many completions each time.
            disable_dropout: switch the policy's dropout off (LoRA's included), so the log-probs and
                the KL are not noisy.
        """
        super().__init__(*args, disable_dropout=disable_dropout, **kwargs)
        if self.generation.temperature <= 0:
            raise ValueError(
                f"online RL samples at generation.temperature {self.generation.temperature}: greedy decoding gives k "
                "identical completions, hence zero advantages and no learning; set a temperature > 0 (the study: 0.7)"
            )
        if self.generation.top_p < 1:
            raise ValueError(
                f"generation.top_p {self.generation.top_p} is refused for online RL: the trainer takes log-probs over the "
                "full softmax at the sampling temperature, so samples from a top-p-truncated distribution would bias "
                "the gradient; use top_p: 1.0 (lower the temperature to sharpen sampling instead)"
            )
        pg.check_kl_setting(kl_estimator, kl_in_reward)
        pg.group_advantages(torch.zeros(k), k, estimator, scale_rewards)  # refuses bad settings now, not at step 1
        if loss_aggregation not in pg.AGGREGATIONS:
            raise ValueError(f"unknown loss aggregation {loss_aggregation!r}: choose from {', '.join(pg.AGGREGATIONS)}")
        for name, value in (("micro_batch_size", 1 if micro_batch_size is None else micro_batch_size),
                            ("steps_per_generation", steps_per_generation),
                            ("num_iterations", num_iterations), ("max_draws", max_draws)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.init_reference(reference)
        self.reward, self.k, self.estimator, self.scale_rewards = reward, k, estimator, scale_rewards
        self.loss_aggregation, self.kl_coef, self.kl_estimator, self.kl_in_reward = loss_aggregation, kl_coef, kl_estimator, kl_in_reward
        self.entropy_coef, self.mask_truncated_completions = entropy_coef, mask_truncated_completions
        self.micro_batch_size, self.steps_per_generation, self.num_iterations = micro_batch_size, steps_per_generation, num_iterations
        self.epsilon, self.epsilon_high = epsilon, epsilon_high
        self.dynamic_sampling, self.max_draws = dynamic_sampling, max_draws
        self.overlong_buffer, self.overlong_penalty, self.tis_cap = overlong_buffer, overlong_penalty, tis_cap
        self.max_grad_norm = max_grad_norm
        self.log_completions_every_n_steps, self.log_completions_count = log_completions_every_n_steps, log_completions_count
        if overlong_buffer is not None:
            pg.overlong_penalty(torch.zeros(1), self.generation.max_new_tokens, overlong_buffer)  # checks the buffer
        self.sampling = dataclasses.replace(self.generation, n=k)
        self.automatic_optimization = False
        self.prompts_seen = self.completions_seen = 0
        self._pending: list[Rollouts] = []  # dynamic sampling: groups with signal, waiting for a full batch
        self._set_aside: list[Rollouts] = []  # and the zero-signal ones, to fill up at the draw cap
        self._draws = 0

    def configure_model(self) -> None:
        super().configure_model()
        if self.kl_coef > 0:  # without a KL the reference is never run: no copy in memory
            self.load_reference_copy()

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # A reward model is not a submodule (it is not trained or sharded): put it on this rank's device.
        self.reward.to(self.device)

    # --- log-probs ------------------------------------------------------------------------------
    def _logps(self, model, samples: Samples, with_entropy: bool = False):
        # the entropy is in the loss only with an entropy bonus; otherwise it is logged, and built without a graph
        return logprobs.completion_logprobs(model, samples, with_entropy, entropy_grad=self.entropy_coef > 0)

    def _micro_batches(self, rows: range) -> list[range]:
        size = self.micro_batch_size or len(rows)
        return [rows[i : i + size] for i in range(0, len(rows), size)]

    @torch.no_grad()
    def _logps_no_grad(self, model, samples: Samples) -> torch.Tensor:
        parts = [self._logps(model, samples.select(slice(r.start, r.stop)))[0] for r in self._micro_batches(range(len(samples)))]
        return torch.cat(parts)

    def _reference_logps(self, samples: Samples) -> torch.Tensor:
        return self.with_reference(lambda model: self._logps_no_grad(model, samples))

    # --- sampling -------------------------------------------------------------------------------
    def _draw(self, batch: PromptBatch, batch_idx: int) -> Rollouts:
        samples = self.rollout.sample(self.policy, self.tokenizer, batch.input_ids, batch.attention_mask, self.sampling,
                                      seed=sampling_seed(self.global_step, batch_idx, self.global_rank))
        with torch.no_grad():
            rewards = score_samples(self.reward, batch.records, samples.texts, self.k, batch.prompts).to(self.device)
        if self.overlong_buffer is not None:
            lengths = samples.completion_mask.sum(-1)
            rewards = rewards + pg.overlong_penalty(lengths, self.sampling.max_new_tokens, self.overlong_buffer,
                                                    self.overlong_penalty).to(rewards.device)
        self.prompts_seen += len(batch.records)
        self.completions_seen += len(samples)
        return Rollouts(samples, rewards, list(batch.prompts))

    def _collect(self, drawn: Rollouts, groups: int) -> Rollouts | None:
        """Dynamic sampling: keep the groups with signal; a full batch of ``groups`` once there is one
        (or the draw cap is reached: then zero-signal groups fill it up), else None."""
        uniform = pg.uniform_groups(drawn.rewards, self.k)
        self._pending.append(drawn.groups(~uniform, self.k))
        self._set_aside.append(drawn.groups(uniform, self.k))
        self._draws += 1
        have = torch.tensor(float(sum(len(p.prompts) for p in self._pending)), device=self.device)
        have = self.trainer.strategy.reduce(have, reduce_op="min") if self.trainer.world_size > 1 else have
        if have < groups and self._draws < self.max_draws:
            return None
        parts = [p for p in self._pending + self._set_aside if p.prompts]
        out = concat_rollouts(parts, self.tokenizer.pad_token_id).groups(torch.arange(sum(len(p.prompts) for p in parts)) < groups, self.k)
        out.drawn, out.dropped = self._draws, self._draws * groups - groups  # every drawn group beyond the G used
        self._pending, self._set_aside, self._draws = [], [], 0
        return out

    # --- the step -------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and isinstance(self.trainer.strategy, FSDPStrategy):
            raise ValueError(
                f"{type(self).__name__} cannot train under FSDP: it optimises by hand (several optimiser steps per "
                "generation batch), and Lightning runs training_step, backward passes included, inside the FSDP "
                "root's forward, so FSDP's end-of-backward bookkeeping never runs and its units stay marked "
                "mid-backward (reproduced on CPU over gloo; Lightning issue 19685 'Address FSDP + manual "
                "optimization'). Use DDP (strategy: ddp), with LoRA or QLoRA where the model would not fit")

    def on_train_batch_start(self, batch: PromptBatch, batch_idx: int) -> None:
        # Start the engine or push the last step's weights before the step, outside training_step: the place
        # where a gathering of sharded weights is allowed, and where an engine's start is not timed as sampling.
        self.rollout.prepare(self.policy, self.tokenizer)

    def training_step(self, batch: PromptBatch, batch_idx: int) -> None:
        drawn = self._draw(batch, batch_idx)
        rollouts = self._collect(drawn, len(batch.records)) if self.dynamic_sampling else drawn
        if rollouts is None:
            return None
        self._learn(rollouts)
        return None

    def _tis(self, samples: Samples) -> bool:
        return self.tis_cap is not None and samples.engine_logps is not None

    def _on_policy_once(self, samples: Samples) -> bool:
        """One optimiser step over one pass, no TIS: the training forward runs the sampling weights."""
        return self.num_iterations == 1 and self.steps_per_generation == 1 and not self._tis(samples)

    def _one_forward(self, samples: Samples) -> bool:
        """One micro-batch, one step, one pass, no TIS: the training forward itself can give the sampling
        weights' log-probs (detached) before the loss needs them, so no extra forward is run."""
        whole = self.micro_batch_size is None or self.micro_batch_size >= len(samples)
        return whole and self._on_policy_once(samples)

    def _prepare(self, rollouts: Rollouts, first=None):
        """Reference and sampling-weight log-probs (no gradient) and the advantages of the whole batch;
        ``first``: the training forward's (log-probs, entropies) when it covers the whole batch."""
        samples = rollouts.samples
        mask = samples.completion_mask.float()
        tis = self._tis(samples)
        kl_in_reward = self.kl_in_reward and self.kl_coef > 0
        old = None
        if first is not None:
            old = first[0].detach()
        elif kl_in_reward or not self._on_policy_once(samples):
            old = self._logps_no_grad(self.policy, samples)
        ref = self._reference_logps(samples) if self.kl_coef > 0 else None
        advantages = self._advantages(rollouts.rewards, old, ref, mask)
        is_weights = pg.tis_weights(old, samples.engine_logps, self.tis_cap) if tis else None
        return old, ref, advantages, is_weights

    def _advantages(self, rewards: torch.Tensor, old, ref, mask: torch.Tensor) -> torch.Tensor:
        """Advantages of whole groups' rewards, the KL to the reference subtracted first where it is in the reward."""
        kl_in_reward = self.kl_in_reward and self.kl_coef > 0
        shaped = rewards - self.kl_coef * pg.sequence_kl(old, ref, mask) if kl_in_reward else rewards
        everyone = None  # the batch std is the global batch's, as in one process with every rank's prompts
        if self.estimator == "grpo" and self.scale_rewards == "batch" and self._trainer is not None and self.trainer.world_size > 1:
            everyone = self.all_gather(shaped).reshape(-1)
        return pg.group_advantages(shaped, self.k, self.estimator, self.scale_rewards, everyone)

    def _shapes_per_micro_batch(self, samples: Samples) -> bool:
        """Whether each micro-batch's training forward can give its own sampling-weight log-probs, KL-shaped
        rewards and advantages, so that the no-grad pass over the whole batch is not run: on policy (one
        step, one pass, no TIS), a KL in the reward (the only reason that pass runs then), micro-batches
        of whole groups, and advantages that need only their group (not the batch std). The log-probs are
        those of the same rows in the same micro-batches either way."""
        return (self.fuse_sampling_pass and self.kl_in_reward and self.kl_coef > 0
                and self._on_policy_once(samples)
                and self.micro_batch_size is not None and self.micro_batch_size % self.k == 0
                and not (self.estimator == "grpo" and self.scale_rewards == "batch"))

    def _step_totals(self, loss_mask: torch.Tensor) -> tuple[float, float]:
        """(sequences, loss tokens) the aggregation divides by: this step's, scaled so that the
        data-parallel average of the ranks' gradients is the gradient over every rank's samples."""
        sequences, tokens = float(loss_mask.size(0)), loss_mask.sum()
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:
            tokens = self.trainer.strategy.reduce(tokens, reduce_op="mean")
        return sequences, float(tokens)

    def _learn(self, rollouts: Rollouts) -> None:
        samples = rollouts.samples
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        mask = samples.completion_mask.float()
        keep = (~samples.truncated).to(mask.dtype) if self.mask_truncated_completions else torch.ones_like(mask[:, 0])
        loss_mask = mask * keep[:, None]
        first = self._logps(self.policy, samples, with_entropy=True) if self._one_forward(samples) else None
        per_micro_batch = first is None and self._shapes_per_micro_batch(samples)
        if per_micro_batch:  # advantages filled in micro-batch by micro-batch, below
            old, ref, is_weights = None, self._reference_logps(samples), None
            advantages = torch.zeros_like(rollouts.rewards)
        else:
            old, ref, advantages, is_weights = self._prepare(rollouts, first)
        stats = _Stats()
        rows = range(len(samples))
        size = -(-len(rows) // self.steps_per_generation)
        steps = [rows[i : i + size] for i in range(0, len(rows), size)]
        for iteration in range(self.num_iterations):
            for s, step_rows in enumerate(steps):
                if self._past_max_steps():
                    break
                on_policy = iteration == 0 and s == 0
                sequences, tokens = self._step_totals(loss_mask[step_rows.start : step_rows.stop])
                for mb in self._micro_batches(step_rows):
                    pick = slice(mb.start, mb.stop)
                    if first is not None:  # the whole batch, already run forward
                        (logps, entropy), first = first, None
                    else:
                        logps, entropy = self._logps(self.policy, samples.select(pick),
                                                     with_entropy=iteration == 0 or self.entropy_coef > 0)
                    if per_micro_batch:  # these rows are whole groups, sampled from the weights just run
                        advantages[pick] = self._advantages(rollouts.rewards[pick], logps.detach(), ref[pick], mask[pick])
                    out = pg.policy_gradient_loss(
                        logps, loss_mask[pick], advantages[pick],
                        pg.aggregation_weights(loss_mask[pick], self.loss_aggregation, sequences, tokens, self.sampling.max_new_tokens),
                        None if on_policy else old[pick], self.epsilon, self.epsilon_high,
                        None if is_weights is None else is_weights[pick], None if ref is None else ref[pick],
                        self.kl_coef, self.kl_estimator, self.kl_in_reward, entropy, self.entropy_coef, tokens,
                    )
                    self.manual_backward(out.loss)
                    stats.add(out, logps, ref, old, samples.select(pick), mask[pick], entropy, iteration == 0, pick)
                    del out, logps, entropy  # before the next micro-batch's forward, not after it
                if self.max_grad_norm is not None:
                    self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if scheduler is not None:
                    scheduler.step()
                self.rollout.weights_changed()  # the engine samples from the new weights next time
                stats.steps += 1
        self._log_generation_batch(rollouts, advantages, loss_mask, stats)

    def _past_max_steps(self) -> bool:
        return self._trainer is not None and 0 <= self.trainer.max_steps <= self.global_step

    # --- logging --------------------------------------------------------------------------------
    def _log_generation_batch(self, rollouts: Rollouts, advantages, loss_mask, stats: _Stats) -> None:
        rewards, samples = rollouts.rewards, rollouts.samples
        groups = rewards.view(-1, self.k)
        lengths = samples.completion_mask.sum(-1).float()
        metrics = {
            "train/loss": stats.loss / max(1, stats.steps),
            "train/policy_loss": stats.policy_loss / max(1, stats.steps),
            "train/kl_loss": stats.kl_loss / max(1, stats.steps),
            "train/reward_mean": rewards.mean(),
            "train/reward_std": rewards.std(),
            "train/advantage_abs_mean": advantages.abs().mean(),
            "train/completion_length": lengths.mean(),
            "train/truncated_share": samples.truncated.float().mean(),
            "train/zero_variance_groups": pg.uniform_groups(rewards, self.k).float().mean(),
            "train/group_reward_std": groups.std(dim=1).mean() if self.k > 1 else rewards.new_zeros(()),
            "train/clipped_share": stats.clipped / max(1.0, float(loss_mask.sum()) * self.num_iterations),
            "train/prompts_seen": float(self.prompts_seen),
            "train/completions_seen": float(self.completions_seen),
            "train/optimizer_steps": float(self.global_step),
        }
        if stats.entropy_tokens:
            metrics["train/entropy"] = stats.entropy / stats.entropy_tokens
        if stats.kl is not None:
            metrics["train/kl"] = stats.kl.mean()
        if stats.engine_gap_tokens:
            metrics["train/engine_logprob_gap"] = stats.engine_gap / stats.engine_gap_tokens
        if self.dynamic_sampling:
            metrics |= {"train/groups_drawn": float(rollouts.drawn * len(rollouts.prompts)),
                        "train/groups_kept": float(len(rollouts.prompts) - int(pg.uniform_groups(rewards, self.k).sum())),
                        "train/groups_dropped": float(rollouts.dropped), "train/draws": float(rollouts.drawn)}
        values = {k: float(v) for k, v in metrics.items()}
        # callback metrics through Lightning; the loggers get one row per generation batch at its optimiser
        # step, written here: Lightning would write the last on-step values again at every later batch,
        # and with dynamic sampling a batch that only draws would repeat the step before it
        self.log_dict({k: torch.tensor(v) for k, v in values.items()}, logger=False, batch_size=len(rollouts.prompts))
        if self.trainer.is_global_zero:
            for logger in self.trainer.loggers:
                logger.log_metrics(values, step=self.global_step)
        every = self.log_completions_every_n_steps
        if every and self.global_step % every == 0:
            self._log_completions(rollouts, advantages)

    def _log_completions(self, rollouts: Rollouts, advantages: torch.Tensor) -> None:
        n = min(self.log_completions_count, len(rollouts.samples))
        rows = [{"step": self.global_step, "prompt": _as_text(rollouts.prompts[i // self.k]),
                 "completion": rollouts.samples.texts[i], "reward": float(rollouts.rewards[i]),
                 "advantage": float(advantages[i])} for i in range(n)]
        if not self.trainer.is_global_zero:
            return
        for logger in self.trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                table = "| prompt | completion | reward | advantage |\n|---|---|---|---|\n" + "\n".join(
                    f"| {_cell(r['prompt'])} | {_cell(r['completion'])} | {r['reward']:.3f} | {r['advantage']:.3f} |" for r in rows)
                logger.experiment.add_text("completions", table, self.global_step)
            elif isinstance(logger, WandbLogger):
                columns = ["step", "prompt", "completion", "reward", "advantage"]
                logger.log_table("completions", columns=columns, data=[[r[c] for c in columns] for r in rows])
            else:
                folder = Path(logger.log_dir) if logger.log_dir else Path(self.trainer.default_root_dir)
                folder.mkdir(parents=True, exist_ok=True)
                with open(folder / "completions.jsonl", "a", encoding="utf-8") as f:
                    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    # --- checkpoints: the dynamic-sampling buffer and the counters ride along -----------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["online_rl"] = {"pending": [p.state() for p in self._pending],
                                   "set_aside": [p.state() for p in self._set_aside], "draws": self._draws,
                                   "prompts_seen": self.prompts_seen, "completions_seen": self.completions_seen}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("online_rl")
        if state is not None:
            self._pending = [Rollouts.from_state(p) for p in state["pending"]]
            self._set_aside = [Rollouts.from_state(p) for p in state["set_aside"]]
            self._draws, self.prompts_seen, self.completions_seen = state["draws"], state["prompts_seen"], state["completions_seen"]


class _Stats:
    """What the micro-batches of one generation batch add up to, for logging."""

    def __init__(self):
        self.loss = self.policy_loss = self.kl_loss = self.clipped = self.entropy = self.entropy_tokens = 0.0
        self.engine_gap = self.engine_gap_tokens = 0.0
        self.steps = 0
        self.kl: torch.Tensor | None = None
        self._kl_parts: list[torch.Tensor] = []

    def add(self, out: pg.PolicyGradientResult, logps, ref, old, samples: Samples, mask, entropy, first_pass: bool, rows) -> None:
        self.loss += float(out.loss.detach())
        self.policy_loss += float(out.policy_loss)
        self.kl_loss += float(out.kl_loss)
        self.clipped += float(out.clipped)
        if not first_pass:
            return
        if entropy is not None:
            self.entropy += float((entropy.detach() * mask).sum())
            self.entropy_tokens += float(mask.sum())
        if ref is not None:
            self._kl_parts.append(pg.sequence_kl(logps.detach(), ref[rows], mask))
            self.kl = torch.cat(self._kl_parts)
        if samples.engine_logps is not None:  # does the engine sample from the policy it trains?
            self.engine_gap += float(((logps.detach() - samples.engine_logps).abs() * mask).sum())
            self.engine_gap_tokens += float(mask.sum())


def _as_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in prompt)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")
