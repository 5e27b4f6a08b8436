"""Fault injection: an update killed at each step boundary, another update promoted meanwhile,
then the first one rerun with the same id (issue #33, rows 1 and 2, Build item 3).

The kill is an exception raised where the next step would start (for `register`, right after
the version is registered, before anything else of the eval step runs; for `verdict`, after
the gate tagged its verdict, before the champion alias moved): no cleanup of the killed step
runs, as with SIGKILL. Real MLflow (sqlite), real tiny models, real steps. After the rerun:
the champion holds the weights the gate judged, the champion lineage has no hole (every
promotion is an ancestor of the champion, each trained from the champion before it), no MLflow
run is left RUNNING, and no version of the killed update is left pending beside the promoted one.
"""

import json
from pathlib import Path

import pytest

from sdft_ops import pipeline
from sdft_ops.domains import load_shipped
from sdft_ops.ledger import champion_stack
from sdft_ops.registry import (
    TAG_GATE_VERDICT,
    TAG_MODEL_DIR,
    TAG_PARENT_VERSION,
    TAG_UPDATE_ID,
    PolicyRegistry,
)
from sdft_ops.update_state import UpdateFinished, load_state, update_dir
from sdft_ops.version_identity import verify_version
from sdft_ops.weights_identity import TAG_WEIGHTS_SHA256, weights_sha256
from tests.pipeline_helpers import fast_config, fresh_home, tiny_base

BOUNDARIES = ("stage", "train", "register", "eval", "verdict", "gate")
NEXT_STEP = {"stage": "train_step", "train": "eval_step", "eval": "gate_step", "gate": "outcome_of"}


class Killed(BaseException):
    """The process died here (a BaseException: nothing catches it as an error)."""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory, mlflow_template):
    """A data home with a first champion; each test adds its updates to the same chain."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path_factory.mktemp("faults")
        cfg = fast_config(tiny_base(root / "base"))
        home = fresh_home(root / "home", mlflow_template)
        registry = PolicyRegistry(None, home=home)
        first = pipeline.run_update(load_shipped("tooluse")[0], cfg, update_id="first", home=home,
                                    registry=registry)
        assert first.promoted, first.decision.reasons
        yield home, cfg, registry


def kill_after(boundary: str, mp: pytest.MonkeyPatch) -> None:
    def die(*args, **kwargs):
        raise Killed(boundary)

    if boundary == "register":
        register = PolicyRegistry.register_candidate

        def register_then_die(self, *args, **kwargs):
            register(self, *args, **kwargs)
            raise Killed(boundary)

        mp.setattr(PolicyRegistry, "register_candidate", register_then_die)
    elif boundary == "verdict":
        mp.setattr(PolicyRegistry, "promote", die)
    else:
        mp.setattr(pipeline, NEXT_STEP[boundary], die)


def stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def assert_identity_held(home, registry) -> None:
    champion = registry.champion_version()
    tags = registry.get_version(champion).tags
    judged = json.loads((update_dir(home, tags[TAG_UPDATE_ID]) / "gate_decision.json").read_text())
    assert tags[TAG_WEIGHTS_SHA256] == judged["model_sha256"] == weights_sha256(tags[TAG_MODEL_DIR])
    assert verify_version(registry, champion)[0]
    # no hole: the ledger's champions are exactly the champion's ancestors, each trained from
    # the champion before it
    promoted = champion_stack(registry.history())
    assert registry.lineage(champion) == promoted[::-1]
    for before, after in zip(promoted, promoted[1:]):
        assert registry.get_version(after).tags[TAG_PARENT_VERSION] == before
    experiment = registry.client.get_experiment_by_name(registry.experiment).experiment_id
    assert registry.client.search_runs([experiment], "attributes.status = 'RUNNING'") == []


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_a_killed_update_rerun_after_another_promotion_promotes_what_was_gated(world, boundary):
    home, cfg, registry = world
    killed, other = f"killed-{boundary}", f"other-{boundary}"
    with pytest.MonkeyPatch.context() as mp:
        kill_after(boundary, mp)
        with pytest.raises(Killed):
            pipeline.run_update(load_shipped("tooluse")[0], cfg, update_id=killed, home=home,
                                registry=registry)
    between = pipeline.run_update(load_shipped("triage")[0], cfg, update_id=other, home=home,
                                  registry=registry)
    assert between.promoted, between.decision.reasons
    champion_folder = Path(registry.parent_for_update(cfg.model).model_dir)
    files_before = stamps(champion_folder)

    if boundary == "gate":  # the killed update was finished: its rerun changes nothing
        versions = len(registry.client.search_model_versions(f"name = '{registry.name}'"))
        with pytest.raises(UpdateFinished, match=f"update '{killed}' is finished") as refused:
            pipeline.run_update(load_shipped("tooluse")[0], cfg, update_id=killed, home=home,
                                registry=registry)
        assert "\n" not in str(refused.value)
        assert len(registry.client.search_model_versions(f"name = '{registry.name}'")) == versions
        assert registry.champion_version() == between.version
    else:
        rerun = pipeline.run_update(load_shipped("tooluse")[0], cfg, update_id=killed, home=home,
                                    registry=registry)
        assert rerun.promoted, rerun.decision.reasons
        assert registry.champion_version() == rerun.version != between.version
        assert load_state(home, killed).parent.version == between.version  # trained from it
        mine = [mv for mv in registry.client.search_model_versions(f"name = '{registry.name}'")
                if mv.tags.get(TAG_UPDATE_ID) == killed and str(mv.version) != rerun.version]
        assert all(mv.tags[TAG_GATE_VERDICT] == "superseded" for mv in mine)  # none left pending
    assert stamps(champion_folder) == files_before  # the champion's folder was not written
    assert_identity_held(home, registry)
