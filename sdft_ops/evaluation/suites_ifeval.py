"""Instruction following, IFEval-style (Zhou et al. 2023, arXiv 2311.07911): each prompt carries
verifiable instructions, each checked by a program on the greedy response.

Per item (the primary metric, binary): every check passes ("prompt-level strict accuracy").
In metrics: `instruction_acc` (fraction of all checks that pass, "instruction-level") and
`check_acc/<type>` for each check type present. Responses are checked as generated (stripped of
surrounding whitespace), with no loose variants, unlike IFEval's loose scores.

Data (`sdft_ops/resources/eval/ifeval.jsonl`, written for this project, not IFEval's prompts):
one line per prompt, `{"id", "prompt", "checks": [{"type": <CHECKERS key>, <its arguments>}]}`.
Check types and arguments are those of the functions in `CHECKERS`; a bad file raises
SuiteFileError naming the line and the check.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sdft_ops.chat import encode_chat
from sdft_ops.data import NonEmptyStr
from sdft_ops.evaluation.generation import Generation, run_generating
from sdft_ops.evaluation.suites_io import read_records
from sdft_ops.evaluation.types import SuiteKind, SuiteResult

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’-][A-Za-z0-9]+)*")
_BULLET = re.compile(r"^\s*(?:[*\-•])\s+\S", re.MULTILINE)
_FENCE = re.compile(r"^```[A-Za-z]*\s*\n?(.*?)\n?```$", re.DOTALL)


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def _has_letters(text: str) -> bool:
    return any(c.isalpha() for c in text)


def all_caps(response: str) -> bool:
    return _has_letters(response) and response == response.upper()


def all_lowercase(response: str) -> bool:
    return _has_letters(response) and response == response.lower()


def bullet_count(response: str, n: int) -> bool:
    """Exactly n markdown bullets ('* ', '- ' or '• ' at a line start)."""
    return len(_BULLET.findall(response)) == n


def include_word(response: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", response, re.IGNORECASE) is not None


def exclude_word(response: str, word: str) -> bool:
    return not include_word(response, word)


def keyword_count(response: str, word: str, min_count: int) -> bool:
    found = re.findall(rf"(?<!\w){re.escape(word)}(?!\w)", response, re.IGNORECASE)
    return len(found) >= min_count


def valid_json(response: str) -> bool:
    """The whole response is JSON, optionally inside one ``` code fence (as IFEval)."""
    text = response.strip()
    if fenced := _FENCE.match(text):
        text = fenced.group(1)
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def max_words(response: str, n: int) -> bool:
    return count_words(response) <= n


def min_words(response: str, n: int) -> bool:
    return count_words(response) >= n


def starts_with(response: str, phrase: str) -> bool:
    return response.strip().lower().startswith(phrase.strip().lower())


def ends_with(response: str, phrase: str) -> bool:
    """Case-insensitive, ignoring surrounding whitespace and quotes (as IFEval)."""
    return response.strip().strip('"').lower().endswith(phrase.strip().lower())


def paragraph_count(response: str, n: int) -> bool:
    """Exactly n paragraphs, separated by blank lines."""
    paragraphs = [p for p in re.split(r"\n\s*\n", response.strip()) if p.strip()]
    return len(paragraphs) == n


def no_commas(response: str) -> bool:
    return "," not in response


def wrapped_in_quotes(response: str) -> bool:
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


def has_title(response: str) -> bool:
    """A title in double angular brackets, <<like this>>."""
    return re.search(r"<<[^\n<>]+>>", response) is not None


def has_postscript(response: str, marker: str = "P.S.") -> bool:
    return re.search(rf"(?:^|\s){re.escape(marker)}", response) is not None


def min_highlights(response: str, n: int) -> bool:
    """At least n *highlighted* sections (markdown italics/bold)."""
    return len(re.findall(r"\*[^\n*]+\*", response)) >= n


def max_sentences(response: str, n: int) -> bool:
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", response.strip()) if s.strip()]
    return len(sentences) <= n


def numbered_items(response: str, n: int) -> bool:
    """Exactly n numbered list items ('1.' or '1)' at a line start)."""
    return len(re.findall(r"^\s*\d+[.)]\s+\S", response, re.MULTILINE)) == n


CHECKERS: dict[str, Callable[..., bool]] = {
    "all_caps": all_caps,
    "all_lowercase": all_lowercase,
    "bullet_count": bullet_count,
    "include_word": include_word,
    "exclude_word": exclude_word,
    "keyword_count": keyword_count,
    "valid_json": valid_json,
    "max_words": max_words,
    "min_words": min_words,
    "starts_with": starts_with,
    "ends_with": ends_with,
    "paragraph_count": paragraph_count,
    "no_commas": no_commas,
    "wrapped_in_quotes": wrapped_in_quotes,
    "has_title": has_title,
    "has_postscript": has_postscript,
    "min_highlights": min_highlights,
    "max_sentences": max_sentences,
    "numbered_items": numbered_items,
}


@dataclass(frozen=True, slots=True)
class Check:
    """One verifiable instruction: `CHECKERS[type](response, **arguments)`."""

    type: str
    arguments: tuple[tuple[str, Any], ...] = ()

    def __call__(self, response: str) -> bool:
        return bool(CHECKERS[self.type](response, **dict(self.arguments)))


@dataclass(frozen=True, slots=True)
class IFItem:
    item_id: str
    prompt: str
    checks: tuple[Check, ...]


def _check_from(raw: dict[str, Any]) -> Check:
    kind = raw.get("type")
    if kind not in CHECKERS:
        raise ValueError(f"unknown check type {kind!r}; use one of {', '.join(CHECKERS)}")
    arguments = {k: v for k, v in raw.items() if k != "type"}
    try:
        inspect.signature(CHECKERS[kind]).bind("response", **arguments)
    except TypeError as e:
        params = [p for p in inspect.signature(CHECKERS[kind]).parameters if p != "response"]
        raise ValueError(f"check {kind!r}: {e}; it takes {params or 'no arguments'}") from None
    for name, value in arguments.items():
        wanted = inspect.signature(CHECKERS[kind]).parameters[name].annotation
        if wanted in ("int", int) and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"check {kind!r}: {name} must be a non-negative integer, got {value!r}")
        if wanted in ("str", str) and not (isinstance(value, str) and value.strip()):
            raise ValueError(f"check {kind!r}: {name} must be a non-empty string, got {value!r}")
    return Check(kind, tuple(sorted(arguments.items())))


class _IFRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: NonEmptyStr
    prompt: NonEmptyStr
    checks: list[dict[str, Any]] = Field(min_length=1)

    @field_validator("checks")
    @classmethod
    def _known_checks(cls, checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, raw in enumerate(checks):
            try:
                _check_from(raw)
            except ValueError as e:
                raise ValueError(f"checks[{i}]: {e}") from None
        return checks


def load_ifeval_file(path: str | os.PathLike) -> tuple[IFItem, ...]:
    records = read_records(path, lambda line_no, obj: _IFRecord)
    return tuple(IFItem(r.id, r.prompt, tuple(_check_from(c) for c in r.checks)) for _, r in records)


@dataclass(frozen=True)
class InstructionFollowingSuite:
    """Greedy answers to chat prompts; an item passes when all its checks pass."""

    name: str
    items: tuple[IFItem, ...]
    max_new_tokens: int = 128
    decode_batch_size: int | None = None  # prompts per greedy_generate batch; None: run's batch_size
    kind: SuiteKind = "instruction_following"

    def __len__(self) -> int:
        return len(self.items)

    def generation(self, tokenizer) -> Generation:
        return Generation([encode_chat(tokenizer, [{"role": "user", "content": item.prompt}])
                           for item in self.items], self.max_new_tokens, self.decode_batch_size)

    def run(self, model, tokenizer, batch_size: int = 16) -> SuiteResult:
        return run_generating(self, model, tokenizer, batch_size)

    def scored(self, responses: Sequence[str], seconds: float) -> SuiteResult:
        start = time.perf_counter()
        scores, by_type = [], {}
        for item, response in zip(self.items, responses):
            passed = [check(response.strip()) for check in item.checks]
            for check, ok in zip(item.checks, passed):
                by_type.setdefault(check.type, []).append(float(ok))
            scores.append(float(all(passed)))
        every_check = [ok for oks in by_type.values() for ok in oks]
        metrics = {"instruction_acc": math.fsum(every_check) / len(every_check)}
        metrics |= {f"check_acc/{k}": math.fsum(v) / len(v) for k, v in sorted(by_type.items())}
        return SuiteResult(
            suite=self.name, kind=self.kind, metric="prompt_acc", binary=True,
            item_ids=tuple(item.item_id for item in self.items), scores=tuple(scores),
            metrics=metrics, seconds=seconds + time.perf_counter() - start,
        )
