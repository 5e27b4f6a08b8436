"""Bootstrap CIs, McNemar, paired retention and continual-learning metrics against hand-computed values."""

import math

import numpy as np
import pytest

from sdft_ops.evaluation.metrics import (AccuracyMatrix, ComparabilityError, Retention, bootstrap_ci,
                                         check_comparable, mcnemar_exact, retention)
from sdft_ops.evaluation.types import SuiteResult


def suite_result(scores, suite="mmlu", ids=None, binary=None, higher_is_better=True, metric="acc"):
    scores = [float(s) for s in scores]
    ids = ids if ids is not None else [f"q{i}" for i in range(len(scores))]
    if binary is None:
        binary = all(s in (0.0, 1.0) for s in scores)
    return SuiteResult(suite=suite, kind="multiple_choice", metric=metric, binary=binary,
                       higher_is_better=higher_is_better, item_ids=tuple(ids), scores=tuple(scores))


# ---------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_deterministic_per_seed_and_contains_the_mean():
    scores = np.random.default_rng(1).random(150)
    a = bootstrap_ci(scores, n_boot=1000, seed=7)
    assert a == bootstrap_ci(scores, n_boot=1000, seed=7)
    assert a != bootstrap_ci(scores, n_boot=1000, seed=8)
    assert a[0] < scores.mean() < a[1]


def test_bootstrap_width_matches_the_normal_approximation():
    # For n = 400 iid scores the 95% interval of the mean is about ±1.96·sd/√n.
    scores = np.random.default_rng(2).normal(0.5, 0.2, size=400)
    low, high = bootstrap_ci(scores, n_boot=2000, seed=0)
    expected = 2 * 1.96 * scores.std() / math.sqrt(scores.size)
    assert high - low == pytest.approx(expected, rel=0.15)
    assert (low + high) / 2 == pytest.approx(scores.mean(), abs=0.01)


def test_bootstrap_of_constant_scores_is_a_point_and_level_widens_it():
    assert bootstrap_ci([0.25] * 30) == (0.25, 0.25)
    scores = np.random.default_rng(3).random(80)
    lo90, hi90 = bootstrap_ci(scores, level=0.90)
    lo99, hi99 = bootstrap_ci(scores, level=0.99)
    assert lo99 < lo90 and hi90 < hi99


@pytest.mark.parametrize("scores, kwargs, match", [
    ([], {}, "non-empty"),
    ([0.1, float("nan")], {}, r"scores\[1\]"),
    ([0.1, 0.2], {"n_boot": 0}, "n_boot"),
    ([0.1, 0.2], {"level": 1.0}, "level"),
])
def test_bootstrap_rejects_bad_input(scores, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(scores, **kwargs)


# ---------------------------------------------------------------------------- McNemar


def test_mcnemar_known_values():
    # b=10, c=2: n=12, P(X<=2) = (C(12,0)+C(12,1)+C(12,2)) / 2^12 = (1+12+66)/4096 = 79/4096,
    # p = 2·79/4096 = 158/4096 = 0.03857421875.
    assert mcnemar_exact(10, 2) == pytest.approx(158 / 4096, rel=1e-12)
    assert mcnemar_exact(10, 2) == pytest.approx(0.03857421875, rel=1e-12)
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)
    # b=0, c=5: p = 2·C(5,0)/2^5 = 2/32.
    assert mcnemar_exact(0, 5) == 0.0625
    # b=3, c=0: p = 2/8.
    assert mcnemar_exact(3, 0) == 0.25
    # b=c: P(X<=b) >= 1/2, so p clips to 1.
    assert mcnemar_exact(7, 7) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    # large counts stay exact and in range: b=0, c=60 → 2/2^60.
    assert mcnemar_exact(0, 60) == pytest.approx(2.0**-59, rel=1e-12)


@pytest.mark.parametrize("b, c", [(-1, 2), (1.5, 2), (True, 1)])
def test_mcnemar_rejects_non_counts(b, c):
    with pytest.raises(ValueError, match="non-negative integers"):
        mcnemar_exact(b, c)


# ---------------------------------------------------------------------------- comparability


def test_comparability_refused_for_different_items():
    a = suite_result([1, 0, 1], ids=["a", "b", "c"])
    b = suite_result([1, 0, 1], ids=["a", "b", "d"])
    with pytest.raises(ComparabilityError) as info:
        check_comparable(a, b)
    message = str(info.value)
    assert a.item_ids_hash[:12] in message and b.item_ids_hash[:12] in message
    assert "re-score" in message
    with pytest.raises(ComparabilityError):
        retention(a, b)


def test_comparability_refused_for_different_suites_and_directions():
    with pytest.raises(ComparabilityError, match="'mmlu'.*'arc'"):
        check_comparable(suite_result([1, 0]), suite_result([1, 0], suite="arc"))
    with pytest.raises(ComparabilityError, match="higher_is_better"):
        check_comparable(suite_result([1, 0]), suite_result([1, 0], higher_is_better=False))
    check_comparable(suite_result([1, 0], ids=["x", "y"]), suite_result([0, 1], ids=["y", "x"]))


# ---------------------------------------------------------------------------- retention


def test_identical_models_give_exactly_zero_difference():
    scores = np.random.default_rng(4).integers(0, 2, size=120)
    r = retention(suite_result(scores), suite_result(scores), n_boot=500)
    assert r.difference == 0.0 and r.difference_ci == (0.0, 0.0)
    assert r.ratio == 1.0 and r.ratio_ci == (1.0, 1.0)
    assert r.mcnemar_p == 1.0 and r.n_items == 120


def test_paired_bootstrap_detects_a_shift_hidden_by_item_variance():
    # Item difficulty varies a lot (sd ≈ 0.29) but the candidate is +0.05 on every item (±0.01).
    # An unpaired CI of the difference would be ≈ ±0.057 wide and contain 0; the paired one must not.
    rng = np.random.default_rng(5)
    ref = rng.random(200) * 0.9
    cand = ref + 0.05 + rng.normal(0.0, 0.01, size=200)
    r = retention(suite_result(cand), suite_result(ref), n_boot=1000)
    low, high = r.difference_ci
    assert 0.0 < low < 0.05 < high
    assert high - low < 0.01
    assert r.mcnemar_p is None
    assert r.ratio_ci[0] > 1.0


def test_retention_aligns_items_by_id():
    ids = [f"q{i}" for i in range(40)]
    scores = [(i * 7) % 3 / 2 for i in range(40)]  # 0, 0.5 or 1, not sorted
    shuffled = np.random.default_rng(6).permutation(40)
    reference = suite_result([scores[i] for i in shuffled], ids=[ids[i] for i in shuffled])
    r = retention(suite_result(scores, ids=ids), reference, n_boot=300)
    assert r.difference_ci == (0.0, 0.0)  # misaligned pairs would give a non-zero spread
    in_order = retention(suite_result(scores, ids=ids), suite_result(scores, ids=ids), n_boot=300)
    assert r == in_order


def test_retention_mcnemar_counts_discordant_items():
    # 10 items candidate-right/reference-wrong, 2 the other way, 20 both right, 8 both wrong.
    cand = [1] * 10 + [0] * 2 + [1] * 20 + [0] * 8
    ref = [0] * 10 + [1] * 2 + [1] * 20 + [0] * 8
    r = retention(suite_result(cand), suite_result(ref), n_boot=200)
    assert r.mcnemar_p == pytest.approx(158 / 4096)
    assert r.candidate_score == 30 / 40 and r.reference_score == 22 / 40
    assert r.difference == pytest.approx(8 / 40)
    assert r.ratio == pytest.approx(30 / 22)


def test_lower_is_better_suite_ratio_and_difference_point_to_better():
    # error-like metric: candidate 0.2, reference 0.4 → candidate is better.
    cand = suite_result([0.1, 0.3, 0.2, 0.2], higher_is_better=False, metric="ppl_gap")
    ref = suite_result([0.3, 0.5, 0.4, 0.4], higher_is_better=False, metric="ppl_gap")
    r = retention(cand, ref, n_boot=300)
    assert r.ratio == pytest.approx(0.4 / 0.2)
    assert r.difference == pytest.approx(0.2)
    assert r.difference_ci[0] > 0.0 and r.ratio_ci[0] > 1.0
    # the same numbers with higher_is_better=True: candidate is worse.
    up = retention(suite_result(cand.scores), suite_result(ref.scores), n_boot=300)
    assert up.ratio == pytest.approx(0.5) and up.difference == pytest.approx(-0.2)


def test_zero_reference_ratio_rule():
    assert retention(suite_result([1, 0, 0]), suite_result([0, 0, 0])).ratio == math.inf
    both_zero = retention(suite_result([0, 0, 0]), suite_result([0, 0, 0]))
    assert math.isnan(both_zero.ratio) and all(math.isnan(v) for v in both_zero.ratio_ci)
    assert both_zero.difference_ci == (0.0, 0.0)


def test_retention_is_seeded():
    rng = np.random.default_rng(7)
    cand, ref = suite_result(rng.random(60)), suite_result(rng.random(60))
    assert retention(cand, ref, seed=1) == retention(cand, ref, seed=1)
    assert retention(cand, ref, seed=1).difference_ci != retention(cand, ref, seed=2).difference_ci


def test_binary_flag_with_non_binary_scores_is_refused():
    with pytest.raises(ValueError, match="binary"):
        retention(suite_result([0.5, 1.0], binary=True), suite_result([1.0, 0.0], binary=True))


def test_retention_json_round_trip_keeps_non_finite_values():
    r = retention(suite_result([1, 0, 0]), suite_result([0, 0, 0]))
    back = Retention.model_validate_json(r.model_dump_json())
    assert back.ratio == math.inf and back.difference_ci == r.difference_ci


# ---------------------------------------------------------------------------- accuracy matrix


def chain_matrix(**overrides):
    fields = dict(
        tasks=["prior", "A", "B"],
        stages=["base", "update1", "update2"],
        # base A is deliberately high: forgetting must only look at stages >= where A was learned.
        values=[[0.80, 0.90, math.nan],
                [0.85, 0.70, 0.20],
                [0.70, 0.65, 0.65]],
        learned_at={"A": 1, "B": 2},
    )
    fields.update(overrides)
    return AccuracyMatrix(**fields)


def test_accuracy_matrix_hand_computed():
    m = chain_matrix()
    # ACC = (0.70 + 0.65 + 0.65) / 3 = 2.00 / 3
    assert m.average_accuracy() == pytest.approx(2.0 / 3.0)
    # T* = {prior (t=0, base row), A (t=1)}; B is learned at the last stage and is excluded.
    # BWT = ((0.70 - 0.80) + (0.65 - 0.70)) / 2 = (-0.10 - 0.05) / 2 = -0.075
    assert m.bwt() == pytest.approx(-0.075)
    # f_prior = max(0.80, 0.85) - 0.70 = 0.15;  f_A = max(0.70) - 0.65 = 0.05 (base 0.90 ignored)
    # mean = (0.15 + 0.05) / 2 = 0.10
    f = m.forgetting()
    assert set(f.per_task) == {"prior", "A"}
    assert f.per_task["prior"] == pytest.approx(0.15)
    assert f.per_task["A"] == pytest.approx(0.05)
    assert f.mean == pytest.approx(0.10)


def test_select_keeps_stages_and_learned_at_of_the_chosen_tasks_only():
    m = chain_matrix().select(["A", "B"])
    assert m.tasks == ["A", "B"] and m.learned_at == {"A": 1, "B": 2}
    # only A is learned before the last stage: BWT = 0.65 - 0.70, forgetting 0.05
    assert m.bwt() == pytest.approx(-0.05) and m.forgetting().mean == pytest.approx(0.05)
    assert m.average_accuracy() == pytest.approx((0.65 + 0.65) / 2)
    with pytest.raises(ValueError, match="unknown tasks"):
        chain_matrix().select(["drift"])


def test_improvement_is_positive_bwt_and_zero_forgetting():
    m = AccuracyMatrix(tasks=["prior", "A"], stages=["base", "update1", "update2"],
                       values=[[0.5, 0.1], [0.6, 0.4], [0.7, 0.5]], learned_at={"A": 1})
    # BWT = ((0.7 - 0.5) + (0.5 - 0.4)) / 2 = 0.15; forgetting clipped at 0 for both.
    assert m.bwt() == pytest.approx(0.15)
    assert m.forgetting().per_task == {"prior": 0.0, "A": 0.0}


def test_nan_cells_are_skipped_where_not_needed():
    # prior not evaluated after update1: forgetting uses max(0.80) only → 0.80 - 0.70 = 0.10.
    m = chain_matrix(values=[[0.80, 0.90, math.nan], [math.nan, 0.70, 0.20], [0.70, 0.65, 0.65]])
    assert m.forgetting().per_task["prior"] == pytest.approx(0.10)
    assert m.bwt() == pytest.approx(-0.075)


def test_nan_where_a_value_is_needed_is_a_clear_error():
    final_nan = chain_matrix(values=[[0.8, 0.9, math.nan], [0.85, 0.7, 0.2], [0.7, math.nan, 0.65]])
    with pytest.raises(ValueError, match=r"'update2'.*\['A'\]"):
        final_nan.average_accuracy()
    learned_nan = chain_matrix(values=[[0.8, 0.9, math.nan], [0.85, math.nan, 0.2], [0.7, 0.65, 0.65]])
    with pytest.raises(ValueError, match=r"R\['update1'\]\['A'\] is NaN"):
        learned_nan.bwt()
    with pytest.raises(ValueError, match="two stages"):
        AccuracyMatrix(tasks=["a"], stages=["base"], values=[[0.5]]).bwt()


@pytest.mark.parametrize("overrides, match", [
    ({"values": [[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]]}, "2 rows for 3 stages"),
    ({"values": [[0.1, 0.2, 0.3], [0.1, 0.2], [0.1, 0.2, 0.3]]}, r"row 1 \('update1'\) has 2 values"),
    ({"learned_at": {"C": 1}}, "unknown task 'C'"),
    ({"learned_at": {"A": 3}}, "not a stage index"),
    ({"tasks": ["A", "A", "B"]}, "duplicate"),
    ({"values": [[0.1, 0.2, 0.3], [0.1, math.inf, 0.3], [0.1, 0.2, 0.3]]}, "infinite"),
])
def test_accuracy_matrix_shape_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        chain_matrix(**overrides)


def test_accuracy_matrix_json_round_trip_keeps_nan():
    m = chain_matrix()
    back = AccuracyMatrix.model_validate_json(m.model_dump_json())
    assert math.isnan(back.values[0][2])
    assert back.bwt() == m.bwt() and back.learned_at == m.learned_at
