"""The Dagster skin on a real temporary instance with tiny models and a real sqlite MLflow."""

import base64
import json
import os
import socket
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml

from assets.partitions import domain_updates
from assets.resources import SdftOpsResource
from assets.sensors import gating_sensor, inbox_sensor
from assets.updates import demo_dataset, eval_results, sdft_checkpoint
from sdft_ops.domains import load_shipped
from sdft_ops.registry import PolicyRegistry
from tests.pipeline_helpers import DAMAGING, tiny_base, tiny_config

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def _resource(tmp: Path, cfg, name: str) -> SdftOpsResource:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return SdftOpsResource(config_path=str(path), home=str(tmp / "home"), inbox=str(tmp / "inbox"))


def _materialize(instance, sdft_ops, dataset, key):
    dataset.write_jsonl(sdft_ops.submission(key))
    instance.add_dynamic_partitions(domain_updates.name, [key])
    return dg.materialize([demo_dataset, sdft_checkpoint, eval_results], partition_key=key,
                          instance=instance, resources={"sdft_ops": sdft_ops}, raise_on_error=False)


def test_good_update_promoted_damaging_update_blocked(tmp_path):
    cfg = tiny_config(tiny_base(tmp_path / "base"))
    good = _resource(tmp_path, cfg, "good")
    bad = _resource(tmp_path, cfg.model_copy(update={"train": cfg.train.model_copy(update=DAMAGING)}),
                    "bad")
    with dg.instance_for_test() as instance:
        first = _materialize(instance, good, load_shipped("tooluse")[0], "20261128-tooluse")
        assert first.success
        checks = {e.check_name: e.passed for e in first.get_asset_check_evaluations()}
        assert checks == {"prior_retention": True, "safety_retention": True, "domain_learning": True,
                          "warn_only_rules": True}
        # the retention plot is in the metadata as an image (a data URI), not only as a path
        (materialized,) = [e for e in first.get_asset_materialization_events()
                           if e.asset_key == dg.AssetKey("eval_results")]
        plot = materialized.materialization.metadata["retention_plot"].value
        assert plot.startswith("![retention vs champion](data:image/png;base64,") and plot.endswith(")")
        assert base64.b64decode(plot.split(",", 1)[1][:-1])[:8] == b"\x89PNG\r\n\x1a\n"
        with dg.build_sensor_context(instance=instance, resources={"sdft_ops": good}) as ctx:
            result = gating_sensor(ctx)
        (event,) = result.asset_events
        assert event.partition == "20261128-tooluse", event
        assert event.metadata["verdict"].value == "promote", event.metadata["reasons"]
        registry = PolicyRegistry.from_config(good.settings(), good.data_home())
        assert registry.champion_version() == "1"

        second = _materialize(instance, bad, load_shipped("knowledge")[0], "20261128-knowledge")
        checks = {e.check_name: e.passed for e in second.get_asset_check_evaluations()}
        assert checks["prior_retention"] is False  # drift dropped: the blocking check fails
        with dg.build_sensor_context(instance=instance, resources={"sdft_ops": bad},
                                     cursor=result.cursor) as ctx:
            result = gating_sensor(ctx)
        (event,) = result.asset_events
        assert event.metadata["verdict"].value == "reject"
        assert "blocking check prior_retention failed" in event.metadata["reasons"].value
        assert registry.champion_version() == "1"  # the champion did not move
        assert [e.action for e in registry.history()] == ["promote", "reject"]
        with dg.build_sensor_context(instance=instance, resources={"sdft_ops": bad},
                                     cursor=result.cursor) as ctx:
            assert isinstance(gating_sensor(ctx), dg.SkipReason)  # nothing new to gate


def test_demo_chain_runs_through_the_dagster_job_with_each_steps_config(tmp_path, capsys):
    """`make demo`'s runner: each step's own config reaches the assets (here the second step
    is the damaging one), the gate rejects it and the champion stays."""
    from assets.demo import dagster_runner
    from sdft_ops.demo import DemoChain, run_chain

    cfg = tiny_config(tiny_base(tmp_path / "base"))
    base = _resource(tmp_path, cfg, "base")
    (tmp_path / "chain.yaml").write_text(yaml.safe_dump({"config": "base.yaml", "steps": [
        {"domain": "tooluse"}, {"domain": "knowledge", "overrides": {"train": DAMAGING}}]}))
    chain = DemoChain.from_yaml(tmp_path / "chain.yaml")
    with dg.instance_for_test() as instance:
        outcomes, records, _, _ = run_chain(dagster_runner(instance, base), chain, base.data_home())
        assert [(r["domain"], r["method"], r["promoted"]) for r in records] == [
            ("tooluse", "sdft", True), ("knowledge", "sft", False)]
        # the assets run in this process: the demo's progress line for every phase, and no
        # library DEBUG/INFO event logs (Dagster's per-step events, MLflow's table creation)
        printed = capsys.readouterr()
        phases = [line.split()[2] for line in printed.out.splitlines() if line.startswith("[")]
        assert phases == ["train", "evaluate", "gate"] * 2
        assert not [line for line in (printed.out + printed.err).splitlines()
                    if " - DEBUG - " in line or " INFO " in line], printed.err[:500]
        # the failed blocking check is the gate's verdict, not a crash: no step-failure trace
        assert "Traceback" not in printed.out + printed.err and " - ERROR - " not in printed.err
        assert any("prior_retention" in reason for reason in outcomes[1].decision.reasons)
        runs = instance.get_runs()  # newest first; the blocking check fails the second run
        assert [r.is_success for r in reversed(runs)] == [True, False]
    assert PolicyRegistry.from_config(base.settings(), base.data_home()).champion_version() == "1"


def test_demo_runner_names_the_cause_of_a_failed_update(tmp_path):
    """A step that fails for a reason other than a gate check (its model folder is gone): the
    runner raises one line naming the op's own error, not Dagster's wrapper."""
    from assets.demo import dagster_runner
    from sdft_ops.demo import DemoChain, run_chain

    cfg = tiny_config(tiny_base(tmp_path / "base"))
    base = _resource(tmp_path, cfg, "base")
    missing = tmp_path / "no-such-model"
    (tmp_path / "chain.yaml").write_text(yaml.safe_dump({"config": "base.yaml", "steps": [
        {"domain": "tooluse", "overrides": {"model": {"name_or_path": str(missing)}}}]}))
    chain = DemoChain.from_yaml(tmp_path / "chain.yaml")
    with dg.instance_for_test() as instance, pytest.raises(RuntimeError) as failure:
        run_chain(dagster_runner(instance, base), chain, base.data_home())
    message = str(failure.value)
    assert message.startswith("update ") and "no-such-model" in message, message
    assert "DagsterExecutionStepExecutionError" not in message


def test_inbox_sensor_admits_valid_files_and_reports_bad_ones(tmp_path):
    sdft_ops = SdftOpsResource(home=str(tmp_path / "home"), inbox=str(tmp_path / "inbox"))
    inbox = sdft_ops.inbox_dir()
    inbox.mkdir()
    load_shipped("triage")[0].write_jsonl(inbox / "triage.jsonl")
    (inbox / "broken.jsonl").write_text('{"id": "a", "prompt": "hi"}\n{not json\n')
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, resources={"sdft_ops": sdft_ops}) as ctx:
            result = inbox_sensor(ctx)
        (request,) = result.dynamic_partitions_requests
        assert len(request.partition_keys) == 1 and request.partition_keys[0].endswith("-triage")
        assert [r.partition_key for r in result.run_requests] == request.partition_keys
        assert sdft_ops.submission(request.partition_keys[0]).is_file()
        errors = (inbox / "broken.jsonl.errors.txt").read_text()
        assert "broken.jsonl:1: demonstration" in errors and "broken.jsonl:2" in errors
        with dg.build_sensor_context(instance=instance, resources={"sdft_ops": sdft_ops},
                                     cursor=result.cursor) as ctx:
            assert isinstance(inbox_sensor(ctx), dg.SkipReason)  # each file is seen once


def test_definitions_validate():
    done = subprocess.run([str(VENV_BIN / "dagster"), "definitions", "validate", "-f",
                           "definitions.py"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Validation successful" in done.stderr + done.stdout


def _busy() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


@pytest.mark.parametrize("hung_webserver", [False, True])
def test_make_dev_serves_and_stops_on_one_ctrl_c_under_load(tmp_path, hung_webserver):
    """`make dev`'s command (assets/dev.py around dagster dev), with both cores kept busy and a
    live GraphQL subscription open as a browser holds one: one SIGINT, as a terminal's Ctrl-C
    sends to the foreground process, stops everything within 10 s. `hung_webserver`: the
    webserver is frozen (SIGSTOP) so that dagster dev cannot shut down by itself, as was seen."""
    from websockets.sync.client import connect

    with socket.socket() as probe:  # a free port: a fixed one can meet a leftover server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "SDFT_OPS_HOME": str(tmp_path / "home")}
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    busy = [_busy(), _busy()]
    proc = subprocess.Popen([str(VENV_BIN / "python"), "-m", "assets.dev", "-h", "127.0.0.1", "-p",
                             str(port), "-f", "definitions.py"], cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "dev.log", "w"))  # a file: a full pipe would block dagster
    try:
        deadline, info = time.time() + 180, None
        while time.time() < deadline and info is None:
            try:
                info = urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2).read()
            except OSError:
                time.sleep(1)
        assert info and b"dagster_webserver_version" in info
        ws = connect(f"ws://127.0.0.1:{port}/graphql", subprotocols=["graphql-ws"], open_timeout=30)
        ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        ws.send(json.dumps({"id": "1", "type": "start", "payload": {
            "query": "subscription { locationStateChangeEvents { event { message } } }"}}))
        assert json.loads(ws.recv(timeout=30))["type"] == "connection_ack"
        children = subprocess.run(["pgrep", "-g", str(_dagster_pgid(proc.pid))], capture_output=True,
                                  text=True).stdout.split()
        assert len(children) >= 3  # dagster dev, webserver, daemon (+ code servers)
        if hung_webserver:
            webserver = subprocess.run(["pgrep", "-f", f"dagster_webserver --port {port}"],
                                       capture_output=True, text=True).stdout.split()
            os.kill(int(webserver[0]), signal.SIGSTOP)
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("make dev did not stop within 10 s of one SIGINT")
        stopped_s = time.monotonic() - started
        ws.close()
        time.sleep(0.5)
        alive = [pid for pid in children if Path(f"/proc/{pid}").exists()
                 and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]]
        assert not alive, f"processes left after make dev stopped: {alive}"
        last = (tmp_path / "dev.log").read_text().strip().splitlines()[-1]
        if hung_webserver:  # (unfrozen, dagster dev stops by itself in ~4 s here; printed, not required)
            assert "killed its processes" in last, last
        print(f"stopped in {stopped_s:.1f} s: {last}")
    finally:
        for b in busy:
            b.kill()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _dagster_pgid(supervisor_pid: int) -> int:
    """The process group of dagster dev, the supervisor's child (it runs in its own group)."""
    deadline = time.time() + 10
    while time.time() < deadline:
        out = subprocess.run(["pgrep", "-P", str(supervisor_pid)], capture_output=True, text=True).stdout.split()
        if out:
            return os.getpgid(int(out[0]))
        time.sleep(0.2)
    raise AssertionError("assets.dev started no dagster dev process")


def test_definitions_read_deployment_settings_when_used_not_at_import(monkeypatch, tmp_path):
    import definitions

    resource = definitions.defs.resources["sdft_ops"]
    monkeypatch.delenv("SDFT_OPS_CONFIG", raising=False)
    monkeypatch.delenv("SDFT_OPS_INBOX", raising=False)
    assert resource.config_file() == Path("configs/update.yaml") and resource.inbox_dir() == Path("inbox")
    config = tmp_path / "update.yaml"
    config.write_text("train: {max_steps: 3}\n")
    monkeypatch.setenv("SDFT_OPS_CONFIG", str(config))
    monkeypatch.setenv("SDFT_OPS_INBOX", str(tmp_path / "drop"))
    assert resource.settings().train.max_steps == 3  # set after the import, still applies
    assert resource.inbox_dir() == tmp_path / "drop"
