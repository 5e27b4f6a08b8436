"""The teacher: an EMA of the student (default), the frozen initial student, or the live student.

For `ema` and `frozen` the teacher is a separate dense model. With full fine-tuning it is a copy
of the student's weights, and the EMA is φ ← a·θ + (1−a)·φ over every parameter.

With LoRA the teacher must be the EMA of the student's *effective* weights W₀ + s·B·A. An EMA of
A and B kept separately (TRL's approach) gives s·EMA(B)·EMA(A), which is not EMA(s·B·A): the
product of averages is not the average of products. Here the teacher is a dense copy holding
W₀ + EMA(s·B·A) per adapted module, updated as W_T ← a·(W₀ + s·B·A) + (1−a)·W_T — exact, at
the memory cost of one dense copy of the adapted layers (the rest of the model is frozen and
shared in value, copied once).
"""

from __future__ import annotations

import copy
from typing import Literal

import torch

from sdft_ops.engine.distributed import copy_full_into, full, local

TeacherKind = Literal["ema", "frozen", "live"]
PEFT_PREFIX = "base_model.model."


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def _dense_copy(student: torch.nn.Module, share_frozen: bool) -> torch.nn.Module:
    """A plain model with the student's effective weights, no grad. `share_frozen`: the
    student's frozen parameters (`train_layers`) are shared, not copied: they never change."""
    memo = {} if is_peft(student) or not share_frozen else {
        id(p): p for p in student.parameters() if not p.requires_grad}
    teacher = copy.deepcopy(student, memo)
    if is_peft(teacher):
        teacher = teacher.merge_and_unload()
    teacher.requires_grad_(False)
    return teacher.eval()


def effective_weights(student: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(teacher parameter name, effective weight) for every parameter the student trains."""
    if not is_peft(student):
        return [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    from peft.tuners.lora import LoraLayer

    pairs = []
    for name, module in student.named_modules():
        if isinstance(module, LoraLayer) and module.active_adapters:
            base = module.get_base_layer()
            delta = sum(module.get_delta_weight(a) for a in module.active_adapters)
            pairs.append((f"{name.removeprefix(PEFT_PREFIX)}.weight", base.weight + delta))
    return pairs


class Teacher:
    def __init__(self, student: torch.nn.Module, kind: TeacherKind, ema_rate: float,
                 share_frozen: bool = True):
        """`share_frozen=False` under FSDP, which shards the teacher on its own."""
        self.kind, self.ema_rate = kind, ema_rate
        self.model = None if kind == "live" else _dense_copy(student, share_frozen)

    def module(self, student: torch.nn.Module) -> torch.nn.Module:
        """The network to score with (the student itself when live; callers use no_grad)."""
        return student if self.model is None else self.model

    @torch.no_grad()
    def update(self, student: torch.nn.Module) -> None:
        """After each optimizer step: φ ← a·θ_eff + (1−a)·φ (EMA only)."""
        if self.kind != "ema":
            return
        params = dict(self.model.named_parameters())
        targets = effective_weights(student)
        # under FSDP both are sharded alike: the lerp runs on this rank's shards
        torch._foreach_lerp_([local(params[n]) for n, _ in targets],
                             [local(w.detach()) for _, w in targets], self.ema_rate)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must keep: the weights that can drift from the student's start."""
        if self.kind != "ema":
            return {}
        # named_parameters, not state_dict: tied weights appear once (safetensors refuses aliases)
        return {k: full(v.detach()).clone() for k, v in self.model.named_parameters()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.kind == "ema":
            params = dict(self.model.named_parameters())
            for name, value in state.items():
                copy_full_into(params[name], value)
