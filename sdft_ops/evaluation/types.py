"""The one record every suite produces and every metric, report and gate consumes."""

from __future__ import annotations

import hashlib
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SuiteKind = Literal["multiple_choice", "generation", "safety", "instruction_following", "drift"]


def hash_item_ids(item_ids: tuple[str, ...] | list[str]) -> str:
    """sha256 over the sorted item ids: two results are comparable only if these agree."""
    return hashlib.sha256("\n".join(sorted(item_ids)).encode("utf-8")).hexdigest()


class SuiteResult(BaseModel):
    """Per-item scores of one model on one suite, plus aggregate side metrics.

    `scores[i]` is the primary metric of item `item_ids[i]` (0/1 when `binary`); the suite's
    score is their mean. `metrics` holds secondary aggregates (e.g. acc_norm, over-refusal).
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
    metrics: dict[str, float] = Field(default_factory=dict)
    seconds: float = Field(0.0, ge=0.0)
    item_ids_hash: str = Field("", description="filled from item_ids; checked when given")

    @model_validator(mode="after")
    def _aligned(self) -> "SuiteResult":
        if len(self.scores) != len(self.item_ids):
            raise ValueError(f"{self.suite}: {len(self.scores)} scores for {len(self.item_ids)} items")
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
