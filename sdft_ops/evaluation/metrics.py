"""Statistics over `SuiteResult`s: bootstrap CIs, paired retention vs a reference, McNemar,
and continual-learning metrics (ACC, BWT, forgetting) over a chain of updates.

Everything here is a pure, seeded function of its inputs (numpy only, no scipy):

* `bootstrap_ci` — percentile bootstrap of the mean: resample the n items with replacement
  `n_boot` times, take the mean of each resample, report the (1-level)/2 and (1+level)/2
  quantiles of those means.
* `retention` — candidate vs reference on the *same* items (refused otherwise:
  `check_comparable`). Items are aligned by id, then a *paired* bootstrap draws one index
  vector per resample and applies it to both models, so item difficulty cancels out of the
  Δ and ratio CIs. With both suites binary, McNemar's exact test runs on the discordant pairs.
* `AccuracyMatrix` — R[i][j] = score on task j after stage i; ACC/BWT (Lopez-Paz & Ranzato
  2017, GEM) and forgetting (Chaudhry et al. 2018, RWalk), generalised to tasks that were never
  learned inside the chain (prior suites), whose reference is the base row.

Quantiles: numpy's "linear" method when every bootstrap statistic is finite; when some are ±inf
(a ratio whose denominator resampled to 0) the order-statistic method "inverted_cdf", which
orders infinities correctly; any NaN statistic (0/0) makes the interval (nan, nan).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sdft_ops.evaluation.types import SuiteResult

_MAX_RESAMPLE_CELLS = 1 << 22  # bound on (resamples x items) held in memory at once


class ComparabilityError(ValueError):
    """Two results cannot be compared item by item (different suite or different items)."""


# ---------------------------------------------------------------------------- bootstrap


def _as_scores(scores: Sequence[float] | np.ndarray, what: str = "scores") -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{what}[{bad}] is {arr[bad]}; per-item scores must be finite — "
                         "fix or drop the item before computing statistics")
    return arr


def _check_boot_args(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}; 1000-2000 is usual")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}; e.g. 0.95 for a 95% interval")


def _resample_indices(rng: np.random.Generator, n_items: int, n_boot: int):
    """Yield (chunk, n_items) index arrays, `n_boot` rows in total, memory-bounded."""
    rows = max(1, _MAX_RESAMPLE_CELLS // n_items)
    for start in range(0, n_boot, rows):
        yield rng.integers(0, n_items, size=(min(rows, n_boot - start), n_items))


def _percentile_interval(stats: np.ndarray, level: float) -> tuple[float, float]:
    if np.any(np.isnan(stats)):
        return (math.nan, math.nan)
    method = "linear" if np.all(np.isfinite(stats)) else "inverted_cdf"
    low, high = np.quantile(stats, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], method=method)
    return (float(low), float(high))


def bootstrap_ci(scores: Sequence[float] | np.ndarray, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval for the mean of `scores`.

    For b = 1..n_boot draw I_b = (i_1..i_n) uniformly with replacement from {0..n-1} using
    `np.random.default_rng(seed)`, let m_b = mean(scores[I_b]); return the (1-level)/2 and
    (1+level)/2 quantiles of {m_b}. Same inputs and seed → the same interval, bit for bit.
    """
    arr = _as_scores(scores)
    _check_boot_args(n_boot, level)
    rng = np.random.default_rng(seed)
    means = np.concatenate([arr[idx].mean(axis=1) for idx in _resample_indices(rng, arr.size, n_boot)])
    return _percentile_interval(means, level)


# ---------------------------------------------------------------------------- McNemar


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar test on the discordant counts b and c.

    Under H0 each discordant pair is equally likely to go either way, so X ~ Bin(b+c, 1/2) and
    p = min(1, 2 * P(X <= min(b, c))) = min(1, 2 * sum_{k<=min(b,c)} C(b+c, k) / 2^(b+c)).
    b + c == 0 (no discordant pair) gives 1.0. Computed in exact rational arithmetic.
    """
    if isinstance(b, bool) or isinstance(c, bool) or int(b) != b or int(c) != c or b < 0 or c < 0:
        raise ValueError(f"McNemar counts must be non-negative integers, got b={b!r}, c={c!r}")
    b, c = int(b), int(c)
    n = b + c
    if n == 0:
        return 1.0
    tail = Fraction(sum(math.comb(n, k) for k in range(min(b, c) + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


# ---------------------------------------------------------------------------- retention


def check_comparable(a: SuiteResult, b: SuiteResult) -> None:
    """Raise ComparabilityError unless `a` and `b` scored the same suite, metric and item set.

    Item order does not matter (`item_ids_hash` is over the sorted ids).
    """
    if a.suite != b.suite:
        raise ComparabilityError(f"cannot compare suite {a.suite!r} with suite {b.suite!r}; "
                                 "pair each candidate result with the reference result of the same suite")
    if a.item_ids_hash != b.item_ids_hash:
        raise ComparabilityError(
            f"{a.suite}: item sets differ (item_ids_hash {a.item_ids_hash[:12]}… with {len(a.item_ids)} "
            f"items vs {b.item_ids_hash[:12]}… with {len(b.item_ids)} items); re-score both models "
            "on the same items before comparing")
    if a.metric != b.metric or a.higher_is_better != b.higher_is_better:
        raise ComparabilityError(
            f"{a.suite}: metric {a.metric!r} (higher_is_better={a.higher_is_better}) vs {b.metric!r} "
            f"(higher_is_better={b.higher_is_better}); re-score both models with the same suite version")


class Retention(BaseModel):
    """How a candidate scores relative to a reference on one suite; every field reads "> means better".

    Let c, r be the candidate's and reference's mean scores and s = +1 if the suite's metric is
    higher-is-better, else -1.

    * ratio = c / r when higher_is_better, r / c otherwise, so ratio > 1 always means "better
      than the reference". Zero denominator: ratio = nan when the numerator is 0 too (0/0),
      else ±inf (sign of the numerator). Meaningful only for non-negative scores.
    * difference = s * (c - r): positive = better.
    * difference_ci, ratio_ci: paired percentile bootstrap over items (one index vector per
      resample, applied to both models).
    * mcnemar_p: exact two-sided McNemar on discordant items when both results are binary, else None.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    suite: str = Field(min_length=1)
    higher_is_better: bool
    candidate_score: float
    reference_score: float
    ratio: float
    difference: float
    difference_ci: tuple[float, float]
    ratio_ci: tuple[float, float]
    mcnemar_p: float | None = Field(None, ge=0.0, le=1.0)
    n_items: int = Field(ge=1)


def _ratio(better: np.ndarray, other: np.ndarray) -> np.ndarray:
    """better / other with 0/0 → nan and x/0 → copysign(inf, x), independent of the sign of 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = better / np.where(other == 0.0, 1.0, other)
    zero = other == 0.0
    return np.where(zero, np.where(better == 0.0, np.nan, np.copysign(np.inf, better)), out)


def _aligned_scores(candidate: SuiteResult, reference: SuiteResult) -> tuple[np.ndarray, np.ndarray]:
    """Both score vectors in the candidate's item order."""
    ref_by_id = dict(zip(reference.item_ids, reference.scores, strict=True))
    cand = _as_scores(candidate.scores, f"{candidate.suite} candidate scores")
    ref = _as_scores([ref_by_id[i] for i in candidate.item_ids], f"{reference.suite} reference scores")
    return cand, ref


def _check_binary(scores: np.ndarray, suite: str) -> None:
    if not np.all((scores == 0.0) | (scores == 1.0)):
        raise ValueError(f"{suite}: marked binary but has scores other than 0/1; "
                         "set binary=False in the suite or score items as 0/1")


def retention(candidate: SuiteResult, reference: SuiteResult, n_boot: int = 2000, seed: int = 0,
              level: float = 0.95) -> Retention:
    """Paired comparison of `candidate` against `reference` on one suite (see `Retention`).

    Items are matched by id (their order may differ); incomparable results raise
    ComparabilityError. Bootstrap: for b = 1..n_boot draw one index vector I_b (seeded) and
    compute Δ_b = s * (mean(c[I_b]) - mean(r[I_b])) and ratio_b from the same I_b.
    """
    check_comparable(candidate, reference)
    _check_boot_args(n_boot, level)
    cand, ref = _aligned_scores(candidate, reference)
    hib = candidate.higher_is_better
    sign = 1.0 if hib else -1.0

    mcnemar_p = None
    if candidate.binary and reference.binary:
        _check_binary(cand, candidate.suite)
        _check_binary(ref, reference.suite)
        b = int(np.sum((cand == 1.0) & (ref == 0.0)))  # candidate right, reference wrong
        c = int(np.sum((cand == 0.0) & (ref == 1.0)))  # candidate wrong, reference right
        mcnemar_p = mcnemar_exact(b, c)

    rng = np.random.default_rng(seed)
    diffs, ratios = [], []
    for idx in _resample_indices(rng, cand.size, n_boot):
        c_mean, r_mean = cand[idx].mean(axis=1), ref[idx].mean(axis=1)
        diffs.append(sign * (c_mean - r_mean))
        ratios.append(_ratio(c_mean, r_mean) if hib else _ratio(r_mean, c_mean))

    c_score, r_score = math.fsum(cand) / cand.size, math.fsum(ref) / ref.size
    point = np.array([c_score]), np.array([r_score])
    ratio = float((_ratio(*point) if hib else _ratio(point[1], point[0]))[0])
    return Retention(
        suite=candidate.suite, higher_is_better=hib, candidate_score=c_score, reference_score=r_score,
        ratio=ratio, difference=sign * (c_score - r_score),
        difference_ci=_percentile_interval(np.concatenate(diffs), level),
        ratio_ci=_percentile_interval(np.concatenate(ratios), level),
        mcnemar_p=mcnemar_p, n_items=int(cand.size))


# ---------------------------------------------------------------------------- continual learning


class Forgetting(BaseModel):
    """Per-task forgetting and its mean over the tasks it is defined for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_task: dict[str, float]
    mean: float


class AccuracyMatrix(BaseModel):
    """R[i][j]: score on task j (column, `tasks`) of the model after stage i (row, `stages`).

    Rows run in chain order: `stages[0]` is the base model, then "update1", ... The last row is
    the current model. NaN marks a cell not evaluated (e.g. a task before it existed).
    `learned_at[task] = t_j` is the stage index whose update trained on task j; a task absent
    from `learned_at` (a prior suite the chain never trains on) is treated as t_j = 0, i.e. its
    reference is the base row. Scores must be higher-is-better (negate other metrics first).

    With L = last stage and T* = {j : t_j < L} (tasks with at least one later stage):

    * ACC = (1/|tasks|) * sum_j R[L][j]                              (Lopez-Paz & Ranzato 2017)
    * BWT = (1/|T*|) * sum_{j in T*} (R[L][j] - R[t_j][j])           (Lopez-Paz & Ranzato 2017;
      their t_j = j on a diagonal, here the stage where j was learned or the base row)
    * f_j = max(0, max_{t_j <= i < L} R[i][j] - R[L][j]) for j in T* (Chaudhry et al. 2018,
      NaN cells skipped); mean forgetting = (1/|T*|) * sum f_j. Chaudhry's f_j can be negative
      when later stages improve task j; here it is clipped at 0 so improvement is "no forgetting"
      (positive transfer shows in BWT instead).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    tasks: list[str] = Field(min_length=1)
    stages: list[str] = Field(min_length=1)
    values: list[list[float]]
    learned_at: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _shapes(self) -> "AccuracyMatrix":
        for name, labels in (("tasks", self.tasks), ("stages", self.stages)):
            if len(set(labels)) != len(labels):
                raise ValueError(f"duplicate names in {name}: {labels}; give each a unique name")
        if len(self.values) != len(self.stages):
            raise ValueError(f"values has {len(self.values)} rows for {len(self.stages)} stages; "
                             "give one row per stage (use NaN for cells not evaluated)")
        for i, row in enumerate(self.values):
            if len(row) != len(self.tasks):
                raise ValueError(f"row {i} ({self.stages[i]!r}) has {len(row)} values for "
                                 f"{len(self.tasks)} tasks; give one value per task, NaN if not evaluated")
            if any(math.isinf(v) for v in row):
                raise ValueError(f"row {i} ({self.stages[i]!r}) has an infinite value; use NaN for "
                                 "'not evaluated'")
        for task, stage in self.learned_at.items():
            if task not in self.tasks:
                raise ValueError(f"learned_at names unknown task {task!r}; tasks are {self.tasks}")
            if not 0 <= stage < len(self.stages):
                raise ValueError(f"learned_at[{task!r}] = {stage} is not a stage index in "
                                 f"[0, {len(self.stages) - 1}]")
        return self

    def _array(self) -> np.ndarray:
        return np.asarray(self.values, dtype=np.float64).reshape(len(self.stages), len(self.tasks))

    def select(self, tasks: Sequence[str]) -> "AccuracyMatrix":
        """The same stages on `tasks` only: ACC, BWT and forgetting average over columns, so
        keep one kind of score (e.g. the domain accuracies, not a log-prob drift column)."""
        unknown = [t for t in tasks if t not in self.tasks]
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; this matrix has {self.tasks}")
        cols = [self.tasks.index(t) for t in tasks]
        return AccuracyMatrix(tasks=list(tasks), stages=self.stages,
                              values=[[row[j] for j in cols] for row in self.values],
                              learned_at={t: i for t, i in self.learned_at.items() if t in tasks})

    def _final_row(self) -> np.ndarray:
        last = self._array()[-1]
        if np.any(np.isnan(last)):
            missing = [t for t, v in zip(self.tasks, last, strict=True) if math.isnan(v)]
            raise ValueError(f"final stage {self.stages[-1]!r} is not evaluated on {missing}; "
                             "evaluate the current model on every task")
        return last

    def _learned_before_last(self) -> list[tuple[int, int]]:
        """(column j, t_j) for tasks with t_j < last stage; checks R[t_j][j] is evaluated."""
        last, arr = len(self.stages) - 1, self._array()
        pairs = [(j, self.learned_at.get(t, 0)) for j, t in enumerate(self.tasks)]
        pairs = [(j, tj) for j, tj in pairs if tj < last]
        if not pairs:
            raise ValueError("no task was learned before the last stage, so BWT/forgetting are "
                             "undefined; they need at least two stages (base + one update)")
        for j, tj in pairs:
            if math.isnan(arr[tj, j]):
                raise ValueError(f"R[{self.stages[tj]!r}][{self.tasks[j]!r}] is NaN but is the "
                                 f"reference for task {self.tasks[j]!r}; evaluate it at the stage "
                                 "where it was learned (the base row for prior tasks)")
        return pairs

    def average_accuracy(self) -> float:
        """ACC = mean over tasks of the final row R[L][j]."""
        return float(np.mean(self._final_row()))

    def bwt(self) -> float:
        """BWT = mean over j in T* of R[L][j] - R[t_j][j]; negative = forgetting."""
        final, arr = self._final_row(), self._array()
        return float(np.mean([final[j] - arr[tj, j] for j, tj in self._learned_before_last()]))

    def forgetting(self) -> Forgetting:
        """f_j = max(0, max_{t_j <= i < L} R[i][j] - R[L][j]) per task in T*, and their mean."""
        final, arr = self._final_row(), self._array()
        last = len(self.stages) - 1
        per_task = {self.tasks[j]: max(0.0, float(np.nanmax(arr[tj:last, j]) - final[j]))
                    for j, tj in self._learned_before_last()}
        return Forgetting(per_task=per_task, mean=float(np.mean(list(per_task.values()))))
