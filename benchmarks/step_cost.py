"""Seconds per optimizer step: our SDFT vs our SFT vs TRL 1.16's SDFTTrainer, measured in one run.

Same model, same 8 prompts per step (tool-use demonstrations), 64 new tokens, full fine-tuning,
forward KL over the full vocabulary, EMA teacher 0.02, skip 3. Each method runs in its own
subprocess so that its peak RSS is its own; 1 warm-up step, then `--steps` timed steps (mean).

    .venv/bin/python benchmarks/step_cost.py                 # SmolLM2-135M-Instruct + tiny
    .venv/bin/python benchmarks/step_cost.py --models tiny   # quick check

Writes benchmarks/results/step_cost.json and step_cost.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("sdft", "sft", "trl")


def _load(model_name: str):
    from sdft_ops.models import ModelSpec, load_model
    from sdft_ops.tiny import build_tiny

    if model_name == "tiny":
        return build_tiny(seed=0)
    return load_model(ModelSpec(name_or_path=model_name))


def measure(method: str, model_name: str, steps: int, bf16: bool) -> dict:
    """Run in a fresh process: warm-up + `steps` timed optimizer steps of one method."""
    import torch

    from sdft_ops.domains import load_shipped
    from sdft_ops.engine import SDFTConfig, train

    torch.manual_seed(0)
    model, tokenizer = _load(model_name)
    demos = list(load_shipped("tooluse")[0].records)[: 8 * (steps + 1)]
    if method == "trl":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from trl_trainer import trl_step_seconds

        out = trl_step_seconds(model, tokenizer, [d.prompt_messages()[-1]["content"] for d in demos],
                               [d.demonstration for d in demos], steps=steps + 1, bf16=bf16)
        seconds = out["step_seconds"][1:]
    else:
        cfg = SDFTConfig(method=method, max_steps=steps + 1, prompts_per_step=8, max_new_tokens=64,
                         autocast_bf16=bf16, learning_rate=1e-5)
        result = train(model, tokenizer, demos, cfg, progress=False)
        seconds = [h["train/step_seconds"] for h in result.history[1:]]
    return {"method": method, "model": model_name, "step_seconds": seconds,
            "mean_s": sum(seconds) / len(seconds),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def run_all(models: list[str], steps: int, bf16: bool) -> dict:
    rows = []
    for model_name in models:
        for method in METHODS:
            cmd = [sys.executable, __file__, "--one", method, "--model", model_name,
                   "--steps", str(steps)] + ([] if bf16 else ["--fp32"])
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                rows.append({"method": method, "model": model_name, "error": done.stderr[-500:]})
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{model_name:>22} {method:>5}: {row['mean_s']:.2f} s/step, "
                  f"peak RSS {row['peak_rss_gb']:.2f} GB", flush=True)
            rows.append(row)
    return {"rows": rows}


def summarize(rows: list[dict], model_name: str, bf16: bool, steps: int) -> dict:
    by = {r["method"]: r for r in rows if r["model"] == model_name and "mean_s" in r}
    sdft, sft, trl = (by.get(m, {}).get("mean_s") for m in METHODS)
    return {
        "model": model_name, "precision": "bf16 autocast" if bf16 else "fp32",
        "prompts_per_step": 8, "max_new_tokens": 64, "timed_steps": steps,
        "sdft_s_per_step": sdft, "sft_s_per_step": sft, "trl_s_per_step": trl,
        "sdft_over_sft": sdft / sft if sdft and sft else None,
        "trl_over_sdft": trl / sdft if trl and sdft else None,
        "peak_rss_gb": by.get("sdft", {}).get("peak_rss_gb"),
        "peak_rss_gb_by_method": {m: r["peak_rss_gb"] for m, r in by.items()},
    }


def write(results: list[dict], rows: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    main = results[0]
    payload = {**main, "per_model": results, "raw": rows,
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               # timings are only comparable on a quiet machine: record what else was running
               "load_average_at_end": os.getloadavg(),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "default"),
               "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (RESULTS / "step_cost.json").write_text(json.dumps(payload, indent=1))
    lines = ["# Step cost: SDFT vs SFT vs TRL SDFTTrainer", "",
             f"{payload['machine']}; {main['precision']}; 8 prompts/step, 64 new tokens, full "
             f"fine-tuning; mean of {main['timed_steps']} steps after 1 warm-up; each method in "
             "its own process (peak RSS is its own). `python benchmarks/step_cost.py`. "
             f"Load average at the end {os.getloadavg()[0]:.1f}, OMP_NUM_THREADS "
             f"{os.environ.get('OMP_NUM_THREADS', 'default')}.", "",
             "| model | SDFT s/step | SFT s/step | TRL s/step | SDFT/SFT | TRL/SDFT | peak RSS SDFT (GB) |",
             "|---|---|---|---|---|---|---|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    for r in results:
        lines.append(f"| {r['model']} | {fmt(r['sdft_s_per_step'])} | {fmt(r['sft_s_per_step'])} | "
                     f"{fmt(r['trl_s_per_step'])} | {fmt(r['sdft_over_sft'])} | "
                     f"{fmt(r['trl_over_sdft'])} | {fmt(r['peak_rss_gb'])} |")
    (RESULTS / "step_cost.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "tiny"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--fp32", action="store_true")
    parser.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.model, args.steps, not args.fp32)))
        return
    rows = run_all(args.models, args.steps, not args.fp32)["rows"]
    results = [summarize(rows, m, not args.fp32, args.steps) for m in args.models]
    write(results, rows)
    print(json.dumps(results[0], indent=1))


if __name__ == "__main__":
    main()
