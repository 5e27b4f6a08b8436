"""The engine on a CUDA GPU (not CI): SDFT and SFT steps, full fine-tuning and LoRA, timed.

The model has SmolLM2-135M-Instruct's architecture and tokenizer but random weights (only
config.json and the tokenizer files need to travel to a GPU machine with no hub). Random
weights never sample EOS, so every step decodes all `max_new_tokens`: the worst case for SDFT.
Checks per run: finite losses and the weights moved; reports seconds per step and peak GPU
memory.

    python benchmarks/gpu_check.py --model-dir path/to/smollm2 [--out gpu_check.json]
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

from sdft_ops.domains import load_shipped
from sdft_ops.engine import SDFTConfig, train
from sdft_ops.models import LoraSpec, add_lora, load_tokenizer


def random_model(folder: str, device: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
    return model.to(device)


def run(folder: str, device: str, method: str, prompts: int, steps: int, lora: bool) -> dict:
    model, tokenizer = random_model(folder, device), load_tokenizer(folder)
    if lora:
        model = add_lora(model, LoraSpec())
    demos = list(load_shipped("tooluse")[0].records)
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = SDFTConfig(method=method, max_steps=steps + 1, prompts_per_step=prompts, max_new_tokens=64,
                     learning_rate=1e-4, skip_first_tokens=0)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = train(model, tokenizer, demos, cfg, progress=False)
    seconds = [h["train/step_seconds"] for h in result.history[1:]]  # first step: warm-up
    moved = max((p.detach() - trained[n]).abs().max().item()
                for n, p in model.named_parameters() if n in trained)
    return {"method": method, "lora": lora, "prompts_per_step": prompts, "steps_timed": steps,
            "seconds_per_step": sum(seconds) / len(seconds),
            "losses": [round(h["train/loss"], 4) for h in result.history],
            "finite": all(torch.isfinite(torch.tensor(h["train/loss"])).item() for h in result.history),
            "max_weight_change": moved, "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", required=True, help="folder with config.json + tokenizer")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check is for a GPU machine")
    rows = []
    for method, prompts, lora in (("sdft", 8, False), ("sft", 8, False), ("sdft", 64, False),
                                  ("sft", 64, False), ("sdft", 64, True)):
        row = run(args.model_dir, "cuda", method, prompts, args.steps, lora)
        print(json.dumps(row), flush=True)
        rows.append(row)
    ratio = {p: next(r for r in rows if r["method"] == "sdft" and r["prompts_per_step"] == p
                     and not r["lora"])["seconds_per_step"]
             / next(r for r in rows if r["method"] == "sft" and r["prompts_per_step"] == p)["seconds_per_step"]
             for p in (8, 64)}
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "python": platform.python_version(), "rows": rows, "sdft_over_sft": ratio}
    print(json.dumps({"device": out["device"], "sdft_over_sft": ratio}))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(out, handle, indent=1)
    if not all(r["finite"] and r["max_weight_change"] > 0 for r in rows):
        raise SystemExit("a run had a non-finite loss or did not change the weights")


if __name__ == "__main__":
    main()
