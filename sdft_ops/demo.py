"""The main job: base → tooluse → knowledge → triage, each update trained, evaluated and gated,
then a summary table and the accuracy-matrix plot.

`run_chain` drives any sequence of updates through a `runner(dataset) -> UpdateOutcome`: the
library's `run_update` (`sdft-ops demo`) or the Dagster job (`python -m assets.demo`, what
`make demo` runs), so both print the same summary from the same records.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sdft_ops.domains import load_shipped
from sdft_ops.evaluation.metrics import AccuracyMatrix
from sdft_ops.home import data_home
from sdft_ops.settings import UpdateConfig

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
CHAIN = ("tooluse", "knowledge", "triage")


def load_demo_config(path: str | Path | None = None) -> UpdateConfig:
    path = Path(path) if path else DEMO_CONFIG
    return UpdateConfig.from_yaml(path) if path.is_file() else UpdateConfig()


def accuracy_matrix(stage_refs: Sequence[tuple[str, str, str]], suites, cfg: UpdateConfig,
                    home: Path, learned_at: dict[str, int]) -> AccuracyMatrix:
    """R[i][j]: score of stage i's model (name, ref, folder) on suite j (cached results)."""
    from sdft_ops.pipeline import score_model

    rows = [score_model(folder, ref, suites, cfg, home) for _, ref, folder in stage_refs]
    return AccuracyMatrix(tasks=[s.name for s in suites], stages=[n for n, _, _ in stage_refs],
                          values=[[row[s.name].score for s in suites] for row in rows],
                          learned_at=learned_at)


def summary_lines(outcomes, matrix: AccuracyMatrix, plot: Path, tracking_uri: str) -> list[str]:
    lines = ["", "=" * 78, "sdft-ops demo: three gated domain updates", "=" * 78]
    for o in outcomes:
        r = o.report
        new = r.results.get(f"domain/{o.domain}")
        ref = r.reference_results.get(f"domain/{o.domain}")
        lines.append(f"\n[{o.update_id}] version {o.version}: "
                     f"{'PROMOTED' if o.promoted else 'REJECTED'}  (MLflow run {o.run_id})")
        if new is not None:
            lines.append(f"  new domain {o.domain}: {ref.score if ref else float('nan'):.3f} → "
                         f"{new.score:.3f}")
        for suite, ret in sorted(r.retention.items()):
            if not suite.startswith("domain/"):
                lines.append(f"  {suite:<26} {ret.reference_score:7.3f} → {ret.candidate_score:7.3f}"
                             f"   retention {ret.ratio:6.3f}  Δ {ret.difference:+.3f} "
                             f"[{ret.difference_ci[0]:+.3f}, {ret.difference_ci[1]:+.3f}]")
        if not o.promoted:
            lines += [f"  gate: {reason}" for reason in o.decision.reasons]
    domains = matrix.select([t for t in matrix.tasks if t.startswith("domain/")])
    lines += ["", f"new domains, serving model after each update: average accuracy "
              f"{domains.average_accuracy():.3f}   BWT {domains.bwt():+.3f}   "
              f"forgetting {domains.forgetting().mean:.3f}",
              f"accuracy-matrix plot: {plot}",
              f"MLflow: {tracking_uri}  (browse: mlflow ui --backend-store-uri {tracking_uri})"]
    return lines


def run_chain(runner: Callable, cfg: UpdateConfig, home: Path | None = None,
              chain: Sequence[str] = CHAIN) -> tuple[list, AccuracyMatrix, Path]:
    from sdft_ops.evaluation.report import plot_accuracy_matrix
    from sdft_ops.models import resolve_model_path
    from sdft_ops.pipeline import shipped_domain_suite, suites_for, update_dir

    home = data_home(home)
    outcomes = [runner(load_shipped(name)[0]) for name in chain]
    # Columns: every domain of the chain (scored by every stage, earlier and later) + prior suites.
    suites = [shipped_domain_suite(n, cfg) for n in chain]
    suites += [s for s in suites_for(cfg, home) if not s.name.startswith("domain/")]
    stages = [("base", f"base:{cfg.model.name_or_path}", resolve_model_path(cfg.model))]
    for o in outcomes:  # the serving model after each update: the candidate if promoted
        stages.append((o.domain, f"update:{o.update_id}", str(update_dir(home, o.update_id) / "model"))
                      if o.promoted else (o.domain, *stages[-1][1:]))
    learned = {f"domain/{n}": i + 1 for i, n in enumerate(chain)}
    matrix = accuracy_matrix(stages, suites, cfg, home, learned)
    plot = plot_accuracy_matrix(matrix, home / "accuracy_matrix.png")
    return outcomes, matrix, plot


def run_demo(config_path: str | Path | None = None, home: str | Path | None = None) -> int:
    """`sdft-ops demo`: the chain through the library's `run_update`."""
    from sdft_ops.pipeline import run_update
    from sdft_ops.registry import PolicyRegistry

    cfg, home = load_demo_config(config_path), data_home(home)
    registry = PolicyRegistry(cfg.tracking.tracking_uri, name=cfg.tracking.model_name, home=home,
                              experiment=cfg.tracking.experiment)
    started = time.perf_counter()
    outcomes, matrix, plot = run_chain(
        lambda ds: run_update(ds, cfg, home=home, registry=registry), cfg, home)
    for line in summary_lines(outcomes, matrix, plot, registry.tracking_uri):
        print(line)
    print(f"pipeline time: {time.perf_counter() - started:.0f} s")
    return 0
