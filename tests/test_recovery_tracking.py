"""Tracking's recovery paths (issue 33, rows 4, 5, 7, 8 and 12), against real MLflow: a sqlite
store in a temporary data home, a real `mlflow server` killed mid-update, and plain socket
servers on 127.0.0.1 that accept connections and never answer.

Each test fails without its fix: the champion's folder refetched from the configured store (4),
runs of dead processes closed (5), bounded waits and one-line errors (7, 12), a locked store in
one line and exit 2 (8), a rejected version promoted only with --force, a copied home refused.
"""

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from sdft_ops import cli
from sdft_ops.domains import load_shipped
from sdft_ops.engine.checkpoint import save_trained_model
from sdft_ops.mlflow_store import (
    HTTP_LIMITS,
    HTTP_LIMITS_LAST_CALL,
    StoreLocked,
    TrackingUnreachable,
    tracking_uri,
)
from sdft_ops.models import ModelSpec
from sdft_ops.pipeline import run_update, stage_dataset, train_step
from sdft_ops.registry import TAG_DOMAIN, TAG_MODEL_DIR, PolicyRegistry
from sdft_ops.tracking import start_update_run
from sdft_ops.tracking_recovery import (
    TAG_PROCESS,
    close_dead_runs,
    process_gone,
    process_identity,
    tracking_calls,
    tracking_failure,
)
from tests.pipeline_helpers import tiny_base, tiny_config

HTTP_VARS = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
             "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return tiny_config(tiny_base(tmp_path_factory.mktemp("base")))


@pytest.fixture
def store(home, mlflow_template, monkeypatch) -> Path:
    """A data home with a fresh sqlite store, reached through the home alone (no global URI)."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(mlflow_template, home / "mlflow.db")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", *HTTP_VARS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return home


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def run_cli(capsys, *argv) -> tuple[int, str, str, float]:
    capsys.readouterr()
    started = time.monotonic()
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err, time.monotonic() - started


def weights_hash(folder: Path) -> str:
    weights = sorted(folder.glob("*.safetensors"))
    return hashlib.sha256(b"".join(p.read_bytes() for p in weights)).hexdigest()


def registered_tiny(registry: PolicyRegistry, folder: Path) -> str:
    from sdft_ops.tiny import build_tiny

    model, tokenizer = build_tiny(seed=0)
    save_trained_model(model, tokenizer, folder, {"step": 1})
    return registry.register_candidate(folder, parent_version=None, dataset_hash="sha256:abc",
                                       method="sdft", base_model="tiny", commit=None,
                                       tags={TAG_MODEL_DIR: str(folder)})


# ---------------------------------------------------------------------------- servers


@contextlib.contextmanager
def silent_server(*, health: bool = False):
    """A socket server on 127.0.0.1 that accepts connections and never answers (with `health`,
    it answers `GET /health` and nothing else). Yields its URL."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed
            held.append(conn)
            if health:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    if conn.recv(65536).startswith(b"GET /health"):
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                     b"Connection: close\r\n\r\nOK")
                        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        for conn in held:
            conn.close()


@pytest.fixture
def mlflow_server(tmp_path, mlflow_template):
    """A real `mlflow server` on 127.0.0.1 (sqlite backend, proxied artifacts): (url, process,
    its db). The test may kill it; it is stopped after."""
    db = tmp_path / "server.db"
    shutil.copy(mlflow_template, db)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{db}",
             "--artifacts-destination", str(tmp_path / "server-artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 40
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                    if response.status == 200:
                        break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url, proc, db
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ---------------------------------------------------------------------------- row 4


def test_a_deleted_champion_folder_is_fetched_from_the_configured_store_into_the_home(
        store, tmp_path, monkeypatch):
    registry = PolicyRegistry(None, home=store)
    folder = tmp_path / "trained" / "model"
    version = registered_tiny(registry, folder)
    registry.promote(version, "bootstrap", manual=True)
    expected = weights_hash(folder)
    shutil.rmtree(folder)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # MLflow's defaults would write ./mlflow.db here

    parent = PolicyRegistry(None, home=store).parent_for_update(ModelSpec(name_or_path="tiny"))
    model_dir = Path(parent.model_dir)
    assert parent.version == version and (model_dir / "config.json").is_file()
    assert model_dir.is_relative_to(store.resolve()) and weights_hash(model_dir) == expected
    assert list(cwd.iterdir()) == []  # nothing written outside the data home
    again = PolicyRegistry(None, home=store).parent_for_update(ModelSpec(name_or_path="tiny"))
    assert again.model_dir == parent.model_dir  # fetched once


# ---------------------------------------------------------------------------- row 5


KILLED = """
import os, sys, time
from pathlib import Path
from sdft_ops.tracking import start_update_run
home, experiment = Path(sys.argv[1]), sys.argv[2]
for name, domain in (("u-killed", "tooluse"), ("u-killed-other", "knowledge")):
    start_update_run(experiment, name, home=home, tags={"sdft_ops.domain": domain},
                     log_system_metrics=False)
    (home / "updates" / name / "checkpoints" / "step-1").mkdir(parents=True)
print("ready", flush=True)
time.sleep(120)
"""


def test_an_update_closes_the_runs_its_domain_left_running_in_a_killed_process(
        store, cfg, caplog):
    from mlflow import MlflowClient

    experiment = cfg.tracking.experiment
    child = subprocess.Popen([sys.executable, "-c", KILLED, str(store), experiment],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGKILL)
    child.wait()
    live = start_update_run(experiment, "u-live", home=store, tags={TAG_DOMAIN: "tooluse"},
                            log_system_metrics=False)  # this process: alive
    (store / "updates" / "u-live" / "checkpoints").mkdir(parents=True)
    elsewhere = start_update_run(experiment, "u-elsewhere", home=store, tags={TAG_DOMAIN: "tooluse"},
                                 log_system_metrics=False)
    elsewhere.set_tags({TAG_PROCESS: "another-host/boot/1/1"})  # cannot be judged from here
    client = MlflowClient(tracking_uri(store))
    runs = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id])}

    stage_dataset("u-new", load_shipped("tooluse")[0], cfg, store)
    with caplog.at_level(logging.INFO, logger="sdft_ops.tracking_recovery"):
        train_step("u-new", cfg, store, PolicyRegistry(None, home=store))

    status = {name: client.get_run(run.info.run_id).info.status for name, run in runs.items()}
    assert status == {"u-killed": "FAILED", "u-killed-other": "RUNNING", "u-live": "RUNNING",
                      "u-elsewhere": "RUNNING"}
    assert not (store / "updates" / "u-killed" / "checkpoints").exists()
    assert (store / "updates" / "u-live" / "checkpoints").is_dir()
    assert (store / "updates" / "u-killed-other" / "checkpoints").is_dir()
    lines = [r.getMessage() for r in caplog.records if r.name == "sdft_ops.tracking_recovery"]
    assert len(lines) == 1 and "u-killed" in lines[0] and "FAILED" in lines[0], lines
    assert close_dead_runs(client, experiment, {TAG_DOMAIN: "tooluse"}, store, keep="x") == []
    live.close()
    elsewhere.close()


def test_process_gone_only_when_certain():
    child = subprocess.Popen(["sleep", "30"])
    identity = process_identity(child.pid)
    assert not process_gone(identity)
    child.kill()
    child.wait()
    host, boot, pid, start = identity.rsplit("/", 3)
    assert process_gone(identity)
    assert not process_gone(process_identity())  # this one
    assert process_gone(f"{host}/{boot}/{os.getpid()}/{int(start) + 1}")  # a pid reused later
    assert process_gone(f"{host}/another-boot/{os.getpid()}/1")  # before a reboot
    for unknown in (None, "", "garbage", f"another-host/{boot}/{pid}/{start}", f"{host}/{boot}/0/1"):
        assert not process_gone(unknown)


# ---------------------------------------------------------------------------- row 7


def test_a_server_that_never_answers_fails_an_update_in_seconds_with_one_line(
        store, cfg, tmp_path, capsys, monkeypatch):
    config = tmp_path / "update.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    demos = load_shipped("tooluse")[0].write_jsonl(tmp_path / "tooluse.jsonl")
    with silent_server() as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        code, _, err, seconds = run_cli(capsys, "update", demos, "--home", store, "--config", config)
    assert code == 2 and seconds < 30
    line = one_line(err)
    assert url in line and "no answer" in line and len(line) < 250, line
    assert not (store / "updates").exists() or not any((store / "updates").iterdir())  # nothing staged
    assert not any(name in os.environ for name in HTTP_VARS)  # nothing leaked


def test_a_server_that_stops_answering_mid_step_fails_in_one_line_within_the_bound(
        store, monkeypatch):
    with silent_server(health=True) as url:
        registry = PolicyRegistry(url, home=store)  # it answers /health
        assert not any(name in os.environ for name in HTTP_VARS)  # the probe sets nothing
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # the user's value wins
        started = time.monotonic()
        with pytest.raises(TrackingUnreachable) as err, tracking_calls():
            retries = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
            assert os.environ[retries] == HTTP_LIMITS[retries]  # ours, where the user set none
            registry.champion_version()
        assert time.monotonic() - started < 10
    line = one_line(str(err.value))
    assert url in line and "no answer within 1 s" in line, line
    assert err.value.__cause__ is not None  # MLflow's error kept as the cause
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT")
    assert not any(name in os.environ for name in HTTP_VARS)  # restored after the block
    # the limits' worst case, a try, a retry after the backoff (+ jitter <= 1 s), then the
    # failed run's close: under the 30 s an update may take to fail
    timeout, retries, backoff = (float(HTTP_LIMITS[f"MLFLOW_HTTP_REQUEST_{k}"])
                                 for k in ("TIMEOUT", "MAX_RETRIES", "BACKOFF_FACTOR"))
    last = float(HTTP_LIMITS_LAST_CALL["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    assert (retries + 1) * timeout + retries * (backoff + 1) + last < 30


# ---------------------------------------------------------------------------- row 12: server dies


@pytest.mark.timeout(120)  # the server's start is the slow part (~10 s)
def test_a_server_killed_mid_step_gives_one_line_and_a_resumable_update(
        mlflow_server, store, cfg, monkeypatch, caplog):
    import sdft_ops.pipeline as pipeline
    from mlflow import MlflowClient

    url, server, db = mlflow_server

    def dies_mid_step(update_id, domain, parent, cfg, home, logger, replay):
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        logger.log_dict({"train/loss": 1.0}, 1)

    monkeypatch.setattr(pipeline, "train_candidate", dies_mid_step)
    registry = PolicyRegistry(url, home=store)
    started = time.monotonic()
    with pytest.raises(TrackingUnreachable) as err, caplog.at_level(logging.WARNING):
        run_update(load_shipped("tooluse")[0], cfg, update_id="u-dies", home=store, registry=registry)
    assert time.monotonic() - started < 30
    line = one_line(str(err.value))
    assert url in line and "connection refused" in line and "--update-id u-dies" in line, line
    assert (store / "updates" / "u-dies" / "train.jsonl").is_file()  # kept, resumable
    client = MlflowClient(f"sqlite:///{db}")  # the dead server's own store
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "RUNNING" and run.data.tags[TAG_PROCESS] == process_identity()
    assert any("stays RUNNING" in r.getMessage() for r in caplog.records)
    # once this process has ended, the next update of the domain closes it
    monkeypatch.setattr("sdft_ops.tracking_recovery.process_gone", lambda identity: True)
    assert close_dead_runs(client, cfg.tracking.experiment, {TAG_DOMAIN: "tooluse"}, store,
                           keep="u-next") == [run.info.run_id]
    assert client.get_run(run.info.run_id).info.status == "FAILED"


# ---------------------------------------------------------------------------- row 8


def test_a_locked_store_ends_promote_promptly_in_one_line_exit_2(store, capsys):
    (store / ".mlflow.db.ready").touch()  # a store in use: MLflow itself waits 20 s, then 81 lines
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time\n"
         "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
         "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(120)",
         str(store / "mlflow.db")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, out, err, seconds = run_cli(capsys, "promote", "1", "--reason", "x", "--home", store)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and seconds < 12, (out, err)
    line = one_line(err)
    assert "locked by another process" in line and str(store / "mlflow.db") in line, line


def test_a_lock_met_later_is_one_line_too():
    import sqlite3

    from sqlalchemy.exc import OperationalError

    raw = OperationalError("UPDATE x", {}, sqlite3.OperationalError("database is locked"))
    failure = tracking_failure(raw)
    assert isinstance(failure, StoreLocked) and "\n" not in str(failure)
    assert tracking_failure(ValueError("database is locked")) is None  # not a tracking call's


# ---------------------------------------------------------------------------- row 12: promote, copies


def test_promoting_a_rejected_version_needs_force(store, tmp_path, capsys):
    registry = PolicyRegistry(None, home=store)
    version = registered_tiny(registry, tmp_path / "model")
    registry.reject(version, "drift: max_drop failed")
    code, _, err, _ = run_cli(capsys, "promote", version, "--reason", "x", "--home", store)
    assert code == 2 and "gate rejected version 1" in one_line(err) and "--force" in err
    assert registry.champion_version() is None
    code, out, err, _ = run_cli(capsys, "promote", version, "--reason", "x", "--force", "--home", store)
    assert code == 0, err
    assert registry.champion_version() == version
    assert registry.history()[-1].action == "manual_promote"


def test_a_copied_data_home_refuses_to_write_into_the_original(store, tmp_path):
    first = start_update_run("sdft-ops", "u1", home=store, log_system_metrics=False)
    first.close()
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    with pytest.raises(ValueError) as err:
        start_update_run("sdft-ops", "u2", home=copy, log_system_metrics=False)
    line = one_line(str(err.value))
    assert str(store.resolve() / "mlartifacts") in line and "outside this data home" in line, line
    assert "tracking.experiment" in line
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before  # the original untouched
    fresh = start_update_run("sdft-ops-copy", "u2", home=copy, log_system_metrics=False)
    fresh.close()  # the fix the message names works


@pytest.mark.parametrize(("raised", "expected"), [
    ("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/get failed with exception "
     "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded (Caused by "
     "NewConnectionError('Failed to establish a new connection: [Errno 111] Connection refused'))",
     "MLflow tracking server http://127.0.0.1:5000 stopped answering (connection refused)"),
    ("API request to endpoint /api/2.0/mlflow/runs/get failed with error code 502 != 200. "
     "Response body: '<html>\n<body>Bad Gateway</body>\n</html>'",
     "the MLflow tracking server failed a request (HTTP 502)"),
])
def test_mlflow_http_failures_become_one_line(raised, expected):
    from mlflow.exceptions import MlflowException

    failure = tracking_failure(MlflowException(raised))
    assert isinstance(failure, TrackingUnreachable) and str(failure).startswith(expected)
    assert "\n" not in str(failure)
    assert tracking_failure(MlflowException("Registered Model with name=x not found")) is None
