"""Baseline evaluation of the base SmolLM2-135M-Instruct on the default battery.

Runs `builtin.default_battery()` once with `run_suites` (bf16 autocast, batch size 16) and writes
- benchmarks/results/eval_base.json: {suite name: score, "eval_seconds", "subset_sizes"}
- benchmarks/results/eval_base.md: the table, per-suite secondary metrics, a comparison with the
  model card's published numbers, and the two checks behind design choices:
  * precision: the prior battery again in fp32, for score differences, per-item agreement and
    the speed-up of bf16 autocast (skip with --no-precision-check);
  * safety method: the log-likelihood margin method on the same prompts, for how well each
    method separates harmful from benign (skip with --no-safety-check).

    SDFT_OPS_HOME=.sdft_ops .venv/bin/python benchmarks/eval_base.py

Takes ~2.5 min for the battery plus ~3 min for the checks on 2 unshared CPU cores. Timings are
wall-clock: when other processes compete for the cores, libgomp's default spin-waiting makes
torch 5-10x slower; `OMP_WAIT_POLICY=PASSIVE` (set before the run) avoids that at ~20% cost
on an unshared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from sdft_ops.evaluation import builtin
from sdft_ops.evaluation.suites import precision_context, run_suites
from sdft_ops.evaluation.types import SuiteResult
from sdft_ops.models import ModelSpec, load_model

RESULTS = Path(__file__).parent / "results"

# SmolLM2-135M-Instruct model card (Hugging Face), lighteval, zero-shot unless noted.
MODEL_CARD = {"hellaswag": 40.9, "arc_average": 37.3, "piqa": 66.3, "mmlu": 29.3, "ifeval": 29.9}
# lm-evaluation-harness 0-shot "Baseline" row for SmolLM2-135M-Instruct in a third-party model
# card (lldois/SmolLM2-135M-Reasoning-SLERP-Champion): same protocol as ours, full sets.
LM_EVAL_THIRD_PARTY = {"arc_challenge (acc_norm)": 27.73, "arc_easy (acc)": 54.12,
                       "hellaswag (acc_norm)": 42.99, "piqa (acc_norm)": 66.92}


def auc(positives: list[float], negatives: list[float]) -> float:
    """P(a random positive scores above a random negative); ties count half."""
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def precision_check(model, tokenizer, bf16: dict[str, SuiteResult], batch_size: int) -> dict:
    suites = builtin.default_prior_battery()
    start = time.perf_counter()
    fp32 = run_suites(model, tokenizer, suites, batch_size=batch_size, precision="model")
    seconds = time.perf_counter() - start
    rows = {}
    for name, result in fp32.items():
        other = bf16[name]
        agree = sum(a == b for a, b in zip(result.scores, other.scores)) / len(result.scores)
        rows[name] = {"fp32": result.score, "bf16": other.score, "item_agreement": agree,
                      "fp32_seconds": result.seconds, "bf16_seconds": other.seconds}
    return {"suites": rows, "fp32_seconds": seconds,
            "bf16_seconds": sum(bf16[name].seconds for name in fp32)}


def safety_check(model, tokenizer, results: dict[str, SuiteResult], batch_size: int,
                 precision: str) -> dict:
    harmful, benign = builtin.default_safety_suites()
    with precision_context(model, precision):
        margins = {s.name: s.loglik_margins(model, tokenizer, batch_size) for s in (harmful, benign)}
    h, b = margins[harmful.name], margins[benign.name]
    phrase_h = results[harmful.name].metrics["refusal_rate"]
    phrase_b = results[benign.name].metrics["refusal_rate"]
    loglik_h = sum(m > 0 for m in h) / len(h)
    loglik_b = sum(m > 0 for m in b) / len(b)
    return {
        "phrases": {"refusal_harmful": phrase_h, "refusal_benign": phrase_b,
                    "balanced_accuracy": (phrase_h + 1 - phrase_b) / 2},
        "loglik": {"refusal_harmful": loglik_h, "refusal_benign": loglik_b,
                   "balanced_accuracy": (loglik_h + 1 - loglik_b) / 2, "margin_auc": auc(h, b),
                   "refusal_answer": harmful.refusal_answer,
                   "compliant_answer": harmful.compliant_answer},
    }


def fmt(value: float) -> str:
    return f"{value:.3f}"


PRECISION_HEADING = "## bf16 autocast vs fp32"
SAFETY_HEADING = "## Safety scoring method"


def previous_section(path: Path, heading: str) -> list[str]:
    """A section of the previous eval_base.md, kept when its check is skipped this time."""
    if not path.is_file():
        return []
    for section in path.read_text().split("\n## ")[1:]:
        if ("## " + section).startswith(heading):
            body = ("## " + section).rstrip("\n").splitlines()
            note = "_(kept from an earlier run of this script; this run skipped the check)_"
            return ["", body[0], "", note, *body[1:]] if note not in body else ["", *body]
    return []


def write_markdown(path: Path, results: dict[str, SuiteResult], seconds: float, args,
                   precision: dict | None, safety: dict | None) -> None:
    kept_precision = [] if precision else previous_section(path, PRECISION_HEADING)
    kept_safety = [] if safety else previous_section(path, SAFETY_HEADING)
    sizes = [len(r.item_ids) for r in results.values() if r.kind == "multiple_choice"]
    lines = [
        "# Baseline evaluation: SmolLM2-135M-Instruct (built-in default model)",
        "",
        f"Written by `benchmarks/eval_base.py` on {time.strftime('%Y-%m-%d')}; "
        f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, shared with other "
        f"work (wall-clock times are noisy), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY') or 'unset (libgomp default)'}. Precision `{args.precision}`, batch size "
        f"{args.batch_size}, generation batches of {builtin.DEFAULT_DECODE_BATCH_SIZE} prompts.",
        "",
        f"**Whole default battery: {seconds:.0f} s** (budget: 180 s). Load average (runnable "
        f"processes on the 2 cores, other engineers' jobs included): {args.load_average[0]:.1f} "
        f"before the run, {args.load_average[1]:.1f} over its last 5 minutes. CPU time used: "
        f"{args.cpu_seconds:.0f} s over {torch.get_num_threads()} threads, i.e. "
        f"~{args.cpu_seconds / torch.get_num_threads():.0f} s of wall time on an unshared machine.",
        "",
        "| suite | kind | n | primary metric | score | secondary | seconds |",
        "|---|---|---:|---|---:|---|---:|",
    ]
    for name, r in results.items():
        secondary = ", ".join(f"{k} {fmt(v)}" for k, v in r.metrics.items()
                              if "/" not in k) or "-"
        lines.append(f"| {name} | {r.kind} | {len(r.item_ids)} | {r.metric} | {fmt(r.score)} | "
                     f"{secondary} | {r.seconds:.1f} |")
    arc = (results["arc_easy"].score + results["arc_challenge"].score) / 2
    arc_norm = (results["arc_easy"].metrics["acc_norm"] + results["arc_challenge"].metrics["acc_norm"]) / 2
    lines += [
        "",
        "## Compared with published numbers (approximate: different protocol and subsets)",
        "",
        "The model card's numbers come from lighteval (its own prompts, normalisation and full",
        "sets; the card does not say which accuracy variant); ours are lm-eval-style prompts on",
        f"seeded subsets of {min(sizes)}-{max(sizes)} items, so a 95% interval is roughly",
        f"+-{int(196 * (0.25 / max(sizes)) ** 0.5 + 0.5)} to +-{int(196 * (0.25 / min(sizes)) ** 0.5 + 0.5)} points. The",
        "often-quoted HellaSwag 42.1 / ARC 43.9 / PIQA 68.4 / Winogrande 51.3 are the *base*",
        "SmolLM2-135M's card numbers, not the Instruct model's.",
        "",
        "| benchmark | ours acc | ours acc_norm | model card (Instruct, lighteval) | lm-eval 0-shot, third party |",
        "|---|---:|---:|---:|---:|",
        f"| ARC (avg of easy, challenge) | {100 * arc:.1f} | {100 * arc_norm:.1f} | "
        f"{MODEL_CARD['arc_average']} | - |",
        f"| ARC-Easy | {100 * results['arc_easy'].score:.1f} | "
        f"{100 * results['arc_easy'].metrics['acc_norm']:.1f} | - | 54.1 (acc) |",
        f"| ARC-Challenge | {100 * results['arc_challenge'].score:.1f} | "
        f"{100 * results['arc_challenge'].metrics['acc_norm']:.1f} | - | 27.7 (acc_norm) |",
        f"| HellaSwag | {100 * results['hellaswag'].score:.1f} | "
        f"{100 * results['hellaswag'].metrics['acc_norm']:.1f} | {MODEL_CARD['hellaswag']} | 43.0 (acc_norm) |",
        f"| PIQA | {100 * results['piqa'].score:.1f} | {100 * results['piqa'].metrics['acc_norm']:.1f} | "
        f"{MODEL_CARD['piqa']} | 66.9 (acc_norm) |",
        f"| MMLU | {100 * results['mmlu'].score:.1f} | - | {MODEL_CARD['mmlu']} (cloze form; ours is lettered) | - |",
        f"| Winogrande | {100 * results['winogrande'].score:.1f} | - | not published for Instruct | - |",
        f"| IFEval-like | {100 * results['ifeval'].score:.1f} (prompt) / "
        f"{100 * results['ifeval'].metrics['instruction_acc']:.1f} (instruction) | - | "
        f"{MODEL_CARD['ifeval']} (real IFEval, avg prompt/inst) | - |",
        "",
        "Our IFEval-like set is our own 120 prompts (19 check types), not IFEval's 541, and",
        "greedy answers are cut at 96 new tokens; MMLU here is the lettered-choice format",
        "(lm-eval's default), on which 135M models sit near chance (25%), unlike the cloze form.",
    ]
    if precision:
        lines += [
            "",
            f"{PRECISION_HEADING} (prior battery)",
            "",
            f"fp32 took {precision['fp32_seconds']:.0f} s, bf16 autocast {precision['bf16_seconds']:.0f} s "
            f"for the same suites.",
            "",
            "| suite | fp32 acc | bf16 acc | per-item agreement |",
            "|---|---:|---:|---:|",
        ]
        for name, row in precision["suites"].items():
            lines.append(f"| {name} | {fmt(row['fp32'])} | {fmt(row['bf16'])} | "
                         f"{fmt(row['item_agreement'])} |")
        lines += ["", "Baseline and candidate must be scored with the same precision and batch",
                  "size: under autocast, batch composition moves logits at the 1e-2 level."]
    lines += kept_precision
    if safety:
        p, ll = safety["phrases"], safety["loglik"]
        lines += [
            "",
            f"{SAFETY_HEADING}: measured, then chosen",
            "",
            "| method | refused harmful | refused benign | balanced accuracy | margin AUC |",
            "|---|---:|---:|---:|---:|",
            f"| phrases: refusal phrases in a 32-token greedy answer (**used**) | "
            f"{fmt(p['refusal_harmful'])} | {fmt(p['refusal_benign'])} | "
            f"{fmt(p['balanced_accuracy'])} | - |",
            f"| loglik: mean log-prob margin of \"{ll['refusal_answer']}\" over "
            f"\"{ll['compliant_answer']}\" > 0 | {fmt(ll['refusal_harmful'])} | "
            f"{fmt(ll['refusal_benign'])} | {fmt(ll['balanced_accuracy'])} | {fmt(ll['margin_auc'])} |",
            "",
            "The log-likelihood preference does not separate harmful from benign prompts on this",
            "model (an AUC near or below 0.5: benign look-alikes get as much or more refusal",
            "preference; four refusal/compliance phrasings, summed or per-token, measured in fp32",
            "during development gave AUC 0.32-0.57), so it would report noise as safety. Phrase detection",
            "on the model's actual answers ranks harmful above benign; the model simply",
            "almost never refuses, so `safety_refusal` is low and `safety_benign_compliance`",
            "near 1. Phrase detection is the default (`SafetySuite.method`); `loglik` remains",
            "available for larger models.",
        ]
    lines += kept_safety
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", choices=["model", "bf16_autocast"], default="bf16_autocast")
    parser.add_argument("--no-precision-check", action="store_true")
    parser.add_argument("--no-safety-check", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    model, tokenizer = load_model(ModelSpec())
    suites = builtin.default_battery()
    load_before = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    results = run_suites(model, tokenizer, suites, batch_size=args.batch_size,
                         precision=args.precision)
    seconds = time.perf_counter() - start
    args.cpu_seconds = time.process_time() - cpu_start  # all threads; ~2x wall when unshared
    args.load_average = (load_before, os.getloadavg()[1])  # 1-min before, 5-min after

    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = {name: r.score for name, r in results.items()}
    summary |= {"eval_seconds": round(seconds, 1),
                "subset_sizes": {name: len(r.item_ids) for name, r in results.items()}}
    (RESULTS / "eval_base.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))

    precision = None
    if args.precision == "bf16_autocast" and not args.no_precision_check:
        precision = precision_check(model, tokenizer, results, args.batch_size)
    safety = None if args.no_safety_check else safety_check(
        model, tokenizer, results, args.batch_size, args.precision)
    write_markdown(RESULTS / "eval_base.md", results, seconds, args, precision, safety)
    print(f"wrote {RESULTS / 'eval_base.json'} and {RESULTS / 'eval_base.md'}")


if __name__ == "__main__":
    main()
