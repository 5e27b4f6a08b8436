"""The one record every suite produces and every metric, report and gate consumes."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SuiteKind = Literal["multiple_choice", "generation", "safety", "instruction_following", "drift"]


def hash_item_ids(item_ids: tuple[str, ...] | list[str]) -> str:
    """sha256 over the sorted item ids: two results are comparable only if these agree."""
    return hashlib.sha256("\n".join(sorted(item_ids)).encode("utf-8")).hexdigest()


class SuiteResult(BaseModel):
    """Per-item scores of one model on one suite, plus aggregate side metrics.

    `scores[i]` is the primary metric of item `item_ids[i]` (0/1 when `binary`); the suite's
    score is their mean. `item_scores[name][i]` are secondary per-item scores (e.g. a multiple-
    choice item's `gold_prob`, the probability of the gold choice normalised over the choices:
    a continuous score the gate's pooled prior test reads); `metrics` holds secondary
    aggregates (e.g. acc_norm, over-refusal). `items_available`: how many items the suite had,
    of which these are the first scored in its evaluation order (sequential evaluation stops
    early); 0 = not recorded.
    """

    # NaN side metrics (e.g. an undefined rate) survive a JSON round trip as "NaN"
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    suite: str = Field(min_length=1)
    kind: SuiteKind
    metric: str = Field(min_length=1, description="name of the primary per-item metric")
    higher_is_better: bool = True
    binary: bool = Field(description="per-item scores are 0/1 (McNemar applies)")
    item_ids: tuple[str, ...] = Field(min_length=1)
    scores: tuple[float, ...]
    item_scores: dict[str, tuple[float, ...]] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    items_available: int = Field(0, ge=0)
    seconds: float = Field(0.0, ge=0.0)
    item_ids_hash: str = Field("", description="filled from item_ids; checked when given")

    @model_validator(mode="after")
    def _aligned(self) -> "SuiteResult":
        if len(self.scores) != len(self.item_ids):
            raise ValueError(f"{self.suite}: {len(self.scores)} scores for {len(self.item_ids)} items")
        for name, values in self.item_scores.items():
            if len(values) != len(self.item_ids):
                raise ValueError(f"{self.suite}: item_scores[{name!r}] has {len(values)} values for "
                                 f"{len(self.item_ids)} items")
        if len(set(self.item_ids)) != len(self.item_ids):
            raise ValueError(f"{self.suite}: duplicate item ids")
        expected = hash_item_ids(self.item_ids)
        if self.item_ids_hash and self.item_ids_hash != expected:
            raise ValueError(f"{self.suite}: item_ids_hash does not match its item ids")
        object.__setattr__(self, "item_ids_hash", expected)  # frozen model: set once here
        return self

    @property
    def score(self) -> float:
        return math.fsum(self.scores) / len(self.scores)

    def per_item(self, name: str | None = None) -> tuple[float, ...]:
        """The primary scores (`name` None or the primary metric) or `item_scores[name]`."""
        if name is None or name == self.metric:
            return self.scores
        if name not in self.item_scores:
            raise KeyError(f"{self.suite} has no per-item score {name!r}; it has "
                           f"{[self.metric, *self.item_scores]} (re-score it with this version)")
        return self.item_scores[name]

    def subset(self, item_ids: Sequence[str]) -> "SuiteResult":
        """These items only, in the order given. Aggregates that are means of a per-item score
        are recomputed; other aggregates (`metrics`) are kept only when every item is kept."""
        index = {item: i for i, item in enumerate(self.item_ids)}
        if missing := [i for i in item_ids if i not in index]:
            raise KeyError(f"{self.suite}: {len(missing)} item(s) not scored, e.g. {missing[0]!r}")
        rows = [index[i] for i in item_ids]
        item_scores = {k: tuple(v[r] for r in rows) for k, v in self.item_scores.items()}
        whole = len(rows) == len(self.item_ids)
        metrics = {k: v for k, v in self.metrics.items() if whole and k not in item_scores}
        metrics |= {k: math.fsum(v) / len(v) for k, v in item_scores.items()}
        return self.model_copy(update={
            "item_ids": tuple(item_ids), "scores": tuple(self.scores[r] for r in rows),
            "item_scores": item_scores, "metrics": metrics,
            "item_ids_hash": hash_item_ids(tuple(item_ids)),
            "seconds": self.seconds * len(rows) / len(self.item_ids)})

    def merged(self, other: "SuiteResult") -> "SuiteResult":
        """Items of both (this one's first); `other` must be the same suite and metric. The
        merged result keeps the per-item scores both have and no other aggregates."""
        if (other.suite, other.metric, other.binary, other.kind) != (self.suite, self.metric,
                                                                      self.binary, self.kind):
            raise ValueError(f"cannot merge {other.suite}/{other.metric} into {self.suite}/{self.metric}")
        new = [i for i, item in enumerate(other.item_ids) if item not in set(self.item_ids)]
        names = [k for k in self.item_scores if k in other.item_scores]
        item_scores = {k: self.item_scores[k] + tuple(other.item_scores[k][i] for i in new)
                       for k in names}
        ids = self.item_ids + tuple(other.item_ids[i] for i in new)
        return SuiteResult(
            suite=self.suite, kind=self.kind, metric=self.metric, binary=self.binary,
            higher_is_better=self.higher_is_better, item_ids=ids,
            scores=self.scores + tuple(other.scores[i] for i in new), item_scores=item_scores,
            metrics={k: math.fsum(v) / len(v) for k, v in item_scores.items()},
            items_available=max(self.items_available, other.items_available),
            seconds=self.seconds + other.seconds)
