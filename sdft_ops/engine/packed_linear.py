"""oneDNN-packed Linear weights for the decoder's few-row calls on a CPU.

MKL's sgemm packs the weight matrix again on every call. For a decode step's few rows (M = the
rows still decoding) that packing is most of the call: a 576×1536 layer with its weight out of
cache took 0.61 ms at M = 2-16 and 0.90 ms at M = 40, against 0.28-0.49 and 0.75 ms for oneDNN's
linear on a weight packed once (experiments/2026-12-07-eval-speed/LOG.md). So while `decode`
runs on a CPU, every `nn.Linear` computes calls of 2 to `MAX_ROWS` rows from a packed copy of its
weight; a single row (MKL's gemv is faster) and a long prompt use the weight itself. The copy is
remade when the weight changes (its version counter moves on an optimizer or EMA step).

Under bf16 autocast (a CPU with native bf16: `engine.precision`) every call without gradients
runs on a bf16 packed copy instead, any row count: autocast casts a weight to bf16 on every call
unless it is a leaf that requires grad, so the frozen blocks of a `train_layers` update and the
whole EMA teacher were cast again at every decode step (a training rollout of 32 rows x 64
tokens took ~18 s, most of a step's time). The input is cast as autocast would cast it.

Only float32 weights (and the bf16 frozen ones of `precision.frozen_weights_in_bf16`, which
run the bf16 path only) that are plain CPU tensors (not FSDP2's DTensors), and only where torch
has oneDNN (bf16: where oneDNN runs it natively); elsewhere nothing changes. Results equal float32's
(or bf16 autocast's) up to rounding (logits within ~1e-4 in float32).
"""

from __future__ import annotations

import contextlib
import functools
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from sdft_ops.engine.precision import onednn_bf16

MIN_ROWS, MAX_ROWS = 2, 128
PACK_HINT = 32  # the rows oneDNN lays the packed weight out for; any row count works
# layer -> {"key": (weight pointer, version), "weight": packed copy}; outside the module, which
# a deepcopy (the EMA teacher) must not see: oneDNN's packed tensors cannot be copied
_PACKED: weakref.WeakKeyDictionary[nn.Linear, dict] = weakref.WeakKeyDictionary()


def _eligible(model: nn.Module) -> list[nn.Linear]:
    if not torch.backends.mkldnn.is_available():
        return []
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    ok = all(type(m.weight.data) is torch.Tensor and m.weight.device.type == "cpu"
             and m.weight.dtype in (torch.float32, torch.bfloat16) for m in linears)
    return linears if ok else []


def _forward(linear: nn.Linear, packed: dict, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled():
        return F.linear(x, linear.weight, linear.bias)
    if torch.is_autocast_enabled("cpu"):
        if torch.get_autocast_dtype("cpu") != torch.bfloat16 or not onednn_bf16():
            return F.linear(x, linear.weight, linear.bias)
        dtype = torch.bfloat16
    else:
        rows = x.numel() // x.shape[-1]
        if not (MIN_ROWS <= rows <= MAX_ROWS) or x.dtype != linear.weight.dtype:
            return F.linear(x, linear.weight, linear.bias)
        dtype = torch.float32
    weight = linear.weight
    key = (weight.data_ptr(), weight._version, dtype)
    if packed.get("key") != key:
        packed["key"], packed["weight"] = key, torch.ops.mkldnn._reorder_linear_weight(
            weight.detach().to(dtype), PACK_HINT)
    bias = None if linear.bias is None else linear.bias.to(dtype)  # small: cast per call, never stale
    return torch.ops.mkldnn._linear_pointwise(x.to(dtype), packed["weight"], bias, "none", [], "")


@contextlib.contextmanager
def packed_linears(model: nn.Module, keep: bool = False):
    """Within: `model`'s Linear layers run 2-`MAX_ROWS`-row calls on packed weights. `keep`:
    leave the packed copies on the model for the next decode (evaluation, whose weights do not
    change); else they are freed on exit (training: the weights change every step, and the
    copies would add the model's size to the step's peak memory)."""
    linears = _eligible(model)
    for linear in linears:
        packed = _PACKED.setdefault(linear, {})
        linear.forward = functools.partial(_forward, weakref.proxy(linear), packed)  # shadows nn.Linear.forward
    try:
        yield
    finally:
        for linear in linears:
            del linear.forward
            if not keep:
                _PACKED.pop(linear, None)
