"""Teacher updates: EMA math for full fine-tuning, and LoRA EMA exact on effective weights."""

import copy

import torch

from sdft_ops.engine.teacher import Teacher, effective_weights
from sdft_ops.models import LoraSpec, add_lora


def test_full_finetune_ema_is_lerp_toward_student(tiny):
    model, _ = tiny
    teacher = Teacher(model, "ema", ema_rate=0.1)
    start = {n: p.clone() for n, p in teacher.model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    teacher.update(model)
    student = dict(model.named_parameters())
    for name, value in teacher.model.named_parameters():
        torch.testing.assert_close(value, 0.1 * student[name] + 0.9 * start[name])
        assert not value.requires_grad


def test_frozen_and_live_teachers(tiny):
    model, _ = tiny
    frozen, live = Teacher(model, "frozen", 0.5), Teacher(model, "live", 0.5)
    before = [p.clone() for p in frozen.model.parameters()]
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    frozen.update(model)
    assert all(torch.equal(a, b) for a, b in zip(before, frozen.model.parameters()))
    assert live.module(model) is model and frozen.module(model) is not model


def _perturb_lora(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def test_lora_ema_equals_dense_ema_of_effective_weights(tiny):
    base, _ = tiny
    student = add_lora(copy.deepcopy(base), LoraSpec(r=2, alpha=4, target_modules=("q_proj", "up_proj")))
    teacher, rate = Teacher(student, "ema", 0.3), 0.3
    dense = {n: w.detach().clone() for n, w in effective_weights(student)}  # reference φ
    ema_a = {n: p.detach().clone() for n, p in student.named_parameters() if "lora_" in n}
    for seed in range(4):
        _perturb_lora(student, seed)
        teacher.update(student)
        for name, w in effective_weights(student):
            dense[name] = rate * w.detach() + (1 - rate) * dense[name]
        for n, p in student.named_parameters():
            if "lora_" in n:
                ema_a[n] = rate * p.detach() + (1 - rate) * ema_a[n]
    params = dict(teacher.model.named_parameters())
    for name, expected in dense.items():
        torch.testing.assert_close(params[name], expected, atol=1e-6, rtol=1e-5)
    # The factor-wise EMA (EMA(B)·EMA(A), as in TRL) is a different teacher.
    name = next(iter(dense))
    prefix = "base_model.model." + name.removesuffix(".weight")
    factor = ema_a[f"{prefix}.lora_B.default.weight"] @ ema_a[f"{prefix}.lora_A.default.weight"]
    base_w = dict(base.named_parameters())[name]
    assert (base_w + 2.0 * factor - dense[name]).abs().max() > 1e-4


def test_a_copied_teacher_shares_the_frozen_blocks_and_averages_the_trained_ones(tiny):
    from sdft_ops.models import freeze_below_top

    model, _ = tiny
    freeze_below_top(model, 1)
    teacher = Teacher(model, "ema", ema_rate=0.5)
    student = dict(model.named_parameters())
    for name, value in teacher.model.named_parameters():  # shared: no second copy in memory
        assert (value is student[name]) == (not student[name].requires_grad)
    unshared = Teacher(model, "ema", ema_rate=0.5, share_frozen=False)  # FSDP shards it apart
    assert all(v is not student[n] for n, v in unshared.model.named_parameters())
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(2.0)
    before = {n: p.clone() for n, p in teacher.model.named_parameters()}
    teacher.update(model)
    for name, value in teacher.model.named_parameters():
        expected = (before[name] + student[name]) / 2 if student[name].requires_grad else before[name]
        torch.testing.assert_close(value, expected)
