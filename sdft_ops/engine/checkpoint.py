"""Checkpoints (resume exactly) and the final trained model (loadable by `load_model`).

A checkpoint is one folder per step, written to a temp folder and renamed: `student`,
`teacher` and `optimizer` tensors as safetensors (no pickle anywhere), and `state.json` with the
step, the config fingerprint, the scheduler state, the optimizer's hyper-parameters and the RNG
state. Resume refuses a checkpoint written under a different training config. Tensors are
whole (FSDP shards gathered), so a run resumes under any world size or `distributed` mode.
Resume takes the newest checkpoint that can be read: one with a truncated or missing file (a
full disk, a copy cut short) is skipped for the one before it with a one-line warning, and with
none readable the run starts afresh, also with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from sdft_ops.engine.distributed import copy_full_into, full, shard_like

log = logging.getLogger(__name__)
STEP_PREFIX = "step-"
TENSOR_FILES = ("student", "teacher", "optimizer", "rng")
STATE_KEYS = frozenset({"step", "fingerprint", "optimizer", "scheduler"})


def _atomic_dir(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))


def _publish(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    final.chmod(0o755)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trained parameters, whole (a collective under FSDP: every rank calls it)."""
    return {n: full(p.detach()).clone().contiguous()
            for n, p in model.named_parameters() if p.requires_grad}


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors = {f"{i}.{k}": full(v).contiguous() for i, s in state["state"].items() for k, v in s.items()}
    return tensors, {"param_groups": state["param_groups"]}


def save_checkpoint(root: Path, step: int, *, model, teacher, optimizer, scheduler,
                    fingerprint: str, write: bool = True) -> Path:
    """`write=False`: gather only (the FSDP ranks other than 0 take part in the gathers)."""
    final = Path(root) / f"{STEP_PREFIX}{step:06d}"
    student = trainable_state(model)
    teacher_state = teacher.state_dict() if teacher is not None else {}
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    if not write:
        return final
    tmp = _atomic_dir(final)
    try:
        save_file(student, tmp / "student.safetensors")
        save_file(teacher_state or {"_empty": torch.zeros(0)}, tmp / "teacher.safetensors")
        save_file(opt_tensors or {"_empty": torch.zeros(0)}, tmp / "optimizer.safetensors")
        save_file({"torch": torch.get_rng_state()}, tmp / "rng.safetensors")
        state = {"step": step, "fingerprint": fingerprint, "optimizer": opt_meta,
                 "scheduler": scheduler.state_dict()}
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def completed_checkpoints(root: Path | None) -> list[Path]:
    """The published checkpoint folders under `root`, oldest first."""
    if root is None or not Path(root).is_dir():
        return []
    return sorted(p for p in Path(root).glob(f"{STEP_PREFIX}*") if (p / "state.json").is_file())


def unreadable_because(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be read (a file missing, truncated or not what it
    should be), or None. Reads state.json and the safetensors headers only, not the tensors."""
    try:
        state = json.loads((path / "state.json").read_text())
        if not isinstance(state, dict) or not STATE_KEYS <= state.keys():
            return f"state.json lacks one of {sorted(STATE_KEYS)}"
        for name in TENSOR_FILES:
            with safe_open(path / f"{name}.safetensors", "pt"):  # checks the header covers the file
                pass
    except (OSError, ValueError, SafetensorError) as e:
        return " ".join(str(e).split())[:200]
    return None


def resume_latest(root: Path | None, *, model, teacher, optimizer, scheduler,
                  fingerprint: str) -> int:
    """Load the newest readable checkpoint under `root`; the step to continue from (0: none).
    An unreadable one is skipped for the one before it; the run never stops on it."""
    done = completed_checkpoints(root)
    for path in reversed(done):
        if (why := unreadable_because(path)) is None:
            return load_checkpoint(path, model=model, teacher=teacher, optimizer=optimizer,
                                   scheduler=scheduler, fingerprint=fingerprint)
        log.warning("checkpoint %s cannot be read (%s); skipped for the one before it", path, why)
    if done:
        log.warning("no readable checkpoint in %s; training starts afresh from step 0", root)
    return 0


def load_checkpoint(path: Path, *, model, teacher, optimizer, scheduler, fingerprint: str) -> int:
    """Restore everything saved by `save_checkpoint`; returns the step to continue from."""
    state = json.loads((path / "state.json").read_text())
    if state["fingerprint"] != fingerprint:
        raise ValueError(
            f"checkpoint {path} was written with another training config "
            f"({state['fingerprint']} != {fingerprint}); resume with the same config or "
            "start in an empty output folder"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in load_file(path / "student.safetensors").items():
            copy_full_into(params[name], value)
    teacher_state = load_file(path / "teacher.safetensors")
    if teacher is not None and "_empty" not in teacher_state:
        teacher.load_state_dict(teacher_state)
    opt_state: dict = {"state": {}, "param_groups": state["optimizer"]["param_groups"]}
    order = [p for group in optimizer.param_groups for p in group["params"]]
    for key, value in load_file(path / "optimizer.safetensors").items():
        if key == "_empty":
            continue
        index, name = key.split(".", 1)
        if value.dim():  # AdamW's moments, sharded like their parameter under FSDP (not `step`)
            value = shard_like(value, order[int(index)])
        opt_state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(load_file(path / "rng.safetensors")["torch"])
    return state["step"]


def save_trained_model(model, tokenizer, dest: Path, extra: dict | None = None) -> Path:
    """Write the trained student as a plain safetensors model folder (LoRA merged into a copy,
    the student itself untouched), atomically, with `extra` as sdft_ops_train.json."""
    from sdft_ops.engine.teacher import is_peft

    dest = Path(dest)
    tmp = _atomic_dir(dest)
    try:
        plain = model
        if is_peft(model):
            import copy

            plain = copy.deepcopy(model).merge_and_unload()
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "sdft_ops_train.json").write_text(json.dumps(extra or {}, indent=1, default=str))
        for path in tmp.iterdir():
            path.chmod(0o644)
        _publish(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
