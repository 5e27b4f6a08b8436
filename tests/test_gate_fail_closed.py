"""The gate fails closed: whatever it cannot verify is a failed check with its reason."""

import json
import math

import pytest

from sdft_ops.evaluation.report import EvalReport, build_report
from sdft_ops.gate import GatePolicy, SuiteRule, decide, decide_from_file

from tests.gate_helpers import (
    N,
    binary,
    failed,
    healthy_pairs,
    judge,
    only,
    pair,
    report_of,
    result,
)


def test_missing_required_suite_rejects():
    pairs = [p for p in healthy_pairs() if p[0].suite != "safety_refusal"]
    decision = judge(report_of(pairs))
    assert failed(decision) == [("safety_refusal", "required")]
    assert "safety_refusal" in decision.reasons[0]


def test_suite_scored_only_on_the_reference_rejects():
    extra = result("hellaswag", binary(40))
    decision = judge(report_of(healthy_pairs(), extra_reference=[extra]))
    assert failed(decision) == [("hellaswag", "coverage")]


def test_missing_reference_for_a_relative_rule_rejects():
    decision = judge(report_of(healthy_pairs(), extra_candidate=[result("domain/triage", binary(60))]))
    assert failed(decision) == [("domain/triage", "reference")]
    assert "evaluate the champion" in decision.reasons[0]


def test_min_score_needs_no_reference():
    report = build_report("cand", [result("domain/triage", binary(60))], n_boot=50,
                          created_at="2026-01-02T03:04:05+00:00")
    assert judge(report, only(SuiteRule(min_score=0.5))).promote
    assert failed(judge(report, only(SuiteRule(min_score=0.7)))) == [("domain/triage", "min_score")]


def _with(report: EvalReport, **changes) -> EvalReport:
    data = json.loads(report.model_dump_json())
    for path, value in changes.items():
        node = data
        *parents, leaf = path.split(".")
        for key in parents:
            node = node[key.replace("~", "/")]
        node[leaf] = value
    return EvalReport.model_validate(data)


def overflowing_pair(suite="arc_easy"):
    """Finite per-item scores whose Δ overflows to -inf: a non-finite statistic from real scores."""
    return result(suite, [-1e308], metric="m"), result(suite, [1e308], metric="m")


def test_non_finite_statistic_rejects():
    decision = judge(report_of([*healthy_pairs(), overflowing_pair("hellaswag")]))
    # the guard on hellaswag, and the pooled prior test that includes it
    assert failed(decision) == [("hellaswag", "max_drop_if_significant"), ("arc_easy+hellaswag+mmlu", "sequential")]
    assert math.isinf(next(c.measured for c in decision.checks
                           if c.rule == "max_drop_if_significant" and c.suite == "hellaswag"))
    assert "non-finite" in decision.reasons[0]


def test_nan_reference_score_rejects():
    report = report_of(healthy_pairs())
    data = json.loads(report.model_dump_json())
    data["reference_results"]["arc_easy"]["scores"][3] = "NaN"
    decision = judge(EvalReport.model_validate(data))
    assert failed(decision) == [("arc_easy", "finite")]
    assert f"reference item '{data['reference_results']['arc_easy']['item_ids'][3]}'" in decision.reasons[0]


@pytest.mark.parametrize("edit", [
    {"retention.arc_easy.difference": "NaN"},
    {"retention.mmlu.difference": -0.5},
    {"retention.domain~tooluse.difference": -1.0},
    {"retention.safety_refusal.ratio": 0.1, "retention.safety_refusal.ratio_ci": [0.0, 0.1]},
    {"retention.safety_refusal.difference_ci": [-1.0, -0.9]},
    {"score_ci.mmlu": ["NaN", "NaN"]},
])
def test_edited_derived_fields_in_a_saved_report_change_nothing(tmp_path, edit):
    policy = GatePolicy(rules={**GatePolicy().rules, "safety_refusal": SuiteRule(
        max_drop=0.02, max_relative_drop=0.05, min_retention_ci_low=0.9)})
    report = report_of(healthy_pairs())
    honest = decide_from_file(report.save(tmp_path / "honest.json"), policy,
                              parent_version="3", champion_version="3")
    edited = decide_from_file(_with(report, **edit).save(tmp_path / "edited.json"), policy,
                              parent_version="3", champion_version="3")
    assert honest.promote, honest.reasons
    assert (edited.promote, edited.checks, edited.reasons) == (honest.promote, honest.checks, honest.reasons)


def test_a_real_change_in_per_item_scores_changes_the_decision(tmp_path):
    data = json.loads(report_of(healthy_pairs()).model_dump_json())
    data["results"]["mmlu"]["scores"][:20] = [0.0] * 20  # 28 → 8 correct; stored retention untouched
    data["retention"]["mmlu"]["candidate_score"] = 0.08  # keep the stored record naming these results
    path = EvalReport.model_validate(data).save(tmp_path / "worse.json")
    decision = decide_from_file(path, GatePolicy(), parent_version="3", champion_version="3")
    assert failed(decision) == [("mmlu", "max_drop_if_significant")]  # 20 points lost, CI clear of 0
    check = next(c for c in decision.checks if c.suite == "mmlu" and c.rule == "max_drop_if_significant")
    assert check.measured == pytest.approx(-0.19)
    assert data["retention"]["mmlu"]["difference"] == pytest.approx(0.01)  # the stale stored Δ


def test_binary_suite_with_a_non_binary_score_fails_closed():
    data = json.loads(report_of(healthy_pairs()).model_dump_json())
    data["results"]["mmlu"]["scores"][0] = 0.5  # still "binary": retention refuses to compute
    data["retention"]["mmlu"]["candidate_score"] = 27.5 / N
    decision = judge(EvalReport.model_validate(data))
    assert failed(decision) == [("mmlu", "provenance")]
    assert "cannot recompute" in decision.reasons[0] and "binary" in decision.reasons[0]


def test_nan_candidate_score_rejects():
    report = report_of(healthy_pairs())
    data = json.loads(report.model_dump_json())
    data["results"]["mmlu"]["scores"][0] = "NaN"
    data["results"]["mmlu"]["item_ids_hash"] = ""
    decision = judge(EvalReport.model_validate(data))
    assert failed(decision) == [("mmlu", "finite")]


def test_provenance_mismatch_rejects():
    report = report_of(healthy_pairs())
    data = json.loads(report.model_dump_json())
    other = result("mmlu", binary(27), ids=[f"mmlu/other/{i}" for i in range(N)])
    data["reference_results"]["mmlu"] = json.loads(other.model_dump_json())
    decision = judge(EvalReport.model_validate(data))
    # and the pooled prior test, which cannot pair mmlu's items either
    assert failed(decision) == [("mmlu", "provenance"), ("arc_easy+mmlu", "sequential")]
    assert "different items" in decision.reasons[0]


def test_retention_that_does_not_match_the_results_rejects():
    report = _with(report_of(healthy_pairs()), **{"retention.arc_easy.candidate_score": 0.9})
    decision = judge(report)
    assert failed(decision) == [("arc_easy", "provenance")]


def test_stale_parent_rejects_and_first_promotion_does_not_need_one():
    report = report_of(healthy_pairs())
    stale = judge(report, parent="2", champion="3")
    assert failed(stale) == [("*", "parent_is_champion")]
    assert "stale" in stale.reasons[0] and "champion is version 3" in stale.reasons[0]
    assert judge(report, parent=None, champion=None).promote
    assert not judge(report, parent=None, champion="3").promote
    assert judge(report, GatePolicy(require_parent_is_champion=False), parent="2", champion="3").promote


def test_only_the_new_domain_must_gain_and_earlier_domains_must_be_kept():
    pairs = [*healthy_pairs(), pair("domain/knowledge", 40, 39)]  # taught before, one item lost
    assert ("domain/knowledge", "min_gain") in failed(judge(report_of(pairs)))  # all judged as new
    kept = decide(report_of(pairs), GatePolicy(), parent_version="3", champion_version="3",
                  new_domain="tooluse")
    assert kept.promote, kept.reasons
    assert [c.rule for c in kept.checks if c.suite == "domain/knowledge"] == ["max_drop"]
    forgotten = [*healthy_pairs(), pair("domain/knowledge", 40, 30)]
    decision = decide(report_of(forgotten), GatePolicy(), parent_version="3", champion_version="3",
                      new_domain="tooluse")
    assert failed(decision) == [("domain/knowledge", "max_drop")]
    worse = [*healthy_pairs()[:4], pair("domain/tooluse", 20, 19), *healthy_pairs()[5:]]
    decision = decide(report_of(worse), GatePolicy(), parent_version="3", champion_version="3",
                      new_domain="tooluse")
    assert failed(decision) == [("domain/tooluse", "min_gain")]
    no_gain = [*healthy_pairs()[:4], pair("domain/tooluse", 20, 20), *healthy_pairs()[5:]]
    assert decide(report_of(no_gain), GatePolicy(), parent_version="3", champion_version="3",
                  new_domain="tooluse").promote  # a no-op does not hurt its domain
