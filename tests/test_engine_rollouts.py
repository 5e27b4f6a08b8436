"""Rollout sources (student / teacher / mixed), the scorer filter, the SFT anchor, on tiny models."""

import pytest
import torch

from sdft_ops.data import Demonstration
from sdft_ops.engine import SDFTConfig, train
from sdft_ops.engine import rollout as rollout_module
from sdft_ops.engine.context import prepare_examples
from sdft_ops.engine.loop import sdft_step, sft_step
from sdft_ops.engine.rollout import sample_completions, student_share, teacher_rows
from sdft_ops.engine.sampling import decode, row_seed
from sdft_ops.engine.teacher import Teacher
from sdft_ops.tiny import build_tiny

FAST = dict(max_new_tokens=12, autocast_bf16=False, prompts_per_step=4)


def _demos(n=12):
    return [Demonstration(id=f"d{i}", prompt=f"What is {i} plus {i}?",
                          demonstration=f"The answer is {2 * i}.", domain="math") for i in range(n)]


def _setup(cfg, n=4):
    model, tok = build_tiny()
    examples = prepare_examples(_demos(n), tok, cfg)
    teacher = Teacher(model, "frozen", 0.02)
    seeds = [row_seed(cfg.seed, e.id, q) for q, e in enumerate(examples)]
    return model, tok, examples, teacher, seeds


def test_a_teacher_rollout_is_sampled_from_the_teacher_prompt_by_the_teacher(monkeypatch):
    cfg = SDFTConfig(rollout="teacher", teacher_temperature=0.7, **FAST)
    model, tok, examples, teacher, seeds = _setup(cfg)
    calls = []
    real = rollout_module.decode
    monkeypatch.setattr(rollout_module, "decode",
                        lambda m, prompts, **k: calls.append((m, prompts, k)) or real(m, prompts, **k))
    out = sample_completions(model, teacher.model, examples, seeds, [True] * 4, cfg,
                             (tok.eos_token_id,), tok.pad_token_id)
    ((used, prompts, kw),) = calls
    assert used is teacher.model and used is not model
    assert prompts == [e.teacher_prompt for e in examples] and kw["temperature"] == 0.7
    assert all(e.teacher_prompt != e.student_prompt for e in examples)
    direct = decode(teacher.model, [examples[2].teacher_prompt], max_new_tokens=12,
                    eos_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id, temperature=0.7,
                    seeds=[seeds[2]]).completion_ids[0]
    assert out.ids[2, : len(direct)].tolist() == direct.tolist() and bool(out.from_teacher.all())


def test_mixed_rows_keep_their_own_source_and_sample(monkeypatch):
    cfg = SDFTConfig(rollout="mixed", **FAST)
    model, tok, examples, teacher, seeds = _setup(cfg)
    sources = [True, False, False, True]
    out = sample_completions(model, teacher.model, examples, seeds, sources, cfg,
                             (tok.eos_token_id,), tok.pad_token_id)
    for i, e in enumerate(examples):
        m, prompt = (teacher.model, e.teacher_prompt) if sources[i] else (model, e.student_prompt)
        alone = decode(m, [prompt], max_new_tokens=12, eos_ids=(tok.eos_token_id,),
                       pad_id=tok.pad_token_id, seeds=[seeds[i]]).completion_ids[0]
        assert out.ids[i, : len(alone)].tolist() == alone.tolist()
    assert out.from_teacher.tolist() == sources


def test_mixed_is_deterministic_per_seed_and_respects_its_fraction():
    keys = [(f"ex{i}", i) for i in range(4000)]
    cfg = SDFTConfig(rollout="mixed", student_fraction=0.3)
    rows = teacher_rows(cfg, 0, 10, keys)
    assert rows == teacher_rows(cfg, 5, 10, keys)  # no ramp: the step does not matter
    assert rows != teacher_rows(cfg.model_copy(update={"seed": 1}), 0, 10, keys)
    student = 1 - sum(rows) / len(rows)
    assert abs(student - 0.3) < 0.025  # 4000 Bernoulli(0.3) draws: sd 0.007
    assert teacher_rows(SDFTConfig(rollout="teacher"), 0, 10, keys[:5]) == [True] * 5
    assert teacher_rows(SDFTConfig(), 0, 10, keys[:5]) == [False] * 5
    ramp = cfg.model_copy(update={"student_fraction_ramp": True})
    assert [student_share(ramp, s, 11) for s in (0, 5, 10)] == pytest.approx([0.0, 0.15, 0.3])
    assert all(teacher_rows(ramp, 0, 11, keys[:50]))  # share 0 at the first step
    late = 1 - sum(teacher_rows(ramp, 10, 11, keys)) / len(keys)
    assert abs(late - 0.3) < 0.025


def test_the_scorer_filter_replaces_rejected_teacher_rollouts_by_the_demonstration():
    cfg = SDFTConfig(rollout="mixed", rollout_filter="scorer", **FAST)
    model, tok, examples, teacher, seeds = _setup(cfg)
    sources = [True, True, False, False]
    seen = []
    reject = lambda ids, e: seen.append(e.id) or e.id != "d0"  # noqa: E731  reject d0 only
    out = sample_completions(model, teacher.model, examples, seeds, sources, cfg,
                             (tok.eos_token_id,), tok.pad_token_id, check=reject)
    assert seen == ["d0", "d1"] and out.replaced == 1  # student rows are never checked
    assert out.ids[0, : len(examples[0].target)].tolist() == list(examples[0].target)
    kept = sample_completions(model, teacher.model, examples, seeds, sources, cfg,
                              (tok.eos_token_id,), tok.pad_token_id, check=lambda ids, e: True)
    assert kept.replaced == 0 and out.ids[1].tolist() == kept.ids[1, : out.ids.shape[1]].tolist()
    assert kept.ids[0, : len(examples[0].target)].tolist() != list(examples[0].target)


def test_the_filter_gets_the_answer_text_and_the_demonstration_through_train():
    model, tok = build_tiny()
    checked = []
    cfg = SDFTConfig(rollout="teacher", rollout_filter="scorer", max_steps=1, **FAST)
    result = train(model, tok, _demos(), cfg, progress=False,
                   rollout_check=lambda text, demo: checked.append((text, demo.id)) or False)
    assert len(checked) == 4 and all(isinstance(t, str) for t, _ in checked)
    assert result.history[0]["train/filter_replaced"] == 4
    assert result.history[0]["train/teacher_rollout_rate"] == 1.0
    with pytest.raises(ValueError, match="needs train"):
        train(model, tok, _demos(), cfg, progress=False)


def test_config_refuses_settings_that_cannot_work():
    with pytest.raises(ValueError, match="SDFT settings"):
        SDFTConfig(method="sft", rollout="teacher")
    with pytest.raises(ValueError, match="checks teacher rollouts"):
        SDFTConfig(rollout_filter="scorer")
    with pytest.raises(ValueError, match="student's own samples"):
        SDFTConfig(rollout="teacher", divergence="reverse_kl", estimator="sampled_token")


def _prompt_pass_then_one_token_calls(shapes) -> bool:
    """The forwards of one decode: the prompt pass (one call per length group), then only
    one-token calls."""
    first = next((i for i, shape in enumerate(shapes) if shape[1] == 1), len(shapes))
    return first >= 1 and all(shape[1] == 1 for shape in shapes[first:])


def test_teacher_rollouts_are_scored_by_their_own_decode_as_a_teacher_forward_would():
    cfg = SDFTConfig(rollout="teacher", **FAST)
    model, tok, examples, teacher, seeds = _setup(cfg)
    eos, pad = (tok.eos_token_id,), tok.pad_token_id
    forwards = []
    hook = teacher.model.register_forward_hook(lambda m, a, k, out: forwards.append(k["input_ids"].shape),
                                               with_kwargs=True)
    kept, _ = sdft_step(model, teacher, examples, seeds, [True] * 4, cfg, eos, pad)
    decode_calls = len(forwards)
    assert _prompt_pass_then_one_token_calls(forwards)  # no scoring pass
    # a filter that keeps every rollout forces the separate teacher forward on the same samples
    accept_all = cfg.model_copy(update={"rollout_filter": "scorer"})
    scored, _ = sdft_step(model, teacher, examples, seeds, [True] * 4, accept_all, eos, pad,
                          check=lambda ids, e: True)
    hook.remove()
    assert len(forwards) == 2 * decode_calls + 1
    torch.testing.assert_close(kept, scored, atol=1e-5, rtol=1e-5)


def test_nll_on_teacher_rollouts_and_the_sft_anchor_add_up_as_documented():
    cfg = SDFTConfig(rollout="mixed", **FAST)
    model, tok, examples, teacher, seeds = _setup(cfg)
    sources = [True, False, True, False]
    args = (model, teacher, examples, seeds, sources)
    eos, pad = (tok.eos_token_id,), tok.pad_token_id
    base, _ = sdft_step(*args, cfg, eos, pad)
    anchored, _ = sdft_step(*args, cfg.model_copy(update={"sft_weight": 0.5}), eos, pad)
    sft, _ = sft_step(model, examples, cfg, pad)
    torch.testing.assert_close(anchored, base + 0.5 * sft)
    # nll: teacher rows score the sampled tokens' NLL under the student, student rows keep the KL
    nll_cfg = cfg.model_copy(update={"teacher_rollout_loss": "nll"})
    with_nll, _ = sdft_step(*args, nll_cfg, eos, pad)
    rows = sample_completions(model, teacher.model, examples, seeds, sources, cfg, eos, pad).ids
    expected = 0.0
    for i, e in enumerate(examples):
        tokens = rows[i].tolist()
        tokens = tokens[: tokens.index(eos) + 1] if eos in tokens else tokens
        if not sources[i]:
            alone, _ = sdft_step(model, teacher, [e], [seeds[i]], [False], cfg, eos, pad)
            expected += alone
            continue
        ids = torch.tensor([list(e.student_prompt) + tokens])
        logp = model(ids).logits.log_softmax(-1)[0]
        start = len(e.student_prompt)
        scored = [(t, tok_id) for t, tok_id in enumerate(tokens) if t >= cfg.skip_first_tokens]
        expected += -sum(logp[start - 1 + t, tok_id] for t, tok_id in scored) / len(scored)
    torch.testing.assert_close(with_nll, expected, atol=1e-4, rtol=1e-4)



def test_nll_on_teacher_rollouts_alone_runs_no_teacher_scoring_pass():
    """Every row a teacher rollout learned by NLL: the teacher only decodes (no logits kept, no
    second forward), and the loss is the mean NLL of each row as the student's own forward says."""
    cfg = SDFTConfig(rollout="teacher", teacher_rollout_loss="nll", rollout_filter="scorer", **FAST)
    model, tok, examples, teacher, seeds = _setup(cfg)
    eos, pad = (tok.eos_token_id,), tok.pad_token_id
    forwards = []
    hook = teacher.model.register_forward_hook(lambda m, a, k, out: forwards.append(k["input_ids"].shape),
                                               with_kwargs=True)
    loss, _ = sdft_step(model, teacher, examples, seeds, [True] * 4, cfg, eos, pad, check=lambda ids, e: True)
    hook.remove()
    assert _prompt_pass_then_one_token_calls(forwards)
    rows = sample_completions(model, teacher.model, examples, seeds, [True] * 4, cfg, eos, pad,
                              check=lambda ids, e: True)
    assert rows.teacher_logits is None
    expected = 0.0
    for i, e in enumerate(examples):
        tokens = rows.ids[i].tolist()
        tokens = tokens[: tokens.index(eos[0]) + 1] if eos[0] in tokens else tokens
        logp = model(torch.tensor([list(e.student_prompt) + tokens])).logits.log_softmax(-1)[0]
        start = len(e.student_prompt)
        scored = [(t, tok_id) for t, tok_id in enumerate(tokens) if t >= cfg.skip_first_tokens]
        expected += -sum(logp[start - 1 + t, tok_id] for t, tok_id in scored) / len(scored)
    torch.testing.assert_close(loss, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("loss", ["nll", "divergence"])
def test_an_example_learned_as_its_demonstration_is_never_rolled_out(monkeypatch, loss):
    """Replay's `learn_as: demonstration`: those rows skip the decode, their completion is the
    demonstration, and they are learned as the filter's replaced rows are (under nll: their NLL,
    exactly the SFT loss on them)."""
    cfg = SDFTConfig(rollout="teacher", teacher_rollout_loss=loss, skip_first_tokens=0, **FAST)
    model, tok = build_tiny()
    examples = prepare_examples(_demos(4), tok, cfg, demonstration_ids={"d1", "d3"})
    teacher = Teacher(model, "frozen", 0.02)
    seeds = [row_seed(cfg.seed, e.id, q) for q, e in enumerate(examples)]
    eos, pad = (tok.eos_token_id,), tok.pad_token_id
    decoded = []
    real = rollout_module.decode
    monkeypatch.setattr(rollout_module, "decode",
                        lambda m, prompts, **k: decoded.append(len(prompts)) or real(m, prompts, **k))
    out = sample_completions(model, teacher.model, examples, seeds, [True] * 4, cfg, eos, pad)
    assert decoded == [2] and out.replaced == 0
    for i in (1, 3):
        assert out.ids[i, : len(examples[i].target)].tolist() == list(examples[i].target)
    demos_only = [examples[1], examples[3]]
    loss_sum, _ = sdft_step(model, teacher, demos_only, seeds[:2], [True] * 2, cfg, eos, pad)
    if loss == "nll":
        torch.testing.assert_close(loss_sum, sft_step(model, demos_only, cfg, pad)[0], atol=1e-5, rtol=1e-5)
    else:  # the teacher's scores of the demonstration: a frozen copy of the student scores ~0 KL
        assert 0 <= loss_sum.item() < 1e-4
    # the sample length cap follows the rolled-out examples, not the longer demonstration rows
    long = Demonstration(id="long", prompt="Say it all.", demonstration="word " * 40, domain="math")
    capped = cfg.model_copy(update={"demo_length_cap": 1.0, "max_steps": 1, "max_new_tokens": 64})
    result = train(model, tok, [*_demos(4), long], capped, progress=False, demonstration_ids={"long"})
    assert result.max_new_tokens == max(len(e.target) for e in examples)

def test_demonstration_rows_learned_by_nll_leave_the_rollouts_scored_by_their_decode():
    """`demonstration_loss: nll`: a replaced rollout and a replayed demonstration (here longer
    than any decode) are learned by their NLL, exactly SFT on them; the kept rollouts by the KL
    to their own decode's logits, as alone; and the teacher runs no scoring pass."""
    cfg = SDFTConfig(rollout="teacher", rollout_filter="scorer", demonstration_loss="nll",
                     skip_first_tokens=0, **FAST)
    model, tok = build_tiny()
    long = Demonstration(id="long", prompt="Say it all.", demonstration="word " * 20, domain="math")
    examples = prepare_examples([*_demos(3), long], tok, cfg, demonstration_ids={"long"})
    assert len(examples[3].target) > cfg.max_new_tokens
    teacher = Teacher(model, "frozen", 0.02)
    seeds = [row_seed(cfg.seed, e.id, q) for q, e in enumerate(examples)]
    eos, pad = (tok.eos_token_id,), tok.pad_token_id
    check = lambda ids, e: e.id != "d1"  # noqa: E731  rejects d1's rollout
    forwards = []
    hook = teacher.model.register_forward_hook(lambda m, a, k, out: forwards.append(k["input_ids"].shape),
                                               with_kwargs=True)
    loss, stats = sdft_step(model, teacher, examples, seeds, [True] * 4, cfg, eos, pad, check=check)
    hook.remove()
    assert _prompt_pass_then_one_token_calls(forwards) and stats["replaced"] == 1
    kept = cfg.model_copy(update={"rollout_filter": "none"})
    rollouts, _ = sdft_step(model, teacher, [examples[0], examples[2]], [seeds[0], seeds[2]], [True] * 2,
                            kept, eos, pad)
    demonstrations, _ = sft_step(model, [examples[1], examples[3]], cfg, pad)
    torch.testing.assert_close(loss, rollouts + demonstrations, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rollout", [
    {"rollout": "teacher", "teacher_temperature": 0.5},
    {"rollout": "mixed", "student_fraction": 0.5, "student_fraction_ramp": True, "sft_weight": 1.0},
    {"rollout": "mixed", "rollout_filter": "scorer", "teacher_rollout_loss": "nll"},
])
def test_killed_and_resumed_run_ends_with_the_same_weights_for_every_source(tmp_path, rollout):
    cfg = SDFTConfig(max_steps=5, checkpoint_every=2, learning_rate=1e-3, **FAST, **rollout)
    check = lambda text, demo: len(text) % 2 == 0  # noqa: E731  deterministic, rejects some
    straight, tok = build_tiny()
    train(straight, tok, _demos(), cfg, rollout_check=check, progress=False)

    def crash(step, metrics):
        if step == 3:
            raise KeyboardInterrupt("killed")

    interrupted, _ = build_tiny()
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, tok, _demos(), cfg, output_dir=tmp_path, callbacks=[crash],
              rollout_check=check, progress=False)
    resumed, _ = build_tiny()
    train(resumed, tok, _demos(), cfg, output_dir=tmp_path, rollout_check=check, progress=False)
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("rollout_filter,demonstration_loss",
                         [("none", "divergence"), ("scorer", "divergence"), ("scorer", "nll")])
def test_steps_per_generation_decodes_ahead_and_trains_as_per_step_decoding(monkeypatch, rollout_filter,
                                                                             demonstration_loss):
    """`steps_per_generation: 3`: one decode serves 3 steps. Teacher rollouts from a frozen
    teacher do not depend on when they are decoded, so the run ends where per-step decoding
    ends (rows sampled with their own seeds), with the filter's replacements counted per step."""
    calls = []
    real = rollout_module.decode
    monkeypatch.setattr(rollout_module, "decode", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    check = (lambda text, demo: demo.id[-1] in "02468") if rollout_filter == "scorer" else None
    runs = {}
    for k in (1, 3):
        model, tok = build_tiny()
        calls.clear()
        cfg = SDFTConfig(rollout="teacher", teacher="frozen", rollout_filter=rollout_filter, max_steps=6,
                         steps_per_generation=k, demonstration_loss=demonstration_loss, **FAST)
        result = train(model, tok, _demos(), cfg, progress=False, rollout_check=check)
        runs[k] = (model, result, list(calls))
    assert runs[1][2] == [4] * 6 and runs[3][2] == [12, 12]
    for (name, a), b in zip(runs[1][0].state_dict().items(), runs[3][0].state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name
    per_step = lambda r: [h["train/filter_replaced"] for h in r.history]  # noqa: E731
    assert per_step(runs[1][1]) == per_step(runs[3][1])
    assert (sum(per_step(runs[3][1])) > 0) == (rollout_filter == "scorer")
