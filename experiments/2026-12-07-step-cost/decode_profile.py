"""Where a training rollout's decode goes: 32 teacher prompts (tooluse + replayed safety, as a
recipe's step_per_generation 4 decodes them), 64 new tokens, the engine's own `decode`; the
torch profiler's top operators by self CPU time.

    SDFT_OPS_HOME=.sdft_ops .venv/bin/python experiments/2026-12-07-step-cost/decode_profile.py
"""

import time

import torch
from torch.profiler import ProfilerActivity, profile

from sdft_ops.domains import load_shipped
from sdft_ops.engine import SDFTConfig
from sdft_ops.engine.context import prepare_examples
from sdft_ops.engine.sampling import decode, stop_ids
from sdft_ops.models import ModelSpec, load_model

model, tok = load_model(ModelSpec())
cfg = SDFTConfig()
demos = list(load_shipped("tooluse")[0].records)[:16] + list(load_shipped("safety")[0].records)[:16]
examples = prepare_examples(demos, tok, cfg)
prompts = [e.teacher_prompt for e in examples]
eos, pad = stop_ids(model, tok), tok.pad_token_id
print("teacher prompt tokens: mean", sum(map(len, prompts)) / len(prompts), "max", max(map(len, prompts)))
for keep in (False, True):
    for _ in range(2):
        t = time.perf_counter()
        out = decode(model, prompts, max_new_tokens=64, eos_ids=eos, pad_id=pad, seeds=list(range(32)),
                     keep_logits=keep)
        print(f"keep_logits={keep}: {time.perf_counter() - t:.1f} s for {out.completion_ids.shape[1]} tokens")
with profile(activities=[ProfilerActivity.CPU]) as prof:
    decode(model, prompts, max_new_tokens=64, eos_ids=eos, pad_id=pad, seeds=list(range(32)), keep_logits=True)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
