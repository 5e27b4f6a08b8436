"""Multi-process training: DDP for models that fit one device, FSDP2 full sharding for those
that do not (`SDFTConfig.distributed`).

- `ddp`: every rank holds the whole student, teacher and AdamW state; torch DDP all-reduces the
  gradients (bucketed, overlapped with backward). Only the student's forward with grad runs
  through the wrapper.
- `fsdp`: `torch.distributed.fsdp.fully_shard` on every decoder layer and on the root, for the
  student *and* the teacher, with the same mesh, so each rank holds 1/world of the student, of
  the EMA teacher and of the optimizer state, and the EMA update runs shard by shard on the local
  shards (`Teacher.update`). Gradients are reduce-scattered and averaged over ranks, as DDP does.
  Rollouts are the exception: a decode loop stops when its rows end, so ranks would call
  different numbers of forwards and the per-layer all-gathers would deadlock; `gathered()`
  all-gathers one model's parameters before its decode and frees them after (TRL gathers
  ZeRO-3 weights for generation the same way), which costs one unsharded copy of that model
  during its rollout (the student's, then the teacher's under `mixed`).

Checkpoints hold full tensors (`full_tensor`, gathered on every rank, written by rank 0), so a
run resumes under any world size and either mode.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def join_process_group() -> tuple[int, int]:
    """(rank, world size), joining the process group that a launcher set up in the env."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return int(os.environ.get("RANK", "0")), world


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks to shard one by one (HF's `_no_split_modules` names their class)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder layer class "
                         "(_no_split_modules); FSDP needs one to shard by layer")
    return layers


def _reshards_after_forward(module: torch.nn.Module, root: torch.nn.Module) -> bool:
    """FSDP's default keeps the root gathered after forward (its backward comes next); a model
    that is never trained (the teacher) reshards its root too."""
    return module is not root or not any(p.requires_grad for p in root.parameters())


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 full sharding, in place: each decoder layer, then the root (embeddings, head)."""
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(model, reshard_after_forward=_reshards_after_forward(model, model))
    return model


def _fsdp_modules(model: torch.nn.Module | None) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [] if model is None else [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(model: torch.nn.Module) -> Iterator[None]:
    """Inside: an FSDP model's full parameters stay gathered, so forwards need no collective
    and ranks may run different numbers of them (decoding). A no-op for an unsharded model."""
    modules = _fsdp_modules(model)
    for m in modules:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(_reshards_after_forward(m, model), recurse=False)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (the tensor itself otherwise)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every rank must call it)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A full tensor as `like` holds it: this rank's shard when `like` is a DTensor."""
    if not hasattr(like, "device_mesh"):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(like.device), like.device_mesh, like.placements)


def copy_full_into(target: torch.Tensor, value: torch.Tensor) -> None:
    """Write a full tensor into `target`, keeping only this rank's shard of a DTensor."""
    target.copy_(shard_like(value.to(target.dtype), target))


def no_gradient_sync(model: torch.nn.Module, ddp, skip: bool):
    """Micro-batches before the last: no gradient communication (DDP's no_sync; FSDP2's
    set_requires_gradient_sync)."""
    if ddp is not None:
        return ddp.no_sync() if skip else contextlib.nullcontext()
    for m in _fsdp_modules(model)[:1]:  # the root: recurse=True covers the layers
        m.set_requires_gradient_sync(not skip)
    return contextlib.nullcontext()
