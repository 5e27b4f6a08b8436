"""Metric loggers and MLflow run conventions, against a real sqlite MLflow store per test."""

import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from sdft_ops.evaluation.report import build_report
from sdft_ops.evaluation.types import SuiteResult
from sdft_ops.gate import GatePolicy, decide
from sdft_ops.mlflow_store import resolve_tracking_uri, tracking_uri
from sdft_ops.tracking import (
    TAG_CHAIN,
    TAG_CHAIN_DEPTH,
    TAG_PARENT_RUN,
    TAG_PARENT_VERSION,
    ArtifactLogger,
    InMemoryLogger,
    MetricLogger,
    MlflowLogger,
    eval_metrics,
    flatten_config,
    log_eval_artifacts,
    log_eval_report,
    metric_key,
    start_update_run,
    system_metrics_available,
)




@pytest.fixture
def store(home, mlflow_template, monkeypatch) -> str:
    """A fresh sqlite store at <home>/mlflow.db; this test's tracking URI."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(mlflow_template, home / "mlflow.db")
    uri = tracking_uri(home)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return uri


def _result(suite, scores, **kw):
    return SuiteResult(suite=suite, kind=kw.pop("kind", "multiple_choice"), metric="acc", binary=True,
                       item_ids=tuple(f"{suite}/{i}" for i in range(len(scores))), scores=tuple(scores), **kw)


@pytest.fixture
def report():
    cand = [_result("arc_easy", [1.0] * 30 + [0.0] * 10, metrics={"acc_norm": 0.7}),
            _result("domain/tooluse", [1.0] * 25 + [0.0] * 15)]
    ref = [_result("arc_easy", [1.0] * 28 + [0.0] * 12), _result("domain/tooluse", [1.0] * 10 + [0.0] * 30)]
    return build_report("runs/1/final", cand, reference_ref="champion", reference_results=ref, n_boot=100,
                        created_at="2026-01-02T03:04:05+00:00", code_version="t")


# ---------------------------------------------------------------------------- pure helpers


def test_uris(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri(None, tmp_path) == tracking_uri(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://mlflow:5000"
    assert resolve_tracking_uri("sqlite:///x.db", tmp_path) == "sqlite:///x.db"


def test_in_memory_logger_follows_the_protocol(tmp_path):
    logger = InMemoryLogger()
    assert isinstance(logger, MetricLogger) and isinstance(logger, ArtifactLogger)
    logger.log_config({"lr": 1e-5})
    logger.log_dict({"train/loss": 2.0, "train/kl": 0.1}, step=1)
    logger.log_dict({"train/loss": 1.5}, step=2)
    (tmp_path / "a.txt").write_text("hi")
    logger.log_artifact(tmp_path / "a.txt", "eval")
    logger.close()
    assert logger.history("train/loss") == [(1, 2.0), (2, 1.5)]
    assert logger.latest() == {"train/loss": 1.5, "train/kl": 0.1}
    assert logger.config == {"lr": 1e-5} and logger.artifacts == {"eval/a.txt": b"hi"} and logger.closed
    with pytest.raises(TypeError, match="not a number"):
        logger.log_dict({"train/note": "hello"}, step=3)


def test_flatten_config_truncates_to_mlflow_limits():
    flat = flatten_config({"model": {"name": "x", "lora": {"r": 16}}, "suites": ["a", "b"], "long": "y" * 7000,
                           "k" * 300: 1, "empty": {}})
    assert flat["model.name"] == "x" and flat["model.lora.r"] == "16" and flat["suites"] == '["a", "b"]'
    assert len(flat["long"]) == 6000 and flat["long"].endswith("…")
    assert "k" * 250 in flat and flat["empty"] == "{}"
    assert metric_key("eval/domain/tooluse/acc@1") == "eval/domain/tooluse/acc_1"


def test_eval_metrics_keys(report):
    metrics = eval_metrics(report)
    for suite in ("arc_easy", "domain/tooluse"):
        for name in ("score", "ci_low", "ci_high", "retention", "retention_ci_low", "retention_ci_high",
                     "delta", "reference_score", "mcnemar_p"):
            assert f"eval/{suite}/{name}" in metrics
    assert metrics["eval/arc_easy/score"] == pytest.approx(0.75)
    assert metrics["eval/arc_easy/retention"] == pytest.approx(30 / 28)
    assert metrics["eval/domain/tooluse/delta"] == pytest.approx(15 / 40)
    assert metrics["eval/arc_easy/acc_norm"] == 0.7
    assert metrics["eval/arc_easy/ci_low"] <= 0.75 <= metrics["eval/arc_easy/ci_high"]


# ---------------------------------------------------------------------------- real MLflow


def test_update_runs_carry_lineage(store, home):
    first = start_update_run("updates", "update-1", log_system_metrics=False)
    first.close()
    second = start_update_run("updates", "update-2", parent_run_id=first.run_id, parent_version="1",
                              tags={"sdft_ops.method": "sdft"}, log_system_metrics=False)
    second.close()
    third = start_update_run("updates", "update-3", parent_run_id=second.run_id, uri=store,
                             log_system_metrics=False)
    third.close()
    client = third.client
    tags = client.get_run(third.run_id).data.tags
    assert tags[TAG_CHAIN] == f"{first.run_id}/{second.run_id}/{third.run_id}"
    assert tags[TAG_CHAIN_DEPTH] == "3" and tags[TAG_PARENT_RUN] == second.run_id
    second_tags = client.get_run(second.run_id).data.tags
    assert second_tags[TAG_PARENT_VERSION] == "1" and second_tags["sdft_ops.method"] == "sdft"
    assert client.get_run(first.run_id).data.tags[TAG_CHAIN] == first.run_id
    experiment = client.get_experiment_by_name("updates")
    assert experiment.artifact_location == (home.resolve() / "mlartifacts").as_uri()
    assert client.get_run(third.run_id).info.status == "FINISHED"
    with pytest.raises(ValueError, match="parent run"):
        start_update_run("updates", "orphan", parent_run_id="0" * 32, log_system_metrics=False)


def test_mlflow_logger_metrics_params_and_config_artifact(store):
    logger = start_update_run("updates", "u", log_system_metrics=False)
    assert isinstance(logger, MlflowLogger) and isinstance(logger, ArtifactLogger)
    config = {"model": {"name": "tiny", "lora": None}, "lr": 1e-5, "note": "z" * 7000}
    logger.log_config(config)
    logger.log_config(config)  # same values again: fine
    for step in range(3):
        logger.log_dict({"train/loss": 1.0 / (step + 1), "train/nan": float("nan")}, step=step)
    with pytest.raises(ValueError, match="cannot change"):
        logger.log_config({"lr": 1e-4})
    logger.close()
    client = logger.client
    run = client.get_run(logger.run_id)
    assert run.data.params["model.name"] == "tiny" and run.data.params["lr"] == "1e-05"
    assert len(run.data.params["note"]) == 6000
    history = client.get_metric_history(logger.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    local = client.download_artifacts(logger.run_id, "config/resolved_config.yaml")
    assert yaml.safe_load(Path(local).read_text()) == config  # untruncated


def test_eval_and_gate_artifacts(store, report):
    decision = decide(report, GatePolicy(required_suites=[]), parent_version=None, champion_version=None)
    with start_update_run("updates", "u", log_system_metrics=False) as logger:
        logged = log_eval_report(logger, report, step=5)
        paths = log_eval_artifacts(logger, report, decision, step=5)
    assert paths == ["eval/eval_report.json", "eval/eval_report.md", "eval/retention.png",
                     "gate/gate_decision.md", "gate/gate_decision.json"]
    client = logger.client
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["eval/arc_easy/score"] == pytest.approx(logged["eval/arc_easy/score"])
    assert run.data.metrics["eval/domain/tooluse/retention"] == pytest.approx(2.5)
    assert run.data.metrics["gate/promote"] == float(decision.promote)
    listed = {f.path for d in ("eval", "gate") for f in client.list_artifacts(logger.run_id, d)}
    assert listed == set(paths)
    md = Path(client.download_artifacts(logger.run_id, "gate/gate_decision.md")).read_text()
    assert md == decision.to_markdown()


def test_failed_block_marks_the_run_failed(store):
    with pytest.raises(RuntimeError):
        with start_update_run("updates", "boom", log_system_metrics=False) as logger:
            raise RuntimeError("training crashed")
    assert logger.client.get_run(logger.run_id).info.status == "FAILED"


def test_system_metrics_are_logged_when_psutil_is_present(store):
    if not system_metrics_available():
        pytest.skip("psutil is not installed: system metrics are skipped by design")
    logger = start_update_run("updates", "sys", system_metrics_interval_s=0.2)
    assert logger._system_metrics is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(k.startswith("system/") for k in logger.client.get_run(logger.run_id).data.metrics):
            break
        time.sleep(0.1)
    logger.close()
    assert any(k.startswith("system/cpu") for k in logger.client.get_run(logger.run_id).data.metrics)
