"""The MLflow store: where runs and models live, checked usable before any client waits on it.

`tracking_uri(home)` → `sqlite:///<home>/mlflow.db`; experiments created here get the artifact
location `<home>/mlartifacts` (a remote `http(s)://` server keeps its own artifact root:
`mlflow server --artifacts-destination ...`). `resolve_tracking_uri` picks the explicit URI,
else `$MLFLOW_TRACKING_URI`, else that default; `ready_tracking_uri` also probes a server (a
one-line `TrackingUnreachable` within seconds) and creates a local store once under a lock.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sdft_ops.home import data_home

if TYPE_CHECKING:
    from mlflow import MlflowClient

MLFLOW_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"


def tracking_uri(home: str | os.PathLike | None = None) -> str:
    """The default store: `sqlite:///<home>/mlflow.db` (home = the data home)."""
    return f"sqlite:///{data_home(home) / MLFLOW_DB}"


def artifact_root(home: str | os.PathLike | None = None) -> Path:
    """`<home>/mlartifacts`: where experiments created on a local store keep their artifacts."""
    return data_home(home) / ARTIFACTS_DIR


# MLflow's HTTP client retries for minutes by default (7 retries, backoff 2, 120 s timeouts):
# an unreachable server must fail an update in seconds, not minutes. Users may still override.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
PROBE_TIMEOUT_S = 5.0


class TrackingUnreachable(ConnectionError):
    """The tracking server does not answer; raised before any MLflow call waits on it."""


def resolve_tracking_uri(uri: str | None = None, home: str | os.PathLike | None = None) -> str:
    """`uri` if given, else $MLFLOW_TRACKING_URI, else `tracking_uri(home)`."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri(home)


def ready_tracking_uri(uri: str | None = None, home: str | os.PathLike | None = None) -> str:
    """`resolve_tracking_uri`, checked usable before any client is built on it: a server must
    accept a connection within PROBE_TIMEOUT_S (else one-line `TrackingUnreachable`); a local
    sqlite store is created (migrated) once under a file lock, so that concurrent first updates
    on a fresh data home do not race MLflow's migrations."""
    uri = resolve_tracking_uri(uri, home)
    if uri.startswith(("http://", "https://")):
        _probe_server(uri)
    elif uri.startswith("sqlite:///"):
        _init_sqlite_once(uri)
    return uri


def _probe_server(uri: str) -> None:
    import socket
    from urllib.parse import urlsplit

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise TrackingUnreachable(f"MLflow tracking server {uri} is not reachable ({reason}); "
                                  "start it or set tracking.tracking_uri") from None


def _init_sqlite_once(uri: str) -> None:
    import fcntl

    db = Path(uri.removeprefix("sqlite:///"))
    ready = db.with_name(f".{db.name}.ready")
    if ready.is_file():
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(f".{db.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process migrates; the others wait, then skip
        if not ready.is_file():
            from mlflow import MlflowClient

            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            ready.touch()


def is_local_store(uri: str) -> bool:
    """True for a database or file store (we pick the artifact location), False for a server."""
    return not uri.startswith(("http://", "https://", "databricks"))


def ensure_experiment(client: "MlflowClient", name: str, uri: str,
                      home: str | os.PathLike | None = None) -> str:
    """Id of experiment `name`, created if missing (artifacts in `<home>/mlartifacts` locally)."""
    from mlflow.exceptions import MlflowException

    existing = client.get_experiment_by_name(name)
    if existing is None:
        location = artifact_root(home).as_uri() if is_local_store(uri) else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created concurrently by another process
            existing = client.get_experiment_by_name(name)
            if existing is None:
                raise
    if existing.lifecycle_stage != "active":
        raise ValueError(f"experiment {name!r} is deleted in {uri}; restore it "
                         f"(mlflow experiments restore --experiment-id {existing.experiment_id}) "
                         "or use another experiment name")
    return existing.experiment_id
