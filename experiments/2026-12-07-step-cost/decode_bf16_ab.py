"""Training-rollout decode (32 rows x 64 tokens, sampled, logits kept, frozen weights) and an
eval-like greedy decode (40 rows x 64 tokens, weights requiring grad) under bf16 autocast."""
import sys, time, torch
import sdft_ops
from sdft_ops.engine.sampling import decode
from sdft_ops.engine.precision import bf16_autocast
from transformers import AutoModelForCausalLM, AutoTokenizer
path = "/tmp/demo2/sdft/updates/20261207-tooluse/model"
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
from sdft_ops.domains import load_shipped
ds = load_shipped("triage")[0]
prompts = [tok.apply_chat_template([{"role": "user", "content": d.prompt}], add_generation_prompt=True) for d in ds.records[:40]]
prompts = [p if isinstance(p, list) else p["input_ids"] for p in prompts]
def run(frozen, rows, seeds):
    for p in model.parameters(): p.requires_grad_(not frozen)
    t = time.perf_counter()
    with torch.no_grad(), bf16_autocast("cpu"):
        out = decode(model, prompts[:rows], max_new_tokens=64, eos_ids=[-1], pad_id=tok.pad_token_id,
                     seeds=list(range(rows)) if seeds else None, keep_logits=seeds)
    return time.perf_counter() - t, out.completion_ids.shape
run(True, 4, True)  # warm
for _ in range(3):
    a = run(True, 32, True); b = run(False, 40, False)
    print(f"RESULT {sys.argv[1]} {sdft_ops.__file__.split('/')[2]} rollout {a[0]:.2f} s {tuple(a[1])}  greedy {b[0]:.2f} s {tuple(b[1])}", flush=True)
