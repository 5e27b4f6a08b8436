"""How separable are the safety evaluation's harmful and benign prompts for the base model?

A diagnostic for issue #11's goal (HarmBench refusal >= 0.80 and benign look-alikes answered
>= 0.85 after the safety update). Features: the base model's hidden states of each chat-templated
prompt (mean over tokens and the last token, concatenated) at several layers. A logistic
regression (L2, LBFGS) is fitted on the shipped `safety` training demonstrations (Do-Not-Answer
refusals = 1, benign prompts = 0) — the same data the safety update trains on — and applied to
HarmBench's 200 behaviours (1) and the 108 benign look-alikes (0) of the evaluation, never
trained on. Reported per layer: the AUC, the rates at the probe's own threshold, and the
HarmBench refusal at the best threshold that still answers >= 0.85 of the benign prompts (a
threshold chosen on the evaluation set: an optimistic ceiling, not a result).

If even that ceiling is below 0.80, the training data's notion of "refuse" does not transfer to
HarmBench in the base model's representation at a benign-answer rate of 0.85, and an update on
this data alone is unlikely to reach both goals.

    SDFT_OPS_HOME=.sdft_ops .venv/bin/python experiments/2026-12-03-safety-data/safety_probe.py
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
LAYERS = (6, 12, 18, 24, 30)
BENIGN_GOAL = 0.85


def main() -> None:
    import torch
    from tqdm.auto import tqdm

    from sdft_ops.chat import encode_chat
    from sdft_ops.domains import load_shipped
    from sdft_ops.evaluation.builtin import default_safety_suites
    from sdft_ops.models import ModelSpec, load_model, resolve_model_path

    model, tokenizer = load_model(ModelSpec(name_or_path=resolve_model_path(ModelSpec())))
    model.eval()
    demos = load_shipped("safety")[0].records
    harmful, benign = default_safety_suites()
    train_prompts = [d.prompt for d in demos]
    train_y = torch.tensor([float(d.metadata["kind"] == "refusal") for d in demos])
    eval_prompts = [i.prompt for i in harmful.items] + [i.prompt for i in benign.items]
    eval_y = torch.tensor([1.0] * len(harmful.items) + [0.0] * len(benign.items))

    @torch.no_grad()
    def features(prompts: list[str], desc: str) -> dict[int, torch.Tensor]:
        rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in LAYERS}
        for prompt in tqdm(prompts, desc=desc, unit="prompt"):
            ids = torch.tensor([encode_chat(tokenizer, [{"role": "user", "content": prompt}])])
            states = model(input_ids=ids, output_hidden_states=True).hidden_states
            for layer in LAYERS:
                h = states[layer][0]
                rows[layer].append(torch.cat([h.mean(0), h[-1]]))
        return {layer: torch.stack(v) for layer, v in rows.items()}

    start = time.perf_counter()
    train_f, eval_f = features(train_prompts, "train prompts"), features(eval_prompts, "eval prompts")
    out = {"train": {"refusal": int(train_y.sum()), "benign": int(len(train_y) - train_y.sum())},
           "eval": {"harmbench": len(harmful.items), "benign": len(benign.items)}, "layers": []}
    for layer in LAYERS:
        mu, sd = train_f[layer].mean(0), train_f[layer].std(0) + 1e-4
        a, b = (train_f[layer] - mu) / sd, (eval_f[layer] - mu) / sd
        w = torch.zeros(a.shape[1], requires_grad=True)
        c = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([w, c], max_iter=200)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(a @ w + c, train_y)
            loss = loss + 1e-2 * (w ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        score = (b @ w + c).detach()
        pos, neg = score[eval_y == 1], score[eval_y == 0]
        auc = (pos[:, None] > neg[None, :]).float().mean().item()
        # the lowest threshold that still answers >= BENIGN_GOAL of the benign prompts
        cut = neg.sort().values[math.ceil(BENIGN_GOAL * len(neg)) - 1]
        out["layers"].append({
            "layer": layer, "auc": round(auc, 4),
            "own_threshold": {"harmbench_refusal": round((pos > 0).float().mean().item(), 4),
                              "benign_answered": round((neg <= 0).float().mean().item(), 4)},
            "best_at_benign_goal": {"harmbench_refusal": round((pos > cut).float().mean().item(), 4),
                                    "benign_answered": round((neg <= cut).float().mean().item(), 4)},
        })
    out["seconds"] = round(time.perf_counter() - start, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "safety_probe.json").write_text(json.dumps(out, indent=1) + "\n")
    for row in out["layers"]:
        print(f"layer {row['layer']:>2}: AUC {row['auc']:.3f}  own threshold "
              f"{row['own_threshold']['harmbench_refusal']:.3f} / {row['own_threshold']['benign_answered']:.3f}"
              f"  best at benign >= {BENIGN_GOAL}: HarmBench {row['best_at_benign_goal']['harmbench_refusal']:.3f}")


if __name__ == "__main__":
    main()
