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


_HOLES = """
import ctypes, sys
from sdft_ops.engine.memory import limit_heap_fragmentation
from tests.test_memory import _rss_gb
libc = ctypes.CDLL("libc.so.6")  # glibc's malloc itself, as torch's CPU allocator calls it
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
libc.free(libc.malloc(16 << 20))  # glibc's dynamic threshold rises to 16 MiB: 2 MiB now from the heap
limited = limit_heap_fragmentation() if sys.argv[1] == "limit" else False
chunks, pins = [], []
for _ in range(128):  # 2 MiB chunks, each followed by a small live one: freed, they are holes
    chunks.append(libc.malloc(2 << 20))
    ctypes.memset(chunks[-1], 1, 2 << 20)
    pins.append(libc.malloc(4000))
before = _rss_gb()
for chunk in chunks:
    libc.free(chunk)
print(limited, before - _rss_gb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("mode", ["limit", "default"])
def test_with_the_fixed_threshold_freed_activation_sized_chunks_leave_the_process(mode):
    """A training step frees activations of a new size at every step; kept in the heap's holes
    they made a recipe update's RSS creep up (engine/memory.py). The default run shows the holes
    the fixed threshold prevents, so this test can tell the two apart."""
    import subprocess
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", _HOLES, mode], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[1]).stdout.split()
    limited, returned_gb = out[0] == "True", float(out[1])
    if mode == "limit":
        assert limited and returned_gb > 0.2  # the 0.25 GiB of chunks left on free
    else:
        assert returned_gb < 0.05  # glibc's default keeps them resident


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


def test_freed_heap_is_handed_back_before_each_rollout_decode_of_several_steps(monkeypatch):
    from sdft_ops.engine import loop

    calls = []
    monkeypatch.setattr(loop, "release_freed_memory", lambda: calls.append(1))
    model, tok = build_tiny()
    demos = [Demonstration(id=f"d{i}", prompt=f"What is {i} plus {i}?", demonstration=f"{2 * i}.",
                           domain="math") for i in range(8)]
    train(model, tok, demos, SDFTConfig(max_steps=4, prompts_per_step=2, max_new_tokens=4,
                                        steps_per_generation=2, autocast_bf16=False), progress=False)
    assert len(calls) == 2  # one per decode of 2 steps' rollouts
    calls.clear()
    train(model, tok, demos, SDFTConfig(max_steps=2, prompts_per_step=2, max_new_tokens=4,
                                        autocast_bf16=False), progress=False)
    assert calls == []  # a decode per step: no collection per step


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
