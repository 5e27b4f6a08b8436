"""Decode step cost vs batch size (and int8 dynamic quantization) on the champion, eager decode."""
import statistics, sys, time
import torch
from transformers import AutoModelForCausalLM
from sdft_ops.engine.sampling import decode

torch.manual_seed(0)
path = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
variants = {"fp32": model}
if "--int8" in sys.argv:
    variants["int8"] = torch.ao.quantization.quantize_dynamic(
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), {torch.nn.Linear}, dtype=torch.qint8)
print("threads", torch.get_num_threads())
for name, m in variants.items():
    for batch in (1, 8, 32, 96):
        prompts = [torch.randint(100, 40000, (120,)).tolist() for _ in range(batch)]
        times = []
        for rep in range(3):
            t = time.perf_counter()
            out = decode(m, prompts, max_new_tokens=1, eos_ids=[0], pad_id=0)
            t1 = time.perf_counter()
            out = decode(m, prompts, max_new_tokens=17, eos_ids=[0], pad_id=0)
            t2 = time.perf_counter()
            times.append(((t2 - t1) - (t1 - t)) / 16)
        print(f"{name} batch {batch:3d}: prefill {t1-t:.3f} s, step {statistics.median(times)*1000:.0f} ms "
              f"({statistics.median(times)*1000/batch:.1f} ms/row)", flush=True)
