"""Suites that answer by greedy decoding, and one decode for all of them.

A generating suite (generation, safety by phrases, instruction following) says what it asks of
the decoder (`Generation`: its prompts, its token cap, when a row's score is settled) and scores
the answers (`scored`). `run_suites` hands every generating suite of a call to one
`generate_together`, so their prompts share one batch: a decode's per-token call costs about the
same for 3 rows as for 30 on a CPU (it reads every weight once), and each suite on its own ends
in a tail of a few long answers (IFEval's runs to 96 tokens, a tooluse row to 80) decoded row
by row. Together the tails overlap: IFEval + three domain suites, 160 prompts, decoded in
30.8-35.2 s instead of 37.1-46.5 s (experiments/2026-12-07-eval-speed/LOG.md). Each row keeps
its own cap and settle rule, so every answer is the one its suite alone would get (up to float
rounding: tests/test_eval_suites.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sdft_ops.engine.sampling import greedy_generate
from sdft_ops.evaluation.types import SuiteResult

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Generation:
    """What one suite asks of the decoder. `settled(i, answer so far)`: item i's score can no
    longer change (its row stops there); None: every row runs to its stop id or the cap."""

    prompts: Sequence[Sequence[int]]
    max_new_tokens: int
    batch_size: int | None = None  # prompts per decode batch; None: the call's batch_size
    settled: Callable[[int, str], bool] | None = None


class GeneratingSuite(Protocol):
    name: str

    def generation(self, tokenizer: "PreTrainedTokenizerBase") -> Generation | None:
        """None: this suite does not generate (e.g. safety scored by log-likelihood)."""

    def scored(self, answers: Sequence[str], seconds: float) -> SuiteResult:
        """The result from the answers, in item order; `seconds`: this suite's decode share."""


def generate_together(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    asks: Sequence[tuple[GeneratingSuite, Generation]],
    batch_size: int = 16,
) -> dict[str, SuiteResult]:
    """Every suite's answers from one greedy decode, each row with its suite's cap and settle
    rule; {suite name: its result}. The decode's seconds are split among the suites by the
    tokens their answers hold (a row's decode cost grows with its length)."""
    start = time.perf_counter()
    owner = [(k, i) for k, (_, ask) in enumerate(asks) for i in range(len(ask.prompts))]

    def settled(row: int, text: str) -> bool:
        k, i = owner[row]
        rule = asks[k][1].settled
        return rule is not None and rule(i, text)

    answers = greedy_generate(
        model, tokenizer, [p for _, ask in asks for p in ask.prompts],
        [ask.max_new_tokens for _, ask in asks for _ in ask.prompts],
        max(ask.batch_size or batch_size for _, ask in asks),
        settled=settled if any(ask.settled for _, ask in asks) else None)
    seconds = time.perf_counter() - start
    lengths = [1 + len(ids) for ids in tokenizer(list(answers), add_special_tokens=False)["input_ids"]]
    results, begin = {}, 0
    for suite, ask in asks:
        end = begin + len(ask.prompts)
        share = sum(lengths[begin:end]) / sum(lengths)
        results[suite.name] = suite.scored(answers[begin:end], seconds * share)
        begin = end
    return results


def run_generating(suite: GeneratingSuite, model, tokenizer, batch_size: int) -> SuiteResult:
    """A generating suite run on its own (its `run`)."""
    ask = suite.generation(tokenizer)
    assert ask is not None, f"{suite.name} does not generate"
    return generate_together(model, tokenizer, [(suite, ask)], batch_size)[suite.name]
