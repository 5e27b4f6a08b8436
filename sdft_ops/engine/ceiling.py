"""Teacher ceiling: a pre-flight check that the teacher can do the task at all.

SDFT cannot teach what its teacher cannot do. Before training, score the teacher's greedy
answer (the demonstration in its context) and the student's greedy answer (the question alone)
on a sample of the training demonstrations with the domain's scorer. A ceiling below `floor`
warns, or refuses in strict mode. Given `max_prompt_tokens`, the teacher's prompts are the ones
training uses (only the demonstration shortened to fit), so the check decodes nothing longer
than training will.
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict

from sdft_ops.chat import encode_chat
from sdft_ops.data import Demonstration
from sdft_ops.engine.precision import bf16_autocast
from sdft_ops.engine.config import TeacherContext
from sdft_ops.engine.context import PromptTooLongError, teacher_prompt_fitting
from sdft_ops.engine.sampling import greedy_generate

log = logging.getLogger(__name__)
Scorer = Callable[[str, str], float]


class CeilingReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    context: str
    n: int
    teacher_score: float  # with the demonstration in context: what SDFT can at best teach
    student_score: float  # question alone: where the student starts
    floor: float
    examples: list[dict[str, str]]  # a few (id, teacher, student) answers to read

    @property
    def below_floor(self) -> bool:
        return self.teacher_score < self.floor


class TeacherCeilingTooLow(RuntimeError):
    pass


def _greedy(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
            bf16: bool) -> list[str]:
    with bf16_autocast(next(model.parameters()).device.type, bf16):
        answers = greedy_generate(model, tokenizer, prompts, max_new_tokens, batch_size)
    return [a.strip() for a in answers]


def teacher_ceiling(
    model,
    tokenizer,
    demos: Sequence[Demonstration],
    scorer: Scorer,
    context: TeacherContext = TeacherContext(),
    *,
    reference: Callable[[Demonstration], str] = lambda d: d.demonstration,
    sample_size: int = 32,
    max_new_tokens: int = 64,
    floor: float = 0.3,
    strict: bool = False,
    seed: int = 0,
    batch_size: int = 16,
    bf16: bool = True,
    max_prompt_tokens: int | None = None,
) -> CeilingReport:
    """Score teacher (demo in context) and student (no demo) greedy answers on a seeded sample.
    `max_prompt_tokens`: fit the teacher's prompts as training does (a question that cannot fit
    is a PromptTooLongError, as in `prepare_examples`); None: the whole demonstration."""
    sample = list(demos)
    random.Random(seed).shuffle(sample)
    sample = sample[:sample_size]
    if not sample:
        raise ValueError("teacher_ceiling needs at least one demonstration")
    limit = max_prompt_tokens or sys.maxsize
    fitted = [teacher_prompt_fitting(tokenizer, d, context, limit) for d in sample]
    if too_long := [d.id for d, f in zip(sample, fitted) if f is None]:
        raise PromptTooLongError([f"{i}: question over {limit} tokens" for i in too_long])
    teacher_prompts = [ids for ids, _ in fitted]
    student_prompts = [encode_chat(tokenizer, d.prompt_messages()) for d in sample]
    teacher = _greedy(model, tokenizer, teacher_prompts, max_new_tokens, batch_size, bf16)
    student = _greedy(model, tokenizer, student_prompts, max_new_tokens, batch_size, bf16)
    refs = [reference(d) for d in sample]
    report = CeilingReport(
        context=context.preset if context.preset != "custom" else f"custom:{context.template}",
        n=len(sample),
        teacher_score=sum(scorer(a, r) for a, r in zip(teacher, refs)) / len(sample),
        student_score=sum(scorer(a, r) for a, r in zip(student, refs)) / len(sample),
        floor=floor,
        examples=[{"id": d.id, "teacher": t, "student": s}
                  for d, t, s in zip(sample[:3], teacher, student)],
    )
    if report.below_floor:
        message = (f"teacher ceiling {report.teacher_score:.2f} < floor {floor:.2f} with context "
                   f"'{report.context}': SDFT cannot teach what its teacher cannot do. Try another "
                   "teacher context (e.g. previous_turn), a stronger model, or SFT.")
        if strict:
            raise TeacherCeilingTooLow(message)
        log.warning(message)
    return report
