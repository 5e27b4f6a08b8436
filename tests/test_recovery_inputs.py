"""Recovery paths and input checks of issue 33 (rows 3, 6, 10 and the input items of 12), each
on tiny models and a real MLflow sqlite store: the input limits come before any model work, a
truncated checkpoint falls back to the one before it, a replay pool whose files are gone stops
the update, and a bad config, model name or demo line is one line before anything is written."""

import shutil

import pytest

from sdft_ops.data import Demonstration, DemoDataset
from sdft_ops.engine import SDFTConfig
from sdft_ops.engine.context import PromptTooLongError
from sdft_ops.mlflow_store import tracking_uri
from sdft_ops.registry import PolicyRegistry
from sdft_ops.update_state import update_dir
from tests.pipeline_helpers import tiny_base, tiny_config


@pytest.fixture
def registry(home, mlflow_template, monkeypatch) -> PolicyRegistry:
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(mlflow_template, home / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(home))
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return PolicyRegistry(home=home, user="tester")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("base"))


def _notes(n: int, prompt_words: int = 3) -> DemoDataset:
    return DemoDataset.from_records(
        [Demonstration(id=f"n{i}", prompt=" ".join(["word"] * prompt_words) + f" {i}?",
                       demonstration=f"answer {i}", domain="notes") for i in range(n)], source="notes")


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
