"""A chain of two updates through the library (real MLflow sqlite, tiny models): a gentle SDFT
update is promoted; a damaging SFT update is rejected and the champion does not move."""

import json

import pytest

from sdft_ops.domains import load_shipped
from sdft_ops.pipeline import run_update
from sdft_ops.update_state import load_state, update_dir
from sdft_ops.registry import PolicyRegistry
from tests.pipeline_helpers import DAMAGING, tiny_base, tiny_config


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def chain(tmp_path_factory, home):
    cfg = tiny_config(tiny_base(tmp_path_factory.mktemp("base")))
    registry = PolicyRegistry(None, home=home)
    first = run_update(load_shipped("tooluse")[0], cfg, update_id="u1", home=home, registry=registry)
    bad_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=DAMAGING)})
    second = run_update(load_shipped("knowledge")[0], bad_cfg, update_id="u2", home=home,
                        registry=registry)
    return registry, first, second


def test_good_update_promoted_damaging_update_rejected(chain, home):
    registry, first, second = chain
    assert first.promoted and first.version == "1", first.decision.reasons
    assert not second.promoted and second.version == "2"
    drift = second.report.retention["drift"]
    assert drift.difference < -0.05  # the damage is real and measured
    assert any("drift" in r for r in second.decision.reasons)
    assert registry.champion_version() == "1"
    assert [(e.action, e.version) for e in registry.history()] == [("promote", "1"), ("reject", "2")]
    # the second update trained from the champion, and its run is chained to the first
    assert load_state(home, "u2").parent.version == "1"
    run = registry.client.get_run(second.run_id)
    assert run.data.tags["sdft_ops.chain"].split("/") == [first.run_id, second.run_id]
    # the lineage at a glance in the MLflow UI's version list
    versions = {v: registry.client.get_model_version(registry.name, v) for v in ("1", "2")}
    assert versions["1"].description == "update u1: sdft on tooluse, trained from the base model"
    assert versions["2"].description == "update u2: sft on knowledge, trained from version 1"
    assert "train/loss" in run.data.metrics and "eval/drift/retention" in run.data.metrics
    decision = json.loads((update_dir(home, "u2") / "gate_decision.json").read_text())
    assert decision["promote"] is False


def test_a_no_op_candidate_passes_every_rule_of_the_shipped_gate(chain, home):
    """The champion itself, re-scored under another name, against the champion: every rule of
    configs/gate.yaml must pass (the thresholds sit above the noise, not inside it)."""
    from pathlib import Path

    from sdft_ops.gate import GatePolicy, decide
    from sdft_ops.evaluation.battery import evaluate_candidate, suites_for

    registry, first, _ = chain
    cfg = tiny_config(tiny_base(home / "noop-base"))
    parent = registry.parent_for_update(cfg.model)
    assert parent.version == registry.champion_version() == "1"
    report = evaluate_candidate(Path(parent.model_dir), "noop:champion-again", parent,
                                suites_for(cfg, home), cfg, home)
    assert {"safety_refusal", "safety_benign_compliance", "drift", "domain/tooluse"} <= set(report.results)
    policy = GatePolicy.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "gate.yaml")
    decision = decide(report, policy, parent_version="1", champion_version="1", new_domain="tooluse")
    assert decision.promote, decision.reasons
    assert decision.warnings == [] and all(c.passed for c in decision.checks)


def test_a_rejected_updates_domain_is_not_scored_by_later_updates(chain, home):
    from sdft_ops.evaluation.battery import recorded_domain_suites, suites_for

    cfg = tiny_config(tiny_base(home / "later-base"))
    names = [s.name for s in suites_for(cfg, home) if s.name.startswith("domain/")]
    assert names == ["domain/tooluse"]  # knowledge (u2) was rejected: nothing taught to keep
    assert [s.name for s in recorded_domain_suites(home, cfg)] == ["domain/knowledge", "domain/tooluse"]


def test_earlier_domains_are_scored_at_later_updates(chain):
    _, first, second = chain
    assert "domain/tooluse" in first.report.results
    assert {"domain/tooluse", "domain/knowledge"} <= set(second.report.results)
    # the champion's results were cached from when it was the candidate: identical scores
    assert (second.report.reference_results["domain/tooluse"].scores
            == first.report.results["domain/tooluse"].scores)


def test_demo_chain_summary_matrix_and_demo_json(tmp_path, capsys):
    """A chain file like configs/demo_chain.yaml: two shipped domains, then a damaging update
    from a user demo file that the gate must reject; summary, matrix, lineage and demo.json."""
    import yaml

    from sdft_ops.demo import DemoChain, finish, quiet_mlflow, run_chain

    cfg = tiny_config(tiny_base(tmp_path / "base"))
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    demos = tmp_path / "notices.jsonl"
    demos.write_text("".join(json.dumps({"id": f"n{i}", "domain": "notices", "prompt": f"Order {i}?",
                                         "demonstration": f"NOTICE {i}"}) + "\n" for i in range(10)))
    (tmp_path / "chain.yaml").write_text(yaml.safe_dump({"config": "base.yaml", "steps": [
        {"domain": "tooluse"}, {"domain": "triage", "overrides": {"replay": {"fraction": 0.5}}},
        {"demos": "notices.jsonl", "overrides": {"train": DAMAGING}, "expect": "reject"}]}))
    chain = DemoChain.from_yaml(tmp_path / "chain.yaml")
    assert chain.step_config(chain.steps[1]).replay.fraction == 0.5
    home = tmp_path / "home"
    quiet_mlflow()  # as run_demo does before its registry: a fresh database's setup logs at INFO
    registry = PolicyRegistry(None, home=home)
    outcomes, records, matrix, plot = run_chain(
        lambda ds, c: run_update(ds, c, home=home, registry=registry), chain, home)
    assert [o.domain for o in outcomes] == ["tooluse", "triage", "notices"]
    assert [o.promoted for o in outcomes] == [True, True, False]
    assert matrix.stages == ["base", "tooluse", "triage", "notices"]
    assert matrix.tasks[:3] == ["domain/tooluse", "domain/triage", "domain/notices"]
    assert set(matrix.tasks[3:]) <= {"safety_refusal", "safety_benign_compliance"}  # no prior pools
    assert matrix.values[3] == matrix.values[2]  # the rejected update did not change the model
    assert plot.is_file() and plot.stat().st_size > 0
    assert [r["recipe"] for r in records] == ["sdft-student", "sdft-student+replay", "sft"]
    # one progress line per phase, in order, with an ETA once every phase has been measured
    printed = capsys.readouterr()
    progress = [line for line in printed.out.splitlines() if line.startswith("[")]
    assert not [line for line in (printed.out + printed.err).splitlines() if " INFO " in line]
    assert [line.split()[:3] for line in progress] == [
        [f"[{i}/3", f"{name}]", phase] for i, name in ((1, "tooluse"), (2, "triage"), (3, "notices"))
        for phase in ("train", "evaluate", "gate")]
    assert "ETA after the first update" in progress[0] and "left" in progress[2]
    assert all(r["train_seconds"] > 0 and r["eval_seconds"] > 0 for r in records)
    triage = outcomes[1].report
    assert records[0]["earlier_domains"] == {} and records[1]["earlier_domains"] == {"tooluse": {
        "before": triage.reference_results["domain/tooluse"].score,
        "after": triage.results["domain/tooluse"].score}}
    out = tmp_path / "demo.json"
    code = finish(outcomes, records, matrix, plot, registry, started=0.0, demo_json=out)
    assert code == 0  # the damaging update was rejected, as the chain expects
    (summary_run,) = registry.client.search_runs(
        [registry.client.get_experiment_by_name(registry.experiment).experiment_id],
        filter_string="attributes.run_name = 'demo-summary'")
    logged = {a.path for a in registry.client.list_artifacts(summary_run.info.run_id, "demo")}
    assert logged == {"demo/accuracy_matrix.png", "demo/summary.txt", "demo/demo.json"}
    demo = json.loads(out.read_text())
    assert demo["champion"] == "2" and demo["wall_seconds"] > 0
    assert [u["promoted"] for u in demo["updates"]] == [True, True, False]
    assert any("drift" in reason for reason in demo["updates"][2]["reasons"])
    assert set(demo["updates"][0]) >= {"domain", "method", "recipe", "promoted", "domain_score",
                                       "harmbench_retention", "benign_drop", "prior_retention",
                                       "reasons", "train_seconds", "eval_seconds", "earlier_domains"}
    text = "\n".join(summary_lines_of(outcomes, records, matrix, plot, registry))
    assert "version 1: PROMOTED" in text and "learned  tooluse" in text
    assert "version 3: REJECTED" in text and "champion lineage: v2 ← v1" in text
    assert "accuracy-matrix plot" in text and "BWT" in text and "evaluate" in text
    # a rushed update that got through would fail the demo
    records[2] = records[2] | {"promoted": True}
    assert finish(outcomes, records, matrix, plot, registry, started=0.0, demo_json=None) == 1


def summary_lines_of(outcomes, records, matrix, plot, registry):
    from sdft_ops.demo import summary_lines

    return summary_lines(outcomes, records, matrix, plot, registry.tracking_uri,
                         registry.lineage(registry.champion_version()))


def test_demo_chain_file_errors_are_one_line(tmp_path):
    from sdft_ops.demo import DEMO_CHAIN, DemoChain

    chain = DemoChain.from_yaml(DEMO_CHAIN)  # the shipped chain: every step's config is valid
    configs = [chain.step_config(s) for s in chain.steps]
    assert [c.train.method for c in configs][0] == "sft" and chain.steps[-1].expect == "reject"
    assert configs[-1].replay.fraction == 0.0 and len(chain.dataset(chain.steps[-1])) == 60
    bad = tmp_path / "chain.yaml"
    bad.write_text("steps:\n  - {domain: tooluse, demos: x.jsonl}\n")
    with pytest.raises(ValueError, match="exactly one of") as err:
        DemoChain.from_yaml(bad)
    assert "\n" not in str(err.value)
    bad.write_text("steps:\n  - {domain: nosuch}\n")
    with pytest.raises(ValueError, match="unknown shipped domain 'nosuch'"):
        DemoChain.from_yaml(bad)


def test_replay_draws_recorded_reproducible_demonstrations_from_the_champions_lineage(chain, home):
    from sdft_ops.pipeline import stage_dataset, train_step
    from sdft_ops.replay import REPLAY_PREFIX, ReplayConfig, draw_replay, lineage_pool

    registry, first, _ = chain  # champion: version 1 = update u1 (tooluse); u2 was rejected
    cfg = tiny_config_with_replay(first, 0.25)
    dataset = load_shipped("triage")[0]
    stage_dataset("u3", dataset, cfg, home)
    train_step("u3", cfg, home, registry)
    state = load_state(home, "u3")
    u1_ids = {f"{REPLAY_PREFIX}u1:{d.id}" for d in load_shipped("tooluse")[0].records}
    assert len(state.replay_ids) == round(0.25 * len(dataset)) > 0
    assert set(state.replay_ids) <= u1_ids  # the rejected u2 is not in the lineage
    pool = lineage_pool(registry, home, "1")
    again = draw_replay(pool, len(dataset), ReplayConfig(fraction=0.25), dataset.content_hash)
    assert [d.id for d in again] == state.replay_ids
    other = draw_replay(pool, len(dataset), ReplayConfig(fraction=0.25, seed=1), dataset.content_hash)
    assert [d.id for d in other] != state.replay_ids
    run = registry.client.get_run(state.run_id)
    assert run.data.metrics["replay/demonstrations"] == len(state.replay_ids)
    logged = [a.path for a in registry.client.list_artifacts(state.run_id)]
    assert "replay_ids.json" in logged
    meta = json.loads((update_dir(home, "u3") / "model" / "sdft_ops_train.json").read_text())
    assert meta["replay_ids"] == state.replay_ids  # what the model was trained on


def tiny_config_with_replay(first, fraction):
    from pathlib import Path

    base = Path(first.report.config["model"]["name_or_path"])
    cfg = tiny_config(base)
    return cfg.model_copy(update={"replay": cfg.replay.model_copy(update={"fraction": fraction})})


def test_update_ids_started_in_the_same_second_are_unique_and_their_folders_atomic(tmp_path):
    from sdft_ops.update_state import new_update_id

    ids = {new_update_id("tooluse", tmp_path) for _ in range(50)}  # well within one second or two
    assert len(ids) == 50 and all((tmp_path / "updates" / i).is_dir() for i in ids)


def test_an_update_id_or_domain_cannot_lead_outside_the_data_home(tmp_path):
    from sdft_ops.data import Demonstration

    with pytest.raises(ValueError, match="outside"):
        update_dir(tmp_path, "../../escaped")
    with pytest.raises(ValueError, match="not a domain name"):
        Demonstration(id="a", prompt="q", demonstration="d", domain="../../escaped")


def test_checkpoints_of_another_parent_are_not_resumed(tmp_path):
    from sdft_ops.update_state import Parent, fresh_checkpoints

    old_dir, new_dir = tmp_path / "v1", tmp_path / "v2"
    for folder, value in ((old_dir, b"old"), (new_dir, b"new")):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(value)
    old, new = (Parent(version="1", model_dir=str(old_dir), ref="update:a"),
                Parent(version="2", model_dir=str(new_dir), ref="update:b"))
    ckpt = fresh_checkpoints(tmp_path / "u" / "checkpoints", old)
    (ckpt / "step-000002").mkdir()  # killed here, with a checkpoint trained from version 1
    assert (fresh_checkpoints(ckpt, old) / "step-000002").is_dir()  # same parent: resume
    resumed = fresh_checkpoints(ckpt, new)  # version 2 promoted meanwhile: start over
    assert not (resumed / "step-000002").exists()
    assert json.loads((resumed / "parent.json").read_text())["version"] == "2"
    # same version number but other weights (e.g. a registry rebuilt): also not resumed
    (ckpt / "step-000004").mkdir()
    (new_dir / "model.safetensors").write_bytes(b"changed")
    assert not (fresh_checkpoints(ckpt, new) / "step-000004").exists()


def test_chain_progress_eta_is_the_mean_phase_time_times_the_phases_left():
    from sdft_ops.demo import ChainProgress

    lines = []
    progress = ChainProgress(3, write=lines.append)
    progress.step = (1, "safety")
    for phase, seconds in (("train", 100.0), ("evaluate", 60.0), ("gate", 2.0)):
        progress("u1", phase, seconds)
    progress.step = (2, "tooluse")
    progress("u2", "train", 400.0)  # train's mean is now 250 s; left: evaluate, gate + one update
    assert lines[0].split()[:4] == ["[1/3", "safety]", "train", "100"]
    assert lines[0].endswith("ETA after the first update") and lines[1].endswith("ETA after the first update")
    assert lines[2].endswith("~0:05:24 left")  # 2 x (100 + 60 + 2) = 324 s after the first gate
    assert lines[3].endswith("~0:06:14 left")  # 60 + 2 + (250 + 60 + 2) = 374 s
