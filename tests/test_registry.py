"""Policy registry: pyfunc registration, aliases, the promotion ledger, races, and a real server."""

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

import pandas as pd
import pytest

from sdft_ops.chat import generate_text
from sdft_ops.engine.checkpoint import save_trained_model
from sdft_ops.gate import GateDecision, RuleCheck
from sdft_ops.registry import (
    CHAMPION,
    TAG_GATE_VERDICT,
    TAG_PARENT_VERSION,
    PolicyRegistry,
    RegistryError,
    StalePromotionError,
    check_model_folder,
    load_champion,
)
from sdft_ops.mlflow_store import tracking_uri

PROMPTS = ["What is the capital of France?", "Call the tool"]




@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from sdft_ops.tiny import build_tiny

    model, tokenizer = build_tiny(seed=0)
    return save_trained_model(model, tokenizer, tmp_path_factory.mktemp("trained") / "final", {"step": 1})




def register(registry, model_dir, parent):
    return registry.register_candidate(model_dir, parent_version=parent, dataset_hash="sha256:abc",
                                       method="sdft", base_model="tiny-llama", commit=None)


def actions(registry):
    return [(e.action, e.version, e.from_version, e.to_version) for e in registry.history()]


def verdict(promote: bool) -> GateDecision:
    check = RuleCheck(suite="mmlu", rule="max_drop", measured=0.0 if promote else -0.2, threshold=-0.05,
                      passed=promote)
    return GateDecision.from_checks([check])


# ---------------------------------------------------------------------------- registration


def test_register_candidate_logs_a_pyfunc_with_tags_and_the_candidate_alias(registry, model_dir):
    v1 = registry.register_candidate(model_dir, parent_version=None, dataset_hash="sha256:abc", method="sft",
                                     base_model="tiny-llama", tags={"team": "ops"})
    assert v1 == "1"
    mv = registry.get_version(v1)
    assert mv.tags[TAG_PARENT_VERSION] == "none" and mv.tags["sdft_ops.dataset_hash"] == "sha256:abc"
    assert mv.tags["sdft_ops.method"] == "sft" and mv.tags["sdft_ops.base_model"] == "tiny-llama"
    assert mv.tags[TAG_GATE_VERDICT] == "pending" and mv.tags["team"] == "ops"
    assert registry.candidate_version() == "1" and registry.champion_version() is None
    assert mv.run_id and registry.run_id_of(v1) == mv.run_id

    v2 = register(registry, model_dir, parent=v1)
    assert registry.candidate_version() == v2 == "2"
    assert registry.lineage(v2) == ["2", "1"]
    assert "sdft_ops.code_version" not in registry.get_version(v2).tags  # commit=None

    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=registry.client.get_model_version_download_uri(registry.name, v2),
        tracking_uri=registry.tracking_uri))
    requirements = (local / "requirements.txt").read_text().split()
    names = {r.split("==")[0] for r in requirements}
    assert {"torch", "transformers", "safetensors"} <= names and "torchvision" not in names
    mlmodel = (local / "MLmodel").read_text()
    assert "python_function" in mlmodel and "policy_model.py" in mlmodel
    assert not list(local.rglob("*.pkl")) and list(local.rglob("*.safetensors"))  # nothing pickled
    with pytest.raises(ValueError, match="no version"):
        register(registry, model_dir, parent="99")


def test_only_safetensors_folders_are_registered(tmp_path, model_dir):
    with pytest.raises(ValueError, match="config.json"):
        check_model_folder(tmp_path)
    copy = shutil.copytree(model_dir, tmp_path / "copy")
    (copy / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pickle"):
        check_model_folder(copy)
    for weights in copy.glob("*.safetensors"):
        weights.unlink()
    (copy / "pytorch_model.bin").unlink()
    with pytest.raises(ValueError, match="safetensors"):
        check_model_folder(copy)


# ---------------------------------------------------------------------------- promotion and ledger


def test_promote_reject_manual_and_rollback_move_aliases_and_fill_the_ledger(registry, model_dir):
    v1 = register(registry, model_dir, None)
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback("nothing to roll back")
    registry.promote(v1, "bootstrap: the base model", manual=True)
    v2 = register(registry, model_dir, v1)
    registry.promote(v2, "gate passed", decision=verdict(True))
    assert registry.champion_version() == v2
    v3 = register(registry, model_dir, v2)
    registry.reject(v3, "mmlu dropped 0.2", decision=verdict(False))
    assert registry.champion_version() == v2 and registry.candidate_version() is None
    assert registry.get_version(v3).tags[TAG_GATE_VERDICT] == "reject"
    assert "mmlu: max_drop failed" in registry.get_version(v3).tags["sdft_ops.gate_reasons"]
    assert registry.get_version(v2).tags[TAG_GATE_VERDICT] == "promote"
    assert registry.get_version(v1).tags[TAG_GATE_VERDICT] == "manual_promote"

    v4 = register(registry, model_dir, v1)  # trained from a champion that was since replaced
    with pytest.raises(StalePromotionError, match="expects champion 1 but the champion is now 2"):
        registry.promote(v4, "gate passed")
    with pytest.raises(RegistryError, match="gate rejected"):
        registry.promote(v3, "try anyway", decision=verdict(False), expected_champion=v2)
    with pytest.raises(RegistryError, match="already the champion"):
        registry.promote(v2, "again", expected_champion=v2)
    with pytest.raises(RegistryError, match="use rollback"):
        registry.reject(v2, "no")

    registry.rollback("v2 hurt users")
    assert registry.champion_version() == v1
    assert registry.get_version(v2).tags["sdft_ops.rolled_back_at"]
    registry.promote(v3, "human override after review", manual=True)
    assert registry.champion_version() == v3
    registry.rollback("override was wrong")
    assert registry.champion_version() == v1
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback("again")

    assert actions(registry) == [
        ("manual_promote", "1", None, "1"), ("promote", "2", "1", "2"), ("reject", "3", "2", "2"),
        ("rollback", "1", "2", "1"), ("manual_promote", "3", "1", "3"), ("rollback", "1", "3", "1")]
    history = registry.history()
    assert [e.seq for e in history] == list(range(1, 7))
    assert all(e.who == "tester" and e.model_name == "sdft-ops-policy" for e in history)
    assert history[2].why == "mmlu dropped 0.2"
    assert [e.when for e in history] == sorted(e.when for e in history)
    # durable: a fresh registry on the same home reads the same history
    assert actions(PolicyRegistry(home=registry.home)) == actions(registry)


def test_alias_moved_outside_the_registry_blocks_gated_moves(registry, model_dir):
    v1 = register(registry, model_dir, None)
    v2 = register(registry, model_dir, v1)
    registry.promote(v1, "bootstrap", manual=True)
    registry.client.set_registered_model_alias(registry.name, CHAMPION, v2)  # someone used the UI
    with pytest.raises(RegistryError, match="ledger"):
        registry.rollback("undo")
    v3 = register(registry, model_dir, v2)
    with pytest.raises(RegistryError, match="manual=True"):
        registry.promote(v3, "gate passed")
    registry.promote(v3, "re-establish the champion", manual=True)
    assert actions(registry)[-1] == ("manual_promote", "3", "2", "3")


def test_corrupt_ledger_is_refused_with_the_fix(registry, model_dir):
    v1 = register(registry, model_dir, None)
    registry.promote(v1, "bootstrap", manual=True)
    with open(registry.ledger.path, "a") as f:
        f.write('{"seq": 2, "action": "prom')  # a crash cut the line short
    with pytest.raises(RegistryError, match="line 2.*delete that line"):
        registry.history()


def test_racing_promotions_leave_one_champion_and_a_consistent_ledger(registry, model_dir, monkeypatch):
    v1 = register(registry, model_dir, None)
    registry.promote(v1, "bootstrap", manual=True)
    v2, v3 = register(registry, model_dir, v1), register(registry, model_dir, v1)

    # widen the race window: every champion read is slow, so unguarded racers would both see v1
    read = PolicyRegistry._alias

    def slow_read(self, alias):
        value = read(self, alias)
        time.sleep(0.3)
        return value

    monkeypatch.setattr(PolicyRegistry, "_alias", slow_read)
    barrier = threading.Barrier(2)
    outcome: dict[str, str] = {}

    def racer(version):
        racer_registry = PolicyRegistry(home=registry.home, user=f"racer-{version}")  # as another process would
        barrier.wait()
        try:
            racer_registry.promote(version, f"gate passed for {version}")
            outcome[version] = "promoted"
        except StalePromotionError:
            outcome[version] = "stale"

    threads = [threading.Thread(target=racer, args=(v,)) for v in (v2, v3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcome.values()) == ["promoted", "stale"]
    winner = next(v for v, o in outcome.items() if o == "promoted")
    assert registry.champion_version() == winner
    assert actions(registry) == [("manual_promote", "1", None, "1"), ("promote", winner, "1", winner)]
    assert registry.history()[-1].who == f"racer-{winner}"


def test_champion_loads_as_pyfunc_and_generates_like_the_model(registry, model_dir):
    from sdft_ops.models import ModelSpec, load_model

    with pytest.raises(LookupError, match="promote a version first"):
        registry.load_champion()
    v1 = register(registry, model_dir, None)
    registry.promote(v1, "bootstrap", manual=True)
    pyfunc = load_champion(tracking_uri=registry.tracking_uri)
    model, tokenizer = load_model(ModelSpec(name_or_path=str(model_dir)))
    expected = [generate_text(model, tokenizer, [{"role": "user", "content": p}], max_new_tokens=8) for p in PROMPTS]
    assert pyfunc.predict(PROMPTS, params={"max_new_tokens": 8}) == expected
    assert pyfunc.predict(pd.DataFrame({"prompt": PROMPTS}), params={"max_new_tokens": 8}) == expected
    assert len(pyfunc.predict(PROMPTS[:1])) == 1  # default max_new_tokens


# ---------------------------------------------------------------------------- remote tracking server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path, mlflow_template):
    """`mlflow server` on a free port with a sqlite backend and proxied artifacts; stopped after."""
    shutil.copy(mlflow_template, tmp_path / "server.db")
    port = _free_port()
    log_path = tmp_path / "server.log"
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
             "--artifacts-destination", str(tmp_path / "server-artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job workers: 2x faster start
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 40
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.timeout(120)  # server start is slow-tolerant (40 s deadline); usually ~10 s in all
def test_register_and_promote_against_a_tracking_server(mlflow_server, home, model_dir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    registry = PolicyRegistry(mlflow_server, home=home, user="tester")
    assert registry.champion_version() is None
    v1 = register(registry, model_dir, None)
    registry.promote(v1, "bootstrap", manual=True)
    v2 = register(registry, model_dir, v1)
    registry.promote(v2, "gate passed")
    assert registry.champion_version() == v2 and registry.candidate_version() == v2
    assert registry.get_version(v2).source.startswith("mlflow-artifacts:")
    assert actions(registry) == [("manual_promote", "1", None, "1"), ("promote", "2", "1", "2")]
    generated = load_champion(tracking_uri=mlflow_server).predict(PROMPTS[:1], params={"max_new_tokens": 4})
    assert len(generated) == 1 and isinstance(generated[0], str)
