"""`UpdateState`: one validated record per update, merged step by step, errors that name the step."""

import json

import pytest
from pydantic import ValidationError

from sdft_ops.update_state import Parent, UpdateState, load_state, save_state, state_path

STAGED = dict(domain="tooluse", dataset_hash="abc", n_train=10, n_heldout=2, source="demos.jsonl")


def test_steps_merge_and_round_trip(tmp_path):
    save_state(tmp_path, "u1", **STAGED)
    parent = Parent(version="3", model_dir="/m", ref="update:u0", run_id="r0")
    state = save_state(tmp_path, "u1", run_id="r1", parent=parent, model_dir="/m1", method="sdft",
                       train_final={"train/loss": 0.5}, replay_ids=["a", "b"])
    assert state.domain == "tooluse" and state.parent == parent and state.version is None
    assert load_state(tmp_path, "u1") == state
    assert json.loads(state_path(tmp_path, "u1").read_text())["parent"]["version"] == "3"


def test_unknown_or_mistyped_fields_are_refused(tmp_path):
    save_state(tmp_path, "u1", **STAGED)
    with pytest.raises(ValidationError, match="promted"):
        save_state(tmp_path, "u1", promted=True)
    with pytest.raises(ValidationError, match="n_train"):
        save_state(tmp_path, "u2", **(STAGED | {"n_train": "many"}))
    assert load_state(tmp_path, "u1").promoted is None  # the refused write left the file as it was


def test_need_names_the_step_that_writes_a_missing_field(tmp_path):
    state = save_state(tmp_path, "u1", **STAGED)
    with pytest.raises(RuntimeError, match="'model_dir'.*sdft_checkpoint"):
        state.need("model_dir")
    with pytest.raises(RuntimeError, match="'version'.*eval_results"):
        state.need("version")
    assert UpdateState.model_validate(STAGED | {"version": "2"}).need("version") == "2"


def test_missing_state_says_which_steps_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="demo_dataset"):
        load_state(tmp_path, "nope")
