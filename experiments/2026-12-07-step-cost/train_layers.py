"""Step seconds and peak RSS with the top N transformer blocks trained (`model.train_layers`)
against every weight trained: 8 steps of 8 rows, half tooluse, half safety demonstrations.

    SDFT_OPS_HOME=.sdft_ops .venv/bin/python experiments/2026-12-07-step-cost/train_layers.py \
        LAYERS '{"method": "sft"}' [--replay-as-demonstrations]   # LAYERS: 0 = every weight

`--replay-as-demonstrations`: the safety rows are learned as their demonstrations (replay's
`learn_as: demonstration`); a `rollout_filter: scorer` run rejects every other rollout.
"""

import json
import statistics
import sys

from sdft_ops.domains import load_shipped
from sdft_ops.engine import SDFTConfig, train
from sdft_ops.models import ModelSpec, load_model

layers, settings = int(sys.argv[1]), json.loads(sys.argv[2])
model, tok = load_model(ModelSpec(train_layers=layers or None))
tooluse, safety = list(load_shipped("tooluse")[0].records), list(load_shipped("safety")[0].records)
demos = [d for pair in zip(tooluse[:32], safety[::8][:32]) for d in pair]
cfg = SDFTConfig(max_steps=8, prompts_per_step=8, learning_rate=1e-5, **settings)
as_demos = {d.id for d in demos[1::2]} if "--replay-as-demonstrations" in sys.argv else set()
result = train(model, tok, demos, cfg, progress=False, demonstration_ids=as_demos,
               rollout_check=lambda text, demo: len(text) % 2 == 0)
seconds = [h["train/step_seconds"] for h in result.history]
print(json.dumps({"layers": layers, "settings": settings, "steps": [round(s, 2) for s in seconds],
                  "mean": round(statistics.mean(seconds), 2),
                  "median": round(statistics.median(seconds), 2),
                  "peak_rss_gb": round(result.peak_rss_gb, 2)}))
