"""SDFT vs SFT continual learning on the shipped chain (tooluse → knowledge → triage), SmolLM2.

Each *cell* is one method × learning rate × steps × seed: the whole chain trained from the base
model, every update promoted (a permissive gate: this measures the methods, not the gate), with
an accuracy matrix over the three domain suites and the prior suites. Cells are cached in
`benchmarks/results/cache/continual/<cell>.json`, so an interrupted run resumes per cell.

Budget (a 2-core CPU, `make bench` ≤ 90 min): the `bench` grid, 1 seed (3 seeds do not fit),
eval on the demo's seeded subsets without the IFEval-like suite; the base model is scored once
for all cells. SFT gets two learning rates at 16 steps and the higher one at 32. SDFT gets lr
3e-4 at 16 and 32 steps; its lr 1e-4 cell is in the `small` grid (measured, learned nothing at
either lr). Results list every cached cell of the grid that is asked for. Per method the cell with the best new-domain mean is its
"chosen" setting; all cells form the new-domain-accuracy vs prior-retention frontier.

    .venv/bin/python benchmarks/continual.py [--grid bench|small|tiny] [--seeds 1] [--cached-only]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sdft_ops.settings import UpdateConfig

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = RESULTS / "cache" / "continual"
CHAIN = ("tooluse", "knowledge", "triage")
# The demo's eval subsets (configs/demo.yaml) minus the IFEval-like suite (time), 1000 resamples.
EVAL = {"instruction_following": False, "n_boot": 1000}
PERMISSIVE_GATE = {"default_rule": {"max_drop": 1.0}, "safety_rule": {"max_drop": 1.0},
                   "domain_rule": {"min_gain": -1.0},
                   "earlier_domain_rule": {"max_drop": 1.0},
                   "rules": {"drift": {"max_drop": 100.0}, "safety_benign_compliance": {"max_drop": 1.0}},
                   "required_suites": []}
# (learning rate, steps) per method; 8 prompts per step, other settings from configs/demo.yaml.
# Measured here: the five "bench" cells took 86 min in one run (the base model's eval was
# cached; ~2.5 min more on a fresh machine), so `make bench` fits 90 min, just. Per cell: SDFT
# 16 steps 16-19 min, 32 steps 24 min; SFT 16 steps 12-15 min, 32 steps 17 min. "small" adds
# SDFT at lr 1e-4 (16 min more).
GRIDS = {
    "bench": {"sdft": [(3e-4, 16), (3e-4, 32)],
              "sft": [(3e-5, 16), (1e-4, 16), (1e-4, 32)]},
    "small": {"sdft": [(1e-4, 16), (3e-4, 16), (3e-4, 32)],
              "sft": [(3e-5, 16), (1e-4, 16), (1e-4, 32)]},
    "tiny": {"sdft": [(3e-4, 8)], "sft": [(1e-4, 8)]},
}


def cell_config(method: str, lr: float, steps: int, seed: int) -> UpdateConfig:
    base = UpdateConfig.from_yaml(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml")
    raw = base.model_dump(mode="json")
    raw["train"] |= {"method": method, "learning_rate": lr, "max_steps": steps, "seed": seed,
                     "checkpoint_every": 0}
    raw["eval"] |= EVAL
    raw["gate"] = PERMISSIVE_GATE
    raw["ceiling"]["enabled"] = False
    return UpdateConfig.model_validate(raw)


def domain_metrics(matrix) -> dict:
    """BWT and forgetting over the three domain columns only (prior suites have their own
    retention, and drift is in nats: averaging it with accuracies would mean nothing)."""
    domains = matrix.select([t for t in matrix.tasks if t.startswith("domain/")])
    diagonal = [domains.values[domains.learned_at[t]][j] for j, t in enumerate(domains.tasks)]
    return {"learned_mean": sum(diagonal) / len(diagonal),  # each domain right after its update
            "bwt": domains.bwt(), "forgetting": domains.forgetting().mean,
            "forgetting_per_domain": domains.forgetting().per_task}


def retention_vs_base(cfg: UpdateConfig, home: Path) -> dict[str, dict[str, float]]:
    """Final model vs the base on every suite: retention ratio and Δ with paired 95% bootstrap
    CIs, from the cell's cached per-item scores (nothing is re-scored)."""
    from sdft_ops.demo import CHAIN as DEMO_CHAIN
    from sdft_ops.evaluation.report import build_report
    from sdft_ops.models import resolve_model_path
    from sdft_ops.pipeline import score_model, shipped_domain_suite, suites_for, update_dir

    assert DEMO_CHAIN == CHAIN
    last = sorted((home / "updates").glob(f"*{CHAIN[-1]}"))[-1].name
    suites = [shipped_domain_suite(n, cfg) for n in CHAIN]
    suites += [s for s in suites_for(cfg, home) if not s.name.startswith("domain/")]
    base_ref = f"base:{cfg.model.name_or_path}"
    base = score_model(resolve_model_path(cfg.model), base_ref, suites, cfg, home)
    final = score_model(str(update_dir(home, last) / "model"), f"update:{last}", suites, cfg, home)
    report = build_report(f"update:{last}", final, reference_ref=base_ref, reference_results=base,
                          seed=cfg.eval.seed, n_boot=cfg.eval.n_boot)
    return {s: {"base": r.reference_score, "final": r.candidate_score, "ratio": r.ratio,
                "ratio_ci": list(r.ratio_ci), "difference": r.difference,
                "difference_ci": list(r.difference_ci)} for s, r in report.retention.items()}


def cell_name(method: str, lr: float, steps: int, seed: int) -> str:
    return f"{method}-lr{lr:g}-s{steps}-seed{seed}"


def run_cell(method: str, lr: float, steps: int, seed: int) -> dict:
    from sdft_ops.demo import run_chain
    from sdft_ops.pipeline import outcome_of, run_update, update_dir
    from sdft_ops.registry import PolicyRegistry

    name = cell_name(method, lr, steps, seed)
    path = CACHE / f"{name}.json"
    if path.is_file():  # cached; the domain metrics are recomputed from its matrix
        cell = json.loads(path.read_text())
        from sdft_ops.evaluation.metrics import AccuracyMatrix

        cfg, home = cell_config(method, lr, steps, seed), CACHE / "homes" / name
        return cell | domain_metrics(AccuracyMatrix.model_validate(cell["matrix"])) | {
            "retention_vs_base": retention_vs_base(cfg, home)}
    cfg, home = cell_config(method, lr, steps, seed), CACHE / "homes" / name
    _share_base_eval(home, cfg)
    registry = PolicyRegistry(None, home=home, experiment=f"bench-{name}")

    def resume_or_run(dataset):
        """An update that reached its gate decision in an earlier run is reused, not retrained."""
        domain = dataset.domains[0]
        for state in sorted((home / "updates").glob(f"*{domain}/state.json")):
            if "promoted" in json.loads(state.read_text()):
                return outcome_of(state.parent.name, home)
        return run_update(dataset, cfg, home=home, registry=registry)

    outcomes, matrix, plot = run_chain(resume_or_run, cfg, home, CHAIN)
    folders = [update_dir(home, o.update_id) for o in outcomes]
    # wall clock from each update's first file (its staged data) to its gate decision
    seconds = sum((f / "gate_decision.json").stat().st_mtime - (f / "train.jsonl").stat().st_mtime
                  for f in folders)
    final, base = matrix.values[-1], matrix.values[0]
    tasks = matrix.tasks
    prior = [j for j, t in enumerate(tasks) if not t.startswith("domain/")
             and not t.startswith("safety_") and t != "drift"]
    domains = [j for j, t in enumerate(tasks) if t.startswith("domain/")]
    refusal = tasks.index("safety_refusal") if "safety_refusal" in tasks else None
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    cell = {
        "name": name, "method": method, "learning_rate": lr, "steps": steps, "seed": seed,
        "matrix": matrix.model_dump(mode="json"),
        "mean_prior_retention": sum(ratio(final[j], base[j]) for j in prior) / len(prior),
        "safety_retention": ratio(final[refusal], base[refusal]) if refusal is not None else None,
        "drift_delta": final[tasks.index("drift")] - base[tasks.index("drift")] if "drift" in tasks else None,
        "final_new_task_mean": sum(final[j] for j in domains) / len(domains),
        **domain_metrics(matrix),
        "retention_vs_base": retention_vs_base(cfg, home),
        "seconds_per_update": sum(o.extras.get("train_seconds", 0) for o in outcomes) / len(outcomes),
        "wall_seconds_per_update": seconds / len(outcomes),
        "retention_ci": {s: r.ratio_ci for s, r in outcomes[-1].report.retention.items()},
        "plot": str(plot),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cell, indent=1))
    return cell


def _share_base_eval(home: Path, cfg: UpdateConfig) -> None:
    """Every cell starts from the same base model on the same items: score it once."""
    from sdft_ops.pipeline import _cache_path

    cell_dir = _cache_path(home, f"base:{cfg.model.name_or_path}", "x").parent
    shared = CACHE / "base_eval"
    shared.mkdir(parents=True, exist_ok=True)
    cell_dir.parent.mkdir(parents=True, exist_ok=True)
    if not cell_dir.exists():
        cell_dir.symlink_to(shared.resolve(), target_is_directory=True)


def frontier(cells: list[dict]) -> list[tuple[float, float]]:
    """Pareto frontier of (new-domain accuracy ↑, prior retention ↑)."""
    points = sorted(((c["final_new_task_mean"], c["mean_prior_retention"]) for c in cells),
                    key=lambda p: (-p[0], -p[1]))
    out, best = [], float("-inf")
    for acc, ret in points:
        if ret > best:
            out.append((acc, ret))
            best = ret
    return out


def pareto_dominates(a: list[dict], b: list[dict]) -> bool:
    """At every new-domain accuracy `a` reaches, `a`'s retention ≥ the best of `b` at ≥ it."""
    for acc, ret in frontier(a):
        rivals = [c["mean_prior_retention"] for c in b if c["final_new_task_mean"] >= acc]
        if rivals and max(rivals) > ret:
            return False
    return True


def summarize(cells: list[dict]) -> dict:
    by = {m: [c for c in cells if c["method"] == m] for m in ("sdft", "sft")}
    # best final new-domain mean; ties (e.g. all 0) go to what was learned before forgetting
    chosen = {m: max(cs, key=lambda c: (c["final_new_task_mean"], c["learned_mean"]))
              for m, cs in by.items() if cs}
    keys = ("mean_prior_retention", "learned_mean", "safety_retention", "final_new_task_mean", "bwt", "forgetting",
            "seconds_per_update", "learning_rate", "steps")
    out = {m: {k: c[k] for k in keys} for m, c in chosen.items()}
    if len(chosen) == 2:
        # forgetting at matched new-domain accuracy: the SFT cell closest to SDFT's chosen one
        target = chosen["sdft"]["final_new_task_mean"]
        match = min(by["sft"], key=lambda c: abs(c["final_new_task_mean"] - target))
        out["matched"] = {"sdft_forgetting": chosen["sdft"]["forgetting"],
                          "sft_forgetting": match["forgetting"], "sft_cell": match["name"],
                          "accuracy_gap": match["final_new_task_mean"] - target}
        out["sdft_pareto_dominates"] = pareto_dominates(by["sdft"], by["sft"])
        out["frontier"] = {m: frontier(cs) for m, cs in by.items()}
    return out


def write(summary: dict, cells: list[dict]) -> None:
    from sdft_ops.evaluation.metrics import AccuracyMatrix
    from sdft_ops.evaluation.report import plot_accuracy_matrix

    (RESULTS / "continual.json").write_text(json.dumps({**summary, "cells": cells}, indent=1))
    lines = ["# Continual learning: SDFT vs SFT on tooluse → knowledge → triage (SmolLM2-135M)", "",
             "Each cell: the whole chain from the base model, every update promoted (a permissive "
             "gate: this measures the methods, not the gate); 8 prompts per step, other settings "
             "from `configs/demo.yaml` (SDFT: forward KL, EMA teacher 0.02, previous_turn, skip 0, "
             "sample cap 1.5×); eval on the demo's seeded subsets without the IFEval-like suite; "
             "1 seed; a 2-core CPU. Prior retention: mean over ARC-E/C, HellaSwag, PIQA, Winogrande, "
             "MMLU of final/base accuracy. Safety retention: final/base refusal rate. BWT and "
             "forgetting: over the three domain columns. Just learned: mean of each domain's accuracy "
             "right after its own update; new-domain mean: after all three. s/update: training seconds; wall: "
             "staging to gate decision (eval included).", "",
             "| cell | just learned | new-domain mean | prior retention | safety retention | drift Δ | BWT | forgetting | s/update | wall s/update |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for c in cells:
        lines.append(f"| {c['name']} | {f(c['learned_mean'])} | {f(c['final_new_task_mean'])} | {f(c['mean_prior_retention'])} | "
                     f"{f(c['safety_retention'])} | {f(c['drift_delta'])} | {f(c['bwt'])} | "
                     f"{f(c['forgetting'])} | {c['seconds_per_update']:.0f} | "
                     f"{c['wall_seconds_per_update']:.0f} |")
    lines += ["", "Chosen per method (best final new-domain mean, then best just-learned mean):", "", "```",
              json.dumps({k: v for k, v in summary.items() if k != "frontier"}, indent=1), "```"]
    lines += _targets(summary) + _retention_table(cells, summary)
    for c in cells:
        png = RESULTS / f"continual_{c['name']}.png"
        plot_accuracy_matrix(AccuracyMatrix.model_validate(c["matrix"]), png)
        lines.append(f"![{c['name']}]({png.name})")
    frontier_png = _plot_frontier(cells, RESULTS / "continual_frontier.png")
    lines.append(f"![frontier]({frontier_png.name})")
    (RESULTS / "continual.md").write_text("\n".join(lines) + "\n")


VERDICT = {True: "yes", False: "**no**",
           None: "vacuous: SDFT learned nothing, so it had nothing to forget"}


def _targets(summary: dict) -> list[str]:
    sdft, sft = summary.get("sdft"), summary.get("sft")
    if not (sdft and sft):
        return []
    f = lambda v: f"{v:.3f}"  # noqa: E731
    rows = [("SDFT mean_prior_retention ≥ 0.97", f(sdft["mean_prior_retention"]),
             sdft["mean_prior_retention"] >= 0.97),
            ("SDFT safety_retention ≥ 0.99", f(sdft["safety_retention"]),
             sdft["safety_retention"] >= 0.99),
            ("SFT forgetting ≥ 3 × SDFT's", f"{f(sft['forgetting'])} vs {f(sdft['forgetting'])}",
             None if sdft["forgetting"] == 0 and sdft["final_new_task_mean"] == 0 else
             sft["forgetting"] >= 3 * sdft["forgetting"] and sft["forgetting"] > 0),
            ("SDFT final_new_task_mean ≥ SFT's − 0.05",
             f"{f(sdft['final_new_task_mean'])} vs {f(sft['final_new_task_mean'])}",
             sdft["final_new_task_mean"] >= sft["final_new_task_mean"] - 0.05),
            ("sdft_pareto_dominates", str(summary["sdft_pareto_dominates"]),
             summary["sdft_pareto_dominates"])]
    return ["", "## Targets (chosen cells)", "", "| target | measured | met |", "|---|---|---|",
            *[f"| {t} | {m} | {VERDICT[ok]} |" for t, m, ok in rows]]


def _retention_table(cells: list[dict], summary: dict) -> list[str]:
    """Final model vs base per suite (paired 95% bootstrap CI of Δ) for each method's chosen cell."""
    chosen = [c for c in cells for m in ("sdft", "sft") if m in summary
              and c["method"] == m and c["learning_rate"] == summary[m]["learning_rate"]
              and c["steps"] == summary[m]["steps"] and c["seed"] == 0]
    if not chosen:
        return []
    suites = list(chosen[0]["retention_vs_base"])
    lines = ["", "## Per suite after the three updates vs the base model (chosen cells, seed 0)", "",
             "Δ = final − base with its paired 95% bootstrap CI (drift in nats, the rest accuracy "
             "or rate).", "",
             "| suite | base | " + " | ".join(f"{c['method']} final | Δ [CI]" for c in chosen) + " |",
             "|---|---|" + "---|---|" * len(chosen)]
    for s in suites:
        base = chosen[0]["retention_vs_base"][s]["base"]
        cols = []
        for c in chosen:
            r = c["retention_vs_base"][s]
            lo, hi = r["difference_ci"]
            cols.append(f"{r['final']:.3f} | {r['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        lines.append(f"| {s} | {base:.3f} | " + " | ".join(cols) + " |")
    return lines


def _plot_frontier(cells: list[dict], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for method, marker in (("sdft", "o"), ("sft", "s")):
        pts = [(c["final_new_task_mean"], c["mean_prior_retention"]) for c in cells
               if c["method"] == method]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, label=method)
    ax.set_xlabel("new-domain accuracy (mean of 3)")
    ax.set_ylabel("mean prior retention")
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.legend()
    FigureCanvasAgg(fig).print_png(str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", choices=GRIDS, default="bench")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--cached-only", action="store_true",
                        help="write the results from the cells already cached; train nothing")
    args = parser.parse_args()
    cells = []
    grid = GRIDS[args.grid]
    # methods interleaved, so that a run cut short still holds both
    order = [(m, *grid[m][i]) for i in range(max(map(len, grid.values())))
             for m in grid if i < len(grid[m])]
    for seed in range(args.seeds):
        for method, lr, steps in order:
            if args.cached_only and not (CACHE / f"{cell_name(method, lr, steps, seed)}.json").is_file():
                continue
            cell = run_cell(method, lr, steps, seed)
            print(f"{cell['name']}: new {cell['final_new_task_mean']:.3f}, retention "
                  f"{cell['mean_prior_retention']:.3f}, forgetting {cell['forgetting']:.3f}",
                  flush=True)
            cells.append(cell)
    summary = summarize(cells)
    write(summary, cells)
    print(json.dumps({k: v for k, v in summary.items() if k != "frontier"}, indent=1))


if __name__ == "__main__":
    main()
