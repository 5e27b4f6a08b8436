"""One identity for the weights (issue #33, Build item 1; rows 2, 9 and 11): the hash and the
content-addressed model folders, the finished update that is not run again, the registration
found again after a crash, the report tied to the weights it scored, promotion of the judged
weights only, and `sdft-ops verify`. Real MLflow (sqlite), tiny models; the kills and the full
disk are exceptions raised where they would strike."""

import errno
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from sdft_ops import cli, pipeline
from sdft_ops.domains import load_shipped
from sdft_ops.evaluation.report import EvalReport, build_report
from sdft_ops.registry import TAG_MODEL_DIR, TAG_UPDATE_ID, PolicyRegistry, RegistryError
from sdft_ops.update_state import UpdateFinished, load_state, update_dir
from sdft_ops.weights_identity import TAG_WEIGHTS_SHA256, publish_model, weights_sha256
from tests.pipeline_helpers import fast_config, fresh_home, tiny_base


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory, mlflow_template):
    """A data home whose champion is update `a`; a config file for the CLI."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path_factory.mktemp("identity")
        cfg = fast_config(tiny_base(root / "base"))
        (root / "update.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        home = fresh_home(root / "home", mlflow_template)
        registry = PolicyRegistry(None, home=home)
        first = pipeline.run_update(load_shipped("tooluse")[0], cfg, update_id="a", home=home,
                                    registry=registry)
        assert first.promoted, first.decision.reasons
        yield root, home, cfg, registry


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run(world, update_id: str, domain: str):
    _, home, cfg, registry = world
    return pipeline.run_update(load_shipped(domain)[0], cfg, update_id=update_id, home=home,
                               registry=registry)


def versions_of(registry, update_id: str) -> list:
    return [mv for mv in registry.client.search_model_versions(f"name = '{registry.name}'")
            if mv.tags.get(TAG_UPDATE_ID) == update_id]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.rglob("*"))}


# ---------------------------------------------------------------------------- the hash and folders


def test_the_weights_hash_is_the_sha256_of_the_sha256sum_listing(tmp_path):
    (tmp_path / "b.safetensors").write_bytes(b"second")
    (tmp_path / "a.safetensors").write_bytes(b"first")
    (tmp_path / "config.json").write_text("{}")  # not weights: not hashed
    listing = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n"
                      for name, data in (("a.safetensors", b"first"), ("b.safetensors", b"second")))
    assert weights_sha256(tmp_path) == hashlib.sha256(listing.encode()).hexdigest()
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        weights_sha256(tmp_path / "config.json")


def test_published_model_folders_are_new_and_never_written_again(tmp_path):
    def writer(data: bytes):
        def write(dest: Path) -> Path:
            dest.mkdir()
            (dest / "model.safetensors").write_bytes(data)
            return dest
        return write

    first, sha = publish_model(writer(b"weights 1"), tmp_path)
    assert first.name == f"model-{sha[:16]}" and (tmp_path / "model").resolve() == first
    before = snapshot(first)
    again, same = publish_model(writer(b"weights 1"), tmp_path)  # the same weights: reused
    assert (again, same) == (first, sha) and snapshot(first) == before
    second, other = publish_model(writer(b"weights 2"), tmp_path)  # retrained: a new folder
    assert second != first and other != sha and (tmp_path / "model").resolve() == second
    assert snapshot(first) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", first.name, second.name])
    legacy = tmp_path / "old"
    (legacy / "model").mkdir(parents=True)  # a folder from before content addressing
    publish_model(writer(b"weights 3"), legacy)
    assert not (legacy / "model").is_symlink() and not any((legacy / "model").iterdir())


# ---------------------------------------------------------------------------- row 2


def test_rerunning_the_champions_update_id_is_refused_and_writes_nothing(world, capsys):
    """Row 2: it retrained the champion from itself and overwrote its folder in place."""
    root, home, cfg, registry = world
    assert registry.champion_version() == load_state(home, "a").version
    before, versions = snapshot(update_dir(home, "a")), len(versions_of(registry, "a"))
    with pytest.raises(UpdateFinished, match="update 'a' is finished: version 1 was promoted") as e:
        run(world, "a", "tooluse")
    assert "\n" not in str(e.value) and "another --update-id" in str(e.value)
    for step in (pipeline.train_step, pipeline.eval_step):  # the Dagster assets' steps alike
        with pytest.raises(UpdateFinished):
            step("a", cfg, home, registry)
    demos = load_shipped("tooluse")[0].write_jsonl(root / "demos.jsonl")
    code, out, err_text = run_cli(capsys, "update", demos, "--update-id", "a", "--home", home,
                                  "--config", root / "update.yaml")
    assert code == 2 and err_text.count("\n") == 1 and "update 'a' is finished" in err_text
    assert snapshot(update_dir(home, "a")) == before and len(versions_of(registry, "a")) == versions


def test_a_gate_killed_after_promoting_is_recorded_by_the_rerun_not_retrained(world, monkeypatch):
    """Killed between the registry's promotion and its record in state.json: the rerun finds
    the promotion in the ledger, records it, and does not train the champion from itself."""
    _, home, cfg, registry = world
    save = pipeline.save_state

    def die_on_the_verdict(home_, update_id, **fields):
        if "promoted" in fields:
            raise KeyboardInterrupt  # killed
        return save(home_, update_id, **fields)

    monkeypatch.setattr(pipeline, "save_state", die_on_the_verdict)
    with pytest.raises(KeyboardInterrupt):
        run(world, "g", "triage")
    monkeypatch.undo()
    version = load_state(home, "g").version
    assert registry.champion_version() == version and load_state(home, "g").promoted is None
    with pytest.raises(UpdateFinished, match=f"version {version} was promoted"):
        run(world, "g", "triage")
    assert load_state(home, "g").promoted is True and len(versions_of(registry, "g")) == 1


# ---------------------------------------------------------------------------- row 9


@pytest.mark.parametrize("where", ["state", "metrics"])
def test_a_registration_cut_short_by_a_full_disk_is_reused_by_the_rerun(world, monkeypatch, where):
    """Row 9: the version was registered (pending, `candidate`), then the disk filled before
    state.json recorded it; the rerun registered a second one."""
    _, home, cfg, registry = world
    update_id = f"disk-{where}"
    pipeline.stage_dataset(update_id, load_shipped("triage")[0], cfg, home)
    pipeline.train_step(update_id, cfg, home, registry)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "state":
        save = pipeline.save_state
        monkeypatch.setattr(pipeline, "save_state", lambda h, u, **f: disk_full() if "version" in f
                            else save(h, u, **f))
    else:
        monkeypatch.setattr("sdft_ops.tracking.log_eval_report", disk_full)
    with pytest.raises(OSError, match="No space"):
        pipeline.eval_step(update_id, cfg, home, registry)
    monkeypatch.undo()
    (half,) = versions_of(registry, update_id)
    assert registry.candidate_version() == str(half.version)
    _, version = pipeline.eval_step(update_id, cfg, home, registry)
    assert version == str(half.version) and len(versions_of(registry, update_id)) == 1
    assert load_state(home, update_id).version == version == registry.candidate_version()
    decision = pipeline.gate_step(update_id, cfg, home, registry)
    assert decision.promote, decision.reasons


# ---------------------------------------------------------------------------- row 11


def scored(update_id: str, world) -> Path:
    _, home, cfg, registry = world
    pipeline.stage_dataset(update_id, load_shipped("triage")[0], cfg, home)
    pipeline.train_step(update_id, cfg, home, registry)
    pipeline.eval_step(update_id, cfg, home, registry)
    return update_dir(home, update_id) / "eval_report.json"


def rebuilt(report: EvalReport, **changes) -> EvalReport:
    """The report rebuilt from edited per-item scores: every summary field consistent."""
    results = report.results
    if changes.pop("perfect", False):
        results = {name: type(r).model_validate(r.model_dump() | {"scores": [
                       1.0 if r.higher_is_better else 0.0] * len(r.scores)})
                   for name, r in results.items()}
    fields = {"model_sha256": report.model_sha256, **changes}
    return build_report(report.model_ref, results, reference_ref=report.reference_ref,
                        reference_results=report.reference_results, seed=report.seeds["bootstrap"],
                        n_boot=report.n_boot, **fields)


def test_a_report_edited_after_the_evaluation_is_refused_by_the_gate(world, capsys):
    """Row 11: per-item scores and summary fields edited together passed the gate."""
    root, home, cfg, registry = world
    path = scored("edited", world)
    genuine = path.read_bytes()
    assert pipeline.gate_decision("edited", cfg, home, registry).promote  # as written: passes
    rebuilt(EvalReport.load(path), perfect=True).save(path)
    decision = pipeline.gate_decision("edited", cfg, home, registry)
    assert not decision.promote
    assert any("identity failed" in r and "changed after the evaluation" in r
               for r in decision.reasons)
    code, out, _ = run_cli(capsys, "gate", path, "--home", home, "--config", root / "update.yaml")
    assert code == 3 and "identity failed" in out
    rebuilt(EvalReport.load(path), model_sha256="0" * 64).save(path)  # claims other weights
    decision = pipeline.gate_decision("edited", cfg, home, registry)
    assert any("the report scored weights 0000000000000000" in r for r in decision.reasons)
    path.write_bytes(genuine)
    decision = pipeline.gate_step("edited", cfg, home, registry)
    assert decision.promote and decision.model_sha256 == load_state(home, "edited").weights_sha256


# ---------------------------------------------------------------------------- promotion, verify


def test_the_champion_moves_only_to_the_weights_the_gate_judged(world, tmp_path):
    _, home, cfg, registry = world
    scored("judged", world)
    decision = pipeline.gate_decision("judged", cfg, home, registry)
    assert decision.promote
    champion = registry.champion_version()
    other = shutil.copytree(load_state(home, "judged").model_dir, tmp_path / "other")
    weights = other / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"    ")  # other weights
    impostor = registry.register_candidate(other, parent_version=champion, dataset_hash="h",
                                           method="sft", base_model="tiny", commit=None)
    with pytest.raises(RegistryError, match="the gate judged weights .* but version"):
        registry.promote(impostor, "gate passed", decision=decision)
    assert registry.champion_version() == champion
    registry.promote(load_state(home, "judged").version, "gate passed", decision=decision)


def test_verify_checks_a_versions_hash_against_its_folder_and_artifact(world, capsys, tmp_path):
    root, home, cfg, registry = world
    args = ("--home", home, "--config", root / "update.yaml")
    champion = registry.champion_version()
    code, out, _ = run_cli(capsys, "verify", champion, *args)
    assert code == 0 and out.count("\n") == 1
    assert out.startswith(f"version {champion}: OK, weights ") and "its registered artifact" in out
    folder = shutil.copytree(registry.get_version(champion).tags[TAG_MODEL_DIR], tmp_path / "m")
    version = registry.register_candidate(folder, parent_version=None, dataset_hash="h",
                                          method="sft", base_model="tiny", commit=None,
                                          tags={TAG_MODEL_DIR: str(folder)})
    with open(folder / "model.safetensors", "r+b") as f:  # one byte flipped after registration
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    code, out, _ = run_cli(capsys, "verify", version, *args)
    assert code == 1 and out.count("\n") == 1
    assert f"version {version}: MISMATCH" in out and f"its model folder {folder} holds" in out
    assert "registered artifact holds" not in out
    registry.client.delete_model_version_tag(registry.name, version, TAG_WEIGHTS_SHA256)
    code, out, _ = run_cli(capsys, "verify", version, *args)
    assert code == 1 and "no weights hash recorded" in out
    code, _, err = run_cli(capsys, "verify", "999", *args)
    assert code == 2 and "has no version '999'" in err


def test_the_hash_is_recorded_in_state_on_the_run_and_on_the_version(world):
    _, home, _, registry = world
    state = load_state(home, "a")
    assert state.weights_sha256 == weights_sha256(state.model_dir)
    assert Path(state.model_dir).name == f"model-{state.weights_sha256[:16]}"
    run_tags = registry.client.get_run(state.run_id).data.tags
    assert run_tags[TAG_WEIGHTS_SHA256] == state.weights_sha256
    assert registry.get_version(state.version).tags[TAG_WEIGHTS_SHA256] == state.weights_sha256
    report = json.loads((update_dir(home, "a") / "eval_report.json").read_text())
    assert report["model_sha256"] == state.weights_sha256
    assert report["model_ref"] == f"update:a@{state.weights_sha256[:16]}"
