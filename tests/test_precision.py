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


def test_frozen_weights_held_in_bf16_give_the_same_logits_and_come_back_bit_for_bit(tmp_path):
    from sdft_ops.models import freeze_below_top
    from sdft_ops.tiny import build_tiny

    model, _ = build_tiny()
    freeze_below_top(model, 1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    frozen = precision.frozen_linear_weights(model)
    embedding = model.get_input_embeddings().weight
    assert frozen and all(not w.requires_grad for w in frozen)
    assert all(w is not embedding for w in frozen)  # a tied head stays float32: lookups are not autocast
    ids = torch.tensor([[1, 5, 9, 40, 7, 3]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(input_ids=ids).logits
        with precision.frozen_weights_in_bf16(model, True, spill_dir=tmp_path / "new"):
            assert {w.dtype for w in frozen} == {torch.bfloat16} and embedding.dtype == torch.float32
            assert list((tmp_path / "new").iterdir())  # the float32 values wait on disk
            held = model(input_ids=ids).logits
    assert torch.equal(held, expected)
    assert not list((tmp_path / "new").iterdir())
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[name]), name
    with precision.frozen_weights_in_bf16(model, False):
        assert {w.dtype for w in frozen} == {torch.float32}
