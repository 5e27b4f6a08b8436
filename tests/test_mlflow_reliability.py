"""MLflow at the edges: an unreachable server fails fast with one line; a fresh sqlite store is
created once even when two updates start at the same moment."""

import socket
import subprocess
import sys
import time

import pytest

from sdft_ops.mlflow_store import TrackingUnreachable, resolve_tracking_uri


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracking_server_fails_in_seconds_with_one_line(tmp_path):
    from sdft_ops.registry import PolicyRegistry
    from sdft_ops.tracking import start_update_run

    uri = f"http://127.0.0.1:{_free_port()}"
    for call in (lambda: PolicyRegistry(uri, home=tmp_path),
                 lambda: start_update_run("e", "u1", uri=uri, home=tmp_path, log_system_metrics=False)):
        started = time.monotonic()
        with pytest.raises(TrackingUnreachable) as err:
            call()
        assert time.monotonic() - started < 30  # a correctness bound: MLflow alone took 251 s
        message = str(err.value)
        assert uri in message and "\n" not in message and "not reachable" in message


INIT = """
import sys
from sdft_ops.registry import PolicyRegistry
PolicyRegistry(None, home=sys.argv[1]).champion_version()
print("ok")
"""


def test_two_first_updates_on_a_fresh_data_home_both_create_the_store(tmp_path):
    home = tmp_path / "fresh"
    procs = [subprocess.Popen([sys.executable, "-c", INIT, str(home)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert all(out.strip().endswith("ok") for out, _ in outs)
    assert resolve_tracking_uri(None, home).startswith("sqlite:///")
    assert (home / ".mlflow.db.ready").is_file()


def test_a_rerun_marks_the_killed_runs_of_its_update_failed(tmp_path, mlflow_template):
    import shutil

    from sdft_ops.tracking import start_update_run

    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    killed = start_update_run("e", "u1", home=tmp_path, log_system_metrics=False)  # never closed
    other = start_update_run("e", "u2", home=tmp_path, log_system_metrics=False)
    rerun = start_update_run("e", "u1", home=tmp_path, log_system_metrics=False)
    from mlflow import MlflowClient

    client = MlflowClient(resolve_tracking_uri(None, tmp_path))
    status = lambda logger: client.get_run(logger.run_id).info.status  # noqa: E731
    assert status(killed) == "FAILED"
    assert status(other) == "RUNNING" and status(rerun) == "RUNNING"  # other updates untouched
