"""The process's peak resident memory over a window (the `peak_rss_gb` of a training run).

Linux keeps the peak in /proc/self/status (VmHWM) and resets it to the current RSS when "5" is
written to /proc/self/clear_refs, so a window can start anywhere in a long process (a benchmark
that trains several recipes, a Dagster worker). Elsewhere the peak is the process's lifetime
peak (`resource.getrusage`), an upper bound.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


# Allocations from this size up get their own mapping, handed back to the OS when freed. glibc's
# default threshold starts at 128 KiB and rises (up to 32 MiB) to the largest chunk freed, so a
# training step's activations, of a different size at every step, end up in the heap and leave
# it in holes: a recipe update's RSS crept up ~0.1 GB per 16 steps, 3.41 GB at the end of a
# triage update, against 2.82 GB with a fixed 1 MiB threshold and the same seconds
# (experiments/2026-12-07-step-cost/LOG.md).
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def _libc():
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def limit_heap_fragmentation(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes for the rest of the process (a fixed
    threshold also stops its dynamic rise). → whether it took effect (False where not glibc)."""
    try:
        return bool(_libc().mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def release_freed_memory() -> None:
    """Hand memory freed by earlier work back to the OS (glibc's `malloc_trim`): after a full
    fine-tune, a long process (a Dagster worker, a benchmark training several recipes) kept
    ~5 GB resident in freed heap chunks, and every later update's window started there."""
    import gc

    gc.collect()
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        pass


def reset_peak_rss() -> None:
    """Start a new window: freed memory goes back to the OS, then the peak becomes the current
    RSS (Linux; a no-op where refused)."""
    release_freed_memory()
    try:
        _CLEAR.write_text("5")
    except OSError:
        pass


def peak_rss_gb() -> float | None:
    """The peak RSS since the last reset (Linux) or since the process started, in GiB."""
    try:
        return int(re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text()).group(1)) / 1024**2
    except (OSError, AttributeError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak / 1024**3 if sys.platform == "darwin" else peak / 1024**2
