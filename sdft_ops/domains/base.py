"""The records a domain update is made of: `EvalItem`, `Domain`, and eval-file I/O."""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from sdft_ops.data import ChatMessage, Demonstration

T = TypeVar("T")
Generated = tuple[list[Demonstration], list["EvalItem"]]
Scorer = Callable[[str, str], float]
ExtraMetrics = Callable[[Sequence[str], Sequence[str]], dict[str, float]]


def _check_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    checked = [ChatMessage.model_validate(message) for message in messages]
    if not checked or checked[-1].role != "user":
        raise ValueError("messages must be a non-empty chat ending with a user message")
    return [message.model_dump() for message in checked]


class EvalItem(BaseModel):
    """One held-out prompt: the model answers `messages`; the domain's scorer compares the
    answer with `reference` (a JSON object as text, or an answer key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    domain: str = Field(min_length=1)
    messages: Annotated[list[dict[str, str]], AfterValidator(_check_messages)]
    reference: str = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Domain:
    """A weekly domain update: how to generate it and how to score answers to it.

    `generate(seed)` returns (training demonstrations, held-out eval items); the same seed
    always gives the same data. `scorer(prediction, reference)` is 0.0 or 1.0 per item;
    `extra_metrics(predictions, references)` gives secondary aggregates (empty if none).
    """

    name: str
    description: str
    generate: Callable[..., Generated]
    scorer: Scorer
    metric: str  # name of the per-item scorer, e.g. for `SuiteResult.metric`
    max_new_tokens: int  # enough for every reference answer, with headroom
    extra_metrics: ExtraMetrics | None = None


def reference_for(demo: Demonstration) -> str:
    """What the domain scorer compares a training demonstration's answer with:
    `metadata['answer_key']` when present (knowledge), else the demonstration itself."""
    return str(demo.metadata.get("answer_key", demo.demonstration))


def unique_samples(
    rng: random.Random, sample: Callable[[random.Random], T], count: int,
    key: Callable[[T], Hashable], seen: set | None = None, max_tries: int = 100,
) -> list[T]:
    """`count` samples whose keys are new to `seen` (which is updated); internal generator aid."""
    seen = set() if seen is None else seen
    out: list[T] = []
    for _ in range(count * max_tries):
        if len(out) == count:
            break
        item = sample(rng)
        if (k := key(item)) not in seen:
            seen.add(k)
            out.append(item)
    assert len(out) == count, f"value pools too small for {count} unique samples"
    return out


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def write_eval_items(items: Iterable[EvalItem], path: str | os.PathLike) -> Path:
    """One canonical JSON line per item, in order; atomic (temp file + rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            for item in items:
                handle.write(_canonical(item.model_dump(mode="json")) + "\n")
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def load_eval_items(path: str | os.PathLike) -> list[EvalItem]:
    """Read a `<name>.eval.jsonl` file; a bad line raises ValueError naming file and line."""
    items = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                items.append(EvalItem.model_validate_json(line))
            except ValidationError as e:
                raise ValueError(f"{path}:{line_no}: not an eval item ({e.errors()[0]['msg']}); "
                                 "regenerate with `python -m sdft_ops.domains`") from e
    return items
