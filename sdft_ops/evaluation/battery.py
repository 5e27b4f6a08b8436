"""The suites an update is scored on, the data home's domain records, and the score cache.

The battery (`suites_for`): the prior-capability suites, safety, instruction following, drift,
then one held-out suite per domain a promoted update taught in this data home (plus the domain
being updated), so that forgetting of earlier *updates* is measured too and the accuracy matrix
of a chain can be built. Domains are recorded in `<home>/domains/<name>.json` when an update
stages them; `taught` is set when one is promoted.

Scores are cached by (model, suite, item hash) in `<home>/eval_cache/`: the champion, scored
when it was a candidate, is not re-scored as the next update's reference.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from sdft_ops.data import DemoDataset
from sdft_ops.domains import DOMAINS, load_shipped, reference_for
from sdft_ops.evaluation.report import EvalReport, build_report
from sdft_ops.evaluation.scorers import get_scorer
from sdft_ops.evaluation.suites import GenerationSuite, GenItem, load_suite_file
from sdft_ops.evaluation.types import SuiteResult, hash_item_ids
from sdft_ops.gate import DOMAIN_PREFIX
from sdft_ops.home import inside
from sdft_ops.settings import UpdateConfig
from sdft_ops.update_state import Parent


@dataclass(frozen=True)
class DomainData:
    name: str
    train: DemoDataset
    suite: GenerationSuite  # held-out items, named domain/<name>


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
    records = Path(home) / "domains"
    inside(records, f"{name}.json")  # the schema keeps names safe; this keeps paths safe
    records.mkdir(parents=True, exist_ok=True)
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
        suite_file = records / f"{name}.heldout.jsonl"
        suite_file.write_text("".join(json.dumps({"id": i.item_id, "prompt": list(i.messages),
                                                  "reference": i.reference, "scorer": cfg.scorer})
                                      + "\n" for i in suite.items))
        record = {"name": name, "shipped": False, "file": str(suite_file)}
    # `taught`: set when an update of this domain is promoted; only taught domains are scored
    # by later updates (a rejected or failed update's domain is no earlier skill to keep)
    path = records / f"{name}.json"
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


def domain_suite(home: Path, cfg: UpdateConfig, name: str) -> GenerationSuite:
    """The recorded held-out suite of domain `name` (staged by `prepare_domain`)."""
    for suite in recorded_domain_suites(home, cfg):
        if suite.name == f"{DOMAIN_PREFIX}{name}":
            return suite
    raise FileNotFoundError(f"domain {name!r} is not recorded in {Path(home) / 'domains'}; "
                            "stage its data first (demo_dataset)")


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


def _cache_path(home: Path, model_ref: str, suite_name: str) -> Path:
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in s)  # noqa: E731
    return Path(home) / "eval_cache" / safe(model_ref) / f"{safe(suite_name)}.json"


def _suite_hash(suite) -> str | None:
    items = getattr(suite, "items", None)
    if not items:
        return None
    return hash_item_ids([getattr(i, "item_id", None) or getattr(i, "id") for i in items])


def score_model(model_dir: str, model_ref: str, suites: Sequence, cfg: UpdateConfig,
                home: Path) -> dict[str, SuiteResult]:
    """Results of `suites` for one model, reusing cached results scored on the same items."""
    from sdft_ops.evaluation.suites import run_suites
    from sdft_ops.models import load_model_at

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
        model, tokenizer = load_model_at(model_dir, cfg.model)
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
