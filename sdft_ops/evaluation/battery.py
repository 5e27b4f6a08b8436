"""The suites an update is scored on, the data home's domain records, and the score cache.

The battery (`suites_for`): the prior-capability suites, safety, instruction following, drift,
then one held-out suite per domain a promoted update taught in this data home (plus the domain
being updated), so that forgetting of earlier *updates* is measured too and the accuracy matrix
of a chain can be built. Domains are recorded in `<home>/domains/<name>.json` when an update
stages them; `taught` is set when one is promoted.

Scores are cached per (model, suite, item) in `<home>/eval_cache/` (`ModelScores`): the champion,
scored when it was a candidate, is re-scored as the next update's reference only on items it
was not scored on. The suites of the gate's sequential tests are scored in blocks until the test
settles (`evaluate_candidate`, `evaluation.sequential`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from sdft_ops.data import DemoDataset
from sdft_ops.domains import DOMAINS, load_shipped, reference_for
from sdft_ops.engine.sampling import DECODER_VERSION
from sdft_ops.evaluation.report import EvalReport, build_report
from sdft_ops.evaluation.scorers import get_scorer
from sdft_ops.evaluation.suites import GenerationSuite, GenItem, load_suite_file
from sdft_ops.evaluation.types import SuiteResult, hash_item_ids
from sdft_ops.gate import DOMAIN_PREFIX
from sdft_ops.home import inside
from sdft_ops.settings import UpdateConfig
from sdft_ops.update_state import Parent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DomainData:
    name: str
    train: DemoDataset
    suite: GenerationSuite  # held-out items, named domain/<name>


def _domain_suite(name: str, items: Sequence[GenItem], scorer, max_new_tokens: int,
                  cfg: UpdateConfig) -> GenerationSuite:
    from sdft_ops.evaluation.builtin import DEFAULT_DECODE_BATCH_SIZE

    cap, length_cap = cfg.eval.domain_items, cfg.eval.domain_max_new_tokens
    return GenerationSuite(f"{DOMAIN_PREFIX}{name}", tuple(items[:cap] if cap else items),
                           scorer=scorer, max_new_tokens=min(max_new_tokens, length_cap or max_new_tokens),
                           decode_batch_size=DEFAULT_DECODE_BATCH_SIZE)


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
    if cfg.eval.drift:
        drift = (DriftSuite("drift", load_drift_file(cfg.eval.drift_file)) if cfg.eval.drift_file
                 else default_drift_suite())
        keep = subset_indices(len(drift.items), cfg.eval.drift_items, f"{cfg.eval.seed}:drift")
        suites.append(replace(drift, items=tuple(drift.items[i] for i in keep)))
    domain_suites = {s.name: s for s in recorded_domain_suites(home, cfg, taught_only=True)}
    if current is not None:
        domain_suites[current.suite.name] = current.suite
    return suites + [domain_suites[k] for k in sorted(domain_suites)]


def _item_ids(suite) -> list[str] | None:
    items = getattr(suite, "items", None)
    if not items:
        return None
    return [getattr(i, "item_id", None) or getattr(i, "id") for i in items]


def _signature(suite) -> str:
    """What besides its items decides a suite's scores (kind, answer length, method, scorer, and
    for a suite that decodes, the decoder's version): cached per-item scores are reused only
    under the same signature."""
    if not dataclasses.is_dataclass(suite):
        return type(suite).__name__
    plain = (str, int, float, bool, type(None))
    fields = {f.name: v if isinstance(v := getattr(suite, f.name), plain) else getattr(v, "__name__", type(v).__name__)
              for f in dataclasses.fields(suite) if f.name not in ("items", "name", "decode_batch_size")}
    if "max_new_tokens" in fields:
        fields["decoder"] = DECODER_VERSION
    return hashlib.sha256(json.dumps([type(suite).__name__, fields], sort_keys=True).encode()).hexdigest()[:12]


def _cache_path(home: Path, model_ref: str, suite) -> Path:
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in s)  # noqa: E731
    return Path(home) / "eval_cache" / safe(model_ref) / f"{safe(suite.name)}.{_signature(suite)}.json"


class ModelScores:
    """One model's per-item scores, cached per (model, suite, item) in the data home: a request
    scores only the items not cached yet, loading the model once, on first need."""

    def __init__(self, model_dir: str, model_ref: str, cfg: UpdateConfig, home: Path):
        self.model_dir, self.model_ref, self.cfg, self.home = model_dir, model_ref, cfg, Path(home)
        self._model = None
        self._cached: dict[Path, SuiteResult] = {}  # cache files read or written, by path

    def _load(self):
        from sdft_ops.models import load_model_at

        if self._model is None:
            self._model = load_model_at(self.model_dir, self.cfg.model)
        return self._model

    def _read(self, path: Path) -> SuiteResult | None:
        if path not in self._cached and path.is_file():
            self._cached[path] = SuiteResult.model_validate_json(path.read_text())
        return self._cached.get(path)

    def results(self, suites: Sequence, items: Mapping[str, Sequence[str]] | None = None,
                progress: bool = True) -> dict[str, SuiteResult]:
        """{suite: its result on `items[suite]` (in that order; default every item)}."""
        from sdft_ops.evaluation.suites import run_suites

        ids = {s.name: _item_ids(s) for s in suites}  # None: a suite without items, run whole
        wanted = {s.name: list(items[s.name]) if items and s.name in items else ids[s.name] for s in suites}
        paths = {s.name: _cache_path(self.home, self.model_ref, s) for s in suites}
        todo = []
        for suite in suites:
            if ids[suite.name] is None:
                todo.append(suite)
                continue
            have = set(cached.item_ids) if (cached := self._read(paths[suite.name])) else set()
            if missing := set(wanted[suite.name]) - have:
                todo.append(replace(suite, items=tuple(i for i, item_id in zip(suite.items, ids[suite.name])
                                                       if item_id in missing)))
        fresh = {}
        if todo:
            model, tokenizer = self._load()
            fresh = run_suites(model, tokenizer, todo, batch_size=self.cfg.eval.batch_size,
                               precision=self.cfg.eval.precision, progress=progress)
        out = {}
        for suite in suites:
            name = suite.name
            if ids[name] is None:
                out[name] = fresh[name]
                continue
            if name in fresh:
                cached = self._read(paths[name])
                self._cached[paths[name]] = cached.merged(fresh[name]) if cached else fresh[name]
                paths[name].parent.mkdir(parents=True, exist_ok=True)
                paths[name].write_text(self._cached[paths[name]].model_dump_json())
            result = self._cached[paths[name]]
            if list(result.item_ids) != wanted[name]:
                result = result.subset(wanted[name])
            out[name] = result.model_copy(update={"items_available": len(ids[name])})
        return out


def score_model(model_dir: str, model_ref: str, suites: Sequence, cfg: UpdateConfig,
                home: Path) -> dict[str, SuiteResult]:
    """Results of `suites` (every item) for one model, reusing cached per-item scores."""
    return ModelScores(model_dir, model_ref, cfg, home).results(suites)


def evaluate_candidate(candidate_dir: Path, candidate_ref: str, parent: Parent, suites: Sequence,
                       cfg: UpdateConfig, home: Path, new_domain: str | None = None,
                       candidate_sha256: str | None = None) -> EvalReport:
    """Score the candidate and its parent (the reference) on `suites` and build the report.
    A suite in one of the gate's sequential tests (`cfg.gate.sequential`) is scored in its
    seeded evaluation order, `block` items per look, until the test settles
    (`evaluation.sequential`); every other suite is scored whole. Both models' per-item scores
    are cached, so a champion is scored on an item once. With `eval.stop_at_first_reject`, a
    test that settles a drop ends the evaluation (the tests of required suites run first, their
    looks side by side): the report holds the suites scored so far and says why
    (`EvalReport.stopped_early`). The tests
    are those that judge an update teaching `new_domain` (`GatePolicy.sequential_for`: an
    alignment update's safety suites are scored whole, not tested for a drop).
    `candidate_sha256`, the candidate's recorded weights hash, goes into the report."""
    from sdft_ops.evaluation.sequential import evaluation_order, order_key, sprt

    cand = ModelScores(str(candidate_dir), candidate_ref, cfg, home)
    ref = ModelScores(parent.model_dir, parent.ref, cfg, home)
    tests_for_update = cfg.gate.sequential_for(new_domain)
    sequential = {name: [s for s in suites if s.name in test.suites and _item_ids(s)]
                  for name, test in tests_for_update.items()}
    required = {n for n, members in sequential.items() if any(s.name in cfg.gate.required_suites for s in members)}
    # the tests of required suites (safety) first, side by side; then the others
    groups = ([n for n in sequential if n in required], [n for n in sequential if n not in required])
    pooled = {s.name for members in sequential.values() for s in members}
    def lockstep(names: Sequence[str]):
        """These tests' looks side by side: each round scores the next block of every unsettled
        test in one call (so their generating suites share one decode); a test leaves once it
        settles or reaches its cap. Yields (name, outcome, candidate results, reference results)."""
        order = {name: {s.name: evaluation_order(_item_ids(s), order_key(cfg.eval.seed, s.name))
                        for s in sequential[name]} for name in names}
        looks = dict.fromkeys(names, 0)
        active = [name for name in names if sequential[name]]
        while active:
            want: dict[str, list[str]] = {}
            for name in active:
                looks[name] += 1
                n = min(looks[name] * tests_for_update[name].block, tests_for_update[name].max_items)
                want |= {suite: ids[:n] for suite, ids in order[name].items()}  # a suite is in one test
            members = [s for name in active for s in sequential[name]]
            c, r = cand.results(members, want), ref.results(members, want)
            still = []
            for name in active:
                test = tests_for_update[name]
                n = min(looks[name] * test.block, test.max_items)
                ci, ri = ({k: results[k] for k in order[name]} for results in (c, r))
                outcome = sprt(name, test, ci, ri, seed=cfg.eval.seed)
                if outcome.settled != "unsettled" or n >= max(min(test.max_items, len(v)) for v in order[name].values()):
                    yield name, outcome, ci, ri
                else:
                    still.append(name)
            active = still

    candidate, reference, stopped = {}, {}, None
    for group in groups:
        if stopped and group is groups[1]:  # every required suite is still scored
            break
        for name, outcome, c, r in lockstep(group):
            log.info("%s: %s", name, outcome.note())
            candidate |= c
            reference |= r
            if outcome.settled == "drop" and cfg.eval.stop_at_first_reject and not stopped:
                stopped = f"{name}: {outcome.note()}"
                log.info("stopping the evaluation: %s settled a drop, so the candidate is rejected", name)
    whole = [s for s in suites if s.name not in pooled and (not stopped or s.name in cfg.gate.required_suites)]
    if whole:
        candidate |= cand.results(whole)
        reference |= ref.results(whole)
    candidate = {s.name: candidate[s.name] for s in suites if s.name in candidate}
    reference = {s.name: reference[s.name] for s in suites if s.name in reference}
    return build_report(candidate_ref, candidate, reference_ref=parent.ref,
                        reference_results=reference, config=cfg.model_dump(mode="json"),
                        seed=cfg.eval.seed, n_boot=cfg.eval.n_boot, stopped_early=stopped,
                        model_sha256=candidate_sha256)
