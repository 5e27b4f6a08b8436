"""Why the recipe rows' peak RSS grows with their order in one process (2.75 → 3.00 GB).

Runs what `benchmarks/recipes.py` runs per row (stage → train → evaluate) for two short updates in
one process, in a copy of the recipes data home, and prints the RSS before and after each phase,
the training's peak, and the live torch tensors / modules after each row.

  OMP_WAIT_POLICY=PASSIVE .venv/bin/python experiments/2026-12-07-step-cost/rows_rss.py HOME [steps]
"""
import gc
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import torch  # noqa: E402

import recipes  # noqa: E402
from sdft_ops.domains import load_shipped  # noqa: E402
from sdft_ops.pipeline import eval_step, stage_dataset, train_step  # noqa: E402
from sdft_ops.registry import PolicyRegistry  # noqa: E402
from sdft_ops.update_state import load_state  # noqa: E402


def rss() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024**2


def live() -> str:
    gc.collect()
    tensors = [o for o in gc.get_objects() if torch.is_tensor(o)]
    nbytes = sum(t.untyped_storage().nbytes() for t in {id(t.untyped_storage()): t for t in tensors}.values())
    modules = sum(isinstance(o, torch.nn.Module) and o.__class__.__name__.endswith("ForCausalLM")
                  for o in gc.get_objects())
    return f"{len(tensors)} tensors, {nbytes / 1024**3:.2f} GiB of storage, {modules} causal LMs"


home, steps = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 32
recipe = recipes.chosen_name() if hasattr(recipes, "chosen_name") else \
    "sdft-top10-teacher+filter-nll+replay-demos1.0-refusal0.5-128x2-k16-lr6e-4"
cfg = recipes.recipe_config(recipe)
cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": steps})})
registry = PolicyRegistry(None, home=home, experiment="bench-recipes")
print(f"start: rss {rss():.2f} GiB")
for domain in sys.argv[3:] or ["tooluse", "triage", "tooluse"]:
    uid = f"diag-{domain}-{rss():.0f}-{id(cfg) % 1000}"
    stage_dataset(uid, load_shipped(domain)[0], cfg, home)
    before = rss()
    train_step(uid, cfg, home, registry)
    st = load_state(home, uid)
    print(f"{domain}: rss before train {before:.2f}, peak {st.train_peak_rss_gb:.2f}, "
          f"after {rss():.2f} GiB; {live()}", flush=True)
    eval_step(uid, cfg, home, registry)
    print(f"{domain}: rss after eval {rss():.2f} GiB; {live()}", flush=True)
