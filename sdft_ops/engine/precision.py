"""bf16 autocast only where the hardware runs it fast.

On a CPU without native bf16 (no AVX512-BF16 / AMX; e.g. an AVX2-only EPYC) oneDNN emulates
bfloat16 and a 512×576×49152 matmul + backward takes ~100 s instead of ~2 s in float32
(measured here, torch 2.13). So "bf16 autocast" means: bf16 on CUDA and on CPUs that support it,
float32 elsewhere, announced once. Every autocast in the project goes through `bf16_autocast`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@functools.cache
def onednn_bf16() -> bool | None:
    """Whether oneDNN runs bf16 natively on this CPU; None where torch cannot say."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


@functools.cache
def bf16_is_fast(device_type: str) -> bool:
    """True where bfloat16 autocast speeds things up: CUDA/MPS, or a CPU oneDNN runs bf16 on."""
    if device_type != "cpu":
        return True
    fast = onednn_bf16()
    if fast is None:
        fast = torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "NO AVX", "AVX2")
    if not fast:
        log.warning("this CPU has no native bfloat16 (capability %s): bf16 autocast would be "
                    "~50x slower, running float32 instead",
                    torch.backends.cpu.get_cpu_capability())
    return fast


def bf16_autocast(device_type: str, enabled: bool = True):
    """torch.autocast(bfloat16) on `device_type` when enabled and fast there, else a no-op."""
    if enabled and bf16_is_fast(device_type):
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def frozen_linear_weights(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The float32 weights of `model`'s Linear layers that do not train (`train_layers`' lower
    blocks), each once; a weight an Embedding also holds (a tied LM head) is left out, since
    an embedding lookup is not autocast."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    weights = {id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)}
    return [w for w in weights.values()
            if not w.requires_grad and w.dtype == torch.float32 and id(w) not in embedded
            and type(w.data) is torch.Tensor]  # not a DTensor shard (FSDP2)


@contextlib.contextmanager
def frozen_weights_in_bf16(model: torch.nn.Module, enabled: bool, spill_dir: str | Path | None = None):
    """Within: the frozen Linear weights are held in bfloat16, and their float32 values wait in a
    safetensors file in `spill_dir` (the system's temp folder if None); on exit they are restored,
    bit for bit. Under bf16 autocast a Linear casts its float32 weight to bf16 (round to nearest
    even, as `.to` does) at every call anyway, so every result is unchanged; what changes is the
    memory (half of those weights: ~0.14 GB for the 20 frozen blocks of SmolLM2-135M) and the
    per-call cast it no longer pays. Only where bf16 autocast runs (`enabled`), in one process
    (a DDP wrapper holds its parameters' storage). The other CPU parameters are copied off the
    file mapping transformers may load safetensors into, so that the float32 pages leave."""
    weights = frozen_linear_weights(model) if enabled else []
    if not weights:
        yield
        return
    from safetensors.torch import load_file, save_file

    if spill_dir is not None:
        Path(spill_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".frozen-fp32-", dir=spill_dir) as tmp:
        spilled = Path(tmp) / "weights.safetensors"
        save_file({str(i): w.data.contiguous() for i, w in enumerate(weights)}, spilled)
        held = {id(w) for w in weights}
        for w in weights:
            w.data = w.data.to(torch.bfloat16)
        for p in model.parameters():  # off the loaded file's mmap: while any tensor maps it, the
            if p.device.type == "cpu" and id(p) not in held:  # float32 pages stay resident
                p.data = p.data.clone()
        try:
            yield
        finally:
            originals = load_file(spilled, device=str(weights[0].device))
            for i, w in enumerate(weights):
                w.data = originals[str(i)]
