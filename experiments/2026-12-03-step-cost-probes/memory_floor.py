"""The RSS an SDFT update holds before its first activation: imports, the student, the EMA
teacher, gradients and AdamW's two moments, all float32 (SmolLM2-135M-Instruct).

    SDFT_OPS_HOME=.sdft_ops .venv/bin/python \
        experiments/2026-12-03-step-cost-probes/memory_floor.py   # ~30 s, one JSON line

Peak RSS (ru_maxrss, GB) after each stage; the results are in
benchmarks/results/step_cost_notes.md.
"""

from __future__ import annotations

import json
import resource


def rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3)


def main() -> None:
    import torch
    import transformers  # noqa: F401  counted in "imports"

    import sdft_ops.engine  # noqa: F401

    out = {"imports": rss_gb()}
    from sdft_ops.engine.teacher import Teacher
    from sdft_ops.models import ModelSpec, load_model

    model, _ = load_model(ModelSpec(name_or_path="smollm2-135m-instruct"))
    out |= {"params": sum(p.numel() for p in model.parameters()), "student": rss_gb()}
    teacher = Teacher(model, "ema", 0.02)  # noqa: F841  held for the measurement
    out["+ ema teacher"] = rss_gb()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    out["+ gradients"] = rss_gb()
    torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True).step()
    out["+ adamw moments"] = rss_gb()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
