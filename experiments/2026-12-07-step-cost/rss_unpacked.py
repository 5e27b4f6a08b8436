"""One recipe row's training with or without the bf16 packed decode copy (argv[1]: packed |
unpacked), into a scratch update id of benchmarks/recipes.py's data home (deleted after); prints
train seconds and the peak-RSS window. Run alone:
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python experiments/2026-12-07-step-cost/rss_unpacked.py unpacked
"""
import shutil
import sys

sys.path.insert(0, "benchmarks")
import recipes  # noqa: E402
from sdft_ops.domains import load_shipped  # noqa: E402
from sdft_ops.engine import packed_linear  # noqa: E402
from sdft_ops.pipeline import stage_dataset, train_step  # noqa: E402
from sdft_ops.update_state import load_state, update_dir  # noqa: E402

mode, domain = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "triage")
if mode == "unpacked":
    packed_linear.onednn_bf16 = lambda: False  # autocast's own per-call casts in every decode
recipe = "sdft-top10-teacher+filter-nll+replay-demos1.0-refusal0.5-128x2-k16-lr6e-4"
cfg, update_id = recipes.recipe_config(recipe), f"probe-{mode}-{domain}"
shutil.rmtree(update_dir(recipes.HOME, update_id), ignore_errors=True)
stage_dataset(update_id, load_shipped(domain)[0], cfg, recipes.HOME)
train_step(update_id, cfg, recipes.HOME, recipes._registry())
state = load_state(recipes.HOME, update_id)
print(f"RESULT {mode} {domain} train {state.train_seconds:.1f} s peak RSS {state.train_peak_rss_gb:.2f} GB", flush=True)
shutil.rmtree(update_dir(recipes.HOME, update_id))
