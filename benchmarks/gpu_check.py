"""The engine on a CUDA GPU (not CI): SDFT and SFT steps, full fine-tuning and LoRA, timed.

The model has SmolLM2-135M-Instruct's architecture and tokenizer but random weights (only
config.json and the tokenizer files need to travel to a GPU machine with no hub). Random
weights never sample EOS, so every step decodes all `max_new_tokens`: the worst case for SDFT.
Checks per run: finite losses and the weights moved; reports seconds per step and peak GPU
memory. Rollouts decode with `decode_backend` eager and cuda_graph (a static KV cache, the
per-token call replayed as a CUDA graph) at 8 and 64 prompts; `decode_match` compares their
tokens on the same prompts and seeds (sampled and greedy).

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


def run(folder: str, device: str, method: str, prompts: int, steps: int, lora: bool,
        backend: str = "eager") -> dict:
    model, tokenizer = random_model(folder, device), load_tokenizer(folder)
    if lora:
        model = add_lora(model, LoraSpec())
    demos = list(load_shipped("tooluse")[0].records)
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = SDFTConfig(method=method, max_steps=steps + 1, prompts_per_step=prompts, max_new_tokens=64,
                     learning_rate=1e-4, skip_first_tokens=0, decode_backend=backend)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = train(model, tokenizer, demos, cfg, progress=False)
    seconds = [h["train/step_seconds"] for h in result.history[1:]]  # first step: warm-up
    moved = max((p.detach() - trained[n]).abs().max().item()
                for n, p in model.named_parameters() if n in trained)
    return {"method": method, "lora": lora, "prompts_per_step": prompts, "steps_timed": steps,
            "decode_backend": backend,
            "seconds_per_step": sum(seconds) / len(seconds),
            "losses": [round(h["train/loss"], 4) for h in result.history],
            "finite": all(torch.isfinite(torch.tensor(h["train/loss"])).item() for h in result.history),
            "max_weight_change": moved, "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None}


def decode_match(folder: str, prompts: int = 16, tokens: int = 64) -> dict:
    """Share of equal tokens, eager vs cuda_graph, same prompts and seeds (bf16 autocast)."""
    from sdft_ops.engine.context import prepare_examples
    from sdft_ops.engine.precision import bf16_autocast
    from sdft_ops.engine.sampling import decode, stop_ids

    model, tokenizer = random_model(folder, "cuda"), load_tokenizer(folder)
    examples = prepare_examples(list(load_shipped("tooluse")[0].records)[:prompts], tokenizer, SDFTConfig())
    kw = dict(max_new_tokens=tokens, eos_ids=stop_ids(model, tokenizer), pad_id=tokenizer.pad_token_id)
    out = {}
    for name, seeds in (("greedy", None), ("sampled", list(range(prompts)))):
        with bf16_autocast("cuda"):
            run_with = lambda b: decode(model, [e.student_prompt for e in examples], seeds=seeds,  # noqa: E731
                                        backend=b, **kw).completion_ids
            eager, _, graph = run_with("eager"), run_with("cuda_graph"), run_with("cuda_graph")  # 2nd: replayed
        width = min(eager.shape[1], graph.shape[1])
        out[name] = (eager[:, :width] == graph[:, :width]).float().mean().item()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", required=True, help="folder with config.json + tokenizer")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check is for a GPU machine")
    match = decode_match(args.model_dir)
    print(json.dumps({"decode_match": match}), flush=True)
    rows = []
    for method, prompts, lora, backend in (
            ("sdft", 8, False, "eager"), ("sdft", 8, False, "cuda_graph"), ("sft", 8, False, "eager"),
            ("sdft", 64, False, "eager"), ("sdft", 64, False, "cuda_graph"), ("sft", 64, False, "eager"),
            ("sdft", 64, True, "eager"), ("sdft", 64, True, "cuda_graph")):
        row = run(args.model_dir, "cuda", method, prompts, args.steps, lora, backend)
        print(json.dumps(row), flush=True)
        rows.append(row)

    def seconds(method, prompts, backend="eager", lora=False):
        return next(r["seconds_per_step"] for r in rows if (r["method"], r["prompts_per_step"],
                    r["decode_backend"], r["lora"]) == (method, prompts, backend, lora))

    ratio = {f"{p}_{b}": seconds("sdft", p, b) / seconds("sft", p) for p in (8, 64)
             for b in ("eager", "cuda_graph")}
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "python": platform.python_version(), "rows": rows, "sdft_over_sft": ratio,
           "decode_match": match}
    print(json.dumps({"device": out["device"], "sdft_over_sft": ratio}))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(out, handle, indent=1)
    if not all(r["finite"] and r["max_weight_change"] > 0 for r in rows):
        raise SystemExit("a run had a non-finite loss or did not change the weights")


if __name__ == "__main__":
    main()
