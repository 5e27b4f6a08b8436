"""One domain update, step by step: data → train → evaluate → gate → register / promote.

Each step is a function the CLI (`run_update`) and the Dagster assets both call:

    stage_dataset(update_id, dataset, cfg, home)   # 1. validate, split, record the domain
    train_step(update_id, cfg, home, registry)     # 2. train from the champion (or base model)
    eval_step(update_id, cfg, home, registry)      # 3. score candidate + parent, register candidate
    gate_step(update_id, cfg, home, registry)      # 4. decide; promote or reject, recorded

State between steps lives in `<home>/updates/<update_id>/` (state.json, train.jsonl, model/,
eval_report.json, gate_decision.*), so a step can run in another process (a Dagster asset).

Held-out suites of earlier domains are recorded in the data home and scored at every later
update, so that forgetting of earlier *updates* (not only of prior skills) is measured and the
accuracy matrix of a chain can be built. A model's suite results are cached by (model, suite,
item hash): the champion, scored when it was a candidate, is not re-scored as the reference.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from sdft_ops.data import DemoDataset, Demonstration
from sdft_ops.domains import DOMAINS, load_shipped, reference_for
from sdft_ops.evaluation.report import EvalReport, build_report
from sdft_ops.evaluation.scorers import get_scorer
from sdft_ops.evaluation.suites import GenerationSuite, GenItem, load_suite_file
from sdft_ops.evaluation.types import SuiteResult
from sdft_ops.gate import GateDecision, decide
from sdft_ops.home import data_home
from sdft_ops.settings import UpdateConfig

log = logging.getLogger(__name__)
DOMAIN_PREFIX = "domain/"
MODEL_DIR_TAG = "sdft_ops.model_dir"


@dataclass(frozen=True)
class DomainData:
    name: str
    train: DemoDataset
    suite: GenerationSuite  # held-out items, named domain/<name>


@dataclass(frozen=True)
class Parent:
    version: str | None  # registered version, None = the base model
    model_dir: str  # folder or hub id to load
    ref: str  # stable identity for caches and reports
    run_id: str | None = None


@dataclass
class Trained:
    model_dir: Path
    method: str
    seconds: float
    final: dict[str, float]
    ceiling: dict | None = None


@dataclass
class UpdateOutcome:
    update_id: str
    domain: str
    version: str | None
    decision: GateDecision
    report: EvalReport
    run_id: str | None
    promoted: bool
    extras: dict = field(default_factory=dict)


def update_dir(home: Path, update_id: str) -> Path:
    """`<home>/updates/<update_id>`; an id that would lead outside it is refused."""
    from sdft_ops.data import inside

    return inside(Path(home) / "updates", update_id)


# ---------------------------------------------------------------------------- data


def _domain_suite(name: str, items: Sequence[GenItem], scorer, max_new_tokens: int,
                  cfg: UpdateConfig) -> GenerationSuite:
    cap, length_cap = cfg.eval.domain_items, cfg.eval.domain_max_new_tokens
    return GenerationSuite(f"{DOMAIN_PREFIX}{name}", tuple(items[:cap] if cap else items),
                           scorer=scorer, max_new_tokens=min(max_new_tokens, length_cap or max_new_tokens))


def shipped_domain_suite(name: str, cfg: UpdateConfig) -> GenerationSuite:
    domain = DOMAINS[name]
    _, items = load_shipped(name)
    gen_items = [GenItem(i.id, tuple(i.messages), i.reference) for i in items]
    return _domain_suite(name, gen_items, domain.scorer, domain.max_new_tokens, cfg)


def prepare_domain(dataset: DemoDataset, cfg: UpdateConfig, home: Path) -> DomainData:
    """Split a dataset into training demos and a held-out suite, and record the domain so that
    later updates keep scoring it. A shipped domain uses its own eval set and scorer."""
    if len(dataset.domains) != 1:
        raise ValueError(f"a domain update holds one domain; {dataset.source} has {dataset.domains}")
    name = dataset.domains[0]
    from sdft_ops.data import inside

    registry = Path(home) / "domains"
    inside(registry, f"{name}.json")  # the schema keeps names safe; this keeps paths safe
    registry.mkdir(parents=True, exist_ok=True)
    if name in DOMAINS:
        train = dataset
        suite = shipped_domain_suite(name, cfg)
        record = {"name": name, "shipped": True}
    else:
        train, heldout = dataset.split(cfg.heldout_fraction, seed=dataset.content_hash)
        if not len(train) or not len(heldout):
            raise ValueError(f"{dataset.source}: {len(dataset)} demonstrations are too few to split "
                             f"train/held-out at {cfg.heldout_fraction}; add demonstrations")
        items = [GenItem(d.id, tuple(d.prompt_messages()), reference_for(d)) for d in heldout.records]
        get_scorer(cfg.scorer)  # fail early on an unknown scorer name
        suite = _domain_suite(name, items, cfg.scorer, cfg.train.max_new_tokens, cfg)
        suite_file = registry / f"{name}.heldout.jsonl"
        suite_file.write_text("".join(json.dumps({"id": i.item_id, "prompt": list(i.messages),
                                                  "reference": i.reference, "scorer": cfg.scorer})
                                      + "\n" for i in suite.items))
        record = {"name": name, "shipped": False, "file": str(suite_file)}
    # `taught`: set when an update of this domain is promoted; only taught domains are scored
    # by later updates (a rejected or failed update's domain is no earlier skill to keep)
    path = registry / f"{name}.json"
    record["taught"] = path.is_file() and json.loads(path.read_text()).get("taught", True)
    path.write_text(json.dumps(record))
    return DomainData(name, train, suite)


def mark_domain_taught(home: Path, name: str) -> None:
    path = Path(home) / "domains" / f"{name}.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"taught": True}))


def recorded_domain_suites(home: Path, cfg: UpdateConfig, taught_only: bool = False) -> list[GenerationSuite]:
    """Held-out suites of every domain staged so far in this data home (`taught_only`: of those
    a promoted update taught), in name order."""
    suites = []
    for path in sorted((Path(home) / "domains").glob("*.json")):
        record = json.loads(path.read_text())
        if taught_only and not record.get("taught", True):
            continue
        if record["shipped"]:
            suites.append(shipped_domain_suite(record["name"], cfg))
        else:
            suites.append(load_suite_file(record["file"], name=f"{DOMAIN_PREFIX}{record['name']}"))
    return suites


def suites_for(cfg: UpdateConfig, home: Path, current: DomainData | None = None) -> list:
    from sdft_ops.evaluation.builtin import (
        default_drift_suite,
        default_instruction_suite,
        default_prior_battery,
        default_safety_suites,
        subset_indices,
    )
    from sdft_ops.evaluation.suites_drift import DriftSuite, load_drift_file

    suites = list(default_prior_battery(cfg.eval.prior_sizes, cfg.eval.seed))
    if cfg.eval.safety:
        suites += [replace(s, items=tuple(s.items[i] for i in subset_indices(
            len(s.items), cfg.eval.safety_items, f"{cfg.eval.seed}:{s.name}")))
            for s in default_safety_suites()]
    if cfg.eval.instruction_following:
        suites.append(default_instruction_suite(cfg.eval.instruction_following_items,
                                                seed=cfg.eval.seed))
    if cfg.eval.drift and cfg.eval.drift_file:
        suites.append(DriftSuite("drift", load_drift_file(cfg.eval.drift_file)))
    elif cfg.eval.drift:
        suites.append(default_drift_suite())
    domain_suites = {s.name: s for s in recorded_domain_suites(home, cfg, taught_only=True)}
    if current is not None:
        domain_suites[current.suite.name] = current.suite
    return suites + [domain_suites[k] for k in sorted(domain_suites)]


# ---------------------------------------------------------------------------- models


def resolve_parent(registry, cfg: UpdateConfig) -> Parent:
    """The current champion (its model folder), else the base model of `cfg.model`."""
    from sdft_ops.models import resolve_model_path

    version = registry.champion_version()
    if version is None:
        path = resolve_model_path(cfg.model)
        return Parent(None, path, f"base:{cfg.model.name_or_path}")
    mv = registry.get_version(version)
    model_dir = mv.tags.get(MODEL_DIR_TAG)
    if not model_dir or not Path(model_dir).is_dir():
        import mlflow

        local = mlflow.artifacts.download_artifacts(f"models:/{registry.name}/{version}",
                                                    tracking_uri=registry.tracking_uri)
        model_dir = str(next(Path(local).rglob("config.json")).parent)
    # the same identity it was scored under as a candidate, so its cached results are reused
    update_id = mv.tags.get("sdft_ops.update_id")
    ref = f"update:{update_id}" if update_id else f"{registry.name}/v{version}"
    return Parent(version, model_dir, ref, run_id=mv.run_id)


def _load(model_dir: str, cfg: UpdateConfig):
    from sdft_ops.models import load_model

    return load_model(cfg.model.model_copy(update={"name_or_path": model_dir, "gguf_file": None}))


def rollout_check(demo: Demonstration, text: str, cfg: UpdateConfig) -> bool:
    """Whether `text` answers `demo` right by its domain's scorer (the `rollout_filter`)."""
    scorer = DOMAINS[demo.domain].scorer if demo.domain in DOMAINS else get_scorer(cfg.scorer)
    return scorer(text, reference_for(demo)) >= 1.0


def parent_identity(parent: Parent) -> dict:
    """The parent an update trains from: registered version, ref and a hash of its weights."""
    from sdft_ops.models import sha256_file

    weights = sorted(Path(parent.model_dir).glob("*.safetensors")) if Path(parent.model_dir).is_dir() else []
    digest = hashlib.sha256("".join(sha256_file(w) for w in weights).encode()).hexdigest()
    return {"version": parent.version, "ref": parent.ref, "weights_sha256": digest}


def fresh_checkpoints(folder: Path, parent: Parent) -> Path:
    """`folder`, emptied when its checkpoints were trained from another parent than `parent`
    (an update killed mid-training, another promoted meanwhile): resuming them would train
    from the old champion while recording the new one as parent. The rerun starts cleanly."""
    import shutil

    identity, record = parent_identity(parent), folder / "parent.json"
    if folder.is_dir() and (not record.is_file() or json.loads(record.read_text()) != identity):
        log.warning("checkpoints in %s were trained from another parent; restarting from %s",
                    folder, parent.ref)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(identity))
    return folder


def train_candidate(update_id: str, domain: DomainData, parent: Parent, cfg: UpdateConfig,
                    home: Path, logger=None, replay: Sequence[Demonstration] = ()) -> Trained:
    """Train from the parent on the domain's demos (+ `replay`); writes updates/<id>/model."""
    from sdft_ops.engine import train
    from sdft_ops.engine.ceiling import teacher_ceiling
    from sdft_ops.engine.checkpoint import save_trained_model

    model, tokenizer = _load(parent.model_dir, cfg)
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
                   rollout_check=lambda text, demo: rollout_check(demo, text, cfg))
    meta = {"update_id": update_id, "parent": parent.ref, "dataset_hash": domain.train.content_hash,
            "method": cfg.train.method, "final": result.final, "ceiling": ceiling,
            "demo_tokens_cut": result.demo_tokens_cut, "seconds": result.seconds,
            "replay_ids": [d.id for d in replay]}
    model_dir = save_trained_model(model, tokenizer, folder / "model", meta)
    return Trained(model_dir, cfg.train.method, result.seconds, result.final, ceiling)


# ---------------------------------------------------------------------------- evaluation


def _cache_path(home: Path, model_ref: str, suite_name: str) -> Path:
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in s)  # noqa: E731
    return Path(home) / "eval_cache" / safe(model_ref) / f"{safe(suite_name)}.json"


def _suite_hash(suite) -> str | None:
    from sdft_ops.evaluation.types import hash_item_ids

    items = getattr(suite, "items", None)
    if not items:
        return None
    return hash_item_ids([getattr(i, "item_id", None) or getattr(i, "id") for i in items])


def score_model(model_dir: str, model_ref: str, suites: Sequence, cfg: UpdateConfig,
                home: Path) -> dict[str, SuiteResult]:
    """Results of `suites` for one model, reusing cached results scored on the same items."""
    from sdft_ops.evaluation.suites import run_suites

    results, todo = {}, []
    for suite in suites:
        path, expected = _cache_path(home, model_ref, suite.name), _suite_hash(suite)
        if expected and path.is_file():
            cached = SuiteResult.model_validate_json(path.read_text())
            if cached.item_ids_hash == expected:
                results[suite.name] = cached
                continue
        todo.append(suite)
    if todo:
        model, tokenizer = _load(model_dir, cfg)
        fresh = run_suites(model, tokenizer, todo, batch_size=cfg.eval.batch_size,
                           precision=cfg.eval.precision)
        for name, result in fresh.items():
            path = _cache_path(home, model_ref, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(result.model_dump_json())
        results |= fresh
    return {s.name: results[s.name] for s in suites}


def evaluate_candidate(candidate_dir: Path, candidate_ref: str, parent: Parent, suites: Sequence,
                       cfg: UpdateConfig, home: Path) -> EvalReport:
    candidate = score_model(str(candidate_dir), candidate_ref, suites, cfg, home)
    reference = score_model(parent.model_dir, parent.ref, suites, cfg, home)
    return build_report(candidate_ref, candidate, reference_ref=parent.ref,
                        reference_results=reference, config=cfg.model_dump(mode="json"),
                        seed=cfg.eval.seed, n_boot=cfg.eval.n_boot)


# ---------------------------------------------------------------------------- state


def state_path(home: Path, update_id: str) -> Path:
    return update_dir(home, update_id) / "state.json"


def load_state(home: Path, update_id: str) -> dict:
    path = state_path(home, update_id)
    if not path.is_file():
        raise FileNotFoundError(f"update {update_id!r} has no state in {path.parent}; run its "
                                "earlier steps first (demo_dataset → sdft_checkpoint → eval_results)")
    return json.loads(path.read_text())


def save_state(home: Path, update_id: str, **fields) -> dict:
    path = state_path(home, update_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {**(json.loads(path.read_text()) if path.is_file() else {}), **fields}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, default=str))
    tmp.replace(path)
    return state


def _domain_from_state(home: Path, update_id: str, cfg: UpdateConfig) -> DomainData:
    from sdft_ops.data import load_demonstrations

    state = load_state(home, update_id)
    train = load_demonstrations(update_dir(home, update_id) / "train.jsonl")
    suite = next(s for s in recorded_domain_suites(home, cfg)
                 if s.name == f"{DOMAIN_PREFIX}{state['domain']}")
    return DomainData(state["domain"], train, suite)


def _parent_from_state(state: dict) -> Parent:
    p = state["parent"]
    return Parent(p["version"], p["model_dir"], p["ref"], p.get("run_id"))


# ---------------------------------------------------------------------------- the four steps


def stage_dataset(update_id: str, dataset: DemoDataset, cfg: UpdateConfig, home: Path) -> DomainData:
    """Step 1: validate, split and record the update's data under updates/<id>/."""
    domain = prepare_domain(dataset, cfg, home)
    domain.train.write_jsonl(update_dir(home, update_id) / "train.jsonl")
    save_state(home, update_id, domain=domain.name, dataset_hash=domain.train.content_hash,
               n_train=len(domain.train), n_heldout=len(domain.suite.items),
               source=dataset.source, duplicates_dropped=dataset.dropped_duplicates)
    return domain


def train_step(update_id: str, cfg: UpdateConfig, home: Path, registry) -> Trained:
    """Step 2: train from the current champion (or the base model); one MLflow run per update."""
    from sdft_ops.replay import draw_replay, lineage_pool
    from sdft_ops.tracking import start_update_run

    domain = _domain_from_state(home, update_id, cfg)
    parent = resolve_parent(registry, cfg)
    replay = draw_replay(lineage_pool(registry, home, parent.version) if cfg.replay.fraction else [],
                         len(domain.train), cfg.replay, domain.train.content_hash)
    logger = start_update_run(cfg.tracking.experiment, update_id, parent_run_id=parent.run_id,
                              uri=registry.tracking_uri, home=home, parent_version=parent.version,
                              tags={"sdft_ops.domain": domain.name,
                                    "sdft_ops.method": cfg.train.method})
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
    save_state(home, update_id, run_id=logger.run_id, parent=parent.__dict__,
               model_dir=str(trained.model_dir), train_final=trained.final,
               train_seconds=trained.seconds, ceiling=trained.ceiling, method=trained.method,
               replay_ids=[d.id for d in replay])
    return trained


def eval_step(update_id: str, cfg: UpdateConfig, home: Path, registry) -> tuple[EvalReport, str]:
    """Step 3: score candidate and parent on every suite, register the candidate, log it all."""
    from sdft_ops.tracking import MlflowLogger, log_eval_report

    state = load_state(home, update_id)
    domain, parent = _domain_from_state(home, update_id, cfg), _parent_from_state(state)
    report = evaluate_candidate(Path(state["model_dir"]), f"update:{update_id}", parent,
                                suites_for(cfg, home, domain), cfg, home)
    report.save(update_dir(home, update_id) / "eval_report.json")
    version = state.get("version") or registry.register_candidate(
        state["model_dir"], parent_version=parent.version, dataset_hash=state["dataset_hash"],
        method=state["method"], base_model=cfg.model.name_or_path, run_id=state["run_id"],
        tags={MODEL_DIR_TAG: state["model_dir"], "sdft_ops.update_id": update_id,
              "sdft_ops.domain": domain.name})
    log_eval_report(MlflowLogger(state["run_id"], registry.tracking_uri), report)
    save_state(home, update_id, version=version)
    return report, version


def gate_decision(update_id: str, cfg: UpdateConfig, home: Path, registry) -> GateDecision:
    """The gate's verdict on a scored update (pure apart from reading files and the champion)."""
    from sdft_ops.gate import decide_from_file

    state = load_state(home, update_id)
    return decide_from_file(update_dir(home, update_id) / "eval_report.json", cfg.gate,
                            parent_version=state["parent"]["version"],
                            champion_version=registry.champion_version(),
                            new_domain=state["domain"])


def gate_step(update_id: str, cfg: UpdateConfig, home: Path, registry,
              blocked: Sequence[str] = ()) -> GateDecision:
    """Step 4: decide, then promote or reject (recorded in the ledger and the MLflow run).
    `blocked`: reasons from outside the gate (e.g. failed Dagster checks) that force a reject."""
    from sdft_ops.gate import RuleCheck
    from sdft_ops.tracking import MlflowLogger, log_eval_artifacts

    state = load_state(home, update_id)
    decision = gate_decision(update_id, cfg, home, registry)
    if blocked:
        extra = [RuleCheck(suite="*", rule="required", measured=0.0, threshold=1.0, passed=False,
                           note=reason) for reason in blocked]
        decision = GateDecision.from_checks([*decision.checks, *extra],
                                            **decision.model_dump(exclude={"promote", "checks", "reasons", "warnings", "decided_at"}))
    version = state["version"]
    registry.set_gate_verdict(version, decision)
    why = "gate passed" if decision.promote else "; ".join(decision.reasons)
    if decision.promote:
        registry.promote(version, f"{update_id}: {why}", decision=decision,
                         expected_champion=state["parent"]["version"])
        mark_domain_taught(home, state["domain"])
    else:
        registry.reject(version, f"{update_id}: {why}", decision=decision)
    report = EvalReport.load(update_dir(home, update_id) / "eval_report.json")
    log_eval_artifacts(MlflowLogger(state["run_id"], registry.tracking_uri), report, decision)
    folder = update_dir(home, update_id)
    (folder / "gate_decision.md").write_text(decision.to_markdown())
    (folder / "gate_decision.json").write_text(decision.model_dump_json(indent=1))
    save_state(home, update_id, promoted=decision.promote, reasons=decision.reasons)
    return decision


# ---------------------------------------------------------------------------- the whole update


def new_update_id(domain: str, home: Path) -> str:
    """`<UTC time>-<domain>-<6 hex>`, its folder created atomically: two updates started in the
    same second never share an id (mkdir fails for the second, which draws again)."""
    import secrets

    (Path(home) / "updates").mkdir(parents=True, exist_ok=True)
    while True:
        update_id = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{domain}-{secrets.token_hex(3)}"
        try:
            update_dir(home, update_id).mkdir()
            return update_id
        except FileExistsError:
            continue


def make_registry(cfg: UpdateConfig, home: Path):
    from sdft_ops.registry import PolicyRegistry

    return PolicyRegistry(cfg.tracking.tracking_uri, name=cfg.tracking.model_name, home=home,
                          experiment=cfg.tracking.experiment)


def outcome_of(update_id: str, home: Path) -> UpdateOutcome:
    state = load_state(home, update_id)
    folder = update_dir(home, update_id)
    decision = GateDecision.model_validate_json((folder / "gate_decision.json").read_text())
    return UpdateOutcome(update_id, state["domain"], state.get("version"), decision,
                         EvalReport.load(folder / "eval_report.json"), state.get("run_id"),
                         bool(state.get("promoted")), extras=state)


def run_update(dataset: DemoDataset, cfg: UpdateConfig, *, update_id: str | None = None,
               home: Path | None = None, registry=None) -> UpdateOutcome:
    """The whole update in one call (the CLI's `update`, `sdft-ops demo`, the benchmark)."""
    home = data_home(home)
    registry = registry or make_registry(cfg, home)
    update_id = update_id or new_update_id(dataset.domains[0] if dataset.domains else "update", home)
    stage_dataset(update_id, dataset, cfg, home)
    train_step(update_id, cfg, home, registry)
    eval_step(update_id, cfg, home, registry)
    gate_step(update_id, cfg, home, registry)
    return outcome_of(update_id, home)


def demos_from(path_or_records: str | Path | Sequence[Demonstration]) -> DemoDataset:
    from sdft_ops.data import load_demonstrations

    if isinstance(path_or_records, (str, Path)):
        return load_demonstrations(path_or_records)
    return DemoDataset.from_records(path_or_records)
