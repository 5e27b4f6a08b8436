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
