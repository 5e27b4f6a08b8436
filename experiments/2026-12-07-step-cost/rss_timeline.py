"""Where one recipe row's peak RSS happens: a thread samples the process RSS every 10 ms while
the row trains (scratch update id in benchmarks/recipes.py's data home, deleted after); the
rollout decodes are marked. Prints the peak inside decodes, outside them, and at the start.
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python experiments/2026-12-07-step-cost/rss_timeline.py [triage|tooluse] [--trim]
"""
import shutil
import sys
import threading
import time

sys.path.insert(0, "benchmarks")
import recipes  # noqa: E402
from sdft_ops.domains import load_shipped  # noqa: E402
from sdft_ops.engine import rollout  # noqa: E402
from sdft_ops.pipeline import stage_dataset, train_step  # noqa: E402
from sdft_ops.update_state import load_state, update_dir  # noqa: E402

domain = next((a for a in sys.argv[1:] if not a.startswith("--")), "triage")
samples, marks, stop = [], [], threading.Event()


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1024**3


def sampler():
    while not stop.is_set():
        samples.append((time.perf_counter(), rss_gb()))
        time.sleep(0.01)


real_decode = rollout.decode


TRIM = "--trim" in sys.argv  # hand freed heap back before each rollout decode


def marked_decode(*args, **kwargs):
    if TRIM:
        from sdft_ops.engine.memory import release_freed_memory
        release_freed_memory()
    start = time.perf_counter()
    try:
        return real_decode(*args, **kwargs)
    finally:
        marks.append((start, time.perf_counter()))


rollout.decode = marked_decode
recipe = "sdft-top10-teacher+filter-nll+replay-demos1.0-refusal0.5-128x2-k16-lr6e-4"
cfg, update_id = recipes.recipe_config(recipe), f"probe-timeline-{domain}"
shutil.rmtree(update_dir(recipes.HOME, update_id), ignore_errors=True)
stage_dataset(update_id, load_shipped(domain)[0], cfg, recipes.HOME)
threading.Thread(target=sampler, daemon=True).start()
train_step(update_id, cfg, recipes.HOME, recipes._registry())
stop.set()
state = load_state(recipes.HOME, update_id)
inside = [r for t, r in samples if any(a <= t <= b for a, b in marks)]
outside = [r for t, r in samples if not any(a <= t <= b for a, b in marks) and t > marks[0][0]]
print(f"RESULT {domain} train {state.train_seconds:.1f} s  VmHWM window {state.train_peak_rss_gb:.2f} GB  "
      f"decodes {len(marks)} ({sum(b - a for a, b in marks):.0f} s)  peak in decodes {max(inside):.2f}  "
      f"after first decode, outside {max(outside):.2f}  before first decode "
      f"{max(r for t, r in samples if t < marks[0][0]):.2f} GB", flush=True)
for a, b in marks:
    window = [r for t, r in samples if a <= t <= b]
    print(f"  decode {a - samples[0][0]:6.1f}-{b - samples[0][0]:6.1f} s: start {window[0]:.2f} peak {max(window):.2f} end {window[-1]:.2f}")
shutil.rmtree(update_dir(recipes.HOME, update_id))
