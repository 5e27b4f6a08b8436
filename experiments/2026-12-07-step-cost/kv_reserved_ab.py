"""The reserved KV cache (in place, keys in the values' dtype) against transformers' growing one:
a teacher-rollout-like decode (32 rows with the demonstration in context, 64 sampled tokens,
logits kept, frozen weights) and an evaluation-like greedy decode (40 rows x 64 tokens), under
bf16 autocast, 3 runs each; the tokens and kept logits are saved to compare across packages.
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python experiments/2026-12-07-step-cost/kv_reserved_ab.py new /tmp/kv_new.pt
    PYTHONPATH=/tmp/old OMP_WAIT_POLICY=PASSIVE .venv/bin/python ... old /tmp/kv_old.pt
"""
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import sdft_ops
from sdft_ops.domains import load_shipped
from sdft_ops.engine.memory import peak_rss_gb, reset_peak_rss
from sdft_ops.engine.precision import bf16_autocast
from sdft_ops.engine.sampling import decode

path = "benchmarks/results/cache/recipes/updates/safety/model"
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
records = load_shipped("triage")[0].records[:40]


def chat(messages):
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)
    return ids if isinstance(ids, list) else ids["input_ids"]


plain = [chat([{"role": "user", "content": r.prompt}]) for r in records]
teacher = [chat([{"role": "user", "content": r.prompt}, {"role": "assistant", "content": r.demonstration},
                 {"role": "user", "content": r.prompt}]) for r in records]


def run(frozen, prompts, seeds):
    for p in model.parameters():
        p.requires_grad_(not frozen)
    reset_peak_rss()
    t = time.perf_counter()
    with torch.no_grad(), bf16_autocast("cpu"):
        out = decode(model, prompts, max_new_tokens=64, eos_ids=[-1], pad_id=tok.pad_token_id,
                     seeds=list(range(len(prompts))) if seeds else None, keep_logits=seeds)
    return time.perf_counter() - t, peak_rss_gb(), out


run(True, teacher[:4], True)  # warm
for _ in range(3):
    a = run(True, teacher[:32], True)
    b = run(False, plain, False)
    print(f"RESULT {sys.argv[1]} {sdft_ops.__file__.split('/')[2]} rollout {a[0]:.2f} s peak {a[1]:.2f} GB  "
          f"greedy {b[0]:.2f} s peak {b[1]:.2f} GB", flush=True)
torch.save({"rollout": a[2].completion_ids, "logits": a[2].logits, "greedy": b[2].completion_ids}, sys.argv[2])
