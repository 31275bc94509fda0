"""A self-paced prompt curriculum for online RL: which problems a step tries, and how many samples each gets.

A group of k samples teaches a group-baseline objective (RLOO, every GRPO variant) only when its rewards
differ; a problem the policy always solves or always fails gives all-equal rewards and zero advantage.
``SelfPaced`` keeps a Beta posterior over each training problem's pass rate, fed by every group the method
scores, and draws the problems whose posterior says a group is likely to carry signal:

- **Evidence.** A sample is a success when its reward is at least ``success_threshold`` (1.0: a
  verifier's full marks; partial scores, such as a format-only 0.1 or a share of instructions met,
  count as failures). Problem i with s_i successes and f_i failures has the posterior
  Beta(a0 + s_i, b0 + f_i). The prior is the population's: its mean is the pooled success rate of every
  sample seen so far (plus one success and one failure), its weight ``prior_strength`` samples, so an
  unseen problem is expected to be as hard as the average one.
- **Signal.** A group of k carries signal unless all k succeed or all fail:
  P(signal | k) = 1 − E[p^k] − E[(1 − p)^k], with E[p^k] = Π_{j<k} (a + j) / (a + b + j) under Beta(a, b).
- **Drawing.** Each batch's exploit slots go to the problems with the highest P(signal | k) at a pass
  rate drawn from each posterior (Thompson sampling: uncertain problems get tried, ties broken at
  random); a share ``explore`` of the slots go, uniformly at random, to problems never seen or not seen
  in the last ``stale_after`` draws (the policy has moved since). The problems of the draw before are
  not drawn again: their outcomes are not in yet.
- **Samples per prompt** (``adaptive_k``): chosen before generating, so that the batch's sample budget
  (prompts × the method's k) maximises the expected number of groups with signal, Σ_i P(signal | k_i),
  with each k_i a multiple of ``k_unit`` in [``k_min``, ``k_max``] (greedy on the marginal gain, exact for
  gains that shrink as k grows, as these do). A problem near 50 % gets few samples, a rarely solved one
  many.

**Exact resume and prefetching.** Lightning fetches a batch one step ahead, so the outcomes of draw j
reach the sampler after draw j + 1 was made. Draw j therefore uses the outcomes of draws ≤ j − 2 and
nothing later, whatever the timing, and its random numbers come from ``(seed, j)``: a draw is a function
of its index and the outcomes before it, and the posterior (with the outcomes not applied yet) is saved
in the data module's checkpoint state. The online-RL method books each draw inside its step
(``OnlineRL._book_outcomes``), before any callback can checkpoint; under DDP every rank books every
rank's outcomes in rank order, so all draw the same global batch and each takes its own share.

``strategy: uniform`` draws each epoch's problems in a shuffled order with the same bookkeeping and
logging: the baseline the curriculum is measured against.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np


def signal_probability(a: np.ndarray, b: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """P(a group of k samples is neither all successes nor all failures) when the pass rate is Beta(a, b).

    >>> round(float(signal_probability(np.array([1.0]), np.array([1.0]), 2)[0]), 6)  # uniform: 1 - 1/3 - 1/3
    0.333333
    >>> round(float(signal_probability(np.array([2.0]), np.array([8.0]), 8)[0]), 4)
    0.7349
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    k = np.broadcast_to(np.asarray(k), np.broadcast_shapes(a.shape, np.shape(k)))
    all_pass, all_fail = np.ones(k.shape), np.ones(k.shape)
    for j in range(int(k.max()) if k.size else 0):
        on = j < k
        all_pass = np.where(on, all_pass * (a + j) / (a + b + j), all_pass)
        all_fail = np.where(on, all_fail * (b + j) / (a + b + j), all_fail)
    return 1.0 - all_pass - all_fail


def allocate_samples(a: np.ndarray, b: np.ndarray, budget: int, k_min: int, k_max: int, unit: int) -> list[int]:
    """Samples per problem, multiples of ``unit`` in [k_min, k_max] summing to ``budget``, that maximise
    the expected number of groups with signal (greedy: each ``unit`` goes where it adds the most).

    A problem near 50 % is almost sure to give a mixed group of 6; a rarely solved one takes the rest:

    >>> allocate_samples(np.array([50.0, 1.0]), np.array([50.0, 30.0]), budget=16, k_min=2, k_max=14, unit=2)
    [6, 10]
    """
    n = len(a)
    if budget < n * k_min or budget > n * k_max or (budget - n * k_min) % unit:
        raise ValueError(f"a budget of {budget} samples cannot be split over {n} prompts in multiples of {unit} "
                         f"between {k_min} and {k_max}")
    sizes = np.full(n, k_min)
    for _ in range((budget - n * k_min) // unit):
        room = sizes + unit <= k_max
        gain = np.where(room, signal_probability(a, b, sizes + unit) - signal_probability(a, b, sizes), -np.inf)
        sizes[int(np.argmax(gain))] += unit  # the first of equal gains: deterministic
    return sizes.tolist()


@dataclass
class Outcome:
    """One draw's results on one problem: which draw, which problem, its successes and failures."""

    draw: int
    problem: int
    successes: int
    failures: int


class SelfPaced:
    """Posterior pass rates of the training problems and the rule that draws from them (module docstring).

    Args:
        strategy: "self_paced" (the curriculum) or "uniform" (shuffled epochs, same bookkeeping: a baseline).
        explore: share of each batch's prompts drawn from unseen or stale problems.
        stale_after: a problem last seen this many draws ago counts as stale.
        prior_strength: weight of the population prior, in samples.
        success_threshold: a reward at least this counts as a success.
        adaptive_k: choose each prompt's samples before generating (else the method's k for every prompt).
        k_min / k_max / k_unit: the range and step of the adaptive sizes.
        seed: the draws' seed (None: the data module's).
    """

    def __init__(
        self,
        strategy: Literal["self_paced", "uniform"] = "self_paced",
        explore: float = 0.25,
        stale_after: int = 50,
        prior_strength: float = 2.0,
        success_threshold: float = 1.0,
        adaptive_k: bool = False,
        k_min: int = 2,
        k_max: int = 16,
        k_unit: int = 2,
        seed: int | None = None,
    ):
        if strategy not in ("self_paced", "uniform"):
            raise ValueError(f"curriculum strategy must be 'self_paced' or 'uniform', got {strategy!r}")
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"curriculum explore must be in [0, 1], got {explore}")
        if stale_after < 1 or prior_strength <= 0:
            raise ValueError(f"curriculum stale_after must be >= 1 and prior_strength > 0, got {stale_after}, {prior_strength}")
        if not (2 <= k_min <= k_max and k_unit >= 1 and k_min % k_unit == 0 and k_max % k_unit == 0):
            raise ValueError(f"curriculum sizes need 2 <= k_min <= k_max, both multiples of k_unit; got k_min={k_min}, "
                             f"k_max={k_max}, k_unit={k_unit}")
        if adaptive_k and strategy == "uniform":
            raise ValueError("curriculum adaptive_k needs strategy 'self_paced' (uniform sampling has no posterior to size by)")
        self.strategy, self.explore, self.stale_after = strategy, explore, stale_after
        self.prior_strength, self.success_threshold = prior_strength, success_threshold
        self.adaptive_k, self.k_min, self.k_max, self.k_unit, self.seed = adaptive_k, k_min, k_max, k_unit, seed
        self.successes = np.zeros(0, dtype=np.int64)
        self.failures = np.zeros(0, dtype=np.int64)
        self.last_seen = np.zeros(0, dtype=np.int64)  # the draw a problem's outcomes were last applied from; -1: never
        self.pending: list[Outcome] = []  # booked, not yet applied (draw index too recent)
        self.in_flight: dict[int, list[int]] = {}  # the last draw's problems, by draw index
        self.totals = {"groups": 0, "signal_groups": 0, "samples": 0}  # every booked group, for the logs

    # --- the posterior ------------------------------------------------------------------------------
    def reset(self, problems: int) -> None:
        """Start over on ``problems`` training problems (their count must match a loaded state)."""
        if len(self.successes) == problems:
            return
        if len(self.successes) and self.successes.sum() + self.failures.sum():
            raise ValueError(f"the curriculum state holds {len(self.successes)} problems but the training split has "
                             f"{problems}: resume with the same data settings")
        self.successes = np.zeros(problems, dtype=np.int64)
        self.failures = np.zeros(problems, dtype=np.int64)
        self.last_seen = np.full(problems, -1, dtype=np.int64)

    def prior(self) -> tuple[float, float]:
        """(a0, b0): the population's pooled success rate (one success and one failure added), at ``prior_strength``."""
        mean = (self.successes.sum() + 1.0) / (self.successes.sum() + self.failures.sum() + 2.0)
        return mean * self.prior_strength, (1.0 - mean) * self.prior_strength

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        a0, b0 = self.prior()
        return a0 + self.successes, b0 + self.failures

    def book(self, draw: int, problems: list[int], group_sizes: list[int], rewards: list[float]) -> dict[str, float]:
        """Record one draw's groups (rewards in group order); returns its groups and how many carried signal."""
        if sum(group_sizes) != len(rewards) or len(problems) != len(group_sizes):
            raise ValueError(f"curriculum outcomes of draw {draw}: {len(problems)} problems, group sizes summing to "
                             f"{sum(group_sizes)}, {len(rewards)} rewards")
        start, signal = 0, 0
        for problem, size in zip(problems, group_sizes):
            group = rewards[start : start + size]
            start += size
            wins = sum(r >= self.success_threshold for r in group)
            self.pending.append(Outcome(draw, int(problem), int(wins), int(size - wins)))
            signal += max(group) != min(group)
        self.totals["groups"] += len(problems)
        self.totals["signal_groups"] += signal
        self.totals["samples"] += len(rewards)
        return {"groups": len(problems), "signal_groups": signal}

    def _apply_until(self, draw: int) -> None:
        """Apply the booked outcomes of draws <= ``draw``, in booking order."""
        keep = []
        for o in self.pending:
            if o.draw <= draw:
                self.successes[o.problem] += o.successes
                self.failures[o.problem] += o.failures
                self.last_seen[o.problem] = max(self.last_seen[o.problem], o.draw)
            else:
                keep.append(o)
        self.pending = keep

    # --- drawing ------------------------------------------------------------------------------------
    def draw(self, index: int, prompts: int, k: int, epoch_order: list[int] | None = None) -> tuple[list[int], list[int]]:
        """Draw ``index``: ``prompts`` distinct problems and the samples each gets (a budget of prompts x k)."""
        n = len(self.successes)
        if prompts > n:
            raise ValueError(f"the curriculum cannot draw {prompts} distinct problems from {n}")
        self._apply_until(index - 2)
        if self.strategy == "uniform":
            return list(epoch_order[:prompts]), [k] * prompts
        rng = np.random.default_rng([self.seed or 0, index])
        a, b = self.posterior()
        waiting = np.zeros(n, dtype=bool)
        waiting[self.in_flight.get(index - 1, [])] = True
        if prompts > n - waiting.sum():
            waiting[:] = False  # too few problems to leave the last draw's out
        explore = int(round(self.explore * prompts))
        stale = np.flatnonzero(((self.last_seen < 0) | (self.last_seen <= index - 2 - self.stale_after)) & ~waiting)
        explored = rng.choice(stale, size=min(explore, len(stale)), replace=False).tolist() if explore else []
        sampled = rng.beta(a, b)
        score = 1.0 - sampled**k - (1.0 - sampled) ** k
        score[explored] = -np.inf
        score[waiting] = -np.inf
        order = np.lexsort((rng.random(n), -score))  # highest score first, ties in random order
        chosen = explored + order[: prompts - len(explored)].tolist()
        self.in_flight = {i: p for i, p in self.in_flight.items() if i == index - 1} | {index: chosen}
        if not self.adaptive_k:
            return chosen, [k] * prompts
        ids = np.array(chosen)
        return chosen, allocate_samples(a[ids], b[ids], prompts * k, self.k_min, self.k_max, self.k_unit)

    # --- state and logs -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"successes": self.successes.tolist(), "failures": self.failures.tolist(),
                "last_seen": self.last_seen.tolist(), "totals": dict(self.totals),
                "in_flight": [[i, p] for i, p in self.in_flight.items()],
                "pending": [[o.draw, o.problem, o.successes, o.failures] for o in self.pending]}

    def load_state_dict(self, state: dict) -> None:
        self.successes = np.array(state["successes"], dtype=np.int64)
        self.failures = np.array(state["failures"], dtype=np.int64)
        self.last_seen = np.array(state["last_seen"], dtype=np.int64)
        self.totals = dict(state["totals"])
        self.pending = [Outcome(*o) for o in state["pending"]]
        self.in_flight = {int(i): list(p) for i, p in state["in_flight"]}

    def metrics(self) -> dict[str, float]:
        """What the curriculum knows, for the loggers: coverage, samples per group with signal, and the
        histogram of posterior mean pass rates over the problems seen (five bins), all bookings included."""
        successes, failures = self.successes.copy(), self.failures.copy()
        for o in self.pending:
            successes[o.problem] += o.successes
            failures[o.problem] += o.failures
        seen = (successes + failures) > 0
        out = {"curriculum/problems_seen": float(seen.sum()),
               "curriculum/signal_share_total": self.totals["signal_groups"] / max(self.totals["groups"], 1),
               "curriculum/samples_per_signal_group_total": (self.totals["samples"] / self.totals["signal_groups"]
                                                       if self.totals["signal_groups"] else math.inf)}
        a0, b0 = self.prior()
        means = (a0 + successes[seen]) / (a0 + b0 + successes[seen] + failures[seen])
        edges = [0.0, 0.1, 0.3, 0.7, 0.9, 1.0]
        counts, _ = np.histogram(means, bins=edges)
        out |= {f"curriculum/pass_rate_{lo:g}-{hi:g}": float(c) for lo, hi, c in zip(edges, edges[1:], counts)}
        return out


class CurriculumBatchSampler:
    """Yield one rank's prompts of each draw as ``[(problem, draw, size), ...]`` (``SelfPaced.draw``).

    An epoch is ``ceil(problems / global batch)`` draws; draw numbers run on across epochs, so the stream
    is one sequence of draws whatever the epoch boundaries.
    """

    def __init__(self, curriculum: SelfPaced, problems: int, batch_size: int, k: int, world_size: int = 1,
                 rank: int = 0, seed: int = 0):
        self.curriculum, self.problems, self.batch_size, self.k = curriculum, problems, batch_size, k
        self.world_size, self.rank, self.seed = world_size, rank, seed
        if curriculum.seed is None:
            curriculum.seed = seed
        curriculum.reset(problems)
        self.epoch = 0
        self._resume: tuple[int, int] | None = None
        self.sampler = self  # Lightning calls set_epoch on batch_sampler.sampler

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, consumed: int) -> None:
        self._resume = (epoch, consumed)

    def __len__(self) -> int:
        return -(-self.problems // (self.batch_size * self.world_size))

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip, self._resume = self._resume[1], None
        step = self.batch_size * self.world_size
        order = list(range(self.problems))
        random.Random(self.seed + self.epoch).shuffle(order)
        order += order[: step]  # the last uniform draw of an epoch stays full
        for i in range(skip, len(self)):
            draw = self.epoch * len(self) + i
            chosen, sizes = self.curriculum.draw(draw, step, self.k, order[i * step : (i + 1) * step])
            yield [(p, draw, s) for p, s in zip(chosen[self.rank :: self.world_size], sizes[self.rank :: self.world_size])]
