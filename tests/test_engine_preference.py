"""Preference pairs: the `rejected` field, ORPO's odds-ratio term and `preference_weight`."""

import json
import math

import pytest
import torch

from sdft_ops.data import Demonstration, DemoDataset, load_demonstrations
from sdft_ops.engine import SDFTConfig, train
from sdft_ops.engine.context import prepare_examples
from sdft_ops.engine.loop import answer_nll, sdft_step, sft_step
from sdft_ops.engine.losses import odds_ratio_loss
from sdft_ops.engine.sampling import row_seed
from sdft_ops.engine.teacher import Teacher
from sdft_ops.tiny import build_tiny

FAST = dict(max_new_tokens=8, autocast_bf16=False, prompts_per_step=4)
REFUSAL = "I cannot help with that."


def _pairs(n=4):
    return [Demonstration(id=f"p{i}", prompt=f"Name a colour, number {i}.", domain="colours",
                          demonstration=f"Colour {i} is blue.", rejected=REFUSAL) for i in range(n)]


def test_odds_ratio_loss_is_the_formula_and_falls_as_the_chosen_answer_wins():
    chosen, rejected = torch.tensor([-0.5, -2.0]), torch.tensor([-1.5, -0.3])
    log_odds = lambda x: x - math.log(1 - math.exp(x))  # noqa: E731
    expected = [-math.log(1 / (1 + math.exp(-(log_odds(c) - log_odds(r)))))
                for c, r in zip(chosen.tolist(), rejected.tolist())]
    torch.testing.assert_close(odds_ratio_loss(chosen, rejected), torch.tensor(expected))
    assert odds_ratio_loss(torch.tensor([-0.1]), torch.tensor([-3.0])) < \
        odds_ratio_loss(torch.tensor([-3.0]), torch.tensor([-0.1]))
    # a near-certain chosen answer (mean log-prob 0) stays finite
    assert torch.isfinite(odds_ratio_loss(torch.tensor([0.0]), torch.tensor([-1.0]))).all()


def test_sft_step_adds_the_weighted_odds_ratio_of_separately_scored_answers():
    cfg = SDFTConfig(method="sft", preference_weight=0.5, **FAST)
    model, tok = build_tiny()
    examples = prepare_examples(_pairs() + [Demonstration(id="plain", prompt="Say hi.",
                                demonstration="Hi.", domain="colours")], tok, cfg)
    pad = tok.pad_token_id
    loss, stats = sft_step(model, examples, cfg, pad)
    nll = torch.stack([answer_nll(model, [(e.student_prompt, e.target)], cfg, pad)[0][0] for e in examples])
    paired = [e for e in examples if e.rejected is not None]
    rejected = torch.stack([answer_nll(model, [(e.student_prompt, e.rejected)], cfg, pad)[0][0] for e in paired])
    expected = nll.sum() + 0.5 * odds_ratio_loss(-nll[: len(paired)], -rejected).sum()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    assert stats["tokens"] == sum(len(e.target) for e in examples)  # rejected tokens not counted
    off, _ = sft_step(model, examples, cfg.model_copy(update={"preference_weight": 0.0}), pad)
    torch.testing.assert_close(off, nll.sum(), rtol=1e-5, atol=1e-5)


def test_under_sdft_the_preference_term_joins_the_distillation_loss():
    cfg = SDFTConfig(rollout="teacher", **FAST)
    model, tok = build_tiny()
    examples = prepare_examples(_pairs(), tok, cfg)
    teacher = Teacher(model, "frozen", 0.02)
    seeds = [row_seed(0, e.id, q) for q, e in enumerate(examples)]
    args = (model, teacher, examples, seeds, [True] * 4)
    eos, pad = (tok.eos_token_id,), tok.pad_token_id
    base, _ = sdft_step(*args, cfg, eos, pad)
    with_pref, _ = sdft_step(*args, cfg.model_copy(update={"preference_weight": 2.0}), eos, pad)
    pref_only = sft_step(model, examples, cfg.model_copy(update={"preference_weight": 2.0}), pad,
                         nll_weight=0.0)[0]
    torch.testing.assert_close(with_pref, base + pref_only, rtol=1e-5, atol=1e-5)
    assert pref_only > 0


def test_training_with_the_preference_term_separates_the_rejected_answer_further():
    def margin(weight):
        model, tok = build_tiny()
        cfg = SDFTConfig(method="sft", learning_rate=3e-3, max_steps=12, preference_weight=weight, **FAST)
        train(model, tok, _pairs(), cfg, progress=False)
        ex = prepare_examples(_pairs(), tok, cfg)
        with torch.no_grad():
            chosen = answer_nll(model, [(e.student_prompt, e.target) for e in ex], cfg, tok.pad_token_id)[0]
            rejected = answer_nll(model, [(e.student_prompt, e.rejected) for e in ex], cfg, tok.pad_token_id)[0]
        return float((rejected - chosen).mean())  # how much less likely the rejected answer is
    assert margin(1.0) > margin(0.0) + 0.1


def test_rejected_round_trips_and_records_without_it_hash_as_before(tmp_path):
    plain = Demonstration(id="a", prompt="q", demonstration="d", domain="x")
    assert "rejected" not in plain.to_json()
    assert plain.to_json() == {"id": "a", "prompt": "q", "demonstration": "d", "domain": "x", "metadata": {}}
    path = DemoDataset(records=(plain, *_pairs(1))).write_jsonl(tmp_path / "d.jsonl")
    loaded = load_demonstrations(path).records
    assert loaded[1].rejected == REFUSAL and loaded[0].rejected is None
    assert [json.loads(line).get("rejected") for line in path.read_text().splitlines()] == [None, REFUSAL]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**plain.to_json(), "rejected": " \u200b "}) + "\n")
    with pytest.raises(ValueError, match="rejected"):
        load_demonstrations(bad)


def test_preference_weight_changes_the_fingerprint():
    assert SDFTConfig().fingerprint() != SDFTConfig(preference_weight=1.0).fingerprint()
    with pytest.raises(ValueError):
        SDFTConfig(preference_weight=-1.0)
