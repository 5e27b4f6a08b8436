"""Tests for sdft_ops.domains: deterministic generation, clean train/held-out separation,
scorers that accept every training answer and reject wrong ones, and shipped files that
match the code."""

from __future__ import annotations

import json

import pytest

from sdft_ops.data import DemoDataset
from sdft_ops.domains import (
    DOMAINS,
    EvalItem,
    get_domain,
    load_eval_items,
    load_shipped,
    reference_for,
    shipped_dir,
    write_domain_files,
)
from sdft_ops.domains.__main__ import main as domains_main
from sdft_ops.domains.knowledge import facts
from sdft_ops.domains.scoring import contains_answer, extract_json_object, json_match
from sdft_ops.domains.triage import field_accuracy, label
from sdft_ops.domains.tooluse import call_metrics

NAMES = list(DOMAINS)


@pytest.fixture(scope="module")
def generated():
    """name -> (demos, eval items) at seed 0, generated once for the module."""
    return {name: domain.generate(0) for name, domain in DOMAINS.items()}


def test_registry_order_and_lookup():
    assert NAMES == ["tooluse", "knowledge", "triage", "safety"]
    assert get_domain("triage") is DOMAINS["triage"]
    with pytest.raises(KeyError, match="tooluse, knowledge, triage, safety"):
        get_domain("maths")


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_data_other_seed_other_data(name, generated):
    domain = DOMAINS[name]
    demos, items = generated[name]
    again_demos, again_items = domain.generate(0)
    other_demos, _ = domain.generate(1)
    digest = DemoDataset.from_records(demos).content_hash
    assert DemoDataset.from_records(again_demos).content_hash == digest
    assert again_items == items
    assert DemoDataset.from_records(other_demos).content_hash != digest


@pytest.mark.parametrize("name", NAMES)
def test_counts_ids_and_domain_field(name, generated):
    demos, items = generated[name]
    assert len(demos) >= 300 and len(items) >= 100
    ids = [d.id for d in demos] + [i.id for i in items]
    assert len(set(ids)) == len(ids)
    assert {d.domain for d in demos} == {i.domain for i in items} == {name}


@pytest.mark.parametrize("name", NAMES)
def test_no_held_out_prompt_is_a_training_prompt(name, generated):
    demos, items = generated[name]
    train_prompts = {" ".join(d.prompt.lower().split()) for d in demos}
    eval_prompts = [" ".join(i.messages[-1]["content"].lower().split()) for i in items]
    assert len(set(eval_prompts)) == len(eval_prompts)
    assert not train_prompts & set(eval_prompts)
    if name == "tooluse":  # same templates, but never a training call
        assert not {d.demonstration for d in demos} & {i.reference for i in items}


@pytest.mark.parametrize("name", NAMES)
def test_every_training_answer_scores_one(name, generated):
    domain = DOMAINS[name]
    demos, items = generated[name]
    assert all(domain.scorer(d.demonstration, reference_for(d)) == 1.0 for d in demos)
    if name not in ("knowledge", "safety"):  # the reference is itself a correct answer
        assert all(domain.scorer(i.reference, i.reference) == 1.0 for i in items)


@pytest.mark.parametrize("name", NAMES)
def test_lengths_stay_small(name, generated):
    demos, items = generated[name]
    if name == "safety":  # refusals are one line; benign answers are the base model's own
        demos = [d for d in demos if d.metadata["kind"] == "refusal"]  # (<= 96 tokens, any format)
    assert max(len(d.demonstration) for d in demos) <= 200
    assert max(len(d.prompt) for d in demos) <= 300
    assert max(len(i.messages[-1]["content"]) for i in items) <= 300
    assert all("\n" not in d.demonstration for d in demos)


def test_knowledge_held_out_phrasings_are_never_trained(generated):
    demos, items = generated["knowledge"]
    trained = {d.metadata["template"] for d in demos}
    held_out = {i.metadata["template"] for i in items}
    assert not trained & held_out  # whole phrasings held out, for every fact of that kind
    by_fact: dict[str, set[str]] = {}
    for d in demos:
        by_fact.setdefault(d.metadata["fact"], set()).add(d.prompt)
    assert len(by_fact) == len(facts()) >= 60
    for item in items:
        assert item.messages[-1]["content"] not in by_fact[item.metadata["fact"]]
        assert item.reference == item.metadata["answer_key"]
        assert contains_answer(item.messages[-1]["content"], item.reference) == 0.0  # no leak


def test_knowledge_facts_answer_their_own_key():
    for fact_id, _, sentence, key, questions in facts():
        assert contains_answer(sentence, key) == 1.0, fact_id
        assert len(set(questions)) == 6, fact_id


@pytest.mark.parametrize("prediction", [
    '{"tool":"get_weather","arguments":{"city":"Lima","days":3}}',
    '```json\n{"tool": "get_weather", "arguments": {"city": "Lima", "days": 3}}\n```',
    'Sure! Here is the call: {"arguments": {"days": 3.0, "city": "Lima"}, "tool": "get_weather"}'
    " Let me know if you need more.",
])
def test_json_match_tolerates_fences_prose_and_key_order(prediction):
    reference = '{"tool":"get_weather","arguments":{"city":"Lima","days":3}}'
    assert json_match(prediction, reference) == 1.0


@pytest.mark.parametrize("prediction", [
    '{"tool":"get_weather","arguments":{"city":"Lima","days":4}}',
    '{"tool":"get_weather","arguments":{"city":"Lima","days":3,"units":"metric"}}',
    '{"tool":"get_weather","arguments":{"city":"Lima"}}',
    '{"tool":"get_weather","arguments":{"city":"Lima","days":"3"}}',
    "get_weather(city='Lima', days=3)",
    '{"tool":"get_weather","arguments":{"city":"Lima","days":3}',  # unclosed
    "",
])
def test_json_match_rejects_wrong_or_missing_calls(prediction):
    reference = '{"tool":"get_weather","arguments":{"city":"Lima","days":3}}'
    assert json_match(prediction, reference) == 0.0


def test_json_match_keeps_booleans_apart_from_numbers():
    reference = '{"category":"bug","priority":"low","product":"pay","needs_human":true}'
    assert json_match(reference.replace("true", "1"), reference) == 0.0
    assert json_match(reference.replace("true", "false"), reference) == 0.0
    assert json_match(f"Triage: {reference}", reference) == 1.0


def test_extract_json_object_skips_broken_braces():
    assert extract_json_object('see {oops} then {"a": [1, {"b": 2}]} and {"c": 3}') == {
        "a": [1, {"b": 2}]}
    assert extract_json_object("[1, 2]") is None


@pytest.mark.parametrize("prediction, reference, expected", [
    ("The Brindle costs $1,299.", "1299", 1.0),
    ("It is priced at 1299 dollars", "1299", 1.0),
    ("It costs $12,990.", "1299", 0.0),
    ("The price is 12 dollars.", "1299", 0.0),
    ("it weighs 4.2 kg.", "4.2", 1.0),
    ("it weighs 42 kg.", "4.2", 0.0),
    ("The CEO is  MIREILLE   okafor!", "Mireille Okafor", 1.0),
    ("The CEO is Mireille.", "Mireille Okafor", 0.0),
    ('Its slogan: "Machines that mind the details".', "mind the details", 1.0),
    ("Aarhus.", "Aarhus", 1.0),
    ("Aarhusville", "Aarhus", 0.0),
])
def test_contains_answer(prediction, reference, expected):
    assert contains_answer(prediction, reference) == expected


@pytest.mark.parametrize("category, impact, escalate, expected", [
    ("outage", "none", False, ("urgent", True)),
    ("feature_request", "low", False, ("low", False)),
    ("feature_request", "none", True, ("low", True)),
    ("bug", "high", False, ("high", False)),
    ("billing", "none", False, ("medium", False)),
    ("account", "low", True, ("low", True)),
])
def test_triage_rules(category, impact, escalate, expected):
    labels = label(category, impact, escalate, "drive")
    assert (labels["priority"], labels["needs_human"]) == expected


def test_training_data_covers_every_label_and_tool(generated):
    triage = [json.loads(d.demonstration) for d in generated["triage"][0]]
    for field, values in [("category", 5), ("priority", 4), ("product", 5), ("needs_human", 2)]:
        assert len({labels[field] for labels in triage}) == values, field
    calls = [json.loads(d.demonstration) for d in generated["tooluse"][0]]
    assert len({call["tool"] for call in calls}) == 5
    assert all(list(call) == ["tool", "arguments"] for call in calls)


def test_extra_metrics():
    ref = '{"category":"bug","priority":"low","product":"pay","needs_human":false}'
    wrong = ref.replace('"low"', '"high"')
    metrics = field_accuracy([ref, wrong, "no idea"], [ref, ref, ref])
    assert metrics["valid_json"] == pytest.approx(2 / 3)
    assert metrics["priority_acc"] == pytest.approx(1 / 3)
    assert metrics["product_acc"] == pytest.approx(2 / 3)
    call = '{"tool":"lookup_order","arguments":{"order_id":"NB-123456"}}'
    assert call_metrics([call, call.replace("123", "999"), "?"], [call] * 3) == pytest.approx(
        {"valid_json": 2 / 3, "tool_acc": 2 / 3})


def test_eval_item_needs_a_chat_ending_with_the_user():
    with pytest.raises(ValueError, match="ending with a user message"):
        EvalItem(id="x", domain="d", reference="r",
                 messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])


def test_shipped_files_match_the_code(tmp_path, generated):
    for path in write_domain_files(tmp_path):
        shipped = shipped_dir() / path.name
        assert shipped.is_file(), f"{shipped} missing: run `python -m sdft_ops.domains`"
        assert shipped.read_bytes() == path.read_bytes(), (
            f"{shipped.name} is stale: run `python -m sdft_ops.domains`")
    for name in NAMES:
        train, items = load_shipped(name)
        demos, expected_items = generated[name]
        assert train.content_hash == DemoDataset.from_records(demos).content_hash
        assert items == expected_items


def test_check_command_reports_stale_files(tmp_path, capsys):
    assert domains_main(["--check"]) == 0
    write_domain_files(tmp_path)
    (tmp_path / "triage.eval.jsonl").write_text("{}\n")
    assert domains_main(["--check", "--out", str(tmp_path)]) == 1
    assert "triage.eval.jsonl" in capsys.readouterr().err
    with pytest.raises(ValueError, match="triage.eval.jsonl:1"):
        load_eval_items(tmp_path / "triage.eval.jsonl")
