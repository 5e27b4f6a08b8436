"""One domain update, step by step: data → train → evaluate → gate → register / promote.

Each step is a function the CLI (`run_update`) and the Dagster assets both call:

    stage_dataset(update_id, dataset, cfg, home)   # 1. validate, split, record the domain
    train_step(update_id, cfg, home, registry)     # 2. train from the champion (or base model)
    eval_step(update_id, cfg, home, registry)      # 3. score candidate + parent, register candidate
    gate_step(update_id, cfg, home, registry)      # 4. decide; promote or reject, recorded

Between steps an update lives in `<home>/updates/<update_id>/` (`update_state.UpdateState` in
state.json, train.jsonl, model/, eval_report.json, gate_decision.*), so a step can run in
another process (a Dagster asset). What it is scored on, and the score cache:
`evaluation.battery`. Each step's MLflow calls run under `tracking_recovery.tracking_calls`
(bounded timeouts, a failure in one line); an update whose tracking fails keeps its folder, and
is resumed by a rerun with its id.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sdft_ops.data import DemoDataset, Demonstration
from sdft_ops.domains import DOMAINS, reference_for
from sdft_ops.evaluation.battery import (
    DomainData,
    domain_suite,
    evaluate_candidate,
    mark_domain_taught,
    prepare_domain,
    suites_for,
)
from sdft_ops.evaluation.report import EvalReport
from sdft_ops.evaluation.scorers import get_scorer
from sdft_ops.gate import GateDecision
from sdft_ops.home import data_home
from sdft_ops.mlflow_store import StoreLocked, TrackingUnreachable
from sdft_ops.registry import TAG_DOMAIN, TAG_METHOD, TAG_MODEL_DIR, TAG_UPDATE_ID, PolicyRegistry
from sdft_ops.settings import UpdateConfig
from sdft_ops.tracking_recovery import close_dead_runs, tracking_calls
from sdft_ops.update_state import (
    Parent,
    UpdateState,
    fresh_checkpoints,
    load_state,
    new_update_id,
    save_state,
    update_dir,
)

# (update_id, phase, wall seconds): told when train, evaluate or gate ends, in whichever process
# or Dagster asset ran it (the demo prints a progress line from it).
PhaseListener = Callable[[str, str, float], None]
_listeners: list[PhaseListener] = []


@contextlib.contextmanager
def phase_listener(listener: PhaseListener) -> Iterator[None]:
    """Call `listener` after every phase ended in this process while the block runs."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def _phase_ended(update_id: str, phase: str, started: float) -> None:
    for listener in list(_listeners):
        listener(update_id, phase, time.perf_counter() - started)


@dataclass
class Trained:
    model_dir: Path
    method: str
    seconds: float
    final: dict[str, float]
    ceiling: dict | None = None
    peak_rss_gb: float | None = None


@dataclass
class UpdateOutcome:
    update_id: str
    domain: str
    version: str | None
    decision: GateDecision
    report: EvalReport
    run_id: str | None
    promoted: bool
    state: UpdateState


def rollout_check(demo: Demonstration, text: str, cfg: UpdateConfig) -> bool:
    """Whether `text` answers `demo` right by its domain's scorer (the `rollout_filter`)."""
    scorer = DOMAINS[demo.domain].scorer if demo.domain in DOMAINS else get_scorer(cfg.scorer)
    return scorer(text, reference_for(demo)) >= 1.0


def train_candidate(update_id: str, domain: DomainData, parent: Parent, cfg: UpdateConfig,
                    home: Path, logger=None, replay: Sequence[Demonstration] = ()) -> Trained:
    """Train from the parent on the domain's demos (+ `replay`); writes updates/<id>/model."""
    from sdft_ops.engine import train
    from sdft_ops.engine.ceiling import teacher_ceiling
    from sdft_ops.engine.checkpoint import save_trained_model
    from sdft_ops.models import load_model_at

    model, tokenizer = load_model_at(parent.model_dir, cfg.model)
    ceiling = None
    if cfg.train.method == "sdft" and cfg.ceiling.enabled:
        ceiling = teacher_ceiling(
            model, tokenizer, domain.train.records, domain.suite.scorer
            if callable(domain.suite.scorer) else get_scorer(domain.suite.scorer),
            cfg.train.teacher_context, reference=reference_for, sample_size=cfg.ceiling.sample_size,
            max_new_tokens=domain.suite.max_new_tokens, floor=cfg.ceiling.floor,
            strict=cfg.ceiling.strict, bf16=cfg.train.autocast_bf16).model_dump()
        if logger is not None:
            logger.log_dict({"ceiling/teacher": ceiling["teacher_score"],
                             "ceiling/student": ceiling["student_score"]}, 0)
    callbacks = [lambda step, m: logger.log_dict(m, step)] if logger is not None else []
    folder = update_dir(home, update_id)
    checkpoints = fresh_checkpoints(folder / "checkpoints", parent)
    result = train(model, tokenizer, [*domain.train.records, *replay], cfg.train,
                   output_dir=checkpoints, callbacks=callbacks,
                   rollout_check=lambda text, demo: rollout_check(demo, text, cfg),
                   demonstration_ids={d.id for d in replay} if cfg.replay.learn_as == "demonstration" else ())
    meta = {"update_id": update_id, "parent": parent.ref, "dataset_hash": domain.train.content_hash,
            "method": cfg.train.method, "final": result.final, "ceiling": ceiling,
            "demo_tokens_cut": result.demo_tokens_cut, "seconds": result.seconds,
            "peak_rss_gb": result.peak_rss_gb,
            "replay_ids": [d.id for d in replay]}
    model_dir = save_trained_model(model, tokenizer, folder / "model", meta)
    return Trained(model_dir, cfg.train.method, result.seconds, result.final, ceiling, result.peak_rss_gb)


def _staged_domain(home: Path, update_id: str, cfg: UpdateConfig) -> DomainData:
    from sdft_ops.data import load_demonstrations

    state = load_state(home, update_id)
    train = load_demonstrations(update_dir(home, update_id) / "train.jsonl")
    return DomainData(state.domain, train, domain_suite(home, cfg, state.domain))


# ---------------------------------------------------------------------------- the four steps


def stage_dataset(update_id: str, dataset: DemoDataset, cfg: UpdateConfig, home: Path) -> DomainData:
    """Step 1: validate, split and record the update's data under updates/<id>/."""
    domain = prepare_domain(dataset, cfg, home)
    domain.train.write_jsonl(update_dir(home, update_id) / "train.jsonl")
    save_state(home, update_id, domain=domain.name, dataset_hash=domain.train.content_hash,
               n_train=len(domain.train), n_heldout=len(domain.suite.items),
               source=dataset.source, duplicates_dropped=dataset.dropped_duplicates)
    return domain


@tracking_calls()
def train_step(update_id: str, cfg: UpdateConfig, home: Path, registry) -> Trained:
    """Step 2: train from the current champion (or the base model); one MLflow run per update."""
    from sdft_ops.replay import draw_replay, lineage_pool
    from sdft_ops.tracking import start_update_run

    started = time.perf_counter()
    domain = _staged_domain(home, update_id, cfg)
    parent = registry.parent_for_update(cfg.model)
    replay = draw_replay(lineage_pool(registry, home, parent.version) if cfg.replay.fraction else [],
                         len(domain.train), cfg.replay, domain.train.content_hash)
    close_dead_runs(registry.client, cfg.tracking.experiment, {TAG_DOMAIN: domain.name}, home,
                    keep=update_id)
    logger = start_update_run(cfg.tracking.experiment, update_id, parent_run_id=parent.run_id,
                              uri=registry.tracking_uri, home=home, parent_version=parent.version,
                              tags={TAG_DOMAIN: domain.name, TAG_METHOD: cfg.train.method})
    try:
        logger.log_config(cfg.model_dump(mode="json"))
        if replay:
            ids = update_dir(home, update_id) / "replay_ids.json"
            ids.write_text(json.dumps([d.id for d in replay], indent=0))
            logger.log_artifact(ids)
            logger.log_dict({"replay/demonstrations": float(len(replay))}, 0)
        trained = train_candidate(update_id, domain, parent, cfg, home, logger, replay)
    except BaseException:
        logger.close("FAILED")
        raise
    logger.close()
    save_state(home, update_id, run_id=logger.run_id, parent=parent,
               model_dir=str(trained.model_dir), train_final=trained.final,
               train_seconds=trained.seconds, train_peak_rss_gb=trained.peak_rss_gb,
               ceiling=trained.ceiling, method=trained.method,
               replay_ids=[d.id for d in replay])
    _phase_ended(update_id, "train", started)
    return trained


def lineage_description(update_id: str, domain: str, method: str, parent_version: str | None) -> str:
    """A registered version's description: the lineage at a glance in the MLflow UI's version
    list (the same facts are the version's tags)."""
    parent = f"version {parent_version}" if parent_version else "the base model"
    return f"update {update_id}: {method} on {domain}, trained from {parent}"


@tracking_calls()
def eval_step(update_id: str, cfg: UpdateConfig, home: Path, registry) -> tuple[EvalReport, str]:
    """Step 3: score candidate and parent on every suite, register the candidate, log it all."""
    from sdft_ops.tracking import MlflowLogger, log_eval_report

    started = time.perf_counter()
    state = load_state(home, update_id)
    domain, parent, model_dir = _staged_domain(home, update_id, cfg), state.need("parent"), state.need("model_dir")
    report = evaluate_candidate(Path(model_dir), f"update:{update_id}", parent,
                                suites_for(cfg, home, domain), cfg, home, new_domain=domain.name)
    seconds = time.perf_counter() - started
    report.save(update_dir(home, update_id) / "eval_report.json")
    version = state.version or registry.register_candidate(
        model_dir, parent_version=parent.version, dataset_hash=state.dataset_hash,
        method=state.need("method"), base_model=cfg.model.name_or_path, run_id=state.run_id,
        tags={TAG_MODEL_DIR: model_dir, TAG_UPDATE_ID: update_id, TAG_DOMAIN: domain.name},
        description=lineage_description(update_id, domain.name, state.need("method"), parent.version))
    log_eval_report(MlflowLogger(state.run_id, registry.tracking_uri), report)
    save_state(home, update_id, version=version, eval_seconds=seconds)
    _phase_ended(update_id, "evaluate", started)
    return report, version


def gate_decision(update_id: str, cfg: UpdateConfig, home: Path, registry) -> GateDecision:
    """The gate's verdict on a scored update (pure apart from reading files and the champion)."""
    from sdft_ops.gate import decide_from_file

    state = load_state(home, update_id)
    return decide_from_file(update_dir(home, update_id) / "eval_report.json", cfg.gate,
                            parent_version=state.need("parent").version,
                            champion_version=registry.champion_version(),
                            new_domain=state.domain)


@tracking_calls()
def gate_step(update_id: str, cfg: UpdateConfig, home: Path, registry,
              blocked: Sequence[str] = ()) -> GateDecision:
    """Step 4: decide, then promote or reject (recorded in the ledger and the MLflow run).
    `blocked`: reasons from outside the gate (e.g. failed Dagster checks) that force a reject."""
    from sdft_ops.gate import RuleCheck
    from sdft_ops.tracking import MlflowLogger, log_eval_artifacts

    started = time.perf_counter()
    state = load_state(home, update_id)
    decision = gate_decision(update_id, cfg, home, registry)
    if blocked:
        extra = [RuleCheck(suite="*", rule="required", measured=0.0, threshold=1.0, passed=False,
                           note=reason) for reason in blocked]
        decision = GateDecision.from_checks([*decision.checks, *extra],
                                            **decision.model_dump(exclude={"promote", "checks", "reasons", "warnings", "decided_at"}))
    version = state.need("version")
    registry.set_gate_verdict(version, decision)
    why = "gate passed" if decision.promote else "; ".join(decision.reasons)
    if decision.promote:
        registry.promote(version, f"{update_id}: {why}", decision=decision,
                         expected_champion=state.need("parent").version)
        mark_domain_taught(home, state.domain)
    else:
        registry.reject(version, f"{update_id}: {why}", decision=decision)
    report = EvalReport.load(update_dir(home, update_id) / "eval_report.json")
    log_eval_artifacts(MlflowLogger(state.run_id, registry.tracking_uri), report, decision)
    folder = update_dir(home, update_id)
    (folder / "gate_decision.md").write_text(decision.to_markdown())
    (folder / "gate_decision.json").write_text(decision.model_dump_json(indent=1))
    save_state(home, update_id, promoted=decision.promote, reasons=decision.reasons)
    _phase_ended(update_id, "gate", started)
    return decision


# ---------------------------------------------------------------------------- the whole update


def outcome_of(update_id: str, home: Path) -> UpdateOutcome:
    state = load_state(home, update_id)
    folder = update_dir(home, update_id)
    decision = GateDecision.model_validate_json((folder / "gate_decision.json").read_text())
    return UpdateOutcome(update_id, state.domain, state.version, decision,
                         EvalReport.load(folder / "eval_report.json"), state.run_id,
                         bool(state.promoted), state)


def run_update(dataset: DemoDataset, cfg: UpdateConfig, *, update_id: str | None = None,
               home: Path | None = None, registry=None) -> UpdateOutcome:
    """The whole update in one call (the CLI's `update`, `sdft-ops demo`, the benchmark)."""
    home = data_home(home)
    registry = registry or PolicyRegistry.from_config(cfg, home)
    update_id = update_id or new_update_id(dataset.domains[0] if dataset.domains else "update", home)
    try:
        stage_dataset(update_id, dataset, cfg, home)
        train_step(update_id, cfg, home, registry)
        eval_step(update_id, cfg, home, registry)
        gate_step(update_id, cfg, home, registry)
    except (TrackingUnreachable, StoreLocked) as e:  # the data is staged: say how to go on
        raise type(e)(f"{e}; the update is kept: rerun with --update-id {update_id} to resume "
                      "it") from e
    return outcome_of(update_id, home)
