"""bf16 autocast only where it is fast: the one helper every autocast goes through."""

import torch

from sdft_ops.engine import precision


def _matmul_dtype(ctx) -> torch.dtype:
    a, b = torch.randn(4, 8), torch.randn(8, 4)
    with ctx:
        return (a @ b).dtype


def test_bf16_autocast_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(precision, "bf16_is_fast", lambda device: True)
    assert _matmul_dtype(precision.bf16_autocast("cpu")) == torch.bfloat16
    assert _matmul_dtype(precision.bf16_autocast("cpu", enabled=False)) == torch.float32
    monkeypatch.setattr(precision, "bf16_is_fast", lambda device: False)
    assert _matmul_dtype(precision.bf16_autocast("cpu")) == torch.float32


def test_bf16_is_fast_matches_onednn_on_this_cpu():
    precision.bf16_is_fast.cache_clear()
    assert precision.bf16_is_fast("cpu") == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert precision.bf16_is_fast("cuda") is True
