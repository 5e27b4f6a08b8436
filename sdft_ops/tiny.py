"""Tiny random Llama models and a small byte-level tokenizer, built in code (no files, no hub).

Used by the unit tests and by the benchmarks' tiny-model rows: instant to build, same code
paths as a real model (chat template, padding, EOS, generation with a KV cache).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<|im_start|>", "<|im_end|>"

# ChatML, as SmolLM2 uses it; the generation prompt opens the assistant turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    'Call the tool: {"name": "get_weather", "arguments": {"city": "Paris"}}',
    "user assistant system question answer demonstration example response",
    "What is the capital of France? The capital of France is Paris.",
    "0123456789 +-*/=()[]{}<>:;,.!?'\" \n",
]


def build_tiny_tokenizer(vocab_size: int = 320) -> "PreTrainedTokenizerFast":
    """A byte-level BPE tokenizer trained on a fixed corpus (deterministic), with ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_model(
    vocab_size: int, seed: int = 0, hidden_size: int = 32, num_layers: int = 2
) -> "LlamaForCausalLM":
    """A random Llama with the given vocab; `seed` makes its weights reproducible."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def build_tiny(seed: int = 0) -> tuple["LlamaForCausalLM", "PreTrainedTokenizerFast"]:
    """(model, tokenizer) pair whose special-token ids agree (pad 0, bos 1, eos 2)."""
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(len(tokenizer), seed=seed)
    return model, tokenizer
