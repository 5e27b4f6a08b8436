"""Length-grouped micro-batches vs the order the sampler drew: SFT steps of 8 rows in 2
micro-batches on triage demonstrations mixed half and half with safety ones (as a replay 1.0
update trains), 1 warm-up + 6 timed steps each, one process, alternating A/B/A/B.

    SDFT_OPS_HOME=.sdft_ops .venv/bin/python experiments/2026-12-07-step-cost/length_groups.py
"""

import builtins
import statistics

from sdft_ops.domains import load_shipped
from sdft_ops.engine import SDFTConfig, loop, train
from sdft_ops.models import ModelSpec, load_model

model, tok = load_model(ModelSpec())
demos = [d for pair in zip(load_shipped("triage")[0].records, load_shipped("safety")[0].records) for d in pair]
cfg = SDFTConfig(method="sft", max_steps=7, prompts_per_step=8, grad_accum_steps=2, learning_rate=1e-6)
results = {"grouped": [], "drawn order": []}
for _ in range(2):
    for name in results:
        # the loop sorts with the builtin; "drawn order" makes that sort keep the sampler's order
        loop.sorted = builtins.sorted if name == "grouped" else (lambda rows, key=None: list(rows))
        history = train(model, tok, demos, cfg, progress=False).history
        results[name] += [h["train/step_seconds"] for h in history[1:]]
for name, seconds in results.items():
    print(f"{name:12s} median {statistics.median(seconds):.2f} s/step [{min(seconds):.2f}, {max(seconds):.2f}] n={len(seconds)}")
