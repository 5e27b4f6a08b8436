"""Recovery paths and input checks of issue 33 (rows 3, 6, 10 and the input items of 12), each
on tiny models and a real MLflow sqlite store: the input limits come before any model work, a
truncated checkpoint falls back to the one before it, a replay pool whose files are gone stops
the update, and a bad config, model name or demo line is one line before anything is written."""

import logging
import shutil

import pytest
import torch

from sdft_ops.data import Demonstration, DemoDataError, DemoDataset, load_demonstrations
from sdft_ops.engine import SDFTConfig, train
from sdft_ops.engine.context import PromptTooLongError
from sdft_ops.registry import TAG_UPDATE_ID
from sdft_ops.replay import ReplayConfig
from sdft_ops.settings import UpdateConfig
from sdft_ops.tiny import build_tiny
from sdft_ops.update_state import update_dir
from tests.pipeline_helpers import tiny_base, tiny_config




@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("base"))


def _notes(n: int, prompt_words: int = 3) -> DemoDataset:
    return DemoDataset.from_records(
        [Demonstration(id=f"n{i}", prompt=" ".join(["word"] * prompt_words) + f" {i}?",
                       demonstration=f"answer {i}", domain="notes") for i in range(n)],
        source="notes")


# ---------------------------------------------------------------- row 3: limits before model work


@pytest.mark.parametrize("weights", ["present", "deleted"])
def test_prompts_over_the_limit_are_refused_before_the_ceiling_or_the_model_is_touched(
        base, home, registry, tmp_path, weights):
    """Issue 33 row 3: the teacher ceiling decoded 8 prompts of 90 KB (19.8 GB) before the
    max_prompt_tokens check. A strict ceiling with floor 1.0 would refuse the tiny random model
    (TeacherCeilingTooLow), and with its weights deleted no model can load (OSError): either
    would show model work ran first. The refusal must come instead."""
    from sdft_ops.pipeline import stage_dataset, train_step

    folder = shutil.copytree(base, tmp_path / "base")
    cfg = tiny_config(folder, max_prompt_tokens=64).merged(
        {"ceiling": {"strict": True, "floor": 1.0}})
    if weights == "deleted":
        (folder / "model.safetensors").unlink()
    stage_dataset("long", _notes(10, prompt_words=200), cfg, home)
    with pytest.raises(PromptTooLongError, match="max_prompt_tokens"):
        train_step("long", cfg, home, registry)
    assert not (update_dir(home, "long") / "model").exists()


def test_the_ceiling_decodes_the_teacher_prompts_training_uses(tiny):
    """A long demonstration is shortened in the teacher's prompt for training; the ceiling must
    decode that prompt, not the whole demonstration (which grows its decode as the 90 KB
    prompts did)."""
    from sdft_ops.engine.ceiling import teacher_ceiling
    from sdft_ops.engine.context import prepare_examples
    from sdft_ops.engine.sampling import greedy_generate

    model, tok = tiny
    demos = [Demonstration(id=f"d{i}", prompt=f"Q{i}?", demonstration="word " * 500, domain="d")
             for i in range(2)]
    report = teacher_ceiling(model, tok, demos, lambda a, r: 0.0, max_new_tokens=4, bf16=False,
                             max_prompt_tokens=64)
    examples = prepare_examples(demos, tok, SDFTConfig(max_prompt_tokens=64))
    assert all(len(e.teacher_prompt) <= 64 and e.demo_tokens_cut for e in examples)
    trained_on = greedy_generate(model, tok, [list(e.teacher_prompt) for e in examples], 4)
    assert {x["id"]: x["teacher"] for x in report.examples} == {
        e.id: answer.strip() for e, answer in zip(examples, trained_on)}


# ---------------------------------------------------------------- row 6: a corrupt checkpoint


FAST = dict(max_new_tokens=12, autocast_bf16=False, prompts_per_step=4)


def _demos(n=8):
    return [Demonstration(id=f"d{i}", prompt=f"What is {i} plus {i}?",
                          demonstration=f"The answer is {2 * i}.", domain="math") for i in range(n)]


def _truncate(path, keep: int = 40) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)


@pytest.mark.parametrize("corrupt", [["step-000004"], ["step-000002", "step-000004"]],
                         ids=["latest", "all"])
def test_a_truncated_checkpoint_is_skipped_for_the_one_before_it(tmp_path, caplog, corrupt):
    """Issue 33 row 6: a truncated latest checkpoint raised SafetensorError on every rerun. Now
    the resume falls back to the previous one (or starts afresh), with a one-line warning, and
    ends with the weights of a run never interrupted."""
    cfg = SDFTConfig(method="sft", max_steps=4, checkpoint_every=2, learning_rate=1e-3, **FAST)
    straight, tok = build_tiny()
    train(straight, tok, _demos(), cfg, output_dir=tmp_path, progress=False)
    for step in corrupt:
        _truncate(tmp_path / step / "student.safetensors")
    resumed, _ = build_tiny()  # a fresh process: the initial model, then the resume
    with caplog.at_level(logging.WARNING, logger="sdft_ops.engine.checkpoint"):
        result = train(resumed, tok, _demos(), cfg, output_dir=tmp_path, progress=False)
    warnings = [r.getMessage() for r in caplog.records]
    assert all(any(step in w and "cannot be read" in w for w in warnings) for step in corrupt)
    assert all("\n" not in w for w in warnings)
    assert len(result.history) == (4 if len(corrupt) == 2 else 2)  # afresh, or from step 2
    if len(corrupt) == 2:
        assert any("starts afresh" in w for w in warnings)
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


# ---------------------------------------------------------------- row 10: replay files gone


def _runs(registry, update_id: str) -> list:
    """The MLflow runs opened for `update_id`."""
    experiments = [e.experiment_id for e in registry.client.search_experiments()]
    runs = registry.client.search_runs(experiments) if experiments else []
    return [r for r in runs if r.info.run_name == update_id]


def _register(registry, base, update_id: str, parent: str | None) -> str:
    version = registry.register_candidate(base, parent_version=parent, dataset_hash="sha256:abc",
                                          method="sft", base_model="tiny", commit=None,
                                          tags={TAG_UPDATE_ID: update_id})
    registry.promote(version, f"{update_id} for the test", manual=True)
    return version


def test_a_replay_pool_whose_files_are_gone_stops_the_update_before_training(base, home, registry):
    """Issue 33 row 10: `replay: {fraction: 1.0}` with the lineage's train.jsonl gone replayed
    nothing, warned nothing, and the update was promoted. Now it is one line naming the file."""
    from sdft_ops.pipeline import stage_dataset, train_step

    _register(registry, base, "gone", None)  # champion v1, its updates/gone/train.jsonl absent
    cfg = tiny_config(base).merged({"replay": {"fraction": 1.0}})
    stage_dataset("next", _notes(10), cfg, home)
    with pytest.raises(ValueError, match="updates/gone/train.jsonl") as err:
        train_step("next", cfg, home, registry)
    assert "\n" not in str(err.value) and "missing: warn" in str(err.value)
    assert not (update_dir(home, "next") / "model").exists() and _runs(registry, "next") == []


def test_replay_missing_warn_trains_on_and_a_partial_pool_warns(base, home, registry, caplog):
    from sdft_ops.replay import replay_pool

    v1 = _register(registry, base, "gone", None)
    v2 = _register(registry, base, "kept", v1)
    _notes(4).write_jsonl(update_dir(home, "kept") / "train.jsonl")  # still on disk
    cfg = ReplayConfig(fraction=1.0)
    with caplog.at_level(logging.WARNING, logger="sdft_ops.replay"):
        pool = replay_pool(registry, home, v2, cfg)
    assert [d.id for d in pool] == [f"replay:kept:n{i}" for i in range(4)]
    assert any("1 of the champion's lineage" in r.getMessage() and "gone" in r.getMessage()
               for r in caplog.records)
    (update_dir(home, "kept") / "train.jsonl").unlink()
    with pytest.raises(ValueError, match="none of the demonstration files"):
        replay_pool(registry, home, v2, cfg)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sdft_ops.replay"):
        assert replay_pool(registry, home, v2, cfg.model_copy(update={"missing": "warn"})) == []
    assert [r.getMessage().count("\n") for r in caplog.records] == [0]
    assert "training without replay" in caplog.records[0].getMessage()
    # no champion yet (the first update, from the base model): nothing to replay, nothing missing
    assert replay_pool(registry, home, None, cfg) == []


# ---------------------------------------------------------------- row 12: inputs


def test_an_empty_config_file_is_an_error_not_all_defaults(tmp_path):
    for text in ("", "# only a comment\n"):
        (tmp_path / "empty.yaml").write_text(text)
        with pytest.raises(ValueError, match="is empty") as err:
            UpdateConfig.from_yaml(tmp_path / "empty.yaml")
        assert "\n" not in str(err.value)
    (tmp_path / "defaults.yaml").write_text("{}\n")  # all defaults, said explicitly
    assert UpdateConfig.from_yaml(tmp_path / "defaults.yaml") == UpdateConfig()


@pytest.mark.parametrize("section, knob", [("train", "max_new_tokens"),
                                           ("eval", "domain_max_new_tokens")])
def test_a_sample_length_past_the_bound_is_refused_in_one_line(tmp_path, section, knob):
    (tmp_path / "c.yaml").write_text(f"{section}: {{{knob}: 1000000000}}\n")
    with pytest.raises(ValueError, match=rf"{section}\.{knob}: .*4096") as err:
        UpdateConfig.from_yaml(tmp_path / "c.yaml")
    assert "\n" not in str(err.value)
    (tmp_path / "c.yaml").write_text(f"{section}: {{{knob}: 4096}}\n")
    UpdateConfig.from_yaml(tmp_path / "c.yaml")


def test_a_misspelt_model_stops_the_update_before_staging_or_tracking(home, registry):
    """Issue 33 row 12: a misspelt model failed only after staging and opening an MLflow run."""
    from sdft_ops.pipeline import run_update

    cfg = UpdateConfig.model_validate({"model": {"name_or_path": "smollm2-135m-instruc"}})
    with pytest.raises(OSError, match="Did you mean 'smollm2-135m-instruct'") as err:
        run_update(_notes(10), cfg, update_id="typo", home=home, registry=registry)
    assert "\n" not in str(err.value)
    assert not update_dir(home, "typo").exists() and _runs(registry, "typo") == []


def test_a_key_twice_in_a_demo_line_is_refused_with_its_line(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text('{"id": "a", "prompt": "q", "demonstration": "x", "domain": "d"}\n'
                    '{"id": "b", "prompt": "q2", "demonstration": "y", "domain": "d", '
                    '"demonstration": "z"}\n'
                    '{"id": "c", "prompt": "q3", "demonstration": "w", "domain": "d", '
                    '"metadata": {"kind": "a", "kind": "b"}}\n')
    with pytest.raises(DemoDataError) as err:
        load_demonstrations(path)
    assert [str(p) for p in err.value.problems] == [
        f"{path}:2: duplicate key 'demonstration' in one object (JSON would keep only the last "
        "value); remove one of them",
        f"{path}:3: duplicate key 'kind' in one object (JSON would keep only the last value); "
        "remove one of them"]
