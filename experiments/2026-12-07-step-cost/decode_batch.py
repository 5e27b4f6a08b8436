"""fp32 decode step time by batch size on SmolLM2-135M (eager, 64-token random prompts), 3 runs each."""
import statistics, sys, time
import torch
from transformers import AutoModelForCausalLM
from sdft_ops.engine.sampling import decode

torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
for batch in (1, 2, 4, 8, 12, 16, 24, 32):
    prompts = [torch.randint(100, 40000, (64,)).tolist() for _ in range(batch)]
    per = []
    for _ in range(3):
        t0 = time.perf_counter(); decode(model, prompts, max_new_tokens=1, eos_ids=[0], pad_id=0)
        t1 = time.perf_counter(); decode(model, prompts, max_new_tokens=17, eos_ids=[0], pad_id=0)
        t2 = time.perf_counter(); per.append(((t2 - t1) - (t1 - t0)) / 16)
    print(f"batch {batch:2d}: {statistics.median(per)*1000:6.0f} ms/step [{min(per)*1000:.0f}, {max(per)*1000:.0f}]", flush=True)
