"""Where a training process's resident memory goes: RSS after imports, after loading the model,
then each step's peak (engine/memory.py's window), for one SDFTConfig.

    SDFT_OPS_HOME=.sdft_ops .venv/bin/python experiments/2026-12-07-step-cost/rss_probe.py \
        '{"rollout": "teacher", "teacher_rollout_loss": "nll", "teacher": "live"}' [--lora]
"""

import json
import re
import sys
from pathlib import Path


def rss_gb() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024**2


import torch  # noqa: E402

from sdft_ops.domains import load_shipped  # noqa: E402
from sdft_ops.engine import SDFTConfig, train  # noqa: E402
from sdft_ops.models import LoraSpec, ModelSpec, load_model  # noqa: E402

print(f"after imports        {rss_gb():.2f} GB")
model, tok = load_model(ModelSpec(lora=LoraSpec() if "--lora" in sys.argv else None))
print(f"after loading        {rss_gb():.2f} GB")
settings = json.loads(sys.argv[1])
demos = list(load_shipped("tooluse")[0].records)[:64]
cfg = SDFTConfig(max_steps=4, prompts_per_step=8, max_new_tokens=64, learning_rate=1e-5, **settings)
result = train(model, tok, demos, cfg, progress=False)
for h in result.history:
    print(f"step {h['step']}  peak {h['train/peak_rss_gb']:.2f} GB  {h['train/step_seconds']:.1f} s")
print(f"end                  {rss_gb():.2f} GB")
