"""Chat rendering and plain generation, shared by the engine, evaluation and the CLI.

Prompts are rendered to text with the tokenizer's chat template, then tokenized with
`add_special_tokens=False` (the template already holds the special tokens); this behaves the
same on transformers 4.x and 5.x, whose `apply_chat_template(tokenize=True)` return types differ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Messages = list[dict[str, str]]


def render_chat(tokenizer: "PreTrainedTokenizerBase", messages: Messages) -> str:
    """Messages → prompt text ending with the opened assistant turn.

    Without a chat template, turns are joined as 'role: content' lines and end with 'assistant:'.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines + ["assistant:"])


def encode_chat(tokenizer: "PreTrainedTokenizerBase", messages: Messages) -> list[int]:
    return tokenizer(render_chat(tokenizer, messages), add_special_tokens=False)["input_ids"]


def generate_text(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    messages: Messages,
    max_new_tokens: int = 64,
) -> str:
    """Greedy answer to one chat prompt (for humans: the CLI and the demo)."""
    from sdft_ops.engine.sampling import greedy_generate

    return greedy_generate(model, tokenizer, [encode_chat(tokenizer, messages)], max_new_tokens)[0].strip()
