"""Phase timers around SDFT steps (rollout, teacher forward, student forward, loss, backward, AdamW,
EMA) on SmolLM2-135M-Instruct, 8 tooluse prompts x 64 tokens; prints one line per step. By hand:
benchmarks/results/step_cost_notes.md cites its output.

    SDFT_OPS_HOME=.sdft_ops .venv/bin/python experiments/2026-12-03-step-cost-probes/step_phases.py
"""
import time, resource, sys, torch
import torch.nn.functional as F
from sdft_ops.models import ModelSpec, load_model
from sdft_ops.domains import load_shipped
from sdft_ops.engine import SDFTConfig
from sdft_ops.engine.context import prepare_examples
from sdft_ops.engine.loop import completion_logits
from sdft_ops.engine.sampling import decode, stop_ids, left_pad
from sdft_ops.engine.losses import token_divergence, completion_mask, sequence_mean
from sdft_ops.engine.teacher import Teacher
model, tok = load_model(ModelSpec(name_or_path="smollm2-135m-instruct"))
cfg = SDFTConfig(max_new_tokens=64, learning_rate=1e-5)
demos = list(load_shipped("tooluse")[0].records)[:32]
ex = prepare_examples(demos, tok, cfg)
eos, pad = stop_ids(model, tok), tok.pad_token_id
teacher = Teacher(model, "ema", 0.02)
opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=("fused" in sys.argv))
print("student prompt lens", [len(e.student_prompt) for e in ex[:8]], "teacher", [len(e.teacher_prompt) for e in ex[:8]], "target", [len(e.target) for e in ex[:8]])
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024**2
for step in range(4):
    b = ex[8*step:8*step+8]; T = {}
    t = time.perf_counter()
    r = decode(model, [e.student_prompt for e in b], max_new_tokens=64, eos_ids=eos, pad_id=pad, seeds=list(range(8)))
    comp = r.completion_ids; T["rollout"] = time.perf_counter()-t; t = time.perf_counter()
    with torch.no_grad():
        ti, tm = left_pad([e.teacher_prompt for e in b], pad, "cpu")
        tl = completion_logits(teacher.model, ti, tm, comp)
    T["teacher"] = time.perf_counter()-t; t = time.perf_counter()
    si, sm = left_pad([e.student_prompt for e in b], pad, "cpu")
    sl = completion_logits(model, si, sm, comp)
    T["student_fwd"] = time.perf_counter()-t; t = time.perf_counter()
    mask = completion_mask(comp, eos, 3)
    loss = sequence_mean(token_divergence(sl, tl), mask).sum() / 8
    T["loss"] = time.perf_counter()-t; t = time.perf_counter()
    loss.backward(); del sl, tl
    T["backward"] = time.perf_counter()-t; t = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); opt.zero_grad(set_to_none=True)
    T["optim"] = time.perf_counter()-t; t = time.perf_counter()
    teacher.update(model); T["ema"] = time.perf_counter()-t
    print(step, "T", comp.shape[1], {k: round(v, 2) for k, v in T.items()}, "total", round(sum(T.values()), 2), "rss", round(rss(), 2), flush=True)
