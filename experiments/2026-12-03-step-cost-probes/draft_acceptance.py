"""Would prompt-lookup speculative decoding pay? Drafts of up to 4 tokens copied from the teacher
prompt (which holds the demonstration) and the text so far, checked against the base model's own
T = 1 samples on 16 prompts of a domain: tokens per model call (1.0 = no gain). By hand:
benchmarks/results/step_cost_notes.md cites its output.

    SDFT_OPS_HOME=.sdft_ops .venv/bin/python \
        experiments/2026-12-03-step-cost-probes/draft_acceptance.py tooluse
"""
import torch
from sdft_ops.models import ModelSpec, load_model
from sdft_ops.domains import load_shipped
from sdft_ops.engine import SDFTConfig
from sdft_ops.engine.context import prepare_examples
from sdft_ops.engine.sampling import decode, stop_ids, until_stop
model, tok = load_model(ModelSpec(name_or_path="smollm2-135m-instruct"))
import sys
dom = sys.argv[1] if len(sys.argv) > 1 else "tooluse"
ex = prepare_examples(list(load_shipped(dom)[0].records)[:16], tok, SDFTConfig())
eos, pad = stop_ids(model, tok), tok.pad_token_id
r = decode(model, [e.student_prompt for e in ex], max_new_tokens=64, eos_ids=eos, pad_id=pad, seeds=list(range(16)))
def draft(context, k, nmax=3):
    for n in range(nmax, 0, -1):
        if len(context) < n: continue
        key = context[-n:]
        for i in range(len(context) - n - 1, -1, -1):
            if context[i:i+n] == key:
                return context[i+n:i+n+k]
    return []
K = 4
tot_calls = tot_tokens = 0
for e, row in zip(ex, r.completion_ids.tolist()):
    comp = until_stop(row, eos) + [eos[0]]
    src = list(e.teacher_prompt)
    pos = 0; calls = 0
    while pos < len(comp):
        d = draft(src + comp[:pos], K)
        acc = 0
        while acc < len(d) and pos + acc < len(comp) and d[acc] == comp[pos + acc]:
            acc += 1
        pos += acc + 1; calls += 1
    tot_calls += calls; tot_tokens += len(comp)
    print(len(comp), calls, repr(tok.decode(comp[:40]))[:100])
print("tokens/call", tot_tokens / tot_calls)
