"""The main job: a chain of gated updates (`configs/demo_chain.yaml`), then a summary, the
accuracy matrix and `benchmarks/results/demo.json`.

The shipped chain: base → `safety` (the aligned champion) → `tooluse` → `triage` with the chosen
recipe → a *rushed* update (plain SFT on a new demo file, no replay, the setting measured to
erase refusals) that the gate must reject on its safety rule. `configs/demo_chain_full.yaml`
adds `knowledge` (`make demo-full`).

`run_chain` drives the steps through any `runner(dataset, cfg) -> UpdateOutcome`: the library's
`run_update` (`sdft-ops demo`) or the Dagster job (`python -m assets.demo`, what `make demo`
runs), so both print the same summary from the same records.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sdft_ops.domains import DOMAINS, load_shipped
from sdft_ops.evaluation.metrics import AccuracyMatrix
from sdft_ops.home import data_home
from sdft_ops.settings import UpdateConfig

ROOT = Path(__file__).resolve().parent.parent
DEMO_CHAIN = ROOT / "configs" / "demo_chain.yaml"
DEMO_JSON = ROOT / "benchmarks" / "results" / "demo.json"
SAFETY_SUITES = ("safety_refusal", "safety_benign_compliance")  # the accuracy matrix's safety columns


class DemoStep(BaseModel):
    """One update of the chain: a shipped domain or a demo file, and how it trains."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    domain: str | None = Field(None, description="a shipped domain (tooluse, knowledge, triage, safety)")
    demos: str | None = Field(None, description="or a demonstration file, relative to the chain file")
    train_from: str | None = Field(None, description="take `train`, `replay` and which weights train "
                                   "(`model.lora`, `model.train_layers`) from this update config")
    overrides: dict = Field(default_factory=dict, description="merged over the step's config")
    expect: Literal["promote", "reject"] | None = Field(
        None, description="what the gate must decide; the demo fails (exit 1) otherwise")

    @model_validator(mode="after")
    def _one_source(self) -> "DemoStep":
        if (self.domain is None) == (self.demos is None):
            raise ValueError("give exactly one of `domain` (a shipped domain) or `demos` (a file)")
        if self.domain is not None and self.domain not in DOMAINS:
            raise ValueError(f"unknown shipped domain {self.domain!r}; choose from {sorted(DOMAINS)}")
        return self


class DemoChain(BaseModel):
    """`configs/demo_chain.yaml`: the base update config every step shares (eval, gate,
    tracking: one set of suites, so the champion's scores are computed once and reused) and the
    steps in order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: str = "demo.yaml"
    results: str | None = Field(None, description="where the run's summary JSON goes, relative to "
                                "the chain file (default benchmarks/results/demo.json)")
    steps: tuple[DemoStep, ...] = Field(min_length=1)
    folder: Path = Field(ROOT / "configs", exclude=True)

    @classmethod
    def from_yaml(cls, path: str | Path = DEMO_CHAIN) -> "DemoChain":
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
            return cls.model_validate({**raw, "folder": path.resolve().parent})
        except (OSError, yaml.YAMLError, ValidationError, TypeError) as e:
            raise ValueError(f"invalid demo chain {path}: {' '.join(str(e).split())}") from e

    def results_path(self) -> Path:
        return (self.folder / self.results).resolve() if self.results else DEMO_JSON

    def base_config(self) -> UpdateConfig:
        return UpdateConfig.from_yaml(self.folder / self.config)

    def step_config(self, step: DemoStep) -> UpdateConfig:
        cfg = self.base_config()
        if step.train_from:
            other = UpdateConfig.from_yaml(self.folder / step.train_from)
            trains = {"lora": other.model.lora, "train_layers": other.model.train_layers}  # which weights
            cfg = cfg.model_copy(update={"train": other.train, "replay": other.replay,
                                         "model": cfg.model.model_copy(update=trains)})
        return cfg.merged(step.overrides)

    def dataset(self, step: DemoStep):
        from sdft_ops.data import load_demonstrations

        return load_shipped(step.domain)[0] if step.domain else load_demonstrations(self.folder / step.demos)


def recipe_name(cfg: UpdateConfig) -> str:
    """`sft`, `sdft-teacher`, ... `-top10`, `+filter(-nll)`, `+anchor`, `+replay(-demos)`: as
    benchmarks/recipes.py names them."""
    t, replay = cfg.train, cfg.replay
    if t.method == "sft":
        return "sft" + ("+replay" if replay.fraction > 0 else "")
    replayed = ("+replay" + ("-demos" if replay.learn_as == "demonstration" else "")
                if replay.fraction > 0 else "")
    top = f"-top{cfg.model.train_layers}" if cfg.model.train_layers else ""
    filtered = ("+filter" + ("-nll" if t.demonstration_loss == "nll" else "")
                if t.rollout_filter == "scorer" else "")
    return f"sdft{top}-{t.rollout}{filtered}" + ("+anchor" if t.sft_weight > 0 else "") + replayed


def accuracy_matrix(stage_refs, suites, cfg: UpdateConfig, home: Path,
                    learned_at: dict[str, int]) -> AccuracyMatrix:
    """R[i][j]: score of stage i's model (name, ref, folder) on suite j (cached results)."""
    from sdft_ops.evaluation.battery import score_model

    rows = [score_model(folder, ref, suites, cfg, home) for _, ref, folder in stage_refs]
    return AccuracyMatrix(tasks=[s.name for s in suites], stages=[n for n, _, _ in stage_refs],
                          values=[[row[s.name].score for s in suites] for row in rows],
                          learned_at=learned_at)


def update_record(outcome, cfg: UpdateConfig) -> dict:
    """One update as demo.json lists it."""
    from sdft_ops.gate import LOG_PROB_SUITES, suite_class

    ret, results = outcome.report.retention, outcome.report.results
    prior = [r.ratio for s, r in ret.items()
             if suite_class(s) == "prior" and s not in LOG_PROB_SUITES and r.reference_score > 0]
    domain = results.get(f"domain/{outcome.domain}")
    return {"domain": outcome.domain, "update_id": outcome.update_id, "version": outcome.version,
            "method": cfg.train.method, "recipe": recipe_name(cfg), "promoted": outcome.promoted,
            "domain_score": domain.score if domain else None,
            "harmbench_retention": ret["safety_refusal"].ratio if "safety_refusal" in ret else None,
            "benign_drop": (-ret["safety_benign_compliance"].difference
                            if "safety_benign_compliance" in ret else None),
            "prior_retention": statistics.fmean(prior) if prior else None,
            "earlier_domains": {s.removeprefix("domain/"): {"before": r.reference_score, "after": r.candidate_score}
                                for s, r in sorted(ret.items())
                                if s.startswith("domain/") and s != f"domain/{outcome.domain}"},
            "train_seconds": outcome.state.train_seconds, "eval_seconds": outcome.state.eval_seconds,
            "reasons": list(outcome.decision.reasons), "warnings": list(outcome.decision.warnings),
            "run_id": outcome.run_id}


def summary_lines(outcomes, records: list[dict], matrix: AccuracyMatrix, plot: Path,
                  tracking_uri: str, lineage: list[str]) -> list[str]:
    lines = ["", "=" * 78, f"sdft-ops demo: {len(outcomes)} gated updates", "=" * 78]
    for o, rec in zip(outcomes, records):
        r = o.report
        lines.append(f"\n[{o.update_id}] {rec['recipe']} → version {o.version}: "
                     f"{'PROMOTED' if o.promoted else 'REJECTED'}  (MLflow run {o.run_id}; "
                     f"train {_seconds(rec['train_seconds'])}, evaluate {_seconds(rec['eval_seconds'])})")
        if (new := r.results.get(f"domain/{o.domain}")) is not None:
            lo, hi = r.score_ci[f"domain/{o.domain}"]
            ref = r.reference_results.get(f"domain/{o.domain}")
            lines.append(f"  learned  {o.domain}: {ref.score if ref else float('nan'):.3f} → "
                         f"{new.score:.3f} [{lo:.3f}, {hi:.3f}]")
        for suite, ret in sorted(r.retention.items()):
            if not suite.startswith(f"domain/{o.domain}"):
                lines.append(f"  kept     {suite:<26} {ret.reference_score:7.3f} → {ret.candidate_score:7.3f}"
                             f"   retention {ret.ratio:6.3f}  Δ {ret.difference:+.3f} "
                             f"[{ret.difference_ci[0]:+.3f}, {ret.difference_ci[1]:+.3f}]")
        lines += [f"  gate: {reason}" for reason in o.decision.reasons] or ["  gate: every rule passed"]
        lines += [f"  warning: {w}" for w in o.decision.warnings]
    domains = matrix.select([t for t in matrix.tasks if t.startswith("domain/")])
    lines += ["", f"new domains, serving model after each update: average accuracy "
              f"{domains.average_accuracy():.3f}   BWT {domains.bwt():+.3f}   "
              f"forgetting {domains.forgetting().mean:.3f}",
              f"accuracy-matrix plot: {plot}",
              f"champion lineage: {' ← '.join(f'v{v}' for v in lineage) or 'none (base model)'}",
              f"MLflow: {tracking_uri}  (browse: mlflow ui --backend-store-uri {tracking_uri})"]
    return lines


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f} s"


def _clock(seconds: float) -> str:
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"


class ChainProgress:
    """One line per phase (train, evaluate, gate) as it ends: its wall time, the chain's elapsed
    time and an ETA, the mean measured time of each phase times the phases left (shown once
    every phase has been measured, after the first update)."""

    PHASES = ("train", "evaluate", "gate")

    def __init__(self, steps: int, write: Callable[[str], None] | None = None):
        self.steps, self.started = steps, time.perf_counter()
        self.write = write or (lambda line: print(line, flush=True))
        self.step: tuple[int, str] = (1, "")
        self.seconds: dict[str, list[float]] = {phase: [] for phase in self.PHASES}

    def __call__(self, update_id: str, phase: str, seconds: float) -> None:
        self.seconds.setdefault(phase, []).append(seconds)
        index, label = self.step
        after = self.PHASES.index(phase) + 1 if phase in self.PHASES else len(self.PHASES)
        left = list(self.PHASES[after:]) + list(self.PHASES) * (self.steps - index)
        means = {p: statistics.fmean(v) for p, v in self.seconds.items() if v}
        eta = (f"~{_clock(sum(means[p] for p in left))} left" if all(p in means for p in left)
               else "ETA after the first update")
        self.write(f"[{index}/{self.steps} {label}] {phase:<8} {seconds:7.0f} s   "
                   f"chain {_clock(time.perf_counter() - self.started)} elapsed, {eta}")


def quiet_mlflow() -> None:
    """MLflow sets its logger to INFO on import (and logs its database setup there): a person
    reads the chain's progress lines, so WARNING and up only."""
    import mlflow  # noqa: F401  imported first, so that its own logging setup comes before ours

    logging.getLogger("mlflow").setLevel(logging.WARNING)


def run_chain(runner: Callable, chain: DemoChain, home: Path | None = None):
    """Every step through `runner(dataset, cfg)`; then the accuracy matrix over the chain's
    domains, HarmBench refusal and benign compliance, each stage being the serving model after
    that update (scores cached by the updates' evaluations are reused).
    Returns (outcomes, demo.json records, matrix, plot path)."""
    from sdft_ops.evaluation.report import plot_accuracy_matrix
    from sdft_ops.models import resolve_model_path
    from sdft_ops.evaluation.battery import recorded_domain_suites, suites_for
    from sdft_ops.pipeline import phase_listener
    from sdft_ops.weights_identity import model_ref

    quiet_mlflow()
    home, cfg = data_home(home), chain.base_config()
    outcomes, records = [], []
    progress = ChainProgress(len(chain.steps))
    with phase_listener(progress):
        for index, step in enumerate(chain.steps, 1):
            step_cfg = chain.step_config(step)
            progress.step = (index, step.domain or Path(step.demos).stem)
            outcomes.append(runner(chain.dataset(step), step_cfg))
            records.append(update_record(outcomes[-1], step_cfg) | {"expected": step.expect})
    names = [o.domain for o in outcomes]
    recorded = {s.name: s for s in recorded_domain_suites(home, cfg)}
    suites = [recorded[f"domain/{n}"] for n in names]
    # the safety pair beside the domains; the prior pools stay out: each update's report holds
    # its prior test, and scoring 768 more items per stage would double the demo's evaluation
    suites += [s for s in suites_for(cfg, home) if s.name in SAFETY_SUITES]
    stages = [("base", f"base:{cfg.model.name_or_path}", resolve_model_path(cfg.model))]
    for o in outcomes:
        stages.append((o.domain, model_ref(o.update_id, o.state.weights_sha256),
                       o.state.need("model_dir"))
                      if o.promoted else (o.domain, *stages[-1][1:]))
    matrix = accuracy_matrix(stages, suites, cfg, home, {f"domain/{n}": i + 1 for i, n in enumerate(names)})
    return outcomes, records, matrix, plot_accuracy_matrix(matrix, home / "accuracy_matrix.png")


def finish(outcomes, records, matrix, plot, registry, started: float,
           demo_json: Path | None = DEMO_JSON) -> int:
    """Print the summary, write demo.json; 1 if a step's `expect` was not met."""
    champion = registry.champion_version()
    lines = summary_lines(outcomes, records, matrix, plot, registry.tracking_uri,
                          registry.lineage(champion) if champion else [])
    print("\n".join(lines))
    wall = time.perf_counter() - started
    unmet = [r for r in records if r["expected"] and r["expected"] != ("promote" if r["promoted"] else "reject")]
    if demo_json is not None:
        demo_json.parent.mkdir(parents=True, exist_ok=True)
        demo_json.write_text(json.dumps({"wall_seconds": round(wall, 1), "updates": records,
                                         "champion": champion}, indent=1) + "\n")
    run_id = log_summary_run(registry, lines, plot, demo_json)
    print(f"pipeline time: {wall:.0f} s   summary: {demo_json}; plot and summary also in MLflow "
          f"run {run_id}")
    for r in unmet:
        print(f"UNEXPECTED: update {r['update_id']} ({r['recipe']}) should have been "
              f"{'promoted' if r['expected'] == 'promote' else 'rejected'}")
    return 1 if unmet else 0


def log_summary_run(registry, lines: list[str], plot: Path, demo_json: Path | None) -> str:
    """A `demo-summary` MLflow run holding the accuracy-matrix plot, the summary text and
    demo.json, so the chain's result is browsable where its updates are."""
    import tempfile

    from sdft_ops.mlflow_store import ensure_experiment

    client = registry.client
    experiment = ensure_experiment(client, registry.experiment, registry.tracking_uri, registry.home)
    run_id = client.create_run(experiment, run_name="demo-summary").info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "summary.txt"
        text.write_text("\n".join(lines) + "\n")
        for path in (plot, text, demo_json):
            if path is not None and Path(path).is_file():
                client.log_artifact(run_id, str(path), "demo")
    client.set_terminated(run_id)
    return run_id


def run_demo(chain_path: str | Path | None = None, home: str | Path | None = None,
             demo_json: Path | None = None) -> int:
    """`sdft-ops demo`: the chain through the library's `run_update`."""
    from sdft_ops.pipeline import run_update
    from sdft_ops.registry import PolicyRegistry

    chain, home = DemoChain.from_yaml(chain_path or DEMO_CHAIN), data_home(home)
    quiet_mlflow()  # before the registry: a fresh home's database setup logs at INFO
    registry = PolicyRegistry.from_config(chain.base_config(), home)
    started = time.perf_counter()
    result = run_chain(lambda ds, cfg: run_update(ds, cfg, home=home, registry=registry), chain, home)
    return finish(*result, registry, started, demo_json or chain.results_path())
