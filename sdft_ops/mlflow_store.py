"""The MLflow store: where runs and models live, checked usable before any client waits on it.

`tracking_uri(home)` → `sqlite:///<home>/mlflow.db`; experiments created here get the artifact
location `<home>/mlartifacts` (a remote `http(s)://` server keeps its own artifact root:
`mlflow server --artifacts-destination ...`); an experiment of the home's own store whose
artifacts live outside the home (a copied data home) is refused. `resolve_tracking_uri` picks
the explicit URI, else `$MLFLOW_TRACKING_URI`, else that default; `ready_tracking_uri` also
probes a server (it must answer HTTP within seconds, else a one-line `TrackingUnreachable`),
checks a local store is not locked by another process (else a one-line `StoreLocked`) and
creates it once under a lock. `bounded_http()` caps MLflow's HTTP timeouts and retries for the
calls inside it, and restores the environment after.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
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


# MLflow's HTTP client retries for minutes by default (7 retries, backoff 2, 120 s timeouts).
# Within `bounded_http()` a call that gets no answer gives up after (1 + 1 retry) x 8 s + 1 s
# backoff + <= 1 s jitter = 18 s, so any tracking failure ends an update in < 30 s. A variable
# the user set wins. Closing a failed run gets less: it must not delay the error it reports.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "8"}
HTTP_LIMITS_LAST_CALL = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
PROBE_TIMEOUT_S = 5.0
LOCK_WAIT_S = 5.0  # a write lock held longer than this is another process's, not a busy moment


class TrackingUnreachable(ConnectionError):
    """The tracking server does not answer; raised before any MLflow call waits on it."""


class StoreLocked(TimeoutError):
    """The local MLflow store is locked by another process."""


@contextlib.contextmanager
def bounded_http(limits: Mapping[str, str] = HTTP_LIMITS, *, force: bool = False) -> Iterator[None]:
    """MLflow's HTTP limits (read per request from the environment) set to `limits` for the calls
    inside the block, then restored: nothing leaks to the caller's own MLflow calls. A variable
    already set (by the user, or an outer block) is kept unless `force`. The environment is the
    process's: a thread running MLflow calls meanwhile sees the limits too."""
    saved = {key: os.environ.get(key) for key in limits}
    for key, value in limits.items():
        if force or saved[key] is None:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
        _check_unlocked(Path(uri.removeprefix("sqlite:///")))
        _init_sqlite_once(uri)
    return uri


def _probe_server(uri: str) -> None:
    """A connection within PROBE_TIMEOUT_S, then any HTTP answer to `/health` (an error status
    or a TLS handshake counts: the server is there); a server that accepts and never answers
    would otherwise hold every MLflow call for its full timeout."""
    import http.client
    import socket
    import ssl
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise TrackingUnreachable(f"MLflow tracking server {uri} is not reachable ({reason}); "
                                  "start it or set tracking.tracking_uri") from e
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        pass  # it answered
    except (OSError, http.client.HTTPException) as e:
        if isinstance(getattr(e, "reason", e), ssl.SSLError):
            return  # it answered TLS; MLflow's own client applies its certificate settings
        raise TrackingUnreachable(f"MLflow tracking server {uri} accepts connections but gave no "
                                  f"answer within {PROBE_TIMEOUT_S:.0f} s; restart it or set "
                                  "tracking.tracking_uri") from e


def _check_unlocked(db: Path) -> None:
    """A write transaction on `db` within LOCK_WAIT_S, rolled back at once; MLflow itself would
    wait 20 s per session and then raise a long sqlalchemy traceback."""
    import sqlite3

    if not db.is_file():
        return
    try:
        connection = sqlite3.connect(db, timeout=LOCK_WAIT_S, isolation_level=None)
        try:
            connection.execute("BEGIN EXCLUSIVE")
            connection.execute("ROLLBACK")
        finally:
            connection.close()
    except sqlite3.OperationalError as e:
        if "locked" not in str(e) and "busy" not in str(e):
            raise
        raise StoreLocked(f"the MLflow store {db} is locked by another process (no write access "
                          f"within {LOCK_WAIT_S:.0f} s); let that process finish or stop it "
                          f"(`fuser {db}` names it), then rerun") from e


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
    """Id of experiment `name`, created if missing (artifacts in `<home>/mlartifacts` locally).

    On the home's own store, an experiment whose artifacts live outside the home is refused: a
    copied data home keeps the original's absolute artifact location, and would write into it.
    """
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
    if is_local_store(uri) and uri == tracking_uri(home):
        _check_artifacts_inside(existing.artifact_location, name, data_home(home))
    return existing.experiment_id


def _check_artifacts_inside(location: str, experiment: str, home: Path) -> None:
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(location)
    if parts.scheme not in ("", "file"):
        return  # an object store: not a folder of any data home
    folder = Path(unquote(parts.path)).resolve()
    if not folder.is_relative_to(home):
        raise ValueError(f"experiment {experiment!r} of {home / MLFLOW_DB} keeps its artifacts in "
                         f"{folder}, outside this data home (a copied home?); set "
                         "tracking.experiment to a new name to keep this home's artifacts in it, "
                         "or use the original home")
