"""What online RL learns from: drawn rollouts, DAPO's dynamic-sampling buffer, and the one typed batch.

``Rollouts`` are a draw's samples (a group per prompt, groups adjacent, each its own size), rewards,
prompts and group sizes.
``DynamicSampling`` keeps the groups with signal across draws until a full batch is collected (its state
rides in checkpoints). ``RolloutBatch`` is what ``OnlineRL.prepare`` makes of a generation batch: token
ids and masks (the samples), rewards, group ids, the loss mask, and the sampling / old / reference
log-probs, advantages and importance weights that exist before learning, with the ``Plan`` that says
how the sampling weights' log-probs are obtained and why. The learning step reads the plan; it never
decides it again. ``check_sampling`` and ``check_loop`` refuse the loop's settings out of range.
"""

from __future__ import annotations

import dataclasses
import enum

import torch

from lit_align.objectives import policy_gradient as pg
from lit_align.objectives.rl import PolicyGradientBatch
from lit_align.sampling.generate import Samples, SamplingParams, concat_samples


@dataclasses.dataclass
class Rollouts:
    """A generation batch: its samples (groups adjacent, in prompt order), rewards, prompts and group sizes."""

    samples: Samples
    rewards: torch.Tensor  # (N,)
    prompts: list  # one per group
    sizes: list[int] | None = None  # samples of each group (None: N / G each); filled in when built
    drawn: int = 1  # prompt batches drawn for it
    dropped: int = 0  # groups set aside by dynamic sampling and not used
    drawn_rewards: torch.Tensor | None = None  # every reward drawn for it (dynamic sampling; None: ``rewards``)

    def __post_init__(self):
        groups, rows = len(self.prompts), len(self.rewards)
        if self.sizes is None:
            self.sizes = [rows // groups] * groups if groups else []
        self.sizes = [int(s) for s in self.sizes]
        if len(self.sizes) != groups or sum(self.sizes) != rows:
            raise ValueError(f"group sizes {self.sizes} do not match {groups} prompts and {rows} rewards")

    def groups(self, keep: torch.Tensor) -> Rollouts:
        """The groups where ``keep`` (G,) is true."""
        kept = keep.tolist()
        rows = keep.repeat_interleave(torch.tensor(self.sizes, dtype=torch.long, device=keep.device)).nonzero().flatten()
        return Rollouts(self.samples.select(rows), self.rewards[rows], [p for p, k in zip(self.prompts, kept) if k],
                        [s for s, k in zip(self.sizes, kept) if k], self.drawn, self.dropped)

    @property
    def all_drawn_rewards(self) -> torch.Tensor:
        return self.rewards if self.drawn_rewards is None else self.drawn_rewards

    def state(self) -> dict:
        """Plain containers only (tensors, lists, numbers, strings): checkpoints load with weights_only."""
        samples = {f.name: getattr(self.samples, f.name) for f in dataclasses.fields(Samples)}
        return {"samples": samples, "rewards": self.rewards, "prompts": self.prompts, "sizes": self.sizes}

    @classmethod
    def from_state(cls, state: dict) -> Rollouts:  # a state saved before sizes were kept: equal groups
        return cls(Samples(**state["samples"]), state["rewards"], state["prompts"], state.get("sizes"))


def concat_rollouts(parts: list[Rollouts], pad_id: int) -> Rollouts:
    return Rollouts(concat_samples([p.samples for p in parts], pad_id), torch.cat([p.rewards for p in parts]),
                    [q for p in parts for q in p.prompts], [s for p in parts for s in p.sizes])


class DynamicSampling:
    """DAPO's dynamic sampling: groups whose rewards are all equal are set aside and more prompts are
    drawn, until ``groups`` groups with signal are collected or ``max_draws`` batches were drawn (then the
    set-aside groups fill the batch up, so every rank's step has as many groups). Groups keep their sizes."""

    def __init__(self, max_draws: int):
        self.max_draws = max_draws
        self.pending: list[Rollouts] = []  # groups with signal, waiting for a full batch
        self.set_aside: list[Rollouts] = []  # zero-signal groups, to fill up at the draw cap
        self.rewards: list[torch.Tensor] = []  # every draw's rewards, for the policy's reward over all draws
        self.draws = 0

    def add(self, drawn: Rollouts) -> int:
        """Keep a draw; returns how many groups with signal this rank holds now."""
        uniform = pg.uniform_groups(drawn.rewards, drawn.sizes)
        self.pending.append(drawn.groups(~uniform))
        self.set_aside.append(drawn.groups(uniform))
        self.rewards.append(drawn.rewards)
        self.draws += 1
        return sum(len(p.prompts) for p in self.pending)

    def take(self, groups: int, pad_id: int) -> Rollouts:
        """The batch of ``groups`` groups, signal first; the buffer starts over."""
        parts = [p for p in self.pending + self.set_aside if p.prompts]
        out = concat_rollouts(parts, pad_id)
        out = out.groups(torch.arange(len(out.prompts)) < groups)
        out.drawn, out.dropped = self.draws, self.draws * groups - groups  # every drawn group beyond the G used
        out.drawn_rewards = torch.cat(self.rewards)
        self.pending, self.set_aside, self.rewards, self.draws = [], [], [], 0
        return out

    def state(self) -> dict:
        return {"pending": [p.state() for p in self.pending], "set_aside": [p.state() for p in self.set_aside],
                "rewards": self.rewards, "draws": self.draws}

    def load_state(self, state: dict) -> None:
        self.pending = [Rollouts.from_state(p) for p in state["pending"]]
        self.set_aside = [Rollouts.from_state(p) for p in state["set_aside"]]
        self.rewards, self.draws = list(state.get("rewards", [])), state["draws"]


def every_rank(state: dict, world: int) -> list[dict]:
    """This rank's checkpoint ``state`` beside every other rank's (a collective: every rank calls it)."""
    if world > 1 and torch.distributed.is_initialized():
        ranks = [None] * world
        torch.distributed.all_gather_object(ranks, state)
        return ranks
    return [state]


def this_rank(saved: dict, world: int, rank: int) -> dict:
    """This rank's state of a checkpoint's ``{"ranks": every_rank(...)}``; refused where waiting groups would
    be lost. A checkpoint of the earlier layout (one flat state, rank 0's) reads as one rank's."""
    ranks = saved.get("ranks")
    if ranks is None:
        ranks = [{"dynamic": {key: saved[key] for key in ("pending", "set_aside", "draws")},
                  "prompts_seen": saved["prompts_seen"], "completions_seen": saved["completions_seen"]}]
    if len(ranks) != world and any(r["dynamic"] and r["dynamic"]["draws"] for r in ranks):
        raise ValueError(f"this checkpoint holds dynamic-sampling groups of {len(ranks)} ranks, and the run "
                         f"resumes on {world}: resume on {len(ranks)} ranks")
    return ranks[min(rank, len(ranks) - 1)]


class Plan(enum.Enum):
    """How the sampling weights' log-probs (and with them any KL-shaped advantages) are obtained."""

    NOT_NEEDED = "not needed"  # on policy, no KL in the reward: advantages come from the rewards alone
    TRAINING_FORWARD = "from each micro-batch's training forward"  # on policy, micro-batches of whole groups
    SEPARATE_PASS = "a separate no-grad pass over the batch"


def plan_sampling_pass(on_policy_once: bool, shapes_rewards: bool, needs_the_batch: bool,
                       micro_batches: list[range], sizes: pg.Sizes) -> tuple[Plan, str]:
    """The plan for a batch learnt in these ``micro_batches`` (row ranges) of groups of ``sizes``
    (``pg.Sizes``), and why, as the learning step will follow it."""
    if not on_policy_once:
        return Plan.SEPARATE_PASS, ("the batch is learnt over several steps or passes, or TIS corrects the engine: "
                                    "the ratio needs the sampling weights' log-probs fixed before any update")
    if not shapes_rewards:
        return Plan.NOT_NEEDED, "one step on the sampling weights and no KL in the reward"
    whole = len(micro_batches) <= 1
    rows = micro_batches[-1].stop if micro_batches else 0
    bounds = set(group_starts(sizes, rows)) | {rows}
    whole_groups = all(r.start in bounds and r.stop in bounds for r in micro_batches)
    if whole or (whole_groups and not needs_the_batch):
        return Plan.TRAINING_FORWARD, ("one step on the sampling weights and micro-batches of whole groups whose "
                                       "advantages need only their group: each forward shapes its own rewards")
    return Plan.SEPARATE_PASS, ("the KL in the reward needs a whole group's (or the batch's) log-probs before "
                                "any micro-batch's loss, and the micro-batches split them")


@dataclasses.dataclass
class RolloutBatch:
    """One generation batch, ready to learn from. (N, C) tensors are per completion position."""

    rollouts: Rollouts  # samples (token ids, masks, engine log-probs), rewards (N,), prompts
    loss_mask: torch.Tensor  # (N, C) completion tokens of the rows that carry loss
    plan: Plan
    reason: str  # why the plan was chosen (logged once)
    advantages: torch.Tensor  # (N,); under Plan.TRAINING_FORWARD filled micro-batch by micro-batch
    old_logps: torch.Tensor | None = None  # (N, C) the trainer's log-probs under the sampling weights
    ref_logps: torch.Tensor | None = None  # (N, C) the reference's
    is_weights: torch.Tensor | None = None  # (N, C) TIS weights min(pi_old / pi_engine, cap)

    @property
    def samples(self) -> Samples:
        return self.rollouts.samples

    @property
    def sizes(self) -> list[int]:
        """Samples of each group; group g holds the sizes[g] rows after group g-1's."""
        return self.rollouts.sizes

    @property
    def group_ids(self) -> torch.Tensor:
        """(N,) the group of each row."""
        sizes = torch.tensor(self.sizes, dtype=torch.long, device=self.loss_mask.device)
        return torch.arange(len(sizes), device=sizes.device).repeat_interleave(sizes)

    def view(self, rows: slice, logps: torch.Tensor, entropy: torch.Tensor | None, on_policy: bool,
             totals: tuple[float, float], max_new_tokens: int) -> PolicyGradientBatch:
        """The objective's named inputs for the micro-batch ``rows``; ``on_policy``: no ratio to take."""

        def pick(t):
            return None if t is None else t[rows]

        return PolicyGradientBatch(logps=logps, mask=self.loss_mask[rows], advantages=self.advantages[rows],
                                   step_sequences=totals[0], step_tokens=totals[1], max_new_tokens=max_new_tokens,
                                   old_logps=None if on_policy else pick(self.old_logps),
                                   ref_logps=pick(self.ref_logps), is_weights=pick(self.is_weights), entropy=entropy)


def check_sampling(generation: SamplingParams) -> None:
    """Refuse sampling settings whose samples the trainer's log-probs would not describe."""
    if generation.temperature <= 0:
        raise ValueError(
            f"online RL samples at generation.temperature {generation.temperature}: greedy decoding gives k identical "
            "completions, hence zero advantages and no learning; set a temperature > 0 (the study: 0.7)")
    if generation.top_p != 1:
        raise ValueError(
            f"generation.top_p {generation.top_p} is refused for online RL: the trainer takes log-probs over the full "
            "softmax at the sampling temperature, so samples from a top-p-truncated distribution would bias the "
            "gradient; use top_p: 1.0 (lower the temperature to sharpen sampling instead)")


def check_group_sizes(sizes: list[int], prompts: int) -> None:
    """Refuse per-prompt group sizes (a curriculum's ``PromptBatch.group_sizes``) that cannot form groups."""
    if len(sizes) != prompts:
        raise ValueError(f"group_sizes gives {len(sizes)} sizes for {prompts} prompts: one size per prompt")
    small = [(i, s) for i, s in enumerate(sizes) if isinstance(s, bool) or not (int(s) == s and s >= 2)]
    if small:
        raise ValueError(f"group_sizes must be whole numbers of at least 2 samples per prompt (a smaller group has "
                         f"no baseline to learn against); got (prompt, size) {small[:5]}")


def group_starts(sizes: pg.Sizes, rows: int) -> list[int]:
    """The first row of each group.

    >>> group_starts([2, 3, 1], 6), group_starts(2, 6)
    ([0, 2, 5], [0, 2, 4])
    """
    starts, at = [], 0
    for size in pg.size_list(sizes, rows):
        starts.append(at)
        at += size
    return starts


def check_loop(*, k: int, micro_batch_size: int | None, max_tokens_per_micro_batch: int | None,
               activation_memory_budget_gib: float | None, steps_per_generation: int, num_iterations: int,
               max_draws: int, tis_cap: float | None, max_grad_norm: float | None, overlong_buffer: int | None,
               max_new_tokens: int) -> None:
    """Refuse loop settings out of range, naming the setting."""
    if k < 2:
        raise ValueError(f"k (samples per prompt) must be at least 2, got {k}")
    for name, value in (("micro_batch_size", 1 if micro_batch_size is None else micro_batch_size),
                        ("steps_per_generation", steps_per_generation), ("num_iterations", num_iterations),
                        ("max_draws", max_draws),
                        ("max_tokens_per_micro_batch",
                         1 if max_tokens_per_micro_batch is None else max_tokens_per_micro_batch)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    for name, value in (("tis_cap", tis_cap), ("max_grad_norm", max_grad_norm),
                        ("activation_memory_budget_gib", activation_memory_budget_gib)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0 (or null: off), got {value}")
    if overlong_buffer is not None:
        pg.overlong_penalty(torch.zeros(1), max_new_tokens, overlong_buffer)  # refuses a buffer out of range
