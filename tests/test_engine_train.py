"""The SDFT loop on a tiny model: on-policy, templates, SFT masking, resume, failure modes."""

import pytest
import torch

from sdft_ops.chat import encode_chat
from sdft_ops.data import Demonstration
from sdft_ops.engine import SDFTConfig, TeacherContext, TrainingDiverged, train
from sdft_ops.engine import loop as train_module
from sdft_ops.engine import rollout as rollout_module
from sdft_ops.engine.context import PromptTooLongError, prepare_examples, teacher_messages
from sdft_ops.engine.sampling import decode
from sdft_ops.engine.loop import sft_step
from sdft_ops.tiny import build_tiny

FAST = dict(max_new_tokens=12, autocast_bf16=False, prompts_per_step=4)


def _demos(n=12):
    return [Demonstration(id=f"d{i}", prompt=f"What is {i} plus {i}?",
                          demonstration=f"The answer is {2 * i}.", domain="math") for i in range(n)]


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_templates_render_as_documented(tiny):
    _, tok = tiny
    q = [{"role": "user", "content": "Q?"}]
    paper = teacher_messages(q, "DEMO", TeacherContext(preset="paper"))
    assert paper == [{"role": "user", "content": "Q?\n\nThis is an example for a response to the "
                      "question:\nDEMO\n\nNow answer with a response of your own, including the "
                      "thinking process."}]
    turn = teacher_messages(q, "DEMO", TeacherContext(preset="previous_turn"))
    assert [m["role"] for m in turn] == ["user", "assistant", "user"] and turn[1]["content"] == "DEMO"
    custom = teacher_messages(q, "DEMO", TeacherContext(preset="custom",
                                                       template="{question} => {demonstration}"))
    assert custom[-1]["content"] == "Q? => DEMO"
    assert "<|im_start|>assistant\nDEMO<|im_end|>" in tok.decode(encode_chat(tok, turn))


def test_only_the_demonstration_is_truncated_and_long_questions_are_reported(tiny):
    _, tok = tiny
    long_demo = Demonstration(id="long", prompt="Short question?", demonstration="word " * 200,
                              domain="d")
    cfg = SDFTConfig(max_prompt_tokens=64)
    (ex,) = prepare_examples([long_demo], tok, cfg)
    assert len(ex.teacher_prompt) <= 64 and ex.demo_tokens_cut > 0
    assert "Short question?" in tok.decode(ex.teacher_prompt)  # the question is whole
    too_long = Demonstration(id="huge", prompt="why " * 200, demonstration="ok", domain="d")
    with pytest.raises(PromptTooLongError, match="huge") as err:
        prepare_examples([long_demo, too_long], tok, cfg)
    assert len(err.value.problems) == 1


def test_sampling_is_per_example_seeded_and_greedy_matches_generate(tiny):
    model, tok = tiny
    prompts = [encode_chat(tok, [{"role": "user", "content": t}]) for t in ("hi", "what is 2+2?")]
    kw = dict(max_new_tokens=10, eos_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id)
    both = decode(model, prompts, seeds=[11, 22], **kw).completion_ids
    alone = decode(model, prompts[1:], seeds=[22], **kw).completion_ids
    assert torch.equal(both[1, : alone.shape[1]], alone[0])
    assert not torch.equal(decode(model, prompts[1:], seeds=[23], **kw).completion_ids, alone)
    greedy = decode(model, prompts[1:], **kw).completion_ids
    ref = model.generate(torch.tensor(prompts[1:]), max_new_tokens=10, do_sample=False,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    assert greedy[0].tolist() == ref[0, len(prompts[1]):].tolist()


def test_on_policy_the_student_trains_on_its_own_samples(monkeypatch):
    model, tok = build_tiny()
    sampled, scored = [], []
    real_decode, real_logits = rollout_module.decode, train_module.completion_logits
    monkeypatch.setattr(rollout_module, "decode",
                        lambda *a, **k: sampled.append(real_decode(*a, **k)) or sampled[-1])
    monkeypatch.setattr(train_module, "completion_logits",
                        lambda m, p, pm, c: scored.append((m, c)) or real_logits(m, p, pm, c))
    train(model, tok, _demos(), SDFTConfig(max_steps=2, **FAST), progress=False)
    assert len(sampled) == 2 and len(scored) == 4  # per step: teacher then student
    for step, rollout in enumerate(sampled):
        (t_model, t_tokens), (s_model, s_tokens) = scored[2 * step], scored[2 * step + 1]
        assert s_model is model and t_model is not model
        assert torch.equal(s_tokens, rollout.completion_ids) and torch.equal(t_tokens, s_tokens)


def test_demo_length_cap_shortens_samples_to_a_multiple_of_the_longest_demo(monkeypatch):
    model, tok = build_tiny()
    lengths = []
    real_decode = rollout_module.decode
    monkeypatch.setattr(rollout_module, "decode", lambda *a, **k: lengths.append(k["max_new_tokens"])
                        or real_decode(*a, **k))
    demos = _demos()
    longest = max(len(tok(d.demonstration, add_special_tokens=False)["input_ids"]) for d in demos) + 1
    cfg = SDFTConfig(max_steps=1, **FAST | {"max_new_tokens": 64})
    assert train(model, tok, demos, cfg, progress=False).max_new_tokens == 64
    result = train(model, tok, demos, cfg.model_copy(update={"demo_length_cap": 0.5}), progress=False)
    assert lengths == [64, -(-longest // 2)] and result.max_new_tokens == lengths[-1]
    high = cfg.model_copy(update={"demo_length_cap": 100.0})  # never above max_new_tokens
    assert train(model, tok, demos, high, progress=False).max_new_tokens == 64


def test_sdft_trains_student_not_teacher_with_finite_loss():
    model, tok = build_tiny()
    before, seen = _weights(model), []
    result = train(model, tok, _demos(), SDFTConfig(max_steps=3, learning_rate=1e-3, **FAST),
                   callbacks=[lambda step, m: seen.append((step, m))], progress=False)
    assert [s for s, _ in seen] == [1, 2, 3] and result.steps == 3
    assert all(torch.isfinite(torch.tensor(h["train/loss"])) for h in result.history)
    assert {"train/loss", "train/grad_norm", "train/lr", "train/tokens_per_s",
            "train/step_seconds"} <= set(seen[0][1])
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.grad is None or p.requires_grad for p in model.parameters())


def test_with_train_layers_only_the_top_blocks_move():
    from sdft_ops.models import freeze_below_top

    model, tok = build_tiny()
    freeze_below_top(model, 1)
    before = _weights(model)
    cfg = SDFTConfig(max_steps=2, learning_rate=1e-3, rollout="teacher", steps_per_generation=2, **FAST)
    train(model, tok, _demos(), cfg, progress=False)
    for name, p in model.named_parameters():
        assert torch.equal(before[name], p) != p.requires_grad, name


@pytest.mark.parametrize("method", ["sdft", "sft"])
def test_gradient_checkpointing_trains_to_the_same_weights(method):
    cfg = SDFTConfig(method=method, max_steps=2, learning_rate=1e-3, **FAST)
    plain, tok = build_tiny()
    train(plain, tok, _demos(), cfg, progress=False)
    recomputed, _ = build_tiny()
    train(recomputed, tok, _demos(), cfg.model_copy(update={"gradient_checkpointing": True}), progress=False)
    assert recomputed.is_activation_checkpointing and not plain.is_activation_checkpointing
    initial, _ = build_tiny()
    assert any(not torch.equal(a, b) for a, b in zip(initial.parameters(), plain.parameters()))
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_sft_loss_is_cross_entropy_on_the_demonstration_only(tiny):
    model, tok = tiny
    cfg = SDFTConfig(method="sft", autocast_bf16=False)
    examples = prepare_examples(_demos(2), tok, cfg)
    loss_sum, _ = sft_step(model, examples, cfg, tok.pad_token_id)
    expected = 0.0
    for e in examples:
        ids = torch.tensor([list(e.student_prompt) + list(e.target)])
        logp = model(ids).logits.log_softmax(-1)[0]
        start = len(e.student_prompt)
        nll = [-logp[start - 1 + t, tok_id] for t, tok_id in enumerate(e.target)]
        expected += sum(nll) / len(nll)
    torch.testing.assert_close(loss_sum, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["sdft", "sft"])
def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path, method):
    cfg = SDFTConfig(method=method, max_steps=5, checkpoint_every=2, learning_rate=1e-3, **FAST)
    straight, tok = build_tiny()
    train(straight, tok, _demos(), cfg, progress=False)

    def crash(step, metrics):
        if step == 3:
            raise KeyboardInterrupt("killed")

    interrupted, _ = build_tiny()
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, tok, _demos(), cfg, output_dir=tmp_path, callbacks=[crash], progress=False)
    resumed, _ = build_tiny()  # a fresh process: reload the initial model, then resume
    train(resumed, tok, _demos(), cfg, output_dir=tmp_path, progress=False)
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_resume_refuses_another_config(tmp_path):
    model, tok = build_tiny()
    cfg = SDFTConfig(max_steps=2, checkpoint_every=1, **FAST)
    train(model, tok, _demos(), cfg, output_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="another training config"):
        train(model, tok, _demos(), cfg.model_copy(update={"seed": 9}), output_dir=tmp_path,
              progress=False)


def test_non_finite_loss_stops_without_a_checkpoint(tmp_path):
    model, tok = build_tiny()
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    cfg = SDFTConfig(method="sft", max_steps=2, checkpoint_every=1, **FAST)
    with pytest.raises(TrainingDiverged, match="non-finite loss"):
        train(model, tok, _demos(), cfg, output_dir=tmp_path, progress=False)
    assert not list(tmp_path.glob("step-*"))


def test_teacher_ceiling_scores_teacher_and_student_and_refuses_when_strict(tiny):
    from sdft_ops.engine.ceiling import TeacherCeilingTooLow, teacher_ceiling

    model, tok = tiny
    demos = _demos(6)

    def greedy(messages):  # an independent reference: HF generate on the same prompt
        ids = torch.tensor([encode_chat(tok, messages)])
        out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=2)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    ctx = TeacherContext(preset="previous_turn")
    expected_teacher = {d.id: greedy(teacher_messages(d.prompt_messages(), d.demonstration, ctx))
                        for d in demos}
    expected_student = {d.id: greedy(d.prompt_messages()) for d in demos}
    assert expected_teacher != expected_student  # the demonstration changes the answer
    exact = lambda prediction, reference: float(prediction == reference)  # noqa: E731
    report = teacher_ceiling(model, tok, demos, exact, ctx, reference=lambda d: expected_teacher[d.id],
                             sample_size=6, max_new_tokens=4, bf16=False, floor=0.5)
    student_matches = sum(expected_student[d.id] == expected_teacher[d.id] for d in demos) / 6
    assert report.n == 6 and report.teacher_score == 1.0 and not report.below_floor
    assert report.student_score == student_matches < 1.0
    with pytest.raises(TeacherCeilingTooLow, match="teacher ceiling 0.00 < floor 0.50"):
        teacher_ceiling(model, tok, demos, lambda p, r: 0.0, sample_size=2, max_new_tokens=2,
                        bf16=False, floor=0.5, strict=True)


def test_frozen_blocks_held_in_bf16_train_to_the_same_weights(monkeypatch):
    import contextlib

    from sdft_ops.engine import precision
    from sdft_ops.models import freeze_below_top

    monkeypatch.setattr(precision, "bf16_is_fast", lambda device: True)  # autocast on any CPU
    monkeypatch.setattr(train_module, "bf16_is_fast", lambda device: True)
    cfg = SDFTConfig(max_steps=2, learning_rate=1e-3, rollout="teacher", steps_per_generation=2,
                     **FAST | {"autocast_bf16": True})
    trained = []
    for hold in (True, False):
        if not hold:
            monkeypatch.setattr(train_module, "frozen_weights_in_bf16",
                                lambda model, enabled, spill_dir=None: contextlib.nullcontext())
        model, tok = build_tiny()
        freeze_below_top(model, 1)
        train(model, tok, _demos(), cfg, progress=False)
        trained.append(_weights(model))
    initial, _ = build_tiny()
    assert any(not torch.equal(a, b) for a, b in zip(initial.parameters(), trained[0].values()))
    for name, weight in trained[0].items():
        assert weight.dtype == torch.float32 and torch.equal(weight, trained[1][name]), name
