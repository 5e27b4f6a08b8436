"""Reports and policies for the gate tests: per-item results, paired suites, a healthy candidate."""

from pathlib import Path

from sdft_ops.evaluation.report import build_report
from sdft_ops.evaluation.sequential import evaluation_order, order_key
from sdft_ops.evaluation.types import SuiteResult
from sdft_ops.gate import GatePolicy, SuiteRule, decide

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "gate.yaml"
N = 100


def result(suite, scores, *, kind="multiple_choice", metric="acc", ids=None, gold_prob=None):
    """Item ids (unless given) are in the seeded evaluation order of seed 0, so that "the first k
    items" are the first k a sequential test reads. A multiple-choice result also gets the continuous `gold_prob` of the gate's pooled prior
    test: `gold_prob` if given, else 0.3 + 0.4 × the item's 0/1 score."""
    scores = [float(s) for s in scores]
    item_scores = {}
    if kind == "multiple_choice":
        item_scores["gold_prob"] = tuple(gold_prob if gold_prob is not None else [0.3 + 0.4 * s for s in scores])
    return SuiteResult(suite=suite, kind=kind, metric=metric, binary=all(s in (0.0, 1.0) for s in scores),
                       item_ids=tuple(ids or evaluation_order([f"{suite}/{i}" for i in range(len(scores))],
                                                               order_key(0, suite))), scores=tuple(scores),
                       item_scores=item_scores)


def binary(correct: int, n: int = N) -> list[float]:
    return [1.0] * correct + [0.0] * (n - correct)


def pair(suite, ref_correct, cand_correct, **kw):
    """Reference gets the first `ref_correct` items right, candidate the first `cand_correct`."""
    return result(suite, binary(cand_correct), **kw), result(suite, binary(ref_correct), **kw)


def report_of(pairs, *, extra_candidate=(), extra_reference=()):
    cand = [c for c, _ in pairs] + list(extra_candidate)
    ref = [r for _, r in pairs] + list(extra_reference)
    return build_report("runs/7/final", cand, reference_ref="champion-v3", reference_results=ref,
                        seed=0, n_boot=200, created_at="2026-01-02T03:04:05+00:00", code_version="t")


def healthy_pairs():
    """A candidate that keeps prior and safety skills and learns its domain."""
    drift_ref = [-1.0 - 0.01 * i for i in range(40)]
    return [pair("arc_easy", 55, 54), pair("mmlu", 27, 28), pair("safety_refusal", 80, 80),
            pair("safety_benign_compliance", 90, 89), pair("domain/tooluse", 20, 45),
            (result("drift", [s - 0.02 for s in drift_ref], kind="drift", metric="mean_logprob"),
             result("drift", drift_ref, kind="drift", metric="mean_logprob"))]


def only(rule: SuiteRule, **policy) -> GatePolicy:
    return GatePolicy(default_rule=rule, safety_rule=rule, domain_rule=rule, rules={"drift": SuiteRule(max_drop=1)},
                      required_suites=[], **policy)


def failed(decision):
    return [(c.suite, c.rule) for c in decision.checks if not c.passed]


def judge(report, policy=None, parent="3", champion="3"):
    return decide(report, policy or GatePolicy(), parent_version=parent, champion_version=champion)


# ---------------------------------------------------------------------------- defaults
