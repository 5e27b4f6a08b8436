"""The promotion gate: a pure, typed `decide(report, policy, ...) -> GateDecision`.

A candidate is promoted only when every check passes; anything the gate cannot verify counts as
a failure (fail closed). `decide` reads nothing but its arguments; `decide_from_file` turns an
unreadable report into a reject decision instead of an exception.

Which rule judges which suite, the knobs and the default thresholds: `sdft_ops.gate_policy`.

Every statistic a check measures is recomputed here from the per-item scores in the report's
`results` / `reference_results` (paired by item id): the candidate's score and its bootstrap
CI (`metrics.bootstrap_ci`), Δ, the ratio and its CI (`metrics.retention`), at the documented
95% level with max(report.n_boot, 1000) resamples and the report's bootstrap seed. The stored
derived fields (`score_ci`, `retention[*].difference`, `ratio`, CIs) are never trusted, so an
edited report cannot pass by its numbers.

Fail-closed rules, each a failed check with its reason:

* `parent_is_champion` — a champion exists and the candidate's parent is not it (stale: the
  candidate was trained from, and compared with, a model that is no longer serving).
* `required` — a suite in `required_suites` was not scored on the candidate; `coverage` — the
  reference was scored on a suite the candidate was not.
* `finite` — a NaN/inf per-item score, score or statistic.
* `reference` — a knob that compares with the reference, but the report has no reference
  result (or retention) for that suite.
* `provenance` — candidate and reference scored different items (`item_ids_hash`), metrics or
  directions, the report's stored retention names other scores or item counts than its results,
  or the statistics cannot be recomputed from them (e.g. a "binary" suite with a 0.5 score).
* `report_readable` — `decide_from_file` could not read the report.

    policy = GatePolicy.from_yaml("configs/gate.yaml")
    decision = decide(EvalReport.load(path), policy, parent_version="3", champion_version="3")
    print(decision.to_markdown())
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sdft_ops.jsonl import validation_error_lines
from sdft_ops.evaluation.metrics import Retention, bootstrap_ci, retention
from sdft_ops.evaluation.report import EvalReport
from sdft_ops.evaluation.types import SuiteResult
from sdft_ops.gate_policy import (  # noqa: F401  (re-exported: the gate's API)
    CHECK_GROUPS,
    CI_LEVEL,
    DOMAIN_PREFIX,
    GLOBAL,
    LOG_PROB_SUITES,
    MIN_BOOT,
    REFERENCE_KNOBS,
    RELATIVE_KNOBS,
    SAFETY_PREFIX,
    THRESHOLD_KNOBS,
    TOLERANCE,
    WARNING_GROUPS,
    CheckGroup,
    GatePolicy,
    RuleName,
    SequentialTest,
    SuiteClass,
    SuiteRule,
    suite_class,
)


class RuleCheck(BaseModel):
    """One check: for threshold knobs, passed iff `measured >= threshold`."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    suite: str = Field(min_length=1, description=f"suite name, or {GLOBAL!r} for the whole report")
    rule: RuleName
    measured: float | None = None
    threshold: float | None = None
    passed: bool
    note: str = ""
    blocking: bool = True  # False: a warn_only rule's check, reported but never a reject

    def reason(self) -> str:
        """Human text for the decision's reasons."""
        where = "report" if self.suite == GLOBAL else self.suite
        nums = ""
        if self.measured is not None or self.threshold is not None:
            nums = f" (measured {_fmt(self.measured)}, needs >= {_fmt(self.threshold)})"
        return f"{where}: {self.rule} failed{nums}" + (f" — {self.note}" if self.note else "")


class GateDecision(BaseModel):
    """The verdict, every check made, and the failed ones as text. JSON round-trips exactly."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    promote: bool
    checks: list[RuleCheck]
    reasons: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list, description="failed warn_only checks")
    model_ref: str | None = None
    model_sha256: str | None = None  # the weights the judged report says it scored
    reference_ref: str | None = None
    parent_version: str | None = None
    champion_version: str | None = None
    decided_at: str = Field(description="ISO-8601 UTC timestamp")

    @model_validator(mode="after")
    def _consistent(self) -> "GateDecision":
        if self.promote and (not self.checks or not all(c.passed for c in self.checks if c.blocking)):
            raise ValueError("promote=True needs at least one check and every blocking check passed; "
                             "build decisions with decide()")
        if self.promote == bool(self.reasons):
            raise ValueError("reasons must list the failed checks of a reject and be empty on promote")
        return self

    @classmethod
    def from_checks(cls, checks: list[RuleCheck], **context) -> "GateDecision":
        failed = [c for c in checks if not c.passed and c.blocking]
        return cls(promote=bool(checks) and not failed, checks=checks,
                   reasons=[c.reason() for c in failed] or ([] if checks else ["no checks were made"]),
                   warnings=[c.reason() for c in checks if not c.passed and not c.blocking],
                   decided_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), **context)

    @property
    def verdict(self) -> Literal["promote", "reject"]:
        return "promote" if self.promote else "reject"

    def group(self, name: CheckGroup) -> list[RuleCheck]:
        """The checks behind one reported group (`CHECK_GROUPS`): the blocking checks of its
        suite classes, or for `warn_only_rules` the checks of the policy's warn_only rules."""
        classes = CHECK_GROUPS[name]
        return [c for c in self.checks
                if (GLOBAL if c.suite == GLOBAL else suite_class(c.suite)) in classes
                and c.blocking == (name != "warn_only_rules")]

    def to_markdown(self) -> str:
        """A verdict line, the failed reasons, then one table row per check."""
        head = "✅ PROMOTE" if self.promote else "❌ REJECT"
        lines = [f"## Gate verdict: {head}", "",
                 f"candidate `{self.model_ref}` vs reference `{self.reference_ref}`; "
                 f"parent version {self.parent_version}, champion version {self.champion_version}; "
                 f"decided {self.decided_at}", ""]
        if self.reasons:
            lines += ["Failed:", *[f"- {r}" for r in self.reasons], ""]
        if self.warnings:
            lines += ["Warnings (warn_only rules, not blocking):", *[f"- {w}" for w in self.warnings], ""]
        lines += ["| suite | rule | measured | threshold (≥) | result | note |", "|---|---|---:|---:|---|---|"]
        for c in self.checks:
            result = "pass" if c.passed else "**FAIL**" if c.blocking else "warn"
            lines.append("| " + " | ".join([_md(c.suite), c.rule, _fmt(c.measured), _fmt(c.threshold),
                                            result, _md(c.note)]) + " |")
        return "\n".join(lines) + "\n"


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


# ---------------------------------------------------------------------------- decide


def _parent_check(parent: str | None, champion: str | None, policy: GatePolicy) -> RuleCheck:
    if not policy.require_parent_is_champion:
        return RuleCheck(suite=GLOBAL, rule="parent_is_champion", passed=True,
                         note="not required by the policy")
    if champion is None:
        return RuleCheck(suite=GLOBAL, rule="parent_is_champion", passed=True,
                         note="no champion yet (first promotion)")
    if parent == champion:
        return RuleCheck(suite=GLOBAL, rule="parent_is_champion", passed=True,
                         note=f"parent is champion version {champion}")
    parent_text = ("has no parent version (trained from the base model, or the parent was not "
                   "given)" if parent is None else f"'s parent is version {parent}")
    return RuleCheck(suite=GLOBAL, rule="parent_is_champion", passed=False,
                     note=f"stale: candidate{' ' if parent is None else ''}{parent_text} but the champion "
                          f"is version {champion}; retrain from the current champion and re-evaluate "
                          "against it")


def _provenance(suite: str, cand: SuiteResult, ref: SuiteResult, stored: Retention | None) -> RuleCheck | None:
    """A failed provenance check, or None when candidate and reference are comparable. `stored`
    (the report's own retention) is only checked for naming these results, never used."""
    if cand.item_ids_hash != ref.item_ids_hash:
        note = (f"candidate and reference scored different items (item_ids_hash "
                f"{cand.item_ids_hash[:12]}… on {len(cand.item_ids)} items vs {ref.item_ids_hash[:12]}… on "
                f"{len(ref.item_ids)}); re-score both models on the same items")
    elif cand.metric != ref.metric or cand.higher_is_better != ref.higher_is_better:
        note = (f"metric {cand.metric!r} (higher_is_better={cand.higher_is_better}) vs {ref.metric!r} "
                f"(higher_is_better={ref.higher_is_better}); re-score both with the same suite version")
    elif stored is not None and (stored.n_items != len(cand.item_ids)
                                 or not math.isclose(stored.candidate_score, _mean(cand), abs_tol=1e-9)
                                 or not math.isclose(stored.reference_score, _mean(ref), abs_tol=1e-9)):
        note = "the report's retention does not match its results; rebuild the report with build_report()"
    else:
        return None
    return RuleCheck(suite=suite, rule="provenance", passed=False, note=note)


def _threshold_check(suite: str, rule: RuleName, measured: float, threshold: float, note: str = "") -> RuleCheck:
    if not _finite(measured):
        return RuleCheck(suite=suite, rule=rule, measured=measured, threshold=threshold, passed=False,
                         note=f"measured value is {measured}; a non-finite statistic cannot pass"
                              + (f"; {note}" if note else ""))
    return RuleCheck(suite=suite, rule=rule, measured=measured, threshold=threshold,
                     passed=measured >= threshold - TOLERANCE, note=note)


def _mean(result: SuiteResult) -> float:
    try:
        return result.score
    except OverflowError:  # math.fsum of huge finite scores
        return math.inf


def _not_finite(suite: str, cand: SuiteResult, ref: SuiteResult | None) -> RuleCheck | None:
    """A failed `finite` check if a per-item score or a mean of `cand` / `ref` is NaN/inf."""
    for who, result in (("candidate", cand), ("reference", ref)):
        if result is None:
            continue
        bad = [(i, v) for i, v in zip(result.item_ids, result.scores, strict=True) if not _finite(v)]
        if bad or not _finite(_mean(result)):
            what = f"item {bad[0][0]!r} scores {bad[0][1]}" if bad else f"mean score {_mean(result)}"
            return RuleCheck(suite=suite, rule="finite", measured=_mean(cand), passed=False,
                             note=f"{who} {what} is not finite; fix the scorer or drop the broken "
                                  "items and re-evaluate")
    return None


def _recomputed(suite: str, report: EvalReport, cand: SuiteResult,
                ref: SuiteResult | None) -> tuple[tuple[float, float], Retention | None] | RuleCheck:
    """(candidate score CI, retention or None) from the per-item scores, or a failed check."""
    n_boot, seed = max(report.n_boot, MIN_BOOT), report.seeds.get("bootstrap", 0)
    try:
        ci = bootstrap_ci(cand.scores, n_boot=n_boot, seed=seed, level=CI_LEVEL)
        ret = None if ref is None else retention(cand, ref, n_boot=n_boot, seed=seed, level=CI_LEVEL)
    except (ValueError, ArithmeticError) as e:  # ComparabilityError is a ValueError
        return RuleCheck(suite=suite, rule="provenance", passed=False,
                         note=f"cannot recompute the statistics from the per-item scores: "
                              f"{' '.join(str(e).split())}")
    if not _finite(*ci):
        return RuleCheck(suite=suite, rule="finite", measured=_mean(cand), passed=False,
                         note=f"candidate score {_fmt(_mean(cand))} / CI {ci} is not finite; fix the "
                              "scorer or drop the broken items and re-evaluate")
    return ci, ret


def _suite_checks(suite: str, report: EvalReport, policy: GatePolicy,
                  new_domain: str | None) -> list[RuleCheck]:
    cand = report.results[suite]
    ref = report.reference_results.get(suite)
    rule = policy.rule_for(suite, new_domain)
    knobs = rule.knobs()
    needs_ref = [k for k in REFERENCE_KNOBS if k in knobs]
    compared = ref if needs_ref else None  # the reference is only read by the knobs that use it
    if bad := _not_finite(suite, cand, compared):
        return [bad]
    if ref is not None and (bad := _provenance(suite, cand, ref, report.retention.get(suite))):
        return [bad]
    stats = _recomputed(suite, report, cand, compared)
    if isinstance(stats, RuleCheck):
        return [stats]
    _, ret = stats  # recomputed; report.score_ci / report.retention are not read
    checks: list[RuleCheck] = []
    score = _mean(cand)
    if "min_score" in knobs:
        note = "" if cand.higher_is_better else "min_score needs a higher-is-better metric; use max_drop"
        checks.append(RuleCheck(suite=suite, rule="min_score", measured=score, threshold=knobs["min_score"],
                                passed=False, note=note) if note else
                      _threshold_check(suite, "min_score", score, knobs["min_score"]))
    if needs_ref and ret is None:
        checks.append(RuleCheck(suite=suite, rule="reference", passed=False,
                                note=f"{', '.join(needs_ref)} compare with the reference, but the report has no "
                                     f"reference result for {suite}; evaluate the champion on it too "
                                     "(build_report(..., reference_results=...))"))
    elif ret is not None:
        checks += _reference_checks(suite, knobs, ret)
    if rule.warn_only:  # its thresholds warn; integrity checks (finite, provenance, ...) still reject
        checks = [c.model_copy(update={"blocking": False}) if c.rule in THRESHOLD_KNOBS else c
                  for c in checks]
    return checks


def _reference_checks(suite: str, knobs: dict[str, float], ret: Retention) -> list[RuleCheck]:
    checks: list[RuleCheck] = []
    if "max_drop" in knobs:
        checks.append(_threshold_check(suite, "max_drop", ret.difference, -knobs["max_drop"],
                                       f"Δ = candidate − reference = {_fmt(ret.difference)}"))
    if "max_relative_drop" in knobs or "min_retention_ci_low" in knobs:
        ratio_ok = ret.reference_score > 0 and ret.candidate_score >= 0
        why = ("" if ratio_ok else f"ratio undefined for scores {_fmt(ret.candidate_score)} / "
               f"{_fmt(ret.reference_score)} (needs a positive reference and non-negative scores); use max_drop")
        for knob, measured, threshold in (
                ("max_relative_drop", ret.ratio, 1.0 - knobs.get("max_relative_drop", 0.0)),
                ("min_retention_ci_low", ret.ratio_ci[0], knobs.get("min_retention_ci_low", 0.0))):
            if knob not in knobs:
                continue
            if knob == "max_relative_drop" and ret.reference_score == 0 and ret.candidate_score >= 0:
                # a champion that scores 0 (e.g. refuses nothing) has nothing to lose: 0/0 kept
                checks.append(RuleCheck(suite=suite, rule=knob, measured=1.0, threshold=threshold,
                                        passed=True, note="the reference scores 0: nothing to lose"))
                continue
            checks.append(RuleCheck(suite=suite, rule=knob, measured=measured, threshold=threshold,
                                    passed=False, note=why) if why else
                          _threshold_check(suite, knob, measured, threshold))
    if "max_drop_if_significant" in knobs:
        guard, (_, high) = knobs["max_drop_if_significant"], ret.difference_ci
        significant = _finite(high) and high < 0
        note = (f"Δ = {_fmt(ret.difference)}, paired 95% CI upper end {_fmt(high)}: "
                + ("the drop is clear of 0" if significant else "not clear of 0, so no reject"))
        checks.append(_threshold_check(suite, "max_drop_if_significant", ret.difference, -guard, note)
                      if significant or not _finite(ret.difference) else
                      RuleCheck(suite=suite, rule="max_drop_if_significant", measured=ret.difference,
                                threshold=-guard, passed=True, note=note))
    if "min_gain" in knobs:
        checks.append(_threshold_check(suite, "min_gain", ret.difference, knobs["min_gain"],
                                       f"gain = candidate − reference = {_fmt(ret.difference)}"))
    return checks


def _sequential_check(name: str, test: SequentialTest, report: EvalReport) -> list[RuleCheck]:
    """The sequential test replayed over the report's paired items (its suites that were scored;
    none: no check). A settled drop or an unsettled test rejects."""
    from sdft_ops.evaluation.sequential import sprt

    where = "+".join(s for s in test.suites if s in report.results)
    try:
        outcome = sprt(name, test, report.results, report.reference_results,
                       seed=report.seeds.get("bootstrap", 0))
    except (KeyError, ValueError) as e:
        return [RuleCheck(suite=where, rule="sequential", passed=False,
                          note=f"{name}: cannot replay the test from the report: {' '.join(str(e).split())}; "
                               "score the candidate and its reference on the same items")]
    if outcome is None:
        return []
    return [RuleCheck(suite=where, rule="sequential", measured=outcome.difference,
                      passed=outcome.passed, note=f"{name}: {outcome.note()}")]


def decide(report: EvalReport, policy: GatePolicy, *, parent_version: str | None,
           champion_version: str | None, new_domain: str | None = None) -> GateDecision:
    """Judge `report` (candidate vs its reference) under `policy`; pure and fail-closed.

    `parent_version` is the registry version the candidate was trained from; `champion_version`
    the current champion (None before the first promotion); `new_domain` the domain this update
    teaches (None: every `domain/*` suite is judged as new). See the module docstring.
    """
    checks = [_parent_check(parent_version, champion_version, policy)]
    for suite in policy.required_suites:
        present = suite in report.results
        checks.append(RuleCheck(suite=suite, rule="required", passed=present,
                                note="scored" if present else
                                "required suite was not scored on the candidate; add it to the evaluation"))
    for suite in report.reference_results:
        if suite not in report.results:
            checks.append(RuleCheck(suite=suite, rule="coverage", passed=False,
                                    note="the reference was scored on this suite but the candidate was "
                                         "not; evaluate the candidate on every suite of the reference"))
    for suite in report.results:
        checks += _suite_checks(suite, report, policy, new_domain)
    for name, test in policy.sequential_for(new_domain).items():
        checks += _sequential_check(name, test, report)
    return GateDecision.from_checks(checks, model_ref=report.model_ref, reference_ref=report.reference_ref,
                                    model_sha256=report.model_sha256, parent_version=parent_version,
                                    champion_version=champion_version)


def decide_from_file(path: str | os.PathLike, policy: GatePolicy, *, parent_version: str | None,
                     champion_version: str | None, new_domain: str | None = None) -> GateDecision:
    """`decide` on a saved report; a report that cannot be read is a reject, not an exception."""
    try:
        report = EvalReport.load(path)
    except Exception as e:  # noqa: BLE001 — fail closed: any unreadable report is a reject
        check = RuleCheck(suite=GLOBAL, rule="report_readable", passed=False, note=_one_line(e, path))
        return GateDecision.from_checks([check], model_ref=str(path), parent_version=parent_version,
                                        champion_version=champion_version)
    return decide(report, policy, parent_version=parent_version, champion_version=champion_version,
                  new_domain=new_domain)


def _one_line(error: Exception, path: str | os.PathLike) -> str:
    """The whole reason a report is unreadable, on one line (pydantic: `field: message; ...`)."""
    cause = error.__cause__ if isinstance(error.__cause__, ValidationError) else error
    if isinstance(cause, ValidationError):
        problems = [line.removeprefix(f"{path}: ") for line in validation_error_lines(cause, path)]
        return (f"{path} is not a valid eval report ({cause.error_count()} problem(s)): "
                + "; ".join(" ".join(p.split()) for p in problems)
                + "; regenerate it with build_report(...).save(path)")
    return " ".join(str(error).split())
