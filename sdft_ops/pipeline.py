"""One domain update, step by step: data → train → evaluate → gate → register / promote.

Each step is a function the CLI (`run_update`) and the Dagster assets both call:

    stage_dataset(update_id, dataset, cfg, home)   # 1. validate, split, record the domain
    train_step(update_id, cfg, home, registry)     # 2. train from the champion (or base model)
    eval_step(update_id, cfg, home, registry)      # 3. score candidate + parent, register candidate
    gate_step(update_id, cfg, home, registry)      # 4. decide; promote or reject, recorded

Between steps an update lives in `<home>/updates/<update_id>/` (`update_state.UpdateState` in
state.json, train.jsonl, model-<hash>/, eval_report.json, gate_decision.*), so a step can run in
another process (a Dagster asset). What it is scored on, and the score cache:
`evaluation.battery`. Each step's MLflow calls run under `tracking_recovery.tracking_calls`
(bounded timeouts, a failure in one line); an update whose tracking fails keeps its folder, and
is resumed by a rerun with its id.

The weights keep one identity from training to promotion (`weights_identity`): each training
publishes a new folder named by its hash, the report and the registered version record that
hash, the gate checks that they agree, and the champion moves only to the judged weights. A
rerun of an update id resumes it: from a newer champion if one was promoted meanwhile (its
stale registered version is superseded); a finished update (gated) is refused, unchanged.
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
from sdft_ops.models import check_model_reference
from sdft_ops.registry import (
    CANDIDATE,
    TAG_DOMAIN,
    TAG_METHOD,
    TAG_MODEL_DIR,
    TAG_UPDATE_ID,
    PolicyRegistry,
)
from sdft_ops.settings import UpdateConfig
from sdft_ops.tracking_recovery import close_dead_runs, tracking_calls
from sdft_ops.update_state import (
    Parent,
    UpdateState,
    fresh_checkpoints,
    load_state,
    new_update_id,
    refuse_finished,
    save_state,
    state_path,
    update_dir,
)
from sdft_ops.weights_identity import (
    TAG_REPORT_SHA256,
    TAG_WEIGHTS_SHA256,
    model_ref,
    publish_model,
    report_sha256,
    weights_sha256,
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
    weights_sha256: str
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
    """Train from the parent on the domain's demos (+ `replay`); publishes a new folder
    updates/<id>/model-<hash> (`weights_identity.publish_model`), never writing an existing one."""
    from sdft_ops.engine import train
    from sdft_ops.engine.ceiling import teacher_ceiling
    from sdft_ops.engine.checkpoint import save_trained_model
    from sdft_ops.engine.context import prepare_examples
    from sdft_ops.models import load_model_at, load_tokenizer

    demos = [*domain.train.records, *replay]
    as_demonstration = {d.id for d in replay} if cfg.replay.learn_as == "demonstration" else ()
    # the input limits before any model work: a prompt over max_prompt_tokens is refused here,
    # not after the ceiling decoded it (8 prompts of 90 KB grew it to 19.8 GB; issue 33).
    # train() tokenizes them again: milliseconds, against a decode of an oversized batch
    prepare_examples(demos, load_tokenizer(parent.model_dir), cfg.train, as_demonstration)
    model, tokenizer = load_model_at(parent.model_dir, cfg.model)
    ceiling = None
    if cfg.train.method == "sdft" and cfg.ceiling.enabled:
        ceiling = teacher_ceiling(
            model, tokenizer, domain.train.records, domain.suite.scorer
            if callable(domain.suite.scorer) else get_scorer(domain.suite.scorer),
            cfg.train.teacher_context, reference=reference_for, sample_size=cfg.ceiling.sample_size,
            max_new_tokens=domain.suite.max_new_tokens, floor=cfg.ceiling.floor,
            strict=cfg.ceiling.strict, bf16=cfg.train.autocast_bf16,
            max_prompt_tokens=cfg.train.max_prompt_tokens).model_dump()
        if logger is not None:
            logger.log_dict({"ceiling/teacher": ceiling["teacher_score"],
                             "ceiling/student": ceiling["student_score"]}, 0)
    callbacks = [lambda step, m: logger.log_dict(m, step)] if logger is not None else []
    folder = update_dir(home, update_id)
    checkpoints = fresh_checkpoints(folder / "checkpoints", parent)
    result = train(model, tokenizer, demos, cfg.train, output_dir=checkpoints, callbacks=callbacks,
                   rollout_check=lambda text, demo: rollout_check(demo, text, cfg),
                   demonstration_ids=as_demonstration)
    meta = {"update_id": update_id, "parent": parent.ref, "dataset_hash": domain.train.content_hash,
            "method": cfg.train.method, "final": result.final, "ceiling": ceiling,
            "demo_tokens_cut": result.demo_tokens_cut, "seconds": result.seconds,
            "peak_rss_gb": result.peak_rss_gb,
            "replay_ids": [d.id for d in replay]}
    model_dir, sha256 = publish_model(lambda dest: save_trained_model(model, tokenizer, dest, meta),
                                      folder)
    return Trained(model_dir, sha256, cfg.train.method, result.seconds, result.final, ceiling,
                   result.peak_rss_gb)


def refuse_gated(update_id: str, home: Path, registry) -> None:
    """`refuse_finished`, after recording a gate whose registry action (in the ledger) happened
    but whose state was not written (killed in between): a rerun must not train a champion
    from itself."""
    state = load_state(home, update_id) if state_path(home, update_id).is_file() else None
    if state is not None and state.promoted is None and state.version is not None:
        acted = [e for e in registry.history() if e.version == state.version
                 and e.action in ("promote", "manual_promote", "reject")]
        if acted:
            promoted = acted[-1].action != "reject"
            save_state(home, update_id, promoted=promoted,
                       reasons=[] if promoted else [acted[-1].why])
            if promoted:
                mark_domain_taught(home, state.domain)
    refuse_finished(home, update_id)


def _staged_domain(home: Path, update_id: str, cfg: UpdateConfig) -> DomainData:
    from sdft_ops.data import load_demonstrations

    state = load_state(home, update_id)
    train = load_demonstrations(update_dir(home, update_id) / "train.jsonl")
    return DomainData(state.domain, train, domain_suite(home, cfg, state.domain))


# ---------------------------------------------------------------------------- the four steps


def stage_dataset(update_id: str, dataset: DemoDataset, cfg: UpdateConfig, home: Path) -> DomainData:
    """Step 1: validate, split and record the update's data under updates/<id>/."""
    refuse_finished(home, update_id)
    check_model_reference(cfg.model)  # a misspelt model stops here, before anything is written
    domain = prepare_domain(dataset, cfg, home)
    domain.train.write_jsonl(update_dir(home, update_id) / "train.jsonl")
    save_state(home, update_id, domain=domain.name, dataset_hash=domain.train.content_hash,
               n_train=len(domain.train), n_heldout=len(domain.suite.items),
               source=dataset.source, duplicates_dropped=dataset.dropped_duplicates)
    return domain


@tracking_calls()
def train_step(update_id: str, cfg: UpdateConfig, home: Path, registry) -> Trained:
    """Step 2: train from the current champion (or the base model); one MLflow run per update."""
    from sdft_ops.replay import draw_replay, replay_pool
    from sdft_ops.tracking import start_update_run

    started = time.perf_counter()
    refuse_gated(update_id, home, registry)
    domain = _staged_domain(home, update_id, cfg)
    parent = registry.parent_for_update(cfg.model)
    replay = draw_replay(replay_pool(registry, home, parent.version, cfg.replay),
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
        logger.set_tags({TAG_WEIGHTS_SHA256: trained.weights_sha256})
    except BaseException:
        logger.close("FAILED")
        raise
    logger.close()
    save_state(home, update_id, run_id=logger.run_id, parent=parent,
               model_dir=str(trained.model_dir), weights_sha256=trained.weights_sha256,
               train_final=trained.final,
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
    """Step 3: score candidate and parent on every suite, register the candidate (or find the
    version a killed run registered for these weights), log it all."""
    from sdft_ops.tracking import MlflowLogger, log_eval_report
    from sdft_ops.version_identity import candidate_version

    started = time.perf_counter()
    refuse_gated(update_id, home, registry)
    state = load_state(home, update_id)
    domain, parent, model_dir = _staged_domain(home, update_id, cfg), state.need("parent"), state.need("model_dir")
    if state.weights_sha256 is None:  # trained before hashes were recorded: hashed once, here
        state = save_state(home, update_id, weights_sha256=weights_sha256(model_dir))
    sha256 = state.weights_sha256
    report = evaluate_candidate(Path(model_dir), model_ref(update_id, sha256), parent,
                                suites_for(cfg, home, domain), cfg, home, new_domain=domain.name,
                                candidate_sha256=sha256)
    seconds = time.perf_counter() - started
    report_file = report.save(update_dir(home, update_id) / "eval_report.json")
    version = candidate_version(registry, update_id, sha256, parent.version)
    if version is None:
        version = registry.register_candidate(
            model_dir, parent_version=parent.version, dataset_hash=state.dataset_hash,
            method=state.need("method"), base_model=cfg.model.name_or_path, run_id=state.run_id,
            tags={TAG_MODEL_DIR: model_dir, TAG_UPDATE_ID: update_id, TAG_DOMAIN: domain.name,
                  TAG_REPORT_SHA256: report_sha256(report_file)}, weights_sha256=sha256,
            description=lineage_description(update_id, domain.name, state.need("method"),
                                            parent.version))
    else:  # registered by a run killed before it recorded the version: the same weights
        registry.client.set_model_version_tag(registry.name, version, TAG_REPORT_SHA256,
                                              report_sha256(report_file))
        registry.client.set_registered_model_alias(registry.name, CANDIDATE, version)
    save_state(home, update_id, version=version, eval_seconds=seconds)
    log_eval_report(MlflowLogger(state.run_id, registry.tracking_uri), report)
    _phase_ended(update_id, "evaluate", started)
    return report, version


def gate_decision(update_id: str, cfg: UpdateConfig, home: Path, registry) -> GateDecision:
    """The gate's verdict on a scored update (pure apart from reading files, the champion and
    the candidate version's tags): the policy's checks, and that the report scored the
    candidate version's weights and is the report recorded for it (`identity_check`)."""
    from sdft_ops.gate import decide_from_file
    from sdft_ops.version_identity import identity_check, with_identity

    state = load_state(home, update_id)
    version, path = state.need("version"), update_dir(home, update_id) / "eval_report.json"
    decision = decide_from_file(path, cfg.gate, parent_version=state.need("parent").version,
                                champion_version=registry.champion_version(),
                                new_domain=state.domain)
    tags = registry.get_version(version).tags
    return with_identity(decision, identity_check(path, version, tags))


@tracking_calls()
def gate_step(update_id: str, cfg: UpdateConfig, home: Path, registry,
              blocked: Sequence[str] = ()) -> GateDecision:
    """Step 4: decide, then promote or reject (recorded in the ledger and the MLflow run).
    `blocked`: reasons from outside the gate (e.g. failed Dagster checks) that force a reject."""
    from sdft_ops.gate import RuleCheck
    from sdft_ops.tracking import MlflowLogger, log_eval_artifacts

    started = time.perf_counter()
    refuse_gated(update_id, home, registry)
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
    refuse_gated(update_id, home, registry)
    try:
        stage_dataset(update_id, dataset, cfg, home)
        train_step(update_id, cfg, home, registry)
        eval_step(update_id, cfg, home, registry)
        gate_step(update_id, cfg, home, registry)
    except (TrackingUnreachable, StoreLocked) as e:  # the data is staged: say how to go on
        raise type(e)(f"{e}; the update is kept: rerun with --update-id {update_id} to resume "
                      "it") from e
    return outcome_of(update_id, home)
