"""Evaluation suites: what is measured. Every suite is an `EvalSuite` — a `name`, a `kind` and
`run(model, tokenizer, batch_size) -> SuiteResult` (per-item scores aligned with item ids).

Kinds and where they live:
- multiple choice by log-likelihood (`MultipleChoiceSuite`, here), lm-evaluation-harness
  conventions: plain text (no chat template), each choice scored as `delimiter + choice` after
  its context, split into tokens as lm-eval's `_encode_pair`; `acc` = argmax of the summed
  continuation log-prob (the per-item primary metric), `acc_norm` = argmax of that sum divided by
  the choice's UTF-8 byte length without the delimiter (lm-eval divides by `len(choice)`, the
  character count; for ASCII the two agree, bytes are stable for other text). Winogrande's
  choices share one continuation, so there acc_norm = acc.
  `gold_prob` = the gold choice's probability normalised over the choices (softmax of the
  summed log-probs): the continuous per-item score of the gate's pooled prior test.
- generation + scorer (`GenerationSuite`, here): greedy decoding of chat-template prompts,
  left-padded batches with the KV cache; scorers in `scorers.py`.
- safety (`suites_safety.py`), instruction following (`suites_ifeval.py`), behavioural drift
  (`suites_drift.py`); the built-in batteries in `builtin.py`.
- user suites from JSONL: `load_suite_file(path)`, schema in its docstring.

`run_suites(model, tokenizer, suites)` runs a list with a progress bar and returns
{suite name: SuiteResult}; `precision="bf16_autocast"` runs under bfloat16 autocast where the
hardware has native bf16 (about 2x faster; float32 on CPUs without it, engine/precision.py; see benchmarks/results/eval_base.md for how little it moves the scores).
Usage:

    from sdft_ops.evaluation.builtin import default_battery
    results = run_suites(model, tokenizer, default_battery(), batch_size=16)
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationInfo, field_validator

from sdft_ops.chat import Messages, encode_chat
from sdft_ops.data import NonEmptyStr, Prompt
from sdft_ops.evaluation.scorers import NO_JSON, Scorer, extract_json, get_scorer, settle_rule
from sdft_ops.evaluation.suites_drift import DriftItem, DriftSuite, load_drift_file
from sdft_ops.evaluation.generation import Generation, generate_together, run_generating
from sdft_ops.evaluation.suites_engine import encode_pair, pad_id, score_continuations
from sdft_ops.evaluation.suites_ifeval import (
    CHECKERS,
    IFItem,
    InstructionFollowingSuite,
    load_ifeval_file,
)
from sdft_ops.evaluation.suites_io import SuiteFileError, read_records
from sdft_ops.evaluation.suites_safety import SafetyItem, SafetySuite, load_safety_file
from sdft_ops.evaluation.types import SuiteKind, SuiteResult

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "CHECKERS", "DriftItem", "DriftSuite", "EvalSuite", "GenItem", "GenerationSuite", "IFItem",
    "InstructionFollowingSuite", "MCItem", "MultipleChoiceSuite", "Precision", "SafetyItem",
    "SafetySuite", "SuiteFileError", "load_drift_file", "load_ifeval_file", "load_safety_file",
    "load_suite_file", "run_suites",
]

Precision = Literal["model", "bf16_autocast"]


@runtime_checkable
class EvalSuite(Protocol):
    """Anything with a unique `name`, a `kind` and a `run` returning a SuiteResult."""

    name: str
    kind: SuiteKind

    def run(
        self, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", batch_size: int = 16
    ) -> SuiteResult: ...


# --- multiple choice ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MCItem:
    """One question: choice i is scored as `delimiter + choices[i]` after `contexts[i]`."""

    item_id: str
    contexts: tuple[str, ...]
    choices: tuple[str, ...]
    answer: int
    delimiter: str = " "

    def __post_init__(self) -> None:
        if len(self.choices) < 2 or len(self.contexts) != len(self.choices):
            raise ValueError(f"{self.item_id}: give at least two choices and one context per "
                             f"choice (got {len(self.choices)} choices, {len(self.contexts)} contexts)")
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(f"{self.item_id}: answer {self.answer} is not a 0-based index into "
                             f"{len(self.choices)} choices")

    @classmethod
    def shared(cls, item_id: str, context: str, choices: Sequence[str], answer: int,
               delimiter: str = " ") -> "MCItem":
        """The usual case: every choice continues the same context."""
        return cls(item_id, (context,) * len(choices), tuple(choices), answer, delimiter)


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # ties -> first, as numpy


def gold_probability(logprobs: Sequence[float], answer: int) -> float:
    """The gold choice's probability normalised over the choices: softmax of the choices'
    summed log-probs at `answer`, in [0, 1]. A continuous per-item score: it moves when a
    model grows more or less sure of the answer, where `acc` moves only when the argmax flips."""
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    return weights[answer] / math.fsum(weights)


@dataclass(frozen=True)
class MultipleChoiceSuite:
    """Log-likelihood multiple choice; primary metric `acc`; per item also `acc_norm` and
    `gold_prob` (`gold_probability`), their means in metrics."""

    name: str
    items: tuple[MCItem, ...]
    kind: SuiteKind = "multiple_choice"

    def __len__(self) -> int:
        return len(self.items)

    def run(self, model, tokenizer, batch_size: int = 16) -> SuiteResult:
        start = time.perf_counter()
        requests = [
            encode_pair(tokenizer, context, item.delimiter + choice)
            for item in self.items
            for context, choice in zip(item.contexts, item.choices)
        ]
        scored = iter(score_continuations(model, requests, batch_size, pad_id(tokenizer)))
        acc, acc_norm, gold_prob = [], [], []
        for item in self.items:
            sums = [next(scored).total for _ in item.choices]
            normed = [s / max(1, len(c.encode("utf-8"))) for s, c in zip(sums, item.choices)]
            acc.append(float(_argmax(sums) == item.answer))
            acc_norm.append(float(_argmax(normed) == item.answer))
            gold_prob.append(gold_probability(sums, item.answer))
        return SuiteResult(
            suite=self.name, kind=self.kind, metric="acc", binary=True,
            item_ids=tuple(item.item_id for item in self.items), scores=tuple(acc),
            item_scores={"acc_norm": tuple(acc_norm), "gold_prob": tuple(gold_prob)},
            metrics={"acc_norm": math.fsum(acc_norm) / len(acc_norm),
                     "gold_prob": math.fsum(gold_prob) / len(gold_prob)},
            items_available=len(self.items), seconds=time.perf_counter() - start,
        )


# --- generation + scorer -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GenItem:
    """A chat prompt, its reference, and optionally a scorer of its own (else the suite's)."""

    item_id: str
    messages: tuple[dict[str, str], ...]
    reference: str
    scorer: str | None = None


@dataclass(frozen=True)
class GenerationSuite:
    """Greedy generation scored per item by `scorer(prediction, reference)`.

    `binary=True` (the named scorers) checks every score is 0 or 1. Items may name their own
    scorer (user files); the primary metric is then called `score`, with a mean per scorer.
    """

    name: str
    items: tuple[GenItem, ...]
    scorer: Scorer | str = "exact_match"
    max_new_tokens: int = 128
    binary: bool = True
    decode_batch_size: int | None = None  # prompts per greedy_generate batch; None: run's batch_size
    kind: SuiteKind = "generation"

    @classmethod
    def from_triples(cls, name: str, triples: Iterable[tuple[str, Messages, str]],
                     scorer: Scorer | str = "exact_match", **options: Any) -> "GenerationSuite":
        """From (id, messages, reference) — the shape of a domain's held-out split."""
        items = tuple(GenItem(i, tuple(dict(m) for m in msgs), ref) for i, msgs, ref in triples)
        return cls(name=name, items=items, scorer=scorer, **options)

    def __len__(self) -> int:
        return len(self.items)

    def _scorer(self, item: GenItem) -> Scorer:
        chosen = item.scorer or self.scorer
        return get_scorer(chosen) if isinstance(chosen, str) else chosen

    def _scorer_name(self, item: GenItem) -> str:  # a named scorer's function bears its name
        return getattr(self._scorer(item), "__name__", "score")

    def generation(self, tokenizer) -> Generation:
        rules = [settle_rule(self._scorer(item)) for item in self.items]

        def settled(i: int, prefix: str) -> bool:  # a row stops once its score cannot change
            return rules[i] is not None and rules[i](prefix, self.items[i].reference)

        return Generation([encode_chat(tokenizer, [dict(m) for m in item.messages]) for item in self.items],
                          self.max_new_tokens, self.decode_batch_size, settled if any(rules) else None)

    def run(self, model, tokenizer, batch_size: int = 16) -> SuiteResult:
        return run_generating(self, model, tokenizer, batch_size)

    def scored(self, predictions: Sequence[str], seconds: float) -> SuiteResult:
        start = time.perf_counter()
        scorers = [self._scorer(item) for item in self.items]
        scores, by_scorer = [], {}
        for item, scorer, prediction in zip(self.items, scorers, predictions):
            score = float(scorer(prediction, item.reference))
            if self.binary and score not in (0.0, 1.0):
                raise ValueError(f"{self.name}: scorer {self._scorer_name(item)!r} returned "
                                 f"{score} for {item.item_id!r}; pass binary=False for graded scorers")
            scores.append(score)
            by_scorer.setdefault(self._scorer_name(item), []).append(score)
        metric = next(iter(by_scorer)) if len(by_scorer) == 1 else "score"
        metrics = {"empty_predictions": sum(not p.strip() for p in predictions) / len(predictions)}
        if len(by_scorer) > 1:
            metrics |= {f"scorer/{k}": math.fsum(v) / len(v) for k, v in by_scorer.items()}
        return SuiteResult(
            suite=self.name, kind=self.kind, metric=metric, binary=self.binary,
            item_ids=tuple(item.item_id for item in self.items), scores=tuple(scores),
            metrics=metrics, seconds=seconds + time.perf_counter() - start,
        )


# --- user suite files ----------------------------------------------------------------------------


class _GenerationRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: NonEmptyStr
    prompt: Prompt
    # Declared before `reference`, whose check reads it. Names = scorers.SCORERS (tested).
    scorer: Literal["exact_match", "json_equal", "contains", "regex"]
    reference: NonEmptyStr
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("reference")
    @classmethod
    def _reference_fits_scorer(cls, reference: str, info: ValidationInfo) -> str:
        scorer = info.data.get("scorer")
        if scorer == "json_equal" and extract_json(reference) is NO_JSON:
            raise ValueError("the json_equal scorer needs a JSON reference, e.g. '{\"a\": 1}'")
        if scorer == "regex":
            try:
                re.compile(reference)
            except re.error as e:
                raise ValueError(f"not a valid regular expression for the regex scorer ({e})") from e
        return reference


class _ChoiceRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: NonEmptyStr
    context: str
    choices: list[NonEmptyStr] = Field(min_length=2)
    answer: StrictInt = Field(ge=0)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("answer")
    @classmethod
    def _answer_in_range(cls, answer: int, info: ValidationInfo) -> int:
        choices = info.data.get("choices")
        if choices is not None and answer >= len(choices):
            raise ValueError(f"{answer} is out of range for {len(choices)} choices; use a "
                             f"0-based index from 0 to {len(choices) - 1}")
        return answer


def _prompt_messages(prompt) -> Messages:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [message.model_dump() for message in prompt]


def load_suite_file(path: str | os.PathLike, name: str | None = None,
                    max_new_tokens: int = 128) -> MultipleChoiceSuite | GenerationSuite:
    """A user suite from JSONL; its name is the file stem unless given.

    Generation lines: {"id", "prompt": str | [{role, content}, ...], "reference",
    "scorer": exact_match | json_equal | contains | regex, "metadata"?}.
    Multiple-choice lines: {"id", "context": str, "choices": [str, ...], "answer": int,
    "metadata"?}; a choice is scored as " " + choice (lm-eval's target delimiter), so write
    choices without a leading space. All lines of a file are of one kind.
    Raises SuiteFileError (a ValueError) naming file, line and field for every problem.
    """
    kinds: dict[str, int] = {}

    def pick(line_no: int, obj: dict[str, Any]):
        kind = ("choice" if "choices" in obj or "context" in obj
                else "generation" if "prompt" in obj else None)
        if kind is None:
            return ("cannot tell the record kind: give 'prompt' (generation) or 'context' and "
                    "'choices' (multiple choice)")
        first = kinds.setdefault(kind, line_no)
        other = "generation" if kind == "choice" else "choice"
        if other in kinds and kinds[other] < first:
            return (f"a {kind} record, but line {kinds[other]} is a {other} record; one file "
                    "holds one kind of suite")
        return _ChoiceRecord if kind == "choice" else _GenerationRecord

    records = read_records(path, pick)
    suite_name = name or Path(path).stem
    if isinstance(records[0][1], _ChoiceRecord):
        items = tuple(MCItem.shared(r.id, r.context, tuple(r.choices), r.answer) for _, r in records)
        return MultipleChoiceSuite(name=suite_name, items=items)
    items = tuple(GenItem(r.id, tuple(_prompt_messages(r.prompt)), r.reference, r.scorer)
                  for _, r in records)
    return GenerationSuite(name=suite_name, items=items, scorer=records[0][1].scorer,
                           max_new_tokens=max_new_tokens)


# --- running -------------------------------------------------------------------------------------


def precision_context(model, precision: Precision):
    """`model`: run as loaded; `bf16_autocast`: torch.autocast(bfloat16) on the model's device
    where bf16 is fast there (engine.precision), else as loaded."""
    from sdft_ops.engine.precision import bf16_autocast

    if precision == "model":
        return contextlib.nullcontext()
    if precision == "bf16_autocast":
        return bf16_autocast(model.device.type)
    raise ValueError(f"unknown precision {precision!r}; use 'model' or 'bf16_autocast'")


def run_suites(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    suites: Sequence[EvalSuite],
    batch_size: int = 16,
    precision: Precision = "model",
    progress: bool = True,
) -> dict[str, SuiteResult]:
    """Run each suite once, with a tqdm bar; the model is in eval mode meanwhile and gets its
    train/eval mode back afterwards. Suite names must be unique. The generating suites (those
    whose `generation` is not None) share one decode (`generation.generate_together`), run
    first; the others run in order."""
    from tqdm.auto import tqdm

    names = [suite.name for suite in suites]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"duplicate suite names {duplicates}; give every suite its own name")
    asks = [(suite, ask) for suite in suites
            if (ask := getattr(suite, "generation", lambda _: None)(tokenizer)) is not None]
    was_training = model.training
    model.eval()
    results: dict[str, SuiteResult] = {}
    try:
        bar = tqdm(total=len(suites), desc="eval", unit="suite", disable=not progress)
        if asks:
            bar.set_postfix_str(", ".join(suite.name for suite, _ in asks))
            with precision_context(model, precision):
                results |= generate_together(model, tokenizer, asks, batch_size)
            bar.update(len(asks))
        for suite in suites:
            if suite.name in results:
                continue
            bar.set_postfix_str(suite.name)
            with precision_context(model, precision):
                result = suite.run(model, tokenizer, batch_size=batch_size)
            assert result.suite == suite.name, (result.suite, suite.name)
            results[suite.name] = result
            bar.update()
        bar.close()
    finally:
        model.train(was_training)
    results = {name: results[name] for name in names}
    return results
