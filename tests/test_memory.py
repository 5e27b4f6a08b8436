"""What a training step holds: the peak-RSS window it reports (engine/memory.py) and micro-batches
of like-length rows (less padding computed)."""

import sys

import pytest
import torch

from sdft_ops.data import Demonstration
from sdft_ops.engine import SDFTConfig, train
from sdft_ops.engine.memory import peak_rss_gb, reset_peak_rss
from sdft_ops.tiny import build_tiny


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the window resets on Linux only")
def test_the_peak_counts_memory_touched_since_the_reset_and_forgets_what_came_before():
    block = b"\x01" * (256 * 1024**2)  # written, so resident
    high = peak_rss_gb()
    del block
    reset_peak_rss()
    after = peak_rss_gb()
    assert high - after > 0.2  # the freed 0.25 GiB left the window
    block = b"\x02" * (256 * 1024**2)
    assert peak_rss_gb() - after > 0.2
    del block


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_the_window_starts_at_live_memory_not_at_freed_heap_chunks():
    """Freed small allocations stay resident in the heap's holes (a live one above them keeps the
    heap from shrinking); the reset hands them back first, so the window does not start there."""
    chunks = [bytearray(b"\x03" * 4000) for _ in range(64_000)]  # ~0.25 GiB of heap, written
    keep = chunks[::64]
    del chunks
    resident = _rss_gb()
    reset_peak_rss()
    assert resident - peak_rss_gb() > 0.15
    del keep


def _rss_gb() -> float:
    import re
    from pathlib import Path

    return int(re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024**2


def test_a_training_run_reports_its_peak_rss_per_step_and_at_the_end():
    model, tok = build_tiny()
    demos = [Demonstration(id=f"d{i}", prompt=f"What is {i} plus {i}?", demonstration=f"{2 * i}.",
                           domain="math") for i in range(4)]
    result = train(model, tok, demos, SDFTConfig(max_steps=2, prompts_per_step=2, max_new_tokens=4,
                                                 autocast_bf16=False), progress=False)
    assert 0 < result.peak_rss_gb < 64
    assert all(0 < h["train/peak_rss_gb"] <= result.peak_rss_gb for h in result.history)


def test_micro_batches_hold_rows_of_like_length_and_train_as_one_batch(monkeypatch):
    from sdft_ops.engine import loop

    demos = [Demonstration(id=f"d{i}", prompt="Q" + " and more" * (i % 2) * 12, demonstration=f"{i}." * (1 + 9 * (i % 2)),
                           domain="math") for i in range(8)]
    cfg = SDFTConfig(method="sft", max_steps=2, prompts_per_step=8, learning_rate=1e-3, autocast_bf16=False)
    one, tok = build_tiny()
    train(one, tok, demos, cfg, progress=False)
    seen, real = [], loop.sft_step
    monkeypatch.setattr(loop, "sft_step", lambda m, batch, *a, **k: seen.append([e.id for e in batch]) or real(m, batch, *a, **k))
    two, _ = build_tiny()
    train(two, tok, demos, cfg.model_copy(update={"grad_accum_steps": 2}), progress=False)
    assert sorted(seen[0]) == ["d0", "d2", "d4", "d6"] and sorted(seen[1]) == ["d1", "d3", "d5", "d7"]  # short, long
    for (name, a), b in zip(one.named_parameters(), two.parameters()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)
