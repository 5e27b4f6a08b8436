"""Student and teacher prompts for each demonstration, tokenized once before training.

The student sees the question alone; the teacher sees the question with the demonstration in
its context (`TeacherContext`). The question is never truncated: when a teacher prompt exceeds
`max_prompt_tokens`, only the demonstration is shortened (counted and reported); an example
whose question alone exceeds the limit is an error naming it, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sdft_ops.chat import Messages, encode_chat
from sdft_ops.data import Demonstration
from sdft_ops.engine.config import DEMONSTRATION, QUESTION, SDFTConfig, TeacherContext

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PAPER_TEMPLATE = (
    f"{QUESTION}\n\nThis is an example for a response to the question:\n{DEMONSTRATION}\n\n"
    "Now answer with a response of your own, including the thinking process."
)


@dataclass(frozen=True)
class PreparedExample:
    id: str
    student_prompt: tuple[int, ...]
    teacher_prompt: tuple[int, ...]
    target: tuple[int, ...]  # demonstration + EOS: the SFT labels
    demo_tokens_cut: int  # demonstration tokens dropped from the teacher prompt
    rejected: tuple[int, ...] | None = None  # the rejected answer + EOS (preference pairs)
    as_demonstration: bool = False  # learned as its demonstration, never rolled out (replay)


class PromptTooLongError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            f"{len(problems)} example(s) do not fit max_prompt_tokens even without the "
            "demonstration; shorten them or raise max_prompt_tokens:\n  " + "\n  ".join(problems)
        )


def teacher_messages(prompt: Messages, demonstration: str, context: TeacherContext) -> Messages:
    """The teacher's chat: earlier turns kept, the demonstration placed by the preset."""
    history, question = prompt[:-1], prompt[-1]["content"]
    if context.preset == "previous_turn":
        return [
            *history,
            {"role": "user", "content": question},
            {"role": "assistant", "content": demonstration},
            {"role": "user", "content": question},
        ]
    template = PAPER_TEMPLATE if context.preset == "paper" else context.template
    assert template is not None  # guaranteed by TeacherContext's validator
    text = template.replace(QUESTION, question).replace(DEMONSTRATION, demonstration)
    return [*history, {"role": "user", "content": text}]


def teacher_prompt_fitting(
    tokenizer: "PreTrainedTokenizerBase", demo: Demonstration, context: TeacherContext, limit: int
) -> tuple[list[int], int] | None:
    """Teacher prompt ids within `limit`, shortening only the demonstration (binary search on
    how many of its tokens to keep). Returns (ids, tokens cut), or None if nothing fits."""
    prompt = demo.prompt_messages()
    ids = encode_chat(tokenizer, teacher_messages(prompt, demo.demonstration, context))
    if len(ids) <= limit:
        return ids, 0
    demo_ids = tokenizer(demo.demonstration, add_special_tokens=False)["input_ids"]
    best: tuple[list[int], int] | None = None
    low, high = 0, len(demo_ids) - 1
    while low <= high:
        keep = (low + high) // 2
        shortened = tokenizer.decode(demo_ids[:keep])
        ids = encode_chat(tokenizer, teacher_messages(prompt, shortened, context))
        if len(ids) <= limit:
            best, low = (ids, len(demo_ids) - keep), keep + 1
        else:
            high = keep - 1
    return best


def prepare_examples(
    demos: Sequence[Demonstration], tokenizer: "PreTrainedTokenizerBase", cfg: SDFTConfig,
    demonstration_ids: Collection[str] = (),
) -> list[PreparedExample]:
    """Tokenize every example once; raise PromptTooLongError listing all that cannot fit.
    `demonstration_ids`: the examples whose completion is their demonstration (no rollout)."""
    prepared, problems = [], []
    for demo in demos:
        student = encode_chat(tokenizer, demo.prompt_messages())
        teacher = teacher_prompt_fitting(
            tokenizer, demo, cfg.teacher_context, cfg.max_prompt_tokens
        )
        if len(student) > cfg.max_prompt_tokens or teacher is None:
            problems.append(f"{demo.id}: question is {len(student)} tokens "
                            f"(limit {cfg.max_prompt_tokens} with the teacher's template)")
            continue
        target = tokenizer(demo.demonstration, add_special_tokens=False)["input_ids"]
        rejected = None if demo.rejected is None else (
            *tokenizer(demo.rejected, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id)
        prepared.append(PreparedExample(
            id=demo.id,
            student_prompt=tuple(student),
            teacher_prompt=tuple(teacher[0]),
            target=(*target, tokenizer.eos_token_id),
            demo_tokens_cut=teacher[1],
            rejected=rejected,
            as_demonstration=demo.id in demonstration_ids,
        ))
    if problems:
        raise PromptTooLongError(problems)
    return prepared
