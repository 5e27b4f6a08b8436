"""EvalReport: building, JSON round trip, atomic save/load, markdown and plots."""

import json
import math
import re

import numpy as np
import pytest

from sdft_ops.evaluation.metrics import AccuracyMatrix, ComparabilityError
from sdft_ops.evaluation.report import EvalReport, build_report, plot_accuracy_matrix, plot_retention
from sdft_ops.evaluation.types import SuiteResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def suite_result(suite, scores, kind="multiple_choice", metric="acc", higher_is_better=True, ids=None):
    scores = [float(s) for s in scores]
    return SuiteResult(suite=suite, kind=kind, metric=metric, higher_is_better=higher_is_better,
                       binary=all(s in (0.0, 1.0) for s in scores),
                       item_ids=tuple(ids or [f"{suite}-{i}" for i in range(len(scores))]),
                       scores=tuple(scores))


def results_pair():
    rng = np.random.default_rng(0)
    mc_ref = rng.integers(0, 2, size=60)
    mc_cand = np.where(rng.random(60) < 0.1, 1 - mc_ref, mc_ref)
    gen_ref = rng.random(40)
    candidate = [
        suite_result("mmlu", mc_cand),
        suite_result("gsm8k_gen", np.clip(gen_ref + 0.05, 0, 1), kind="generation", metric="rougeL"),
        suite_result("drift", rng.random(30) * 0.2, kind="drift", metric="kl", higher_is_better=False),
        suite_result("new_domain", rng.integers(0, 2, size=25)),  # candidate only
    ]
    reference = [
        suite_result("mmlu", mc_ref),
        suite_result("gsm8k_gen", gen_ref, kind="generation", metric="rougeL"),
        suite_result("drift", rng.random(30) * 0.3, kind="drift", metric="kl", higher_is_better=False),
        suite_result("ifeval", rng.integers(0, 2, size=20), kind="instruction_following"),  # reference only
    ]
    return candidate, reference


@pytest.fixture
def report():
    candidate, reference = results_pair()
    return build_report("runs/7/final", candidate, reference_ref="champion-v3", reference_results=reference,
                        config={"suites": ["mmlu"], "max_new_tokens": 64}, seed=3, n_boot=500,
                        created_at="2026-01-02T03:04:05+00:00", code_version="0.1.0")


def test_build_report_covers_suites(report):
    assert list(report.results) == ["mmlu", "gsm8k_gen", "drift", "new_domain"]
    assert set(report.retention) == {"mmlu", "gsm8k_gen", "drift"}
    assert set(report.score_ci) == set(report.results)
    for suite, (low, high) in report.score_ci.items():
        assert low <= report.results[suite].score <= high
    assert report.retention["gsm8k_gen"].difference_ci[0] > 0.0  # +0.05 on every item, paired
    assert report.retention["mmlu"].mcnemar_p is not None
    assert report.retention["gsm8k_gen"].mcnemar_p is None
    assert report.seeds == {"bootstrap": 3} and report.n_boot == 500


def test_build_report_is_deterministic_and_seeded():
    candidate, reference = results_pair()
    kwargs = dict(reference_ref="c", reference_results=reference, n_boot=300, created_at="2026-01-01T00:00:00")
    a = build_report("m", candidate, seed=1, **kwargs)
    assert a == build_report("m", candidate, seed=1, **kwargs)
    assert a.score_ci != build_report("m", candidate, seed=2, **kwargs).score_ci


def test_build_report_without_reference(report):
    candidate, _ = results_pair()
    plain = build_report("m", {r.suite: r for r in candidate}, n_boot=100)
    assert plain.retention == {} and plain.reference_results == {} and plain.reference_ref is None
    assert plain.created_at.endswith("+00:00")


def test_build_report_refuses_bad_inputs():
    candidate, reference = results_pair()
    with pytest.raises(ValueError, match="reference_ref"):
        build_report("m", candidate, reference_results=reference, n_boot=50)
    with pytest.raises(ValueError, match="holds suite 'mmlu'"):
        build_report("m", {"arc": candidate[0]}, n_boot=50)
    with pytest.raises(ValueError, match="given twice"):
        build_report("m", [candidate[0], candidate[0]], n_boot=50)
    other_items = suite_result("mmlu", [1, 0, 1], ids=["x", "y", "z"])
    with pytest.raises(ComparabilityError, match="re-score"):
        build_report("m", [candidate[0]], reference_ref="c", reference_results=[other_items], n_boot=50)


def test_report_validator_rejects_inconsistent_retention(report):
    data = report.model_dump()
    data["retention"].pop("mmlu")
    with pytest.raises(ValueError, match="retention covers"):
        EvalReport.model_validate(data)


def test_json_round_trip_is_exact(report):
    text = report.model_dump_json()
    json.loads(text)  # strict JSON
    back = EvalReport.model_validate_json(text)
    assert back == report
    assert isinstance(back.score_ci["mmlu"], tuple)


def test_json_round_trip_keeps_non_finite_ratios():
    zero_ref = suite_result("mmlu", [0, 0, 0, 0])
    r = build_report("m", [suite_result("mmlu", [1, 0, 1, 0])], reference_ref="c",
                     reference_results=[zero_ref], n_boot=50)
    text = r.model_dump_json()
    json.loads(text)
    assert EvalReport.model_validate_json(text).retention["mmlu"].ratio == math.inf


def test_save_load_round_trip_is_atomic(report, tmp_path):
    path = tmp_path / "deep" / "eval_report.json"
    assert report.save(path) == path
    assert EvalReport.load(path) == report
    report.save(path)  # overwrite in place
    assert EvalReport.load(path) == report
    assert [p.name for p in path.parent.iterdir()] == ["eval_report.json"]  # no temp files left


@pytest.mark.parametrize("content", ['{"model_ref": "m", "results": {', '{"model_ref": "m"}', "\x00\x01"])
def test_load_of_invalid_file_names_the_file(tmp_path, content):
    path = tmp_path / "broken_report.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="broken_report.json"):
        EvalReport.load(path)


def test_load_of_missing_file_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="nowhere.json"):
        EvalReport.load(tmp_path / "nowhere.json")


def test_markdown_has_a_row_per_suite(report):
    md = report.to_markdown()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| suite")]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == ["mmlu", "gsm8k_gen", "drift", "new_domain",
                                                                "ifeval"]
    by_suite = {row.split(" | ")[0].strip("| "): row.split(" | ") for row in rows}
    assert all(len(cells) == 8 for cells in by_suite.values())
    mmlu = by_suite["mmlu"]
    assert mmlu[2] == "60"
    assert re.fullmatch(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", mmlu[3])
    assert mmlu[3].startswith(f"{report.results['mmlu'].score:.3f}")
    assert re.fullmatch(r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]", mmlu[6])
    assert re.fullmatch(r"(<0\.001|\d\.\d{3}) \|", mmlu[7])
    assert by_suite["gsm8k_gen"][7] == "— |"  # not binary: no McNemar
    assert by_suite["new_domain"][4] == "—" and by_suite["ifeval"][3] == "—"
    assert "↓" in by_suite["drift"][1] and "champion-v3" in md


def test_markdown_escapes_pipes():
    r = build_report("m", [suite_result("a|b", [1, 0, 1])], n_boot=20)
    assert "| a\\|b |" in r.to_markdown()


def test_plot_retention_writes_png(report, tmp_path):
    path = plot_retention(report, tmp_path / "plots" / "retention.png")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000


def test_plot_retention_survives_infinite_ratio_and_refuses_no_reference(tmp_path):
    r = build_report("m", [suite_result("mmlu", [1, 0, 1, 0]), suite_result("arc", [1, 1, 0, 1])],
                     reference_ref="c", n_boot=50,
                     reference_results=[suite_result("mmlu", [0, 0, 0, 0]), suite_result("arc", [1, 0, 0, 1])])
    assert plot_retention(r, tmp_path / "inf.png").read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="no retention"):
        plot_retention(build_report("m", [suite_result("mmlu", [1, 0])], n_boot=20), tmp_path / "x.png")


def test_plot_accuracy_matrix_writes_png(tmp_path):
    m = AccuracyMatrix(tasks=["prior", "A", "B"], stages=["base", "update1", "update2"],
                       values=[[0.8, 0.3, math.nan], [0.75, 0.7, 0.2], [0.7, 0.65, 0.6]],
                       learned_at={"A": 1, "B": 2})
    path = plot_accuracy_matrix(m, tmp_path / "matrix.png")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000
