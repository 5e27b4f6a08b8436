"""The production profile on real services (`deploy/prod.sh`): PostgreSQL for the Dagster
instance (dagster-postgres) and an MLflow tracking server whose backend store is that
PostgreSQL. One tiny-model update runs end to end on it; then the MLflow server is killed in the
middle of an update: the update fails with a one-line message and nothing is promoted.

The script installs Debian's postgresql package when it is missing (as root), so a fresh CI
machine runs this too; the first run there takes a minute for the install."""

import os
import signal
import socket
import subprocess
from pathlib import Path

import dagster as dg
import pytest
import yaml

from assets.partitions import domain_updates
from assets.resources import SdftOpsResource
from assets.sensors import gating_sensor
from assets.updates import demo_dataset, eval_results, sdft_checkpoint
from sdft_ops.domains import load_shipped
from sdft_ops.registry import PolicyRegistry
from tests.pipeline_helpers import tiny_base, tiny_config

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "prod.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prod(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prod")
    env = {**os.environ, "PROD_DIR": str(folder / "services"), "PG_PORT": str(_free_port()),
           "MLFLOW_PORT": str(_free_port())}
    env.pop("MLFLOW_TRACKING_URI", None)

    def script(action: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), action], env=env, capture_output=True,
                              text=True, timeout=900)

    up = script("up")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield {"dir": Path(env["PROD_DIR"]), "uri": f"http://127.0.0.1:{env['MLFLOW_PORT']}",
               "script": script, "work": folder}
    finally:
        script("down")


def _resource(prod, cfg, name: str) -> SdftOpsResource:
    path = prod["work"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return SdftOpsResource(config_path=str(path), home=str(prod["work"] / "home"),
                           inbox=str(prod["work"] / "inbox"))


def _stage(instance, sdft_ops, dataset, key, assets):
    if key not in instance.get_dynamic_partitions(domain_updates.name):
        dataset.write_jsonl(sdft_ops.submission(key))
        instance.add_dynamic_partitions(domain_updates.name, [key])
    return dg.materialize(assets, partition_key=key, instance=instance,
                          resources={"sdft_ops": sdft_ops}, raise_on_error=False)


def _kill_mlflow(prod) -> None:
    pid = int((prod["dir"] / "mlflow.pid").read_text())
    subprocess.run(["pkill", "-KILL", "-P", str(pid)], check=False)  # its workers
    os.kill(pid, signal.SIGKILL)


def test_an_update_on_postgres_and_the_mlflow_server_and_a_killed_server_promotes_nothing(prod):
    from mlflow import MlflowClient
    from dagster_postgres import PostgresRunStorage

    base = tiny_base(prod["work"] / "base")
    cfg = tiny_config(base)
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"tracking_uri": prod["uri"]})})
    sdft_ops = _resource(prod, cfg, "update")
    instance = dg.DagsterInstance.from_config(str(prod["dir"] / "dagster_home"))
    try:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        # 1. one update end to end: run in Postgres, MLflow run + registry version on the server
        result = _stage(instance, sdft_ops, load_shipped("tooluse")[0], "20261202-tooluse",
                        [demo_dataset, sdft_checkpoint, eval_results])
        assert result.success
        assert instance.get_run_by_id(result.run_id).is_success  # read back from Postgres
        with dg.build_sensor_context(instance=instance, resources={"sdft_ops": sdft_ops}) as ctx:
            gated = gating_sensor(ctx)
        (event,) = gated.asset_events
        assert event.metadata["verdict"].value == "promote", event.metadata["reasons"]
        client = MlflowClient(prod["uri"])
        registry = PolicyRegistry.from_config(sdft_ops.settings(), sdft_ops.data_home())
        assert registry.tracking_uri == prod["uri"] and registry.champion_version() == "1"
        version = client.get_model_version_by_alias(cfg.tracking.model_name, "champion")
        run = client.get_run(version.run_id)
        assert run.info.status == "FINISHED" and version.tags["sdft_ops.update_id"] == "20261202-tooluse"
        assert [e.action for e in registry.history()] == ["promote"]  # the ledger agrees

        # 2. the MLflow server dies between training and evaluation of the next update
        key = "20261202-knowledge"
        trained = _stage(instance, sdft_ops, load_shipped("knowledge")[0], key,
                         [demo_dataset, sdft_checkpoint])
        assert trained.success
        _kill_mlflow(prod)
        failed = _stage(instance, sdft_ops, load_shipped("knowledge")[0], key, [eval_results])
        assert not failed.success
        (failure,) = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
        error = failure.step_failure_data.error
        message = (error.cause or error).message.strip()  # Dagster wraps the step's own error
        assert prod["uri"] in message and "not reachable" in message, message
        assert "\n" not in message.split(": ", 1)[1], message  # one line after the class name

        # 3. back up: nothing was promoted, the champion and the ledger did not move
        up = prod["script"]("up")
        assert up.returncode == 0, up.stderr
        with dg.build_sensor_context(instance=instance, resources={"sdft_ops": sdft_ops},
                                     cursor=gated.cursor) as ctx:
            assert isinstance(gating_sensor(ctx), dg.SkipReason)  # no evaluated update to gate
        assert registry.champion_version() == "1"
        assert [v.version for v in client.search_model_versions(f"name='{cfg.tracking.model_name}'")] == ["1"]
        assert [e.action for e in registry.history()] == ["promote"]
    finally:
        instance.dispose()
