"""The gate's sequential tests: Wald's SPRT on paired per-item differences, looked at in blocks.

One test (`gate_policy.SequentialTest`) pools one or more suites (strata). Items of every suite
are scored in a fixed seeded order (`evaluation_order`: by a hash of seed, suite and item id, so
the gate takes any report's items in the same order), `block` items per suite per look, at
most `max_items` per suite. At look k each suite s contributes its first n_s = min(k · block,
max_items, scored) items, d_si = candidate − reference on item i (oriented: > 0 is better), on
the test's per-item score (`score`: e.g. `gold_prob` of a multiple-choice item, or the primary
0/1 score). Then

    Δ̂ = (1/S) Σ_s mean_i d_si                    the pooled (stratified, equal-weight) difference
    V  = (1/S²) Σ_s max(var_s, floor_s) / n_s      its plug-in variance; floor_s = 1/n_s for 0/1
                                                  scores (as if one discordant pair had been seen)
    δ1, δ0 = drop, null_drop (× the reference's pooled score when `relative`)
    Λ  = −(δ1 − δ0) (Δ̂ + (δ0 + δ1)/2) / V          the Gaussian log-likelihood ratio of
                                                  H1: Δ = −δ1 against H0: Δ = −δ0 (0: no change)

Wald's boundaries: Λ ≥ log((1 − β)/α) settles "drop" (reject), Λ ≤ log(β/(1 − α)) settles "no
drop" (pass). A test that reaches `max_items` in every suite, or has scored every item its suites
hold, is truncated: Λ > 0 (Δ̂ < −(δ0 + δ1)/2) rejects, else it passes. Anything else is "unsettled"
(the gate rejects it: fail closed). V = 0 (identical per-item scores, e.g. a no-op candidate)
settles at once by the sign of Λ's numerator. δ1 = 0 (a reference that scores 0 when
`relative`) has nothing to lose and passes.

Wald's bounds hold for known variance; the plug-in variance and the overshoot make the realised
error rates differ, so they are measured, not assumed: `benchmarks/gate_power.py` runs this
function on resampled measured per-item differences (benchmarks/results/gate_power.md).

The report (`SequentialOutcome`) also carries the stratified paired bootstrap 95% CI of Δ̂ at
the stopping look (resampling items within each suite), for reading, not for the decision.
`seed` is the evaluation seed (`eval.seed`, the report's `seeds["bootstrap"]`): it fixes the
order and the bootstrap.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sdft_ops.evaluation.types import SuiteResult

if TYPE_CHECKING:
    from sdft_ops.gate_policy import SequentialTest

Settled = Literal["no_drop", "drop", "unsettled"]


class SequentialOutcome(BaseModel):
    """Where one sequential test stopped and what it settled."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    test: str
    settled: Settled
    truncated: bool = Field(description="decided at the item cap by the sign of the log-LR")
    looks: int = Field(ge=0)
    items: dict[str, int] = Field(description="items each suite used at the stopping look")
    log_lr: float
    bounds: tuple[float, float] = Field(description="(accept H0 at ≤, reject at ≥)")
    difference: float = Field(description="pooled candidate − reference (oriented, > 0 better)")
    difference_ci: tuple[float, float]
    reference_score: float
    drop: float = Field(description="δ1 of H1 in the score's unit (relative drops resolved)")
    null_drop: float = Field(0.0, description="δ0 of H0 in the score's unit")

    @property
    def passed(self) -> bool:
        return self.settled == "no_drop"

    def note(self) -> str:
        low, high = self.bounds
        n = sum(self.items.values())
        how = ("at the item cap, by the sign of the log-LR" if self.truncated else
               f"log-LR {self.log_lr:.3g} {'≥' if self.settled == 'drop' else '≤'} "
               f"{high if self.settled == 'drop' else low:.3g}")
        what = {"no_drop": "settled: no drop", "drop": "settled: drop",
                "unsettled": "not settled (log-LR between the bounds and items left); evaluate "
                             "more items"}[self.settled]
        return (f"SPRT H0 Δ=−{self.null_drop:.3g} vs H1 Δ=−{self.drop:.3g}: {what} ({how}) after {self.looks} look(s), "
                f"{n} items ({', '.join(f'{k} {v}' for k, v in self.items.items())}); "
                f"Δ {self.difference:+.4f} [95% CI {self.difference_ci[0]:+.4f}, "
                f"{self.difference_ci[1]:+.4f}]")


def _rank(key: str, item_id: str) -> str:
    return hashlib.sha256(f"{key}\n{item_id}".encode("utf-8")).hexdigest()


def evaluation_order(item_ids: Sequence[str], key: str) -> list[str]:
    """The fixed seeded order a suite's items are scored in (key: "{seed}:{suite}"): by a hash
    of (key, item id), so any prefix a report holds can be checked to be in this order."""
    return sorted(item_ids, key=lambda i: _rank(key, i))


def order_key(seed: int, suite: str) -> str:
    return f"{seed}:{suite}"


def wald_bounds(alpha: float, beta: float) -> tuple[float, float]:
    """(B, A): accept H0 when Λ ≤ B = log(β/(1−α)), reject when Λ ≥ A = log((1−β)/α)."""
    return math.log(beta / (1.0 - alpha)), math.log((1.0 - beta) / alpha)


def _differences(cand: SuiteResult, ref: SuiteResult, score: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(oriented per-item differences, reference scores), in the candidate's item order."""
    ref_by_id = dict(zip(ref.item_ids, ref.per_item(score), strict=True))
    c = np.asarray(cand.per_item(score), dtype=np.float64)
    r = np.asarray([ref_by_id[i] for i in cand.item_ids], dtype=np.float64)
    return (c - r) if cand.higher_is_better else (r - c), r


def _stratified_ci(diffs: list[np.ndarray], n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = np.zeros(n_boot)
    for d in diffs:
        means += d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    means /= len(diffs)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def sprt(name: str, test: "SequentialTest", candidate: Mapping[str, SuiteResult],
         reference: Mapping[str, SuiteResult], seed: int = 0) -> SequentialOutcome | None:
    """Replay `test`'s looks over the stored items, taken in the evaluation order of `seed`
    (`evaluation_order`), and stop at the first settled look. None when the report holds none
    of the test's suites."""
    suites = [s for s in test.suites if s in candidate]
    if not suites:
        return None
    missing = [s for s in suites if s not in reference]
    if missing:
        raise KeyError(f"{name}: no reference result for {missing}")
    # the looks read the items in the seeded evaluation order, whatever order the report holds
    ordered = {s: candidate[s].subset(evaluation_order(candidate[s].item_ids, order_key(seed, s)))
               for s in suites}
    data = {s: _differences(ordered[s], reference[s], test.score) for s in suites}
    if bad := [s for s in suites if not (np.all(np.isfinite(data[s][0])) and data[s][0].size)]:
        raise ValueError(f"{name}: {bad[0]} has no finite paired per-item scores; re-evaluate it")
    binary = {s: test.score is None and candidate[s].binary for s in suites}
    outcome = run_test(test, {s: data[s][0] for s in suites}, {s: data[s][1] for s in suites},
                       binary, {s: _available(ordered[s]) for s in suites})
    settled, truncated, look, used, log_lr, estimate, ref_score, (null, delta) = outcome
    diffs = [data[s][0][: used[s]] for s in suites]
    return SequentialOutcome(
        test=name, settled=settled, truncated=truncated, looks=look, items=used, log_lr=log_lr,
        bounds=wald_bounds(test.alpha, test.beta), difference=estimate,
        difference_ci=_stratified_ci(diffs, seed=seed), reference_score=ref_score, drop=delta,
        null_drop=null)


def run_test(test: "SequentialTest", diffs: Mapping[str, np.ndarray], refs: Mapping[str, np.ndarray],
             binary: Mapping[str, bool], available: Mapping[str, int]):
    """The test on arrays (per suite: oriented differences and reference scores in evaluation
    order, whether 0/1, items the suite holds): (settled, truncated, looks, items used per suite,
    log-LR, pooled difference, pooled reference score, (δ0, δ1)). `sprt` and the power benchmark's
    simulations both run this."""
    suites = list(diffs)
    low, high = wald_bounds(test.alpha, test.beta)
    look = 0
    while True:
        look += 1
        cap = min(look * test.block, test.max_items)
        used = {s: min(cap, diffs[s].size) for s in suites}
        parts = [diffs[s][: used[s]] for s in suites]
        estimate = float(np.mean([d.mean() for d in parts]))
        ref_score = float(np.mean([refs[s][: used[s]].mean() for s in suites]))
        variance = sum(max(float(d.var(ddof=1)) if d.size > 1 else 0.0, 1.0 / d.size if binary[s] else 0.0)
                       / d.size for s, d in zip(suites, parts)) / len(suites) ** 2
        scale = ref_score if test.relative else 1.0
        delta, null = test.drop * scale, test.null_drop * scale
        log_lr = _log_lr(estimate, null, delta, variance)
        done = all(used[s] >= min(test.max_items, available[s]) for s in suites)
        more = any(used[s] < diffs[s].size for s in suites) and cap < test.max_items
        if log_lr >= high or log_lr <= low or done or not more:
            break
    if log_lr >= high:
        settled, truncated = "drop", False
    elif log_lr <= low:
        settled, truncated = "no_drop", False
    elif done:
        settled, truncated = ("drop" if log_lr > 0 else "no_drop"), True
    else:
        settled, truncated = "unsettled", False
    return settled, truncated, look, used, log_lr, estimate, ref_score, (null, delta)


def _available(result: SuiteResult) -> int:
    """Items the suite held (recorded by the evaluator), else those scored."""
    return result.items_available or len(result.item_ids)


def _log_lr(estimate: float, null: float, delta: float, variance: float) -> float:
    if delta <= 0.0:
        return -math.inf  # nothing to lose (a relative drop of a reference scoring 0)
    numerator = -(delta - null) * (estimate + (null + delta) / 2.0)
    if variance <= 0.0:
        return math.copysign(math.inf, numerator) if numerator else 0.0
    return numerator / variance
