"""Metric logging behind a small Protocol, and the MLflow conventions of an update run.

* `MetricLogger` — `log_dict(metrics, step)`, `log_config(config)`, `close()`; `ArtifactLogger`
  adds `log_artifact(path, artifact_path)`. Two implementations: `InMemoryLogger` (tests) and
  `MlflowLogger` (one MLflow run, written through an explicit `MlflowClient`: no fluent
  active-run stack and no global tracking URI).
* Store (`sdft_ops.mlflow_store`): where runs live, checked reachable before use.
* `start_update_run(experiment, run_name, parent_run_id=..., ...)` opens the run of one update,
  with lineage tags `sdft_ops.parent_run_id`, `sdft_ops.parent_version` and `sdft_ops.chain`
  (the run ids from the first update to this one, '/'-joined; `sdft_ops.chain_depth` counts
  them) so a chain of updates can be followed run to run, and `sdft_ops.process` (which process
  runs it: `tracking_recovery` closes the runs of processes that died). System metrics (CPU,
  memory, disk, network; GPU with pynvml) are sampled by MLflow's `SystemMetricsMonitor` when
  psutil is installed; without it they are skipped with one log line.
* Keys: `train/<name>` per step (whatever the loop passes), `eval/<suite>/score`,
  `eval/<suite>/ci_low`, `eval/<suite>/ci_high`, and with a reference `eval/<suite>/retention`,
  `.../retention_ci_low`, `.../retention_ci_high`, `.../delta`, `.../delta_ci_low`,
  `.../delta_ci_high`, `.../reference_score`, `.../mcnemar_p`, plus `eval/<suite>/n`; side metrics as
  `eval/<suite>/<name>`; the gate as `gate/promote` (1/0) and `gate/failed_checks`.
* Params: the config flattened with '.' and truncated to MLflow's limits (keys 250 chars, values
  6000); the untruncated config is also logged as `config/resolved_config.yaml`.
* Artifacts (`log_eval_artifacts`): `eval/eval_report.json`, `eval/eval_report.md`,
  `eval/retention.png`, `gate/gate_decision.md`, `gate/gate_decision.json`.

    logger = start_update_run("sdft-ops", "update-7", parent_run_id=champion_run, home=home)
    logger.log_config(cfg.model_dump()); logger.log_dict({"train/loss": 0.3}, step=10)
    log_eval_report(logger, report); log_eval_artifacts(logger, report, decision); logger.close()
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sdft_ops.mlflow_store import (
    HTTP_LIMITS_LAST_CALL,
    bounded_http,
    ensure_experiment,
    ready_tracking_uri,
)
from sdft_ops.settings import TrackingConfig
from sdft_ops.tracking_recovery import TAG_DATA_HOME, TAG_PROCESS, process_identity

if TYPE_CHECKING:  # mlflow is imported inside functions: the Dagster code server imports this module
    from mlflow import MlflowClient

    from sdft_ops.evaluation.report import EvalReport
    from sdft_ops.gate import GateDecision

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = TrackingConfig.model_fields["experiment"].default  # the schema owns defaults
TAG_PARENT_RUN = "sdft_ops.parent_run_id"
TAG_PARENT_VERSION = "sdft_ops.parent_version"
TAG_CHAIN = "sdft_ops.chain"
TAG_CHAIN_DEPTH = "sdft_ops.chain_depth"
TAG_CODE_VERSION = "sdft_ops.code_version"
# MLflow's limits (mlflow.utils.validation), restated so this module imports without mlflow
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
_BAD_KEY_CHARS = re.compile(r"[^\w./\- :]")


# ---------------------------------------------------------------------------- loggers


@runtime_checkable
class MetricLogger(Protocol):
    def log_dict(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_config(self, config: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class ArtifactLogger(MetricLogger, Protocol):
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...


def metric_key(key: str) -> str:
    """A key MLflow accepts: characters outside [word . / - space :] become '_', max 250 chars."""
    return _BAD_KEY_CHARS.sub("_", str(key))[:MAX_KEY_LENGTH]


def _as_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            out[metric_key(key)] = float(value)
        except (TypeError, ValueError) as e:
            raise TypeError(f"metric {key!r} = {value!r} is not a number; log numbers only "
                            "(put text in the config or an artifact)") from e
    return out


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping → {'a.b.c': str(value)}, keys and values truncated to MLflow's limits."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if len(text) > MAX_PARAM_VALUE_LENGTH:
            text = text[: MAX_PARAM_VALUE_LENGTH - 1] + "…"
        flat[metric_key(name)] = text
    return flat


class InMemoryLogger:
    """Keeps everything in lists/dicts; for tests and dry runs."""

    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.config: dict[str, Any] = {}
        self.artifacts: dict[str, bytes] = {}
        self.closed = False

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        self.metrics.append((int(step), _as_floats(metrics)))

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.config.update(config)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = Path(path)
        self.artifacts[f"{artifact_path}/{path.name}" if artifact_path else path.name] = path.read_bytes()

    def history(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of every logged value of `key`, in logging order."""
        return [(step, values[key]) for step, values in self.metrics if key in values]

    def latest(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for _, values in self.metrics:
            out.update(values)
        return out

    def close(self) -> None:
        self.closed = True


class MlflowLogger:
    """Writes to one existing MLflow run through an explicit client; `close` ends the run."""

    def __init__(self, run_id: str, uri: str, *, system_metrics: Any = None) -> None:
        from mlflow import MlflowClient

        self.run_id = run_id
        self.tracking_uri = uri
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self._system_metrics = system_metrics
        self._closed = False

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(k, v, now, int(step)) for k, v in _as_floats(metrics).items()]
        for start in range(0, len(entries), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=entries[start:start + MAX_METRICS_PER_BATCH])

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Flattened params (MLflow params are immutable: a changed value raises) + the full YAML."""
        import yaml
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        flat = flatten_config(config)
        changed = sorted(k for k, v in flat.items() if k in existing and existing[k] != v)
        if changed:
            raise ValueError(f"run {self.run_id} already has params {changed[:5]} with other values; "
                             "MLflow params cannot change — start a new run for a new config")
        params = [Param(k, v) for k, v in flat.items() if k not in existing]
        for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + MAX_PARAMS_PER_BATCH])
        self.client.log_text(self.run_id, yaml.safe_dump(_plain(config), sort_keys=False),
                             "config/resolved_config.yaml")

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, _tag_value(v)) for k, v in tags.items()])

    def close(self, status: str = "FINISHED") -> None:
        """Stop system metrics and mark the run terminated (idempotent). Closing a failed run is
        best effort, quickly: it must not hide or delay the error that failed it (a run left
        RUNNING is closed by the next update of its domain once this process has ended)."""
        if self._closed:
            return
        self._closed = True
        if status == "FINISHED":
            self._terminate(status)
            return
        try:
            with bounded_http(HTTP_LIMITS_LAST_CALL, force=True):
                self._terminate(status)
        except Exception as e:  # noqa: BLE001 — the failure being reported matters more
            log.warning("MLflow run %s stays RUNNING (marking it %s failed: %s)", self.run_id,
                        status, " ".join(str(e).split())[:200])

    def _terminate(self, status: str) -> None:
        if self._system_metrics is not None:
            self._system_metrics.finish()
        self.client.set_terminated(self.run_id, status)

    def __enter__(self) -> "MlflowLogger":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("FAILED" if exc_type is not None else "FINISHED")


def _plain(value: Any) -> Any:
    """Config → YAML-safe builtins (tuples → lists, unknown objects → str)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _tag_value(value: Any) -> str:
    text = "none" if value is None else str(value)
    return text if len(text) <= MAX_TAG_VALUE_LENGTH else text[: MAX_TAG_VALUE_LENGTH - 1] + "…"


# ---------------------------------------------------------------------------- runs


def code_version() -> str | None:
    """`git rev-parse HEAD` of the checkout holding this package, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if re.fullmatch(r"[0-9a-f]{40}", commit) else None


def system_metrics_available() -> bool:
    """MLflow's system metrics need psutil (and pynvml for GPUs)."""
    return importlib.util.find_spec("psutil") is not None


def _start_system_metrics(run_id: str, uri: str, interval_s: float) -> Any:
    if not system_metrics_available():
        log.info("system metrics skipped: psutil is not installed (pip install psutil)")
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=uri)
        monitor.start()
        return monitor
    except Exception as e:  # noqa: BLE001 — monitoring must never stop an update
        log.warning("system metrics skipped: %s", e)
        return None


def fail_stale_runs(client: "MlflowClient", experiment_id: str, run_name: str) -> list[str]:
    """Mark FAILED the runs of `run_name` still RUNNING: a killed update left them so, and its
    rerun starts a new run. Returns their ids."""
    stale = client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{run_name}' "
                               "and attributes.status = 'RUNNING'")
    for run in stale:
        client.set_terminated(run.info.run_id, status="FAILED")
    return [run.info.run_id for run in stale]


def start_update_run(experiment: str, run_name: str, parent_run_id: str | None = None,
                     tags: Mapping[str, Any] | None = None, *, uri: str | None = None,
                     home: str | os.PathLike | None = None, parent_version: str | None = None,
                     log_system_metrics: bool = True, system_metrics_interval_s: float = 10.0) -> MlflowLogger:
    """Create the MLflow run of one update, with lineage tags; returns its `MlflowLogger`.

    `parent_run_id` is the run that produced the parent model (the champion's run); its
    `sdft_ops.chain` is extended by this run's id.
    """
    from mlflow import MlflowClient

    uri = ready_tracking_uri(uri, home)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = ensure_experiment(client, experiment, uri, home)
    parent_chain = ""
    if parent_run_id is not None:
        try:
            parent_chain = client.get_run(parent_run_id).data.tags.get(TAG_CHAIN, parent_run_id)
        except Exception as e:
            raise ValueError(f"parent run {parent_run_id} is not in {uri}: {e}; pass the run id of "
                             "the model this update starts from, or None for a first update") from e
    fail_stale_runs(client, experiment_id, run_name)
    run = client.create_run(experiment_id, run_name=run_name)
    run_id = run.info.run_id
    chain = f"{parent_chain}/{run_id}" if parent_chain else run_id
    depth = chain.count("/") + 1
    if len(chain) > MAX_TAG_VALUE_LENGTH:
        chain = "…" + chain[-(MAX_TAG_VALUE_LENGTH - 1):]
    commit = code_version()
    lineage = {TAG_PARENT_RUN: parent_run_id, TAG_PARENT_VERSION: parent_version, TAG_CHAIN: chain,
               TAG_CHAIN_DEPTH: depth, TAG_CODE_VERSION: commit, TAG_PROCESS: process_identity()}
    if home is not None:
        lineage[TAG_DATA_HOME] = str(Path(home).resolve())
    if commit:
        lineage["mlflow.source.git.commit"] = commit
    logger = MlflowLogger(run_id, uri)
    logger.set_tags({**lineage, **(tags or {})})
    if log_system_metrics:
        logger._system_metrics = _start_system_metrics(run_id, uri, system_metrics_interval_s)
    return logger


# ---------------------------------------------------------------------------- eval and gate


def eval_metrics(report: "EvalReport") -> dict[str, float]:
    """The report as flat `eval/<suite>/...` metrics (see module docstring)."""
    out: dict[str, float] = {}
    for suite, result in report.results.items():
        low, high = report.score_ci[suite]
        out |= {f"eval/{suite}/score": result.score, f"eval/{suite}/ci_low": low,
                f"eval/{suite}/ci_high": high, f"eval/{suite}/n": float(len(result.item_ids))}
        for name, value in result.metrics.items():
            out.setdefault(f"eval/{suite}/{name}", value)
    for suite, ret in report.retention.items():
        out |= {f"eval/{suite}/retention": ret.ratio, f"eval/{suite}/retention_ci_low": ret.ratio_ci[0],
                f"eval/{suite}/retention_ci_high": ret.ratio_ci[1], f"eval/{suite}/delta": ret.difference,
                f"eval/{suite}/delta_ci_low": ret.difference_ci[0],
                f"eval/{suite}/delta_ci_high": ret.difference_ci[1],
                f"eval/{suite}/reference_score": ret.reference_score}
        if ret.mcnemar_p is not None:
            out[f"eval/{suite}/mcnemar_p"] = ret.mcnemar_p
    return {metric_key(k): float(v) for k, v in out.items()}


def gate_metrics(decision: "GateDecision") -> dict[str, float]:
    return {"gate/promote": float(decision.promote),
            "gate/failed_checks": float(sum(not c.passed for c in decision.checks))}


def log_eval_report(logger: MetricLogger, report: "EvalReport", step: int = 0) -> dict[str, float]:
    """Log `eval_metrics(report)` at `step`; returns what was logged."""
    metrics = eval_metrics(report)
    logger.log_dict(metrics, step)
    return metrics


def log_eval_artifacts(logger: ArtifactLogger, report: "EvalReport", decision: "GateDecision | None" = None,
                       *, step: int = 0, plots: bool = True) -> list[str]:
    """Report JSON + markdown (+ retention plot) under `eval/`; decision markdown + JSON and gate
    metrics under `gate/`. Returns the artifact paths logged."""
    from sdft_ops.evaluation.report import plot_retention

    logged = []
    with tempfile.TemporaryDirectory(prefix="sdft-ops-artifacts-") as tmp:
        folder = Path(tmp)
        files = [("eval", report.save(folder / "eval_report.json"))]
        (folder / "eval_report.md").write_text(report.to_markdown(), encoding="utf-8")
        files.append(("eval", folder / "eval_report.md"))
        if plots and report.retention:
            files.append(("eval", plot_retention(report, folder / "retention.png")))
        if decision is not None:
            gate_dir = folder / "gate"
            gate_dir.mkdir()
            (gate_dir / "gate_decision.md").write_text(decision.to_markdown(), encoding="utf-8")
            (gate_dir / "gate_decision.json").write_text(decision.model_dump_json(indent=2), encoding="utf-8")
            files += [("gate", gate_dir / "gate_decision.md"), ("gate", gate_dir / "gate_decision.json")]
            logger.log_dict(gate_metrics(decision), step)
        for artifact_path, path in files:
            logger.log_artifact(path, artifact_path)
            logged.append(f"{artifact_path}/{path.name}")
    return logged

