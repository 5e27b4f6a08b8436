"""Behavioural drift: how likely the candidate still finds the base model's own answers.

`sdft_ops/resources/eval/drift.jsonl` holds generic instructions with the base
SmolLM2-135M-Instruct's greedy answers (frozen by `scripts/freeze_drift.py`; each record
carries its provenance: model, GGUF sha256, date, decoding settings). The candidate reads the
chat-templated prompt followed by the answer's tokens (tokenized on their own, so the answer's
tokens are those the base model generated); an item's score is the mean per-token log-prob of
the answer (not binary, higher is better; 0 would be certainty). In metrics:
`token_mean_logprob` (all answer tokens pooled) and `greedy_agreement` (the fraction of answer
tokens that are the candidate's argmax — 1.0 for the base model up to float ties).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sdft_ops.chat import encode_chat
from sdft_ops.data import NonEmptyStr
from sdft_ops.evaluation.suites_engine import pad_id, score_continuations
from sdft_ops.evaluation.suites_io import read_records
from sdft_ops.evaluation.types import SuiteKind, SuiteResult


@dataclass(frozen=True, slots=True)
class DriftItem:
    item_id: str
    prompt: str
    answer: str


class _DriftRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: NonEmptyStr
    prompt: NonEmptyStr
    answer: NonEmptyStr
    provenance: dict[str, Any] = Field(min_length=1)


def load_drift_file(path: str | os.PathLike) -> tuple[DriftItem, ...]:
    records = read_records(path, lambda line_no, obj: _DriftRecord)
    return tuple(DriftItem(r.id, r.prompt, r.answer) for _, r in records)


@dataclass(frozen=True)
class DriftSuite:
    name: str
    items: tuple[DriftItem, ...]
    kind: SuiteKind = "drift"

    def __len__(self) -> int:
        return len(self.items)

    def run(self, model, tokenizer, batch_size: int = 16) -> SuiteResult:
        start = time.perf_counter()
        requests = [
            (encode_chat(tokenizer, [{"role": "user", "content": item.prompt}]),
             tokenizer(item.answer, add_special_tokens=False)["input_ids"])
            for item in self.items
        ]
        scored = score_continuations(model, requests, batch_size, pad_id(tokenizer))
        all_lp = [lp for s in scored for lp in s.logprobs]
        all_greedy = [g for s in scored for g in s.greedy]
        return SuiteResult(
            suite=self.name, kind=self.kind, metric="mean_token_logprob", binary=False,
            item_ids=tuple(item.item_id for item in self.items),
            scores=tuple(s.mean for s in scored),
            metrics={"token_mean_logprob": math.fsum(all_lp) / len(all_lp),
                     "greedy_agreement": sum(all_greedy) / len(all_greedy)},
            seconds=time.perf_counter() - start,
        )
