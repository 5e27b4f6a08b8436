"""Matmul throughput of an 8-row batch over weights not in cache, in float32, bf16, fp16 and int8
(weight-only): what bounds the decode loop on a CPU. benchmarks/results/step_cost_notes.md
cites its output.

    .venv/bin/python experiments/2026-12-03-step-cost-probes/matmul_bandwidth.py
"""
import torch, time
torch.set_num_threads(2)
# cold weights: cycle through 30 distinct weights so they do not stay in cache
def bench(M, K, N, dtype, n=30, layers=24):
    ws = [torch.randn(N, K).to(dtype) for _ in range(layers)]
    x = torch.randn(M, K).to(dtype)
    for w in ws[:3]: torch.nn.functional.linear(x, w)
    t = time.perf_counter()
    for i in range(n): torch.nn.functional.linear(x, ws[i % layers])
    dt = (time.perf_counter() - t) / n
    return dt * 1e6, K * N * ws[0].element_size() / dt / 1e9
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    for M, K, N in [(8, 576, 1536), (8, 576, 49152), (512, 576, 1536)]:
        us, gbs = bench(M, K, N, dtype, layers=4 if N > 10000 else 24, n=8 if N > 10000 or M > 100 else 30)
        print(f"{dtype} M{M} K{K} N{N}: {us:.0f} us, {gbs:.1f} GB/s", flush=True)
# int8 weight-only
for M, K, N in [(8, 576, 1536), (8, 576, 49152)]:
    ws = [torch.randint(-127, 127, (N, K), dtype=torch.int8) for _ in range(4 if N > 10000 else 24)]
    sc = torch.rand(N)
    x = torch.randn(M, K)
    try:
        torch.ops.aten._weight_int8pack_mm(x, ws[0], sc)
        t = time.perf_counter(); n = 8 if N > 10000 else 30
        for i in range(n): torch.ops.aten._weight_int8pack_mm(x, ws[i % len(ws)], sc)
        dt = (time.perf_counter() - t) / n
        print(f"int8pack M{M} N{N}: {dt*1e6:.0f} us, {K*N/dt/1e9:.1f} GB/s")
    except Exception as e: print("int8pack err", e)
