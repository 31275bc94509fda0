"""Online RL that samples once and learns in micro-batches: the one loop under RLOO, GRPO and every objective.

A training step takes G prompts from the data module (``data.batch_size``) and:

1. **draws** k completions per prompt (or, where a curriculum sets ``PromptBatch.group_sizes``, that many
   for each prompt) in one engine call and scores them (``_start_draw``, ``_settle``); with dynamic
   sampling, groups without signal are set aside and more prompts are drawn in later steps
   (``rollouts.DynamicSampling``);
2. **prepares** one ``rollouts.RolloutBatch`` (``prepare``): the reference log-probs where the objective
   has a KL, and a ``Plan`` for the sampling weights' log-probs, decided once and logged with its reason:
   not needed (on policy, no KL in the reward), from each micro-batch's own training forward (on policy,
   micro-batches of whole groups), or a separate no-grad pass (several steps or passes, TIS, split groups);
3. **learns** (``learn``): ``num_iterations`` passes over the batch, each split into ``steps_per_generation``
   optimiser steps, each the sum of ``micro_batch_size`` backward passes of the objective (a
   ``objectives.rl.PolicyGradient`` chosen by ``class_path``) whose normalisers are the whole step's, so
   the accumulated gradient is the one-batch gradient and memory follows the micro-batch; groups whose
   advantages are all zero (equal rewards) run no pass where that changes nothing (``skip_zero_advantage_groups``);
4. **reports** the step's metrics over every rank's samples, and every ``log_completions_every_n_steps``
   steps a few completions, as plain rows returned to Lightning; ``RolloutLog`` writes them to the loggers.
   Where the batch names its problems (``PromptBatch.problem_ids``, set by a curriculum), every step also
   returns the draw's ``outcomes``: problem ids, draw index, group sizes and the rewards before the
   overlong penalty, also on the steps that only draw (dynamic sampling).

**Drawing ahead** (``max_staleness``, with an engine in another process): a step starts its batch's draw
and, while the engine draws, learns from a batch drawn earlier, at most ``max_staleness`` optimiser steps
older than the weights that learn (one batch ahead when it equals the optimiser steps one batch takes).
Draws still on their way are read before the next weights push and before a checkpoint, which saves them,
so a resumed run learns from the same samples. The first steps only draw while the pipeline fills.

Optimisation is manual, so gradient clipping is ``max_grad_norm``. Simplifications: rows are split into
steps and micro-batches in order, not shuffled; with dynamic sampling the surplus groups of the last
draw are dropped (counted in ``train/groups_dropped``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from typing import Literal

import torch
from lightning.pytorch.strategies import FSDPStrategy

from lit_align.data.collate import PromptBatch
from lit_align.data.kinds import PromptKind
from lit_align.data.datamodule import DataView
from lit_align.lightning.curriculum import CurriculumLog
from lit_align.lightning.rollout_log import RolloutLog
from lit_align.methods.base import PolicyModule
from lit_align.methods.micro_batches import MicroBatching, live_runs
from lit_align.methods.rl_metrics import StepStats, completion_rows, step_metrics
from lit_align.modeling import models
from lit_align.methods.rollouts import (DynamicSampling, Plan, RolloutBatch, Rollouts, check_group_sizes, check_loop,
                                       check_sampling, every_rank, plan_sampling_pass, this_rank)
from lit_align.objectives import shared_prompt
from lit_align.objectives import policy_gradient as pg
from lit_align.objectives.rl import PolicyGradient
from lit_align.rewards.base import Reward, checked_rewards
from lit_align.sampling.generate import Samples
from lit_align.sampling.seeds import derive_seed

log = logging.getLogger(__name__)


class OnlineRL(PolicyModule):
    """Sample once, learn in micro-batches, with any ``objectives.rl`` objective (RLOO and GRPO are presets)."""

    batch_kind = PromptKind()
    uses_rollout_engine = True
    preset_arguments: tuple[str, ...] = ()  # loop arguments a preset sets from its own (kept out of hparams)

    def __init__(
        self,
        *args,
        objective: PolicyGradient,
        reward: Reward,
        k: int = 4,
        reference: Literal["adapter_off", "copy"] = "copy",
        mask_truncated_completions: bool = False,
        micro_batch_size: int | None = None,
        max_tokens_per_micro_batch: int | None = None,
        share_prompt: bool = True,
        skip_zero_advantage_groups: bool = True,
        activation_memory_budget_gib: float | None = None,
        steps_per_generation: int = 1,
        num_iterations: int = 1,
        dynamic_sampling: bool = False,
        max_draws: int = 4,
        overlong_buffer: int | None = None,
        overlong_penalty: float = 1.0,
        tis_cap: float | None = None,
        max_staleness: int = 0,
        max_grad_norm: float | None = None,
        log_completions_every_n_steps: int = 0,
        log_completions_count: int = 4,
        disable_dropout: bool = True,
        **kwargs,
    ):
        """
        Args:
            objective: the loss and its advantages: ClippedRatio, GSPO, CISPO, SAPO, VESPO (objectives.rl).
            reward: reward source: CountdownVerifier, RewardModelScorer, WeightedSum, ...
            k: completions sampled per prompt (at least 2), where the batch sets no ``group_sizes``.
            reference: "adapter_off" (policy with LoRA disabled; needs lora) or "copy" (frozen start model).
            mask_truncated_completions: completions cut at max_new_tokens carry no loss (still in baselines).
            micro_batch_size: sequences per forward/backward pass (None: a whole optimiser step at once).
            max_tokens_per_micro_batch: tokens per forward/backward pass, counted as forwarded (None: no limit);
                whole groups wherever they fit (methods.micro_batches).
            share_prompt: forward each group's prompt once for its k completions (objectives.shared_prompt);
                False: every row runs prompt and completion (the plain path).
            skip_zero_advantage_groups: run no pass (training, or the sampling weights' separate pass) over a
                group whose advantages are all 0 (all its rewards equal) where the objective adds nothing for a
                zero advantage (no KL in the loss, no entropy bonus): the loss and its gradient are exactly those of the passes run, and the step's
                normalisers still count the group's tokens. The first pass's logged entropy, KL and engine gap
                are then over the groups learnt from. False: every group runs.
            activation_memory_budget_gib: with gradient_checkpointing, recompute only the micro-batches whose
                estimated activations exceed this (None: recompute every one).
            steps_per_generation: optimiser steps each generation batch is split into.
            num_iterations: passes over each generation batch.
            dynamic_sampling: drop groups whose rewards are all equal and draw more prompts (DAPO).
            max_draws: most prompt batches drawn for one generation batch with dynamic sampling.
            overlong_buffer: DAPO's soft overlong punishment over the last this many tokens (None: off).
            overlong_penalty: the punishment at max_new_tokens.
            tis_cap: truncated importance sampling against the engine's log-probs, capped here (None: off).
            max_staleness: most optimiser steps between the weights a sample was drawn with and the weights
                that learn from it (TRL's name). 0: synchronous. From steps_per_generation x num_iterations
                up, with an engine that samples in another process (``VLLMServer``), the next batches are
                drawn while this one trains, as many as the bound allows; needs ``tis_cap`` (the correction
                uses the engine's log-probs) and no dynamic sampling.
            max_grad_norm: clip the gradient norm of each optimiser step (None: no clipping).
            log_completions_every_n_steps: log a few completions every this many optimiser steps (0: never).
            log_completions_count: how many completions each time.
            disable_dropout: switch the policy's dropout off (LoRA's included): log-probs and KL not noisy.
        """
        super().__init__(*args, disable_dropout=disable_dropout, **kwargs)
        for name in self.preset_arguments:  # else load_from_checkpoint would pass them twice
            self.hparams.pop(name, None)
        check_sampling(self.generation)
        check_loop(k=k, micro_batch_size=micro_batch_size, max_tokens_per_micro_batch=max_tokens_per_micro_batch,
                   activation_memory_budget_gib=activation_memory_budget_gib,
                   steps_per_generation=steps_per_generation, num_iterations=num_iterations, max_draws=max_draws,
                   tis_cap=tis_cap, max_grad_norm=max_grad_norm,
                   overlong_buffer=overlong_buffer, max_new_tokens=self.generation.max_new_tokens)
        self.init_reference(reference)
        self.max_staleness = max_staleness
        self.depth = check_staleness(max_staleness, steps_per_generation * num_iterations, tis_cap, dynamic_sampling,
                                     self.rollout)
        self._queue: deque[_Draw] = deque()  # draws on their way or waiting to be learnt from, oldest first
        self.stale_batches_dropped = 0
        self.batch_kind = PromptKind(samples_per_prompt=k)  # a curriculum's sample budget is prompts x k
        self.objective, self.reward, self.k = objective, reward, k
        self.mask_truncated_completions = mask_truncated_completions
        self.batching = MicroBatching(micro_batch_size, max_tokens_per_micro_batch, share_prompt,
                                      self.gradient_checkpointing, activation_memory_budget_gib, self.lora is not None)
        self.steps_per_generation, self.num_iterations = steps_per_generation, num_iterations
        self.skip_zero_advantage_groups = skip_zero_advantage_groups
        self.dynamic = DynamicSampling(max_draws) if dynamic_sampling else None
        self.overlong_buffer, self.overlong_penalty, self.tis_cap = overlong_buffer, overlong_penalty, tis_cap
        self.max_grad_norm, self.log_completions_count = max_grad_norm, log_completions_count
        self.log_completions_every_n_steps = log_completions_every_n_steps
        self.sampling = dataclasses.replace(self.generation, n=k)
        self.automatic_optimization = False
        self.prompts_seen = self.completions_seen = 0
        self._plan_logged: Plan | None = None
        self._outcomes: dict | None = None  # the last draw's, for a curriculum (None: the batch names no problems)
        self._book = None  # the data's curriculum booking, handed over by use_data

    def configure_model(self) -> None:
        super().configure_model()
        if self.objective.needs_reference:  # without a KL the reference is never run: no copy in memory
            self.load_reference_copy()

    def configure_callbacks(self):  # the rows training_step returns go to the loggers through these
        # (the curriculum's figures join the step's row first)
        return [CurriculumLog(), RolloutLog()]

    def use_data(self, data: DataView) -> None:
        """Where a curriculum in the data (if any) is told each draw's outcomes (``_book_outcomes``)."""
        self._book = data.book_outcomes

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and isinstance(self.trainer.strategy, FSDPStrategy):
            raise ValueError(
                f"{type(self).__name__} cannot train under FSDP: it optimises by hand (several optimiser steps per "
                "generation batch), and Lightning runs training_step, backward passes included, inside the FSDP "
                "root's forward, so FSDP's end-of-backward bookkeeping never runs (Lightning issue 19685). Use DDP "
                "(strategy: ddp), with LoRA or QLoRA where the model would not fit")

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.reward.to(self.device)  # not a submodule (neither trained nor sharded): this rank's device

    def on_train_batch_start(self, batch: PromptBatch, batch_idx: int) -> None:
        # read every draw still on its way first: the engine must not take new weights in the middle of one
        self._settle_all()
        # start the engine or push the last step's weights here, outside training_step: where gathering
        # sharded weights is allowed, and where an engine's start is not timed as sampling
        self.rollout.prepare(self.policy, self.tokenizer)

    def training_step(self, batch: PromptBatch, batch_idx: int) -> dict | None:
        self._queue.append(self._start_draw(batch, batch_idx))
        if len(self._queue) <= self.depth:  # the pipeline fills: this step only draws
            return None
        entry = self._queue.popleft()
        drawn = self._settle(entry)
        self._outcomes = entry.outcomes
        outcomes = self._book_outcomes()
        staleness = self.global_step - entry.version  # optimiser steps since the weights that drew it
        if staleness > self.max_staleness:  # never learnt from (a guard: the pipeline's depth keeps within it)
            self.stale_batches_dropped += 1
            log.warning("%s: a generation batch drawn %d optimiser steps ago is dropped (max_staleness %d)",
                        type(self).__name__, staleness, self.max_staleness)
            return outcomes or None
        rollouts = self._collect(drawn, len(batch.records)) if self.dynamic is not None else drawn
        if rollouts is None:
            return outcomes or None
        prepared = self.prepare(rollouts)
        extra = {"train/staleness": float(staleness), "train/stale_batches_dropped": float(self.stale_batches_dropped)}
        return self._report(prepared, self.learn(prepared), extra) | outcomes

    # --- 1. draw ---------------------------------------------------------------------------------
    def _start_draw(self, batch: PromptBatch, batch_idx: int) -> _Draw:
        """Ask the engine for the batch's samples (``group_sizes[i]`` for prompt i, else k each); an engine in
        another process goes on drawing while this process trains."""
        sizes = [self.k] * len(batch.records) if batch.group_sizes is None else list(batch.group_sizes)
        check_group_sizes(sizes, len(batch.records))
        sizes = [int(s) for s in sizes]
        seed = derive_seed(self.global_step, batch_idx, self.global_rank)
        future = self.rollout.sample_groups_in_background(self.policy, self.tokenizer, batch.input_ids,
                                                          batch.attention_mask, self.sampling, sizes, seed=seed)
        return _Draw(self.global_step, sizes, batch, future)

    def _draw(self, batch: PromptBatch, batch_idx: int) -> Rollouts:
        """The batch's samples and rewards, drawn and read at once (what a synchronous step does)."""
        return self._settle(self._start_draw(batch, batch_idx))

    def _settle_all(self) -> None:
        for entry in self._queue:
            self._settle(entry)

    def _settle(self, entry: _Draw) -> Rollouts:
        """The draw's samples, read from the engine and scored (once); records the outcomes a curriculum
        reads where the batch names its problems."""
        if entry.rollouts is not None:
            return entry.rollouts
        samples, batch, sizes = entry.future.result(), entry.batch, entry.sizes
        each = (lambda values: [v for v, size in zip(values, sizes) for _ in range(size)])  # one per sample
        with torch.no_grad():
            rewards = checked_rewards(self.reward, each(batch.prompts), samples.texts, each(batch.records))
            rewards = rewards.to(self.device)
        entry.outcomes = None if batch.problem_ids is None else {
            "problem_ids": list(batch.problem_ids), "draw_index": batch.draw_index, "group_sizes": sizes,
            "rewards": rewards.detach().float().cpu().tolist()}
        if self.overlong_buffer is not None:
            lengths = samples.completion_mask.sum(-1)
            rewards = rewards + pg.overlong_penalty(lengths, self.sampling.max_new_tokens, self.overlong_buffer,
                                                    self.overlong_penalty).to(rewards.device)
        self.prompts_seen += len(batch.records)
        self.completions_seen += len(samples)
        entry.rollouts, entry.future, entry.batch = Rollouts(samples, rewards, list(batch.prompts), sizes), None, None
        return entry.rollouts

    def _book_outcomes(self) -> dict:
        """Every rank's outcomes of this draw (rank order), booked with the data's curriculum on every rank
        now, inside the step, so that a checkpoint any callback takes after it holds them."""
        if self._outcomes is None:
            return {}
        everyone = [self._outcomes]
        if self._world_size > 1:
            everyone = [None] * self._world_size
            torch.distributed.all_gather_object(everyone, self._outcomes)
        if self._book is not None:
            for o in everyone:
                self._book(o["draw_index"], o["problem_ids"], o["group_sizes"], o["rewards"])
        return {"outcomes": everyone}

    def _collect(self, drawn: Rollouts, groups: int) -> Rollouts | None:
        """A full batch of ``groups`` once every rank holds one (or the draw cap is reached), else None."""
        have = torch.tensor(float(self.dynamic.add(drawn)), device=self.device)
        if self._world_size > 1:
            have = self.trainer.strategy.reduce(have, reduce_op="min")
        if have < groups and self.dynamic.draws < self.dynamic.max_draws:
            return None
        return self.dynamic.take(groups, self.tokenizer.pad_token_id)

    # --- 2. prepare ------------------------------------------------------------------------------
    def prepare(self, rollouts: Rollouts) -> RolloutBatch:
        """The typed batch: what must exist before learning, and the plan for the rest."""
        samples, objective = rollouts.samples, self.objective
        mask = samples.completion_mask.float()
        keep = (~samples.truncated).to(mask.dtype) if self.mask_truncated_completions else torch.ones_like(mask[:, 0])
        tis = self.tis_cap is not None and samples.engine_logps is not None
        plan, reason = plan_sampling_pass(self.num_iterations == 1 and self.steps_per_generation == 1 and not tis,
                                          objective.shapes_rewards, objective.advantages_need_the_batch,
                                          self.batching.plan(samples, range(len(samples)), rollouts.sizes),
                                          rollouts.sizes)
        if plan is not self._plan_logged:
            log.info("%s: the sampling weights' log-probs: %s (%s)", type(self).__name__, plan.value, reason)
            self._plan_logged = plan
        sizes = rollouts.sizes
        ref = (self.with_reference(lambda m: self._logps_no_grad(m, samples, sizes)) if objective.needs_reference
               else None)
        advantages, skipped = None, None
        if plan is Plan.SEPARATE_PASS and not objective.shapes_rewards:  # advantages first: no pass for flat groups
            advantages = self._advantages(rollouts.rewards, sizes, None, ref, mask)
            skipped = self._skipped_rows(advantages, sizes, plan)
        old = self._logps_no_grad(self.policy, samples, sizes, skipped) if plan is Plan.SEPARATE_PASS else None
        if advantages is None:
            advantages = (torch.zeros_like(rollouts.rewards) if plan is Plan.TRAINING_FORWARD
                          else self._advantages(rollouts.rewards, sizes, old, ref, mask))
        return RolloutBatch(rollouts, plan=plan, reason=reason, loss_mask=mask * keep[:, None],
                            advantages=advantages, old_logps=old, ref_logps=ref,
                            is_weights=pg.tis_weights(old, samples.engine_logps, self.tis_cap) if tis else None)

    def _advantages(self, rewards: torch.Tensor, sizes: list[int], old, ref, mask: torch.Tensor) -> torch.Tensor:
        shaped = self.objective.shaped_rewards(rewards, old, ref, mask)
        # the batch std is the global batch's, as in one process with every rank's prompts
        everyone = self._gather(shaped) if self.objective.advantages_need_the_batch else None
        return self.objective.advantages(shaped, sizes, everyone)

    def _logps(self, model, samples: Samples, with_entropy: bool = False, recompute: bool = False):
        # the entropy is in the loss only with an entropy bonus; otherwise it is logged, built without a graph
        return shared_prompt.sample_logprobs(model, samples, self.batching.share_prompt, with_entropy,
                                             self.objective.entropy_coef > 0, recompute)

    @torch.no_grad()
    def _logps_no_grad(self, model, samples: Samples, sizes: list[int], skipped: list[bool] | None = None) -> torch.Tensor:
        """(N, C) log-probs of every row; rows ``skipped`` (no pass will read them) are left 0."""
        out = torch.zeros(samples.completion_mask.shape, device=samples.completion_mask.device)
        for run in live_runs(range(len(samples)), skipped or [False] * len(samples)):
            for r in self.batching.plan(samples, run, sizes):
                out[r.start : r.stop] = self._logps(model, samples.select(slice(r.start, r.stop)))[0]
        return out

    # --- 3. learn --------------------------------------------------------------------------------
    def learn(self, batch: RolloutBatch) -> StepStats:
        """Every optimiser step of every pass over ``batch``; returns what they add up to."""
        optimizer, scheduler, stats = self.optimizers(), self.lr_schedulers(), StepStats()
        rows = range(len(batch.samples))
        skipped = self._skipped_rows(batch.advantages, batch.sizes, batch.plan)
        size = -(-len(rows) // self.steps_per_generation)
        for iteration in range(self.num_iterations):
            for s, step_rows in enumerate(rows[i : i + size] for i in range(0, len(rows), size)):
                if 0 <= self.trainer.max_steps <= self.global_step:
                    break
                totals = self._step_totals(batch.loss_mask[step_rows.start : step_rows.stop])
                micro = [mb for run in live_runs(step_rows, skipped)
                         for mb in self.batching.plan(batch.samples, run, batch.sizes)]
                passes = self._backward_passes(len(micro))  # agreed before any backward all-reduces
                for mb in micro:
                    self._learn_micro_batch(batch, slice(mb.start, mb.stop), iteration, s == 0, totals, stats)
                for _ in range(passes - len(micro)):
                    self._zero_backward()
                if self.max_grad_norm is not None:
                    self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if scheduler is not None:
                    scheduler.step()
                self.rollout.weights_changed()  # the engine samples from the new weights next time
                stats.steps += 1
        return stats

    def _skipped_rows(self, advantages: torch.Tensor, sizes: list[int], plan: Plan) -> list[bool]:
        """Per row: whether its passes (training, and the sampling weights' separate pass) are skipped, its
        group's advantages being all exactly 0 (rewards all equal: ``pg.group_advantages``) and the objective
        adding nothing for them. Advantages that the training forward itself fills (``Plan.TRAINING_FORWARD``)
        are not known before it: nothing is skipped then."""
        if (not self.skip_zero_advantage_groups or plan is Plan.TRAINING_FORWARD
                or not self.objective.zero_advantage_adds_nothing):
            return [False] * len(advantages)
        flat = torch.cat([g.all(dim=1) for g in pg.grouped(advantages == 0, sizes)])
        return pg.per_row(flat, sizes, len(advantages)).tolist()

    def _backward_passes(self, passes: int) -> int:
        """Backward passes this rank runs for an optimiser step whose micro-batches are ``passes``: at least
        one (a step whose groups were all skipped still steps on zero gradients, as the unskipped loop does:
        AdamW would pass over a gradient left None), and under DDP the most any rank runs, since every
        backward all-reduces (ranks skip different groups, and token budgets cut ranks' rows differently)."""
        passes = max(passes, 1)
        if self._world_size > 1:
            most = self.trainer.strategy.reduce(torch.tensor(float(passes), device=self.device), reduce_op="max")
            passes = int(most)
        return passes

    def _zero_backward(self) -> None:
        """A backward pass that adds 0 to every trainable parameter's gradient (and joins DDP's all-reduce)."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        self.manual_backward(sum((p.sum() * 0.0).float() for p in trainable))

    def _learn_micro_batch(self, batch: RolloutBatch, rows: slice, iteration: int, first_step: bool,
                           totals: tuple[float, float], stats: StepStats) -> None:
        samples = batch.samples.select(rows)
        first_pass = iteration == 0
        recompute = self.batching.recompute(batch.samples, range(rows.start, rows.stop),
                                            models.text_config(self.policy), batch.sizes)
        logps, entropy = self._logps(self.policy, samples, first_pass or self.objective.entropy_coef > 0, recompute)
        mask = samples.completion_mask.float()
        ref = None if batch.ref_logps is None else batch.ref_logps[rows]
        if batch.plan is Plan.TRAINING_FORWARD:  # whole groups, drawn from the weights just run
            sizes = _sizes_within(batch.sizes, rows)
            batch.advantages[rows] = self._advantages(batch.rollouts.rewards[rows], sizes, logps.detach(), ref, mask)
        out = self.objective(batch.view(rows, logps, entropy, first_pass and first_step, totals,
                                        self.sampling.max_new_tokens))
        self.manual_backward(out.loss)
        stats.add(out)
        if first_pass:
            stats.observe(logps, mask, entropy=entropy, ref_logps=ref, engine_logps=samples.engine_logps)

    def _step_totals(self, loss_mask: torch.Tensor) -> tuple[float, float]:
        """(sequences, loss tokens) the aggregation divides by: this step's, the tokens averaged over ranks
        so that the data-parallel mean of the ranks' gradients is the gradient over every rank's samples."""
        tokens = loss_mask.sum()
        if self._world_size > 1:
            tokens = self.trainer.strategy.reduce(tokens, reduce_op="mean")
        return float(loss_mask.size(0)), float(tokens)

    # --- 4. report -------------------------------------------------------------------------------
    def _report(self, batch: RolloutBatch, stats: StepStats, extra: dict[str, float] | None = None) -> dict:
        counts = {"prompts_seen": float(self.prompts_seen), "completions_seen": float(self.completions_seen),
                  "optimizer_steps": float(self.global_step)}
        metrics = step_metrics(batch, stats, counts, self.num_iterations, self._gather, self._total) | (extra or {})
        # callback metrics (checkpoint monitors, the progress bar); the loggers get the rows from RolloutLog
        self.log_dict({k: torch.tensor(v) for k, v in metrics.items()}, logger=False, batch_size=len(batch.rollouts.prompts))
        every = self.log_completions_every_n_steps
        due = every and self.global_step % every == 0
        return {"metrics": metrics,
                "completions": completion_rows(batch, self.global_step, self.log_completions_count) if due else []}

    @property
    def _world_size(self) -> int:
        return 1 if self._trainer is None else self.trainer.world_size

    def _gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's 1-D ``values``, concatenated in rank order (ranks may hold different lengths: groups
        of different sizes)."""
        if self._world_size == 1:
            return values
        lengths = self.all_gather(torch.tensor([values.numel()], device=values.device)).reshape(-1).tolist()
        padded = torch.nn.functional.pad(values, (0, max(lengths) - values.numel()))
        return torch.cat([row[:n] for row, n in zip(self.all_gather(padded), lengths)])

    def _total(self, values: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(values, reduce_op="sum") if self._world_size > 1 else values

    # --- checkpoints: every rank's dynamic-sampling buffer and counters ride along ------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self._settle_all()  # a draw on its way is read and saved: a resumed run learns from the same samples
        state = {"dynamic": None if self.dynamic is None else self.dynamic.state(),
                 "prompts_seen": self.prompts_seen, "completions_seen": self.completions_seen,
                 "queue": [e.state() for e in self._queue], "stale_batches_dropped": self.stale_batches_dropped}
        checkpoint["online_rl"] = {"ranks": every_rank(state, self._world_size)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "online_rl" not in checkpoint:
            return
        state = this_rank(checkpoint["online_rl"], self._world_size, self.global_rank)
        self.prompts_seen, self.completions_seen = state["prompts_seen"], state["completions_seen"]
        if self.dynamic is not None and state["dynamic"] is not None:
            self.dynamic.load_state(state["dynamic"])
        self._queue = deque(_Draw.from_state(e) for e in state.get("queue", []))
        self.stale_batches_dropped = state.get("stale_batches_dropped", 0)


def _sizes_within(sizes: list[int], rows: slice) -> list[int]:
    """The sizes of the whole groups that make up ``rows`` (a run of whole groups, as Plan.TRAINING_FORWARD
    guarantees)."""
    out, at = [], 0
    for size in sizes:
        if rows.start <= at and at + size <= rows.stop:
            out.append(size)
        at += size
    return out


@dataclasses.dataclass
class _Draw:
    """A draw on its way or waiting to be learnt from: the optimiser steps done when it was drawn (its weights'
    version), its group sizes, and either its prompt batch and the engine's future, or, once read and scored
    (``OnlineRL._settle``), its rollouts and curriculum outcomes."""

    version: int
    sizes: list[int]
    batch: PromptBatch | None = None
    future: object = None
    rollouts: Rollouts | None = None
    outcomes: dict | None = None

    def state(self) -> dict:  # plain containers: checkpoints load with weights_only
        return {"version": self.version, "sizes": self.sizes, "rollouts": self.rollouts.state(), "outcomes": self.outcomes}

    @classmethod
    def from_state(cls, state: dict) -> _Draw:
        return cls(state["version"], state["sizes"], rollouts=Rollouts.from_state(state["rollouts"]),
                   outcomes=state["outcomes"])


def check_staleness(max_staleness: int, steps_per_batch: int, tis_cap: float | None, dynamic_sampling: bool,
                    rollout) -> int:
    """How many generation batches may be drawn ahead of the one that trains (0: synchronous), or a
    ValueError naming the setting that does not allow ``max_staleness``."""
    if max_staleness < 0:
        raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
    if max_staleness == 0:
        return 0
    if max_staleness < steps_per_batch:
        raise ValueError(f"max_staleness {max_staleness} is below the {steps_per_batch} optimiser steps one generation "
                         "batch takes (steps_per_generation x num_iterations): no batch could be drawn ahead")
    if not getattr(rollout, "samples_in_background", False):
        raise ValueError(f"max_staleness > 0 needs a rollout engine that samples in another process "
                         f"(lit_align.sampling.remote.VLLMServer); {type(rollout).__name__} samples here")
    if tis_cap is None:
        raise ValueError("max_staleness > 0 needs tis_cap: samples drawn with older weights are corrected by "
                         "truncated importance sampling against the engine's log-probs")
    if dynamic_sampling:
        raise ValueError("max_staleness > 0 cannot be combined with dynamic_sampling (groups set aside would age "
                         "past the bound)")
    return max_staleness // steps_per_batch
