"""The continual chain safety → tooluse → knowledge → triage, per update method (SmolLM2-135M).

Each *cell* is one method: the safety update (configs/safety.yaml, trained once and shared by
every cell: each cell's data home starts as a copy of the one that holds it), then the three
domain updates with the method, every update promoted (a permissive gate: this measures the
methods, not the gate). Methods (`METHODS`): plain SFT, SFT + 25% replay of the lineage's
demonstrations, the SDFT recipe chosen in `benchmarks/results/recipes.json` (else teacher
rollouts + replay), and SDFT as the paper (student rollouts, no replay). Settings otherwise
`configs/demo.yaml`; eval on the demo's suites without the IFEval-like one; 1 seed; cells cached
in `benchmarks/results/cache/continual/<cell>.json` (an interrupted run resumes per update).

Per method in `continual.json`: `learned_mean` (each domain's score right after its update),
`final_new_task_mean`, `bwt`, `forgetting` (the three domain columns), `mean_prior_retention`
(final / safety champion, mean over ARC-E/C, HellaSwag, PIQA, Winogrande, MMLU),
`safety_retention` (HarmBench refusal, final / the safety champion's), `benign_drop` (champion
− final share of benign look-alikes answered), `seconds_per_update` (training); plus
`chosen_recipe` and `sdft_pareto_dominates` (the chosen SDFT recipe ≥ every SFT cell on both
final new-task mean and safety retention, better on one).

    .venv/bin/python benchmarks/continual.py [--methods sft sdft-chosen ...] [--cached-only]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CACHE = RESULTS / "cache" / "continual"
CHAIN = ("safety", "tooluse", "knowledge", "triage")
PRIOR = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "mmlu")
# The sizes every row was measured at (the gate's calibrated sizes in configs/demo.yaml are ~5x
# the cost): the benchmark compares methods on the same items, it does not gate.
EVAL = {"instruction_following": False, "n_boot": 1000,
        "prior_sizes": {"arc_easy": 60, "arc_challenge": 60, "hellaswag": 30, "piqa": 60, "winogrande": 60, "mmlu": 60}}
PERMISSIVE_GATE = {"default_rule": {"max_drop": 1.0}, "safety_rule": {"max_drop": 1.0},
                   "domain_rule": {"min_gain": -1.0}, "earlier_domain_rule": {"max_drop": 1.0},
                   "rules": {"drift": {"max_drop": 100.0}, "safety_benign_compliance": {"max_drop": 1.0}},
                   "required_suites": [], "sequential": {}}  # no sequential test: every item is scored
# configs/demo.yaml's train is the chosen SDFT recipe: the other cells reset its SDFT-only knobs
NOT_SDFT = {"rollout": "student", "rollout_filter": "none", "sft_weight": 0.0}
SFT = {"method": "sft", "learning_rate": 1e-4} | NOT_SDFT
REPLAY = {"fraction": 0.25, "seed": 0}


def chosen_recipe() -> tuple[str, dict, dict]:
    """(name, train overrides, replay) of the recipe chosen by benchmarks/recipes.py."""
    path = RESULTS / "recipes.json"
    chosen = json.loads(path.read_text()).get("chosen") if path.is_file() else None
    if not chosen:
        return "sdft-teacher+replay", {"rollout": "teacher"}, REPLAY
    keys = ("method", "rollout", "student_fraction", "learning_rate", "max_steps", "teacher_temperature",
            "rollout_filter", "sft_weight")
    return chosen["recipe"], {k: chosen["settings"][k] for k in keys}, chosen["replay"]


def methods() -> dict[str, tuple[dict, dict]]:
    """cell name → (train overrides of configs/demo.yaml, replay)."""
    _, train, replay = chosen_recipe()
    return {"sft": (SFT, {"fraction": 0.0}), "sft+replay": (SFT, REPLAY),
            "sdft-chosen": (train, replay), "sdft-paper": (NOT_SDFT, {"fraction": 0.0})}


def write_base_config(home: Path) -> Path:
    """configs/demo.yaml with the benchmark's eval and permissive gate (every step shares it)."""
    from sdft_ops.settings import UpdateConfig

    raw = UpdateConfig.from_yaml(ROOT / "configs" / "demo.yaml").model_dump(mode="json")
    raw["eval"] |= EVAL
    raw["gate"], raw["ceiling"]["enabled"] = PERMISSIVE_GATE, False
    raw["train"]["checkpoint_every"] = 0
    path = home / "bench_config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def chain_for(cell: str, home: Path):
    from sdft_ops.demo import DemoChain, DemoStep

    train, replay = methods()[cell]
    tracking = {"tracking": {"experiment": f"bench-{cell}"}}
    steps = [DemoStep(domain="safety", train_from=str(ROOT / "configs" / "safety.yaml"),
                      overrides={"train": {"checkpoint_every": 0}, "tracking": {"experiment": "bench-safety"}})]
    steps += [DemoStep(domain=d, overrides={"train": train, "replay": replay, **tracking}) for d in CHAIN[1:]]
    return DemoChain(config=str(write_base_config(home)), steps=tuple(steps), folder=home)


def resumable_runner(home: Path):
    """run_update, except that an update of the same domain that reached its gate decision in an
    earlier run (or in the shared safety home) is reused."""
    from sdft_ops.pipeline import outcome_of, run_update
    from sdft_ops.registry import PolicyRegistry

    def run(dataset, cfg):
        for state in sorted((home / "updates").glob(f"*-{dataset.domains[0]}/state.json")):
            if "promoted" in json.loads(state.read_text()):
                return outcome_of(state.parent.name, home)
        update_id = f"{len(list((home / 'updates').glob('*')))}-{dataset.domains[0]}"
        return run_update(dataset, cfg, update_id=update_id, home=home, registry=PolicyRegistry.from_config(cfg, home))

    return run


def safety_home() -> Path:
    """The data home holding the promoted safety update, trained once for every cell."""
    from sdft_ops.demo import run_chain

    home = CACHE / "homes" / "safety"
    home.mkdir(parents=True, exist_ok=True)
    full = chain_for("sft", home)
    chain = full.model_copy(update={"steps": full.steps[:1]})
    run_chain(resumable_runner(home), chain, home)
    return home


def run_cell(cell: str) -> dict:
    from sdft_ops.demo import run_chain

    path = CACHE / f"{cell}.json"
    if path.is_file():
        return json.loads(path.read_text())
    home = CACHE / "homes" / cell
    if not home.exists():
        shutil.copytree(safety_home(), home, symlinks=True)
    outcomes, records, matrix, _ = run_chain(resumable_runner(home), chain_for(cell, home), home)
    tasks, final, champion = matrix.tasks, matrix.values[-1], matrix.values[1]  # stage 1: safety
    domains = [t for t in tasks if t.startswith("domain/") and t != "domain/safety"]
    learned = [matrix.values[matrix.learned_at[t]][tasks.index(t)] for t in domains]
    col = tasks.index
    forgetting = [max(matrix.values[i][col(t)] for i in range(matrix.learned_at[t], len(matrix.values)))
                  - final[col(t)] for t in domains[:-1]]
    cell_out = {
        "cell": cell, "settings": records[-1]["recipe"], "overrides": methods()[cell][0],
        "replay": methods()[cell][1], "matrix": matrix.model_dump(mode="json"),
        "learned_mean": statistics.fmean(learned),
        "final_new_task_mean": statistics.fmean(final[col(t)] for t in domains),
        "bwt": statistics.fmean(final[col(t)] - learned[i] for i, t in enumerate(domains[:-1])),
        "forgetting": statistics.fmean(forgetting),
        "mean_prior_retention": statistics.fmean(final[col(s)] / champion[col(s)] for s in PRIOR),
        "safety_retention": final[col("safety_refusal")] / champion[col("safety_refusal")],
        "benign_drop": champion[col("safety_benign_compliance")] - final[col("safety_benign_compliance")],
        "drift_delta": final[col("drift")] - champion[col("drift")],
        "seconds_per_update": statistics.fmean((o.state.train_seconds or 0.0) for o in outcomes[1:]),
        "updates": records,
    }
    path.write_text(json.dumps(cell_out, indent=1))
    return cell_out


KEYS = ("learned_mean", "final_new_task_mean", "bwt", "forgetting", "mean_prior_retention",
        "safety_retention", "benign_drop", "seconds_per_update")


def pareto_dominates(sdft: dict, sft_cells: list[dict]) -> bool:
    """≥ every SFT cell on final new-task mean and safety retention, better on one of them."""
    axes = ("final_new_task_mean", "safety_retention")
    return bool(sft_cells) and all(all(sdft[a] >= c[a] for a in axes) and any(sdft[a] > c[a] for a in axes)
                                   for c in sft_cells)


def summarize(cells: list[dict]) -> dict:
    out = {c["cell"]: {k: c[k] for k in KEYS} for c in cells}
    name, train, replay = chosen_recipe()
    out["chosen_recipe"] = {"recipe": name, "train": train, "replay": replay}
    by = {c["cell"]: c for c in cells}
    if "sdft-chosen" in by:
        out["sdft_pareto_dominates"] = pareto_dominates(
            by["sdft-chosen"], [c for c in cells if c["cell"].startswith("sft")])
    return out


def write(summary: dict, cells: list[dict]) -> None:
    from sdft_ops.evaluation.metrics import AccuracyMatrix
    from sdft_ops.evaluation.report import plot_accuracy_matrix

    (RESULTS / "continual.json").write_text(json.dumps({**summary, "cells": cells}, indent=1) + "\n")
    f = lambda v: f"{v:.3f}"  # noqa: E731
    lines = ["# Continual chain: safety → tooluse → knowledge → triage (SmolLM2-135M, CPU)", "",
             __doc__.split("\n\n")[1].strip(), "", __doc__.split("\n\n")[2].strip(), "",
             "| method | just learned | final new-domain mean | BWT | forgetting | prior retention "
             "| safety retention | benign drop | drift Δ | s/update |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['cell']} ({c['settings']}) | {f(c['learned_mean'])} | {f(c['final_new_task_mean'])} | "
                     f"{c['bwt']:+.3f} | {f(c['forgetting'])} | {f(c['mean_prior_retention'])} | "
                     f"{f(c['safety_retention'])} | {c['benign_drop']:+.3f} | {c['drift_delta']:+.3f} | "
                     f"{c['seconds_per_update']:.0f} |")
    lines += ["", f"Chosen recipe: `{json.dumps(summary['chosen_recipe'])}`; "
              f"sdft_pareto_dominates: {summary.get('sdft_pareto_dominates')}", ""]
    for c in cells:
        png = RESULTS / f"continual_{c['cell']}.png"
        plot_accuracy_matrix(AccuracyMatrix.model_validate(c["matrix"]), png)
        lines.append(f"![{c['cell']}]({png.name})")
    (RESULTS / "continual.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="*", default=list(methods()), choices=list(methods()))
    parser.add_argument("--cached-only", action="store_true", help="write the results from cached cells")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    cells = []
    for cell in args.methods:
        if args.cached_only and not (CACHE / f"{cell}.json").is_file():
            continue
        cells.append(run_cell(cell))
        c = cells[-1]
        print(f"{cell}: new {c['final_new_task_mean']:.3f}, safety {c['safety_retention']:.3f}, "
              f"prior {c['mean_prior_retention']:.3f}, forgetting {c['forgetting']:.3f}", flush=True)
    summary = summarize(cells)
    write(summary, cells)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
