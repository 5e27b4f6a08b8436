"""Agreement of refusal labels from the first N tokens of a greedy answer with the 32-token label."""
import sys, json
from sdft_ops.evaluation.builtin import default_safety_suites
from sdft_ops.evaluation.suites_safety import is_refusal
from sdft_ops.engine.sampling import decode, stop_ids, until_stop
from sdft_ops.models import load_model_at, ModelSpec
out = {}
for folder in sys.argv[1:]:
    model, tok = load_model_at(folder, ModelSpec())
    eos = stop_ids(model, tok)
    res = {n: [0, 0] for n in (6, 8, 10, 12, 16, 20, 24)}
    refused32 = 0; total = 0
    for suite in default_safety_suites():
        prompts = suite._prompts(tok)
        for start in range(0, len(prompts), 128):
            batch = prompts[start:start+128]
            r = decode(model, batch, max_new_tokens=32, eos_ids=eos, pad_id=tok.pad_token_id or eos[0])
            for row in range(len(batch)):
                ids = until_stop(r.completion_ids[row].tolist(), eos)
                full = is_refusal(tok.decode(ids, skip_special_tokens=True))
                refused32 += full; total += 1
                for n in res:
                    res[n][0] += is_refusal(tok.decode(ids[:n], skip_special_tokens=True)) == full
                    res[n][1] += 1
    out[folder] = {"refused32": refused32, "total": total, **{str(n): a / t for n, (a, t) in res.items()}}
    print(folder, out[folder], flush=True)
