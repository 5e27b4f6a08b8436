"""When tracking fails: one-line errors, runs left RUNNING by dead processes, weights refetched.

* `tracking_calls()` — a block (or decorator) for the project's own MLflow calls: HTTP timeouts
  and retries bounded (`mlflow_store.bounded_http`, restored after), and a failed call (no
  answer, a refused or dropped connection, an HTTP 5xx, a locked sqlite store) re-raised as one
  line naming the fix (`TrackingUnreachable`, `StoreLocked`), chained to MLflow's error.
* Runs left RUNNING: every update run carries `sdft_ops.process` = `host/boot id/pid/start
  ticks` (and `sdft_ops.data_home`). `close_dead_runs` marks FAILED the RUNNING runs of the same
  domain whose process has certainly ended — same host, and another boot, no such pid, a zombie,
  or a pid reused by a later process — and never a run that may be live: another host's, or one
  without the tag. It removes their update's `checkpoints/` (see its docstring for why).
* `download_version` fetches a registered version's model folder from the configured store into
  the data home, when the folder its tag names is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from sdft_ops.home import data_home, inside
from sdft_ops.mlflow_store import StoreLocked, TrackingUnreachable, bounded_http
from sdft_ops.update_state import update_dir

if TYPE_CHECKING:  # mlflow is imported in functions: the Dagster code server imports this module
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

TAG_PROCESS = "sdft_ops.process"
TAG_DATA_HOME = "sdft_ops.data_home"
_URL = re.compile(r"https?://[^/\s'\"]+")


# ---------------------------------------------------------------------------- one-line errors


def tracking_failure(e: BaseException) -> OSError | None:
    """The one-line error a failed tracking call stands for, or None when `e` is something else
    (an MLflow 'not found', a bug). Call it while the HTTP limits are set: it names them."""
    text = " ".join(str(e).split())
    module = type(e).__module__
    if "database is locked" in text and module.startswith(("mlflow", "sqlalchemy", "sqlite3")):
        return StoreLocked("the MLflow sqlite store is locked by another process; let that "
                           "process finish or stop it, then rerun")
    http = module.startswith("mlflow") and text.startswith("API request to")
    if not (http or module.startswith(("requests", "urllib3"))):
        return None
    found = _URL.search(text)
    server = f"MLflow tracking server {found[0]}" if found else "the MLflow tracking server"
    low = text.lower()
    if code := re.search(r"error code (\d{3})|(\d{3}) (?:Client|Server) Error", text):
        return TrackingUnreachable(f"{server} failed a request (HTTP {code[1] or code[2]}); see "
                                   "the server's log, then rerun")
    if "timed out" in low or "timeout" in low:
        wait = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
        reason, fix = f"no answer within {wait} s", " (MLFLOW_HTTP_REQUEST_TIMEOUT waits longer)"
    elif "refused" in low:
        reason, fix = "connection refused", ""
    elif any(word in low for word in ("reset", "aborted", "disconnected", "broken pipe")):
        reason, fix = "connection dropped", ""
    else:
        reason, fix = text[:100], ""
    return TrackingUnreachable(f"{server} stopped answering ({reason}); check that it is up, "
                               f"then rerun{fix}")


@contextlib.contextmanager
def tracking_calls() -> Iterator[None]:
    """Bounded HTTP limits inside the block; a tracking failure leaves it as one line."""
    with bounded_http():
        try:
            yield
        except Exception as e:
            failure = tracking_failure(e)
            if failure is None:
                raise
            raise failure from e


# ---------------------------------------------------------------------------- dead runs


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> tuple[str, str]:
    """(state, start time in clock ticks since boot) from /proc; ('', '') where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return "", ""
    return fields[0], fields[19]


def process_identity(pid: int | None = None) -> str:
    """`host/boot id/pid/start ticks` of a process (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}/{_boot_id()}/{pid}/{_proc_stat(pid)[1]}"


def process_gone(identity: str | None) -> bool:
    """True only when the process `identity` names has certainly ended (see module docstring)."""
    if not identity or identity.count("/") < 3:
        return False
    host, boot, pid, start = identity.rsplit("/", 3)
    if host != socket.gethostname() or not pid.isdigit() or int(pid) <= 0:
        return False
    now = _boot_id()
    if boot and now and boot != now:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    state, started = _proc_stat(int(pid))
    return state == "Z" or bool(start and started and started != start)


def close_dead_runs(client: "MlflowClient", experiment: str, scope: Mapping[str, str],
                    home: str | os.PathLike, *, keep: str) -> list[str]:
    """Mark FAILED the RUNNING runs of `experiment` tagged like `scope` (the same domain) whose
    process has ended; returns their ids. `keep`: this update's run name (its own killed runs
    are `tracking.fail_stale_runs`' job, and their checkpoints are resumed).

    Their update's `checkpoints/` in this data home are removed, unless a live run has the same
    name: a newer update of the domain has started, so resuming them would train a superseded
    attempt (and once the champion moves, `fresh_checkpoints` would drop them anyway); a
    checkpoint is the size of the model, each time. The update's state and data stay, so it
    can still be rerun from its start with `--update-id`.
    """
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    running = client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'")
    dead = [run for run in running if run.info.run_name != keep
            and all(run.data.tags.get(key) == value for key, value in scope.items())
            and process_gone(run.data.tags.get(TAG_PROCESS))]
    dead_ids = {run.info.run_id for run in dead}
    live_names = {run.info.run_name for run in running if run.info.run_id not in dead_ids}
    home, removed = Path(home).resolve(), []
    for run in dead:
        client.set_terminated(run.info.run_id, "FAILED")
        name = run.info.run_name
        if name in live_names or run.data.tags.get(TAG_DATA_HOME) != str(home):
            continue
        try:
            checkpoints = update_dir(home, name) / "checkpoints"
        except ValueError:
            continue  # a run name that is no update id of this home
        if checkpoints.is_dir():
            shutil.rmtree(checkpoints)
            removed.append(str(checkpoints))
    if dead:
        log.info("closed %d MLflow run(s) left RUNNING by an update whose process is gone, as "
                 "FAILED (%s); removed their checkpoints: %s", len(dead),
                 ", ".join(f"{run.info.run_name} {run.info.run_id}" for run in dead),
                 ", ".join(removed) or "none")
    return sorted(dead_ids)


# ---------------------------------------------------------------------------- weights


def download_version(client: "MlflowClient", name: str, version: str, uri: str,
                     home: str | os.PathLike | None) -> Path:
    """The model folder (with config.json) of registered version `version` of `name`, fetched
    from the store `client` and `uri` name into `<home>/registry/downloads/<name>/v<version>`
    (published whole by a rename; reused once there). Nothing is written outside the home."""
    import mlflow

    dest = inside(data_home(home) / "registry" / "downloads", name, f"v{version}")
    if dest.is_dir():
        found = next(dest.rglob("config.json"), None)
        if found is not None:
            return found.parent
        shutil.rmtree(dest)  # a folder without a model: not ours to trust
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        source = client.get_model_version_download_uri(name, str(version))
        mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=uri,
                                            dst_path=str(partial))
        try:
            os.replace(partial, dest)
        except OSError:
            if not dest.is_dir():
                raise  # else another process published it first: use theirs
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    found = next(dest.rglob("config.json"), None)
    if found is None:
        raise ValueError(f"version {version} of {name} holds no model folder (no config.json) in "
                         f"{dest}; register a folder written by save_trained_model")
    return found.parent
