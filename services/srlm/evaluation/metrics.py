"""Pure statistics of the evaluation suite: bootstrap intervals over prompts, paired tests between two
models on the same prompts, rank correlations and the length-controlled win rate (numpy only).

Every function takes plain sequences or 1-D arrays, copies them to float arrays and raises ValueError on
empty input, mismatched lengths and NaN or infinite values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

ArrayLike = Sequence[float] | np.ndarray

# Bootstrap resamples are drawn in blocks of about this many indices, so memory stays bounded for long inputs.
_BLOCK_ELEMENTS = 1 << 20
# L2 penalty on the length coefficient of the length-controlled win rate (summed cross-entropy + l2/2 * theta^2).
LC_L2 = 0.1
LC_MAX_ITERATIONS = 100
_LOGIT_EPS = 1e-6


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval [low, high] over n items."""

    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float]:
        """{"value", "low", "high", "n"}, for JSON reports."""
        return asdict(self)


@dataclass(frozen=True)
class PairedTest:
    """Model a against model b on the same n prompts: diff = mean(a) - mean(b), its 95% interval, a p-value."""

    diff: float
    low: float
    high: float
    p_value: float
    n: int
    method: str

    def as_dict(self) -> dict[str, float | str]:
        """{"diff", "low", "high", "p_value", "n", "method"}, for JSON reports."""
        return asdict(self)


# ---------------------------------------------------------------- validation


def _array(values: ArrayLike, name: str) -> np.ndarray:
    """``values`` as a non-empty 1-D float array without NaN or infinities, else ValueError."""
    try:
        arr = np.array(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a sequence of numbers ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of numbers, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: empty input")
    if np.isnan(arr).any():
        raise ValueError(f"{name}: contains NaN at index {int(np.flatnonzero(np.isnan(arr))[0])}")
    if np.isinf(arr).any():
        raise ValueError(f"{name}: contains an infinite value at index {int(np.flatnonzero(np.isinf(arr))[0])}")
    return arr


def _pair(a: ArrayLike, b: ArrayLike, names: tuple[str, str] = ("a", "b")) -> tuple[np.ndarray, np.ndarray]:
    """Two validated arrays of the same length, else ValueError."""
    x, y = _array(a, names[0]), _array(b, names[1])
    if x.size != y.size:
        raise ValueError(f"mismatched lengths: {names[0]} has {x.size} items, {names[1]} has {y.size}")
    return x, y


def _unit_interval(values: ArrayLike, name: str) -> np.ndarray:
    """A validated array whose values all lie in [0, 1] (wins: 1 win, 0.5 tie, 0 loss, fractions allowed)."""
    arr = _array(values, name)
    if (arr < 0).any() or (arr > 1).any():
        bad = int(np.flatnonzero((arr < 0) | (arr > 1))[0])
        raise ValueError(f"{name}: values must lie in [0, 1], got {arr[bad]} at index {bad}")
    return arr


def _check_bootstrap_args(confidence: float, resamples: int) -> None:
    """ValueError unless 0 < confidence < 1 and resamples is a positive integer."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")


# ---------------------------------------------------------------- bootstrap


def _bootstrap_statistics(values: np.ndarray, statistic: Callable, resamples: int, seed: int) -> np.ndarray:
    """``statistic`` of ``resamples`` resamples of ``values`` drawn with replacement (seeded, reproducible)."""
    n = values.size
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ELEMENTS // n)
    out = np.empty(resamples, dtype=float)
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        samples = values[rng.integers(0, n, size=(rows, n))]
        try:
            stats = np.asarray(statistic(samples, axis=1), dtype=float)
        except TypeError:  # a statistic without an axis argument: one resample at a time
            stats = np.array([statistic(row) for row in samples], dtype=float)
        if stats.shape != (rows,):
            stats = np.array([statistic(row) for row in samples], dtype=float)
        out[start:start + rows] = stats
    return out


def _percentiles(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile interval: the (1-c)/2 and (1+c)/2 quantiles of the bootstrap statistics."""
    alpha = 1.0 - confidence
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_ci(values: ArrayLike, *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0,
                 statistic: Callable = np.mean) -> Estimate:
    """``statistic(values)`` with a percentile-bootstrap interval over the items (prompts), seeded.

    One item, or all items equal, gives low = high = value. ``statistic`` should accept ``axis=`` like np.mean.
    """
    _check_bootstrap_args(confidence, resamples)
    arr = _array(values, "values")
    value = float(statistic(arr))
    if arr.size == 1 or (arr == arr[0]).all():
        return Estimate(value=value, low=value, high=value, n=int(arr.size))
    low, high = _percentiles(_bootstrap_statistics(arr, statistic, resamples, seed), confidence)
    return Estimate(value=value, low=low, high=high, n=int(arr.size))


def item_bootstrap_ci(items: Sequence, statistic: Callable[[Sequence], float], *, confidence: float = 0.95,
                      resamples: int = 2000, seed: int = 0) -> Estimate:
    """``statistic(items)`` for any per-item records (e.g. (better, worse) score pairs), with a
    percentile-bootstrap interval from resampling the items, seeded."""
    _check_bootstrap_args(confidence, resamples)
    items = list(items)
    if not items:
        raise ValueError("items: empty input")
    value = float(statistic(items))
    if len(items) == 1:
        return Estimate(value=value, low=value, high=value, n=1)
    rng = np.random.default_rng(seed)
    stats = np.array([statistic([items[i] for i in rng.integers(0, len(items), len(items))])
                      for _ in range(resamples)], dtype=float)
    stats = stats[~np.isnan(stats)]  # a resample the statistic is undefined on (e.g. all denominators 0)
    low, high = _percentiles(stats, confidence) if stats.size else (value, value)
    return Estimate(value=value, low=low, high=high, n=len(items))


def ratio_ci(numerators: ArrayLike, denominators: ArrayLike, *, confidence: float = 0.95, resamples: int = 2000,
             seed: int = 0) -> Estimate:
    """sum(numerators) / sum(denominators) (e.g. instructions followed / instructions, per prompt) with a
    bootstrap interval over the items; n is the number of items."""
    num, den = _pair(numerators, denominators, ("numerators", "denominators"))
    if (den < 0).any() or den.sum() <= 0:
        raise ValueError("denominators must be >= 0 with a positive sum")
    pairs = list(zip(num.tolist(), den.tolist()))

    def ratio(items: Sequence[tuple[float, float]]) -> float:
        total = sum(d for _, d in items)
        return sum(n for n, _ in items) / total if total else float("nan")

    return item_bootstrap_ci(pairs, ratio, confidence=confidence, resamples=resamples, seed=seed)


def _paired_interval(diffs: np.ndarray, confidence: float, resamples: int,
                     seed: int) -> tuple[float, float, np.ndarray | None]:
    """The percentile interval of the mean paired difference, and the bootstrap means (None when constant)."""
    mean = float(diffs.mean())
    if diffs.size == 1 or (diffs == diffs[0]).all():
        return mean, mean, None
    boot = _bootstrap_statistics(diffs, np.mean, resamples, seed)
    low, high = _percentiles(boot, confidence)
    return low, high, boot


def paired_bootstrap(a: ArrayLike, b: ArrayLike, *, confidence: float = 0.95, resamples: int = 2000,
                     seed: int = 0) -> PairedTest:
    """Paired bootstrap of mean(a) - mean(b): prompts resampled jointly (i.e. the per-prompt differences a - b).

    Two-sided p-value = 2 * min(P*(mean diff <= 0), P*(mean diff >= 0)) over the (uncentred) bootstrap means,
    i.e. twice the share of resampled means on the far side of 0, clipped to [1/(resamples+1), 1].
    All differences 0 -> diff 0, p 1.0; a single prompt -> p 1.0 (no evidence); all differences equal and
    nonzero -> p = 1/(resamples+1). The bootstrap is optimistic below ~20 prompts: use sign_test there.
    """
    _check_bootstrap_args(confidence, resamples)
    x, y = _pair(a, b)
    diffs = x - y
    diff = float(x.mean() - y.mean())
    low, high, boot = _paired_interval(diffs, confidence, resamples, seed)
    if not diffs.any() or diffs.size == 1:
        p_value = 1.0
    elif boot is None:  # every prompt moved the same nonzero amount: no resample reaches 0
        p_value = 1.0 / (resamples + 1)
    else:
        tail = min(float(np.mean(boot <= 0.0)), float(np.mean(boot >= 0.0)))
        p_value = min(1.0, max(1.0 / (resamples + 1), 2.0 * tail))
    return PairedTest(diff=diff, low=low, high=high, p_value=p_value, n=int(x.size), method="paired_bootstrap")


def sign_test(a: ArrayLike, b: ArrayLike, *, confidence: float = 0.95, resamples: int = 2000,
              seed: int = 0) -> PairedTest:
    """Exact two-sided binomial sign test on the nonzero differences a - b (ties dropped; p = 1 if none differ).

    p = min(1, 2 * sum_{k <= min(wins, losses)} C(m, k) / 2^m) over the m nonzero differences; diff, low and
    high are paired_bootstrap's mean difference and interval; n counts all pairs, ties included.
    """
    _check_bootstrap_args(confidence, resamples)
    x, y = _pair(a, b)
    diffs = x - y
    wins, losses = int((diffs > 0).sum()), int((diffs < 0).sum())
    m = wins + losses
    if m == 0:
        p_value = 1.0
    else:
        tail = sum(math.comb(m, k) for k in range(min(wins, losses) + 1))
        p_value = min(1.0, 2 * tail / 2 ** m)
    low, high, _ = _paired_interval(diffs, confidence, resamples, seed)
    return PairedTest(diff=float(x.mean() - y.mean()), low=low, high=high, p_value=p_value, n=int(x.size),
                      method="sign_test")


def win_rate(wins: ArrayLike, *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> Estimate:
    """Mean of per-prompt wins in [0, 1] (1 win, 0.5 tie, 0 loss) with a bootstrap interval over prompts."""
    return bootstrap_ci(_unit_interval(wins, "wins"), confidence=confidence, resamples=resamples, seed=seed)


def pairwise_accuracy(better_scores: ArrayLike, worse_scores: ArrayLike, *, confidence: float = 0.95,
                      resamples: int = 2000, seed: int = 0) -> Estimate:
    """Share of pairs scored in the known order: 1 if better > worse, 0.5 if equal, 0 if lower; bootstrap CI."""
    better, worse = _pair(better_scores, worse_scores, ("better_scores", "worse_scores"))
    credit = np.where(better > worse, 1.0, np.where(better == worse, 0.5, 0.0))
    return bootstrap_ci(credit, confidence=confidence, resamples=resamples, seed=seed)


# ---------------------------------------------------------------- rank correlations


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the average of the ranks they span (as scipy.stats.rankdata)."""
    n = values.size
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.concatenate(([True], ordered[1:] != ordered[:-1]))
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.concatenate((first, [n])))
    ranks = np.empty(n, dtype=float)
    ranks[order] = (first + (counts + 1) / 2.0)[group]
    return ranks


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rho: Pearson correlation of the average ranks (ties share ranks).

    Constant x or y (no ranking to correlate) -> 0.0.
    """
    a, b = _pair(x, y, ("x", "y"))
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    if denom == 0.0:
        return 0.0
    return float(np.clip(float(ra @ rb) / denom, -1.0, 1.0))


def _tied_pairs(values: np.ndarray) -> int:
    """Number of pairs tied on ``values``: sum over tie groups of t(t-1)/2."""
    _, counts = np.unique(values, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def kendall_tau_b(x: ArrayLike, y: ArrayLike) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties_x) (n0 - ties_y)), n0 = n(n-1)/2.

    Constant x or y -> 0.0. O(n^2) time, O(n) memory.
    """
    a, b = _pair(x, y, ("x", "y"))
    n = a.size
    net = 0  # concordant - discordant; pairs tied on either side contribute 0
    for i in range(n - 1):
        net += int((np.sign(a[i + 1:] - a[i]) * np.sign(b[i + 1:] - b[i])).sum())
    n0 = n * (n - 1) // 2
    denom = math.sqrt(float(n0 - _tied_pairs(a)) * float(n0 - _tied_pairs(b)))
    if denom == 0.0:
        return 0.0
    return float(np.clip(net / denom, -1.0, 1.0))


# ---------------------------------------------------------------- length-controlled win rate


def _sigmoid(z: np.ndarray | float) -> np.ndarray:
    """Logistic function, stable for large |z|."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=float)))


def _lc_loss(params: np.ndarray, features: np.ndarray, wins: np.ndarray, l2: float) -> float:
    """Summed cross-entropy of fractional targets ``wins`` under logit = features @ params, + l2/2 * theta^2."""
    z = features @ params
    return float((np.logaddexp(0.0, z) - wins * z).sum() + 0.5 * l2 * params[1] ** 2)


def length_controlled_win_rate(wins: ArrayLike, length_diffs: ArrayLike, *, l2: float = LC_L2) -> float:
    """AlpacaEval-2-style LC win rate: fit logit P(win) = b0 + theta * tanh(length_diff / std(length_diffs)),
    return sigmoid(b0), the predicted win rate at zero length difference.

    wins in [0, 1] (0.5 ties, fractions allowed) are cross-entropy targets; std is the population std
    (ddof 0); the fit is Newton's method with step halving on the summed cross-entropy + l2/2 * theta^2
    (intercept unpenalised; the penalty keeps theta finite when length separates wins from losses), at most
    100 iterations. std 0, or all wins 0 or all 1 (unbounded logit), returns the plain mean of wins.
    """
    w, lengths = _pair(wins, length_diffs, ("wins", "length_diffs"))
    if (w < 0).any() or (w > 1).any():
        bad = int(np.flatnonzero((w < 0) | (w > 1))[0])
        raise ValueError(f"wins: values must lie in [0, 1], got {w[bad]} at index {bad}")
    if not l2 >= 0.0 or math.isinf(l2):
        raise ValueError(f"l2 must be a finite non-negative number, got {l2}")
    raw = float(w.mean())
    scale = float(lengths.std())
    if scale == 0.0 or raw in (0.0, 1.0):
        return raw
    features = np.column_stack((np.ones_like(lengths), np.tanh(lengths / scale)))
    start = min(max(raw, _LOGIT_EPS), 1.0 - _LOGIT_EPS)
    params = np.array([math.log(start / (1.0 - start)), 0.0])
    penalty = np.array([0.0, l2])
    loss = _lc_loss(params, features, w, l2)
    for _ in range(LC_MAX_ITERATIONS):
        p = _sigmoid(features @ params)
        grad = features.T @ (p - w) + penalty * params
        hess = (features * (p * (1.0 - p))[:, None]).T @ features + np.diag(penalty)
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        shrink = 1.0
        while shrink > 1e-10:
            trial = params - shrink * step
            trial_loss = _lc_loss(trial, features, w, l2)
            if trial_loss <= loss:
                break
            shrink *= 0.5
        else:
            break  # no descent along the Newton direction: at the optimum to machine precision
        params, loss = trial, trial_loss
        if float(np.max(np.abs(shrink * step))) < 1e-10:
            break
    return float(_sigmoid(params[0]))


# ---------------------------------------------------------------- distributions


def score_distribution(values: ArrayLike, max_score: int = 5) -> dict[str, int]:
    """Counts of judge scores rounded half up to integers, keyed "0".."max_score" (every key present).

    A score that rounds outside [0, max_score] is a ValueError.
    """
    if isinstance(max_score, bool) or not isinstance(max_score, (int, np.integer)) or max_score < 0:
        raise ValueError(f"max_score must be a non-negative integer, got {max_score!r}")
    scores = _array(values, "values")
    rounded = np.floor(scores + 0.5).astype(int)
    outside = (rounded < 0) | (rounded > max_score)
    if outside.any():
        bad = int(np.flatnonzero(outside)[0])
        raise ValueError(f"values: score {scores[bad]} at index {bad} rounds outside 0..{max_score}")
    counts = np.bincount(rounded, minlength=max_score + 1)
    return {str(k): int(counts[k]) for k in range(max_score + 1)}
