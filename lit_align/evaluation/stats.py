"""Intervals and paired tests for evaluation figures measured over a set of problems.

Every figure the evaluations report is an average over held-out problems (prompts), so its
uncertainty comes from which problems happened to be drawn. This module gives:

- :func:`wilson_interval`: a 95 % (or other) interval for a proportion ``successes / n`` where each
  problem contributes a 0/1 outcome: exact accuracy, prompt-level adherence, best-of-N and
  majority@N accuracy, a win rate without ties;
- :func:`bootstrap_interval`: a percentile bootstrap interval for the mean of per-problem values that
  are not 0/1 (mean verifier score, pass@k estimated from more samples than k, a win rate whose ties
  count 1/2, instruction-level adherence through ``weights``);
- :func:`paired_bootstrap`: the difference between two stages scored on the *same* problems, its
  interval and a two-sided p-value, resampling problems jointly so that per-problem difficulty
  cancels out;
- :func:`mcnemar_exact`: the exact McNemar test for two stages' 0/1 outcomes on the same problems;
- :class:`Estimate` and :class:`Comparison`, what the evaluations print and write, built by
  :func:`proportion_estimate`, :func:`mean_estimate` and :func:`compare`;
- the one convention for a figure with its interval in a results row (``best_of_n.csv``,
  ``metrics.json``): columns ``key``, ``key_low`` and ``key_high``, written by :meth:`Estimate.bounds`
  and shown as ``value [low, high]`` by :func:`with_interval`.

Only the standard library and NumPy are used (no SciPy). The bootstrap is deterministic given its
``seed``: the same inputs, seed and number of resamples give the same interval on the same NumPy.

>>> print(proportion_estimate(3, 32))
0.094 [0.032, 0.242] (n=32, Wilson)
>>> print(compare([0, 0, 1, 0, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0, 1, 0]))
before → after: +0.600 [0.300, 0.900], McNemar exact p=0.031 (6 gained, 0 lost)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
# resampled indices held in memory at once (rows x problems), so large sets do not need gigabytes
_CHUNK_CELLS = 2_000_000


def _z(confidence: float) -> float:
    """Two-sided standard normal quantile: 1.959964 for 0.95."""
    _check_confidence(confidence)
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")


def _as_vector(values, name: str) -> np.ndarray:
    """A 1-D, non-empty, finite float64 array from a list, NumPy array or torch tensor."""
    if hasattr(values, "detach"):  # a torch tensor, possibly on a GPU
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of per-problem values, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def _as_outcomes(values, name: str) -> np.ndarray:
    """A 1-D boolean array from 0/1 (or True/False) per-problem outcomes."""
    array = _as_vector(values, name)
    if not np.isin(array, (0.0, 1.0)).all():
        raise ValueError(f"{name} must hold 0/1 outcomes (correct or not per problem)")
    return array.astype(bool)


def _is_binary(array: np.ndarray) -> bool:
    return bool(np.isin(array, (0.0, 1.0)).all())


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n``.

    With ``z`` the two-sided normal quantile (1.959964 for 95 %) and ``x = successes``::

        centre     = (x + z²/2) / (n + z²)
        half-width = z · sqrt(x·(n − x)/n + z²/4) / (n + z²)

    Unlike the textbook ``p ± z·sqrt(p(1−p)/n)`` it never leaves [0, 1] and does not collapse to a
    single point at 0/n or n/n, which is where small held-out sets often sit. It assumes independent
    0/1 outcomes, one per problem: for per-problem values between 0 and 1 use
    :func:`bootstrap_interval`. A non-integer ``successes`` (a win rate whose ties count 1/2) is
    accepted as an approximation; the bootstrap over the per-problem 0, 1/2, 1 values is the exact
    treatment.

    >>> [round(v, 4) for v in wilson_interval(81, 263)]
    [0.2553, 0.3662]
    >>> wilson_interval(0, 20)[0], round(wilson_interval(0, 20)[1], 4)
    (0.0, 0.1611)
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n] = [0, {n}], got {successes}")
    z = _z(confidence)
    z2 = z * z
    centre = successes + z2 / 2
    half = z * math.sqrt(successes * (n - successes) / n + z2 / 4)
    # at 0/n (or n/n) the lower (upper) end is 0 (1) exactly; clamping removes rounding like 1.0000000000000002
    low = 0.0 if successes == 0 else max(0.0, (centre - half) / (n + z2))
    high = 1.0 if successes == n else min(1.0, (centre + half) / (n + z2))
    return low, high


def _bootstrap_means(values: np.ndarray, weights: np.ndarray | None, resamples: int, seed: int) -> np.ndarray:
    """Means (weighted when ``weights`` is given) of ``resamples`` resamples of the problems, with replacement."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    rng = np.random.default_rng(seed)
    n = values.size
    rows = max(1, _CHUNK_CELLS // n)
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        if weights is None:
            means[start:stop] = values[idx].mean(axis=1)
        else:
            w = weights[idx]
            means[start:stop] = (w * values[idx]).sum(axis=1) / w.sum(axis=1)
    return means


def _percentile_interval(means: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _weights(weights, n: int) -> np.ndarray | None:
    if weights is None:
        return None
    w = _as_vector(weights, "weights")
    if w.size != n:
        raise ValueError(f"weights has {w.size} entries for {n} values")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    return w


def _mean(values: np.ndarray, weights: np.ndarray | None) -> float:
    return float(values.mean() if weights is None else (weights * values).sum() / weights.sum())


def bootstrap_interval(
    values, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, weights=None,
) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of per-problem ``values``.

    The problems are resampled with replacement ``resamples`` times; the interval runs from the
    ``(1 − confidence)/2`` to the ``(1 + confidence)/2`` quantile of the resampled means (NumPy's
    default linear interpolation). Deterministic given ``seed``. With ``weights`` the statistic is the
    weighted mean ``Σ w·v / Σ w`` (weights travel with their problem), e.g. instruction-level adherence
    as per-prompt shares weighted by each prompt's number of constraints.

    The percentile bootstrap is slightly too narrow on small sets (its spread is that of the
    plug-in standard error, smaller by sqrt((n−1)/n)); it is meant for n in the tens and more.
    If all values are equal the interval has zero width: the bootstrap cannot see variation that the
    sample does not show, which is why 0/1 outcomes should use :func:`wilson_interval` instead.

    >>> bootstrap_interval([0.5] * 8)
    (0.5, 0.5)
    """
    _check_confidence(confidence)
    array = _as_vector(values, "values")
    return _percentile_interval(_bootstrap_means(array, _weights(weights, array.size), resamples, seed), confidence)


class PairedResult(NamedTuple):
    """``mean(b) − mean(a)``, its interval and a two-sided p-value for "no difference"."""

    mean_diff: float
    low: float
    high: float
    p_value: float


def paired_bootstrap(
    a, b, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, weights=None,
) -> PairedResult:
    """Paired bootstrap for two stages scored on the same problems: ``b`` minus ``a``.

    ``a[i]`` and ``b[i]`` are the two stages' values on problem ``i`` (for "before → after", ``a`` is
    before and ``b`` after, so a gain is positive). Problems are resampled jointly, i.e. the per-problem
    differences ``d = b − a`` are bootstrapped, which removes the between-problem spread that makes two
    separate intervals overlap.

    Returns ``(mean_diff, low, high, p_value)``:

    - ``mean_diff = mean(b) − mean(a)`` (weighted means with ``weights``);
    - ``low, high``: the percentile interval of the resampled mean differences, as in
      :func:`bootstrap_interval`;
    - ``p_value``: two-sided, ``min(1, 2·min(P(d* ≤ 0), P(d* ≥ 0)))`` where ``d*`` is a resampled mean
      difference and each probability is estimated with the usual add-one correction
      ``(1 + count) / (1 + resamples)``. It is the smallest ``1 − confidence`` at which the percentile
      interval excludes 0, so "interval excludes 0" and "p < 0.05" agree (up to the interpolation of
      quantiles). With the add-one correction the smallest reachable p is ``2 / (1 + resamples)``
      (about 0.0002 for 10 000 resamples), never 0; identical inputs give p = 1.
    """
    _check_confidence(confidence)
    a_arr, b_arr = _as_vector(a, "a"), _as_vector(b, "b")
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a and b must score the same problems: {a_arr.size} vs {b_arr.size} values")
    w = _weights(weights, a_arr.size)
    diffs = b_arr - a_arr
    means = _bootstrap_means(diffs, w, resamples, seed)
    low, high = _percentile_interval(means, confidence)
    at_most = (1 + int((means <= 0).sum())) / (1 + resamples)
    at_least = (1 + int((means >= 0).sum())) / (1 + resamples)
    p_value = min(1.0, 2 * min(at_most, at_least))
    return PairedResult(_mean(b_arr, w) - _mean(a_arr, w), low, high, p_value)


class McNemarResult(NamedTuple):
    """Exact McNemar test: p-value and the discordant counts."""

    p_value: float
    only_a: int  # problems that a gets right and b gets wrong
    only_b: int  # problems that b gets right and a gets wrong


def mcnemar_exact(a_correct, b_correct) -> McNemarResult:
    """Exact (binomial) McNemar test for two stages' 0/1 outcomes on the same problems.

    Only discordant problems carry information: ``only_a`` = right under ``a`` and wrong under ``b``,
    ``only_b`` the reverse. Under "no difference" each discordant problem is equally likely to fall
    either way, so ``only_b ~ Binomial(m, 1/2)`` with ``m = only_a + only_b``. The two-sided p-value
    doubles the smaller tail::

        p = min(1, 2 · Σ_{k=0..min(only_a, only_b)} C(m, k) / 2^m)

    and is 1 when there are no discordant problems. Summed in exact fractions.

    >>> mcnemar_exact([1, 0, 0, 0, 0, 0, 0, 0, 1], [0, 1, 1, 1, 1, 1, 1, 1, 1])
    McNemarResult(p_value=0.0703125, only_a=1, only_b=7)
    """
    a_arr, b_arr = _as_outcomes(a_correct, "a_correct"), _as_outcomes(b_correct, "b_correct")
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a_correct and b_correct must score the same problems: {a_arr.size} vs {b_arr.size}")
    only_a, only_b = int((a_arr & ~b_arr).sum()), int((~a_arr & b_arr).sum())
    m = only_a + only_b
    if m == 0:
        return McNemarResult(1.0, only_a, only_b)
    tail = Fraction(sum(math.comb(m, k) for k in range(min(only_a, only_b) + 1)), 2**m)
    return McNemarResult(float(min(Fraction(1), 2 * tail)), only_a, only_b)


@dataclass(frozen=True)
class Estimate:
    """A figure with its interval: ``value`` in ``[low, high]`` from ``n`` problems by ``method``.

    >>> print(Estimate(0.184, 0.151, 0.219, 64, "bootstrap"))
    0.184 [0.151, 0.219] (n=64, bootstrap)
    """

    value: float
    low: float
    high: float
    n: int
    method: str

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n}, {self.method})"

    def clears(self, other: Estimate) -> bool:
        """Whether this interval lies wholly above ``other``'s (``self.low > other.high``)."""
        return self.low > other.high

    def to_dict(self) -> dict:
        return asdict(self)

    def bounds(self, key: str) -> dict[str, float]:
        """The interval as the columns ``key_low`` and ``key_high`` of a results row (read by :func:`with_interval`).

        >>> Estimate(0.5, 0.25, 0.75, 8, "Wilson").bounds("accuracy")
        {'accuracy_low': 0.25, 'accuracy_high': 0.75}
        """
        return {f"{key}_low": self.low, f"{key}_high": self.high}


def with_interval(row: dict, key: str) -> str:
    """The figure ``key`` of a results row as ``value [low, high]`` (from its ``key_low``/``key_high``
    columns, numbers or the strings a CSV holds); the value alone where the row has no interval, ``–``
    where it has no such figure.

    >>> with_interval({"win_rate": 0.6, "win_rate_low": "0.35", "win_rate_high": 0.81}, "win_rate")
    '0.600 [0.350, 0.810]'
    >>> with_interval({"mean_tokens": 12.0}, "mean_tokens"), with_interval({}, "win_rate")
    ('12.000', '–')
    """
    value, low, high = row.get(key), row.get(f"{key}_low"), row.get(f"{key}_high")
    if value is None:
        return "–"
    if low is None or high is None:
        return f"{value:.3f}" if isinstance(value, float) else str(value)
    return f"{float(value):.3f} [{float(low):.3f}, {float(high):.3f}]"


def proportion_estimate(successes: float, n: int, confidence: float = 0.95) -> Estimate:
    """``successes / n`` with its Wilson interval (0/1 outcomes per problem)."""
    low, high = wilson_interval(successes, n, confidence)
    return Estimate(successes / n, low, high, n, "Wilson")


def mean_estimate(
    values, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, weights=None,
) -> Estimate:
    """Mean of per-problem ``values`` with its percentile bootstrap interval."""
    array = _as_vector(values, "values")
    w = _weights(weights, array.size)
    low, high = bootstrap_interval(array, confidence, resamples, seed, w)
    return Estimate(_mean(array, w), low, high, int(array.size), "bootstrap")


def t_quantile(df: int, confidence: float = 0.95) -> float:
    """Two-sided Student-t critical value (Hill's expansion around the normal quantile; within 1e-3 of the
    tables from 5 degrees of freedom on, 0.004 at 3).

    >>> round(t_quantile(4), 3), round(t_quantile(10), 3), round(t_quantile(30), 3)
    (2.776, 2.228, 2.042)
    """
    if df < 3:
        raise ValueError(f"a t interval needs at least 3 degrees of freedom here, got {df}")
    z = _z(confidence)
    terms = [z, (z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96, (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
             (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160]
    return sum(term / df**i for i, term in enumerate(terms))


def slope_estimate(values, confidence: float = 0.95) -> Estimate:
    """Least-squares slope of ``values`` against their index (e.g. a training reward per optimiser step)
    with its t interval (n - 2 degrees of freedom).

    >>> e = slope_estimate([0.0, 1.0, 1.0, 3.0, 5.0]); round(e.value, 3), round(e.low, 3), round(e.high, 3)
    (1.2, 0.466, 1.934)
    """
    y = _as_vector(values, "values")
    n = y.size
    if n < 5:
        raise ValueError(f"a slope interval needs at least 5 points, got {n}")
    x = np.arange(n, dtype=float) - (n - 1) / 2
    slope = float((x * (y - y.mean())).sum() / (x**2).sum())
    residuals = y - y.mean() - slope * x
    stderr = float(np.sqrt((residuals**2).sum() / (n - 2) / (x**2).sum()))
    half = t_quantile(n - 2, confidence) * stderr
    return Estimate(slope, slope - half, slope + half, n, "t")


def holm(p_values) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the family-wise error rate stays below
    alpha when each claim is judged by its adjusted p < alpha.

    The smallest of m p-values is multiplied by m, the next by m - 1, and so on; each adjusted value is
    at least the one before it in that order, and at most 1.

    >>> [round(p, 4) for p in holm([0.01, 0.04, 0.03, 0.005])]
    [0.03, 0.06, 0.06, 0.02]
    """
    p = [float(x) for x in p_values]
    m = len(p)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p[i])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def _format_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


@dataclass(frozen=True)
class Comparison:
    """Two stages on the same problems: ``diff = after − before``, its interval, and a paired test.

    >>> print(Comparison(0.12, 0.08, 0.16, 0.001, 64, "paired bootstrap"))
    before → after: +0.120 [0.080, 0.160], paired bootstrap p=0.001
    """

    diff: float
    low: float
    high: float
    p_value: float
    n: int
    test: str
    label: str = "before → after"
    gained: int | None = None  # McNemar only: problems right after and wrong before
    lost: int | None = None  # McNemar only: problems right before and wrong after

    def __str__(self) -> str:
        line = f"{self.label}: {self.diff:+.3f} [{self.low:.3f}, {self.high:.3f}], {self.test} {_format_p(self.p_value)}"
        if self.gained is not None:
            line += f" ({self.gained} gained, {self.lost} lost)"
        return line

    def to_dict(self) -> dict:
        return asdict(self)


def compare(
    before, after, test: str = "auto", confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED, label: str = "before → after", weights=None,
) -> Comparison:
    """Compare two stages' per-problem values on the same problems (``after − before``).

    The interval on the difference is always the paired bootstrap's. The p-value comes from ``test``:
    ``"mcnemar"`` (exact McNemar; 0/1 outcomes only), ``"bootstrap"`` (the paired bootstrap's), or
    ``"auto"``: McNemar when both inputs are 0/1 outcomes and no weights are given, else the bootstrap.
    With McNemar the interval and the test come from different procedures and can, near the
    threshold, disagree on whether 0 is excluded; the printed line names the test that gave p.
    """
    if test not in ("auto", "mcnemar", "bootstrap"):
        raise ValueError(f"test must be 'auto', 'mcnemar' or 'bootstrap', got {test!r}")
    a_arr, b_arr = _as_vector(before, "before"), _as_vector(after, "after")
    paired = paired_bootstrap(a_arr, b_arr, confidence, resamples, seed, weights)
    use_mcnemar = test == "mcnemar" or (test == "auto" and weights is None and _is_binary(a_arr) and _is_binary(b_arr))
    if use_mcnemar:
        if weights is not None:
            raise ValueError("McNemar's test takes no weights")
        result = mcnemar_exact(a_arr, b_arr)
        return Comparison(paired.mean_diff, paired.low, paired.high, result.p_value, int(a_arr.size),
                          "McNemar exact", label, gained=result.only_b, lost=result.only_a)
    return Comparison(paired.mean_diff, paired.low, paired.high, paired.p_value, int(a_arr.size),
                      "paired bootstrap", label)
