"""Seconds per optimizer step: our SDFT vs our SFT vs TRL 1.16's SDFTTrainer, and what each engine
lever is worth, measured in one run.

Same model, same 8 prompts per step (tool-use demonstrations), 64 new tokens, full fine-tuning,
forward KL over the full vocabulary, EMA teacher 0.02, skip 3. Each measurement runs in its own
subprocess so that its peak RSS is its own: 1 warm-up step, then `--steps` timed steps (median,
min and max reported).

Levers (each measured by undoing it alone in an otherwise current engine, by a patch that exists
only in this script):
  chunked_kl             the forward KL in 32-position chunks (losses.ChunkedForwardKL) vs autograd
                         through two (B, T, V) log_softmax tensors;
  fused_adamw            torch's fused AdamW vs its default (foreach) implementation;
  teacher_decode_logits  under `rollout: teacher`, the teacher's decode logits kept as its scores
                         vs a second teacher forward over prompt + completion.

    .venv/bin/python benchmarks/step_cost.py                 # SmolLM2-135M-Instruct + tiny, ~25 min
    .venv/bin/python benchmarks/step_cost.py --models tiny   # quick check

Writes benchmarks/results/step_cost.json and step_cost.md. Run it on a quiet machine: jobs that
share the cores slow each other several-fold.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("sdft", "sft", "trl")
LEVERS = ("chunked_kl", "fused_adamw", "teacher_decode_logits")
# (label, method, extra SDFTConfig settings, lever undone)
RUNS = (("sdft", "sdft", {}, None), ("sft", "sft", {}, None), ("trl", "trl", {}, None),
        ("sdft, chunked_kl undone", "sdft", {}, "chunked_kl"),
        ("sdft, fused_adamw undone", "sdft", {}, "fused_adamw"),
        ("sdft teacher rollouts", "sdft", {"rollout": "teacher"}, None),
        ("sdft teacher rollouts, teacher_decode_logits undone", "sdft", {"rollout": "teacher"},
         "teacher_decode_logits"))


def _load(model_name: str, lora: dict | None = None):
    from sdft_ops.models import LoraSpec, ModelSpec, add_lora, load_model
    from sdft_ops.tiny import build_tiny

    if model_name == "tiny":
        model, tokenizer = build_tiny(seed=0)
        return (add_lora(model, LoraSpec(**lora)) if lora is not None else model), tokenizer
    return load_model(ModelSpec(name_or_path=model_name, lora=lora))


def undo(lever: str) -> None:
    """Put the engine back to its state before `lever` (this process only)."""
    import torch
    import torch.nn.functional as F

    from sdft_ops.engine import losses, rollout

    if lever == "chunked_kl":
        def autograd_forward_kl(student_logits, teacher_logits):
            s = F.log_softmax(student_logits.float(), dim=-1)
            t = F.log_softmax(teacher_logits.float(), dim=-1)
            return (t.exp() * (t - s)).sum(-1)
        losses.ChunkedForwardKL.apply = staticmethod(autograd_forward_kl)
    elif lever == "fused_adamw":
        class ForeachAdamW(torch.optim.AdamW):
            def __init__(self, params, **kwargs):
                kwargs.pop("fused", None)
                super().__init__(params, **kwargs)
        torch.optim.AdamW = ForeachAdamW  # loop.py looks it up at each train()
    elif lever == "teacher_decode_logits":
        real = rollout.decode
        rollout.decode = lambda *a, keep_logits=False, **k: real(*a, **k)
    else:
        raise ValueError(f"unknown lever {lever!r}; one of {LEVERS}")


def measure(method: str, model_name: str, steps: int, settings: dict, lever: str | None) -> dict:
    """Run in a fresh process: warm-up + `steps` timed optimizer steps of one method."""
    import torch

    from sdft_ops.domains import load_shipped
    from sdft_ops.engine import SDFTConfig, train
    from sdft_ops.engine.precision import bf16_is_fast

    if lever:
        undo(lever)
    torch.manual_seed(0)
    train_settings = dict(settings)  # {"lora": {"r": 16}} loads the model with a LoRA adapter
    model, tokenizer = _load(model_name, train_settings.pop("lora", None))
    demos = list(load_shipped("tooluse")[0].records)[: 8 * (steps + 1)]
    if method == "trl":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from trl_trainer import trl_step_seconds

        out = trl_step_seconds(model, tokenizer, [d.prompt_messages()[-1]["content"] for d in demos],
                               [d.demonstration for d in demos], steps=steps + 1,
                               # the precision our engine runs in here: on a CPU without native
                               # bf16, TRL's bf16 autocast would be emulated, ~50x slower
                               bf16=bf16_is_fast(next(model.parameters()).device.type))
        seconds = out["step_seconds"][1:]
    else:
        cfg = SDFTConfig(method=method, max_steps=steps + 1, prompts_per_step=8, max_new_tokens=64,
                         learning_rate=1e-5, **train_settings)
        result = train(model, tokenizer, demos, cfg, progress=False)
        seconds = [h["train/step_seconds"] for h in result.history[1:]]
    return {"method": method, "model": model_name, "settings": settings, "lever_undone": lever,
            "step_seconds": seconds, "median_s": statistics.median(seconds),
            "min_s": min(seconds), "max_s": max(seconds),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def run_all(models: list[str], steps: int) -> list[dict]:
    rows = []
    for model_name in models:
        for label, method, settings, lever in RUNS:
            cmd = [sys.executable, __file__, "--one", method, "--model", model_name, "--steps",
                   str(steps), "--settings", json.dumps(settings)] + (["--undo", lever] if lever else [])
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                rows.append({"label": label, "model": model_name, "error": done.stderr[-500:]})
                continue
            row = {"label": label, **json.loads(done.stdout.strip().splitlines()[-1])}
            print(f"{model_name:>22} {label:>52}: {row['median_s']:.2f} s/step "
                  f"[{row['min_s']:.2f}, {row['max_s']:.2f}], peak RSS {row['peak_rss_gb']:.2f} GB",
                  flush=True)
            rows.append(row)
    return rows


def summarize(rows: list[dict], model_name: str, steps: int) -> dict:
    by = {r["label"]: r for r in rows if r["model"] == model_name and "median_s" in r}
    sdft, sft, trl = (by.get(m, {}).get("median_s") for m in METHODS)
    levers = {}
    for label, _, settings, lever in RUNS:
        if lever and label in by:
            kept = by["sdft teacher rollouts" if settings else "sdft"]
            undone = by[label]
            levers[lever] = {"with_s": kept["median_s"], "undone_s": undone["median_s"],
                             "speedup": undone["median_s"] / kept["median_s"],
                             "with_rss_gb": kept["peak_rss_gb"], "undone_rss_gb": undone["peak_rss_gb"],
                             "settings": settings}
    return {
        "model": model_name, "prompts_per_step": 8, "max_new_tokens": 64, "timed_steps": steps,
        "sdft_s_per_step": sdft, "sft_s_per_step": sft, "trl_s_per_step": trl,
        "sdft_over_sft": sdft / sft if sdft and sft else None,
        "trl_over_sdft": trl / sdft if trl and sdft else None,
        "peak_rss_gb": by.get("sdft", {}).get("peak_rss_gb"),
        "peak_rss_gb_by_run": {label: r["peak_rss_gb"] for label, r in by.items()},
        "levers": levers,
    }


def write(results: list[dict], rows: list[dict], precision: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    main = results[0]
    payload = {**main, "precision": precision, "per_model": results, "raw": rows,
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               # timings are only comparable on a quiet machine: record what else was running
               "load_average_at_end": os.getloadavg(),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "default"),
               "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (RESULTS / "step_cost.json").write_text(json.dumps(payload, indent=1))
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    lines = ["# Step cost: SDFT vs SFT vs TRL SDFTTrainer, and the engine's levers", "",
             f"{payload['machine']}; {precision}; 8 prompts/step, 64 new tokens, full fine-tuning; "
             f"median of {main['timed_steps']} timed steps after 1 warm-up [min, max]; each run in "
             "its own process (peak RSS is its own). `python benchmarks/step_cost.py`, measured "
             f"{payload['measured_at']}. Load average at the end {os.getloadavg()[0]:.1f}.", "",
             "| model | SDFT s/step | SFT s/step | TRL s/step | SDFT/SFT | TRL/SDFT | peak RSS SDFT (GB) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {fmt(r['sdft_s_per_step'])} | {fmt(r['sft_s_per_step'])} | "
                     f"{fmt(r['trl_s_per_step'])} | {fmt(r['sdft_over_sft'])} | "
                     f"{fmt(r['trl_over_sdft'])} | {fmt(r['peak_rss_gb'])} |")
    lines += ["", "## Every run", "", "| model | run | median s/step | min | max | peak RSS (GB) |",
              "|---|---|---|---|---|---|"]
    for row in rows:
        if "median_s" in row:
            lines.append(f"| {row['model']} | {row['label']} | {row['median_s']:.2f} | "
                         f"{row['min_s']:.2f} | {row['max_s']:.2f} | {row['peak_rss_gb']:.2f} |")
        else:
            lines.append(f"| {row['model']} | {row['label']} | failed | | | |")
    lines += ["", "## Levers (each undone alone)", "",
              "| model | lever | s/step with | s/step undone | speed-up | RSS with (GB) | RSS undone (GB) |",
              "|---|---|---|---|---|---|---|"]
    for r in results:
        for lever, v in r["levers"].items():
            lines.append(f"| {r['model']} | {lever} | {v['with_s']:.2f} | {v['undone_s']:.2f} | "
                         f"{v['speedup']:.2f}× | {v['with_rss_gb']:.2f} | {v['undone_rss_gb']:.2f} |")
    (RESULTS / "step_cost.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "tiny"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--undo", choices=LEVERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.model, args.steps, json.loads(args.settings), args.undo)))
        return
    from sdft_ops.engine.precision import bf16_is_fast

    precision = "bf16 autocast" if bf16_is_fast("cpu") else "float32 (this CPU has no native bf16)"
    rows = run_all(args.models, args.steps)
    results = [summarize(rows, m, args.steps) for m in args.models]
    write(results, rows, precision)
    print(json.dumps({k: v for k, v in results[0].items() if k != "peak_rss_gb_by_run"}, indent=1))


if __name__ == "__main__":
    main()
