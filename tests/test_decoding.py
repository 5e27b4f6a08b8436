"""One decoder: every caller gets the same greedy text for the same model and prompts, with one
stop rule (the tokenizer's EOS and the generation config's EOS ids)."""

import torch

from sdft_ops.chat import encode_chat, generate_text
from sdft_ops.engine.ceiling import _greedy as ceiling_greedy
from sdft_ops.engine.sampling import decode, greedy_generate, stop_ids
from sdft_ops.evaluation.suites import GenerationSuite

QUESTIONS = ["hi", "What is the capital of France?", "Call the tool now with a long message", "x", "2+2?"]


def _messages():
    return [[{"role": "user", "content": q}] for q in QUESTIONS]


def test_every_caller_gives_the_same_greedy_text(tiny):
    model, tok = tiny
    encoded = [encode_chat(tok, m) for m in _messages()]
    texts = greedy_generate(model, tok, encoded, max_new_tokens=12, batch_size=3)
    assert any(t.strip() for t in texts)
    assert [generate_text(model, tok, m, max_new_tokens=12) for m in _messages()] == [t.strip() for t in texts]
    assert ceiling_greedy(model, tok, encoded, 12, batch_size=2, bf16=False) == [t.strip() for t in texts]
    suite = GenerationSuite.from_triples("dom", [(f"q{i}", m, t) for i, (m, t) in enumerate(zip(_messages(), texts))],
                                         scorer="exact_match", max_new_tokens=12)
    assert suite.run(model, tok, batch_size=4).scores == (1.0,) * len(QUESTIONS)
    # and it is transformers' own greedy decoding, stop ids included
    for ids, text in zip(encoded, texts):
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=12, do_sample=False, eos_token_id=list(stop_ids(model, tok)),
                             pad_token_id=tok.pad_token_id)
        assert tok.decode(out[0, len(ids):], skip_special_tokens=True) == text


def test_the_generation_config_eos_ids_stop_every_caller(tiny):
    model, tok = tiny
    encoded = [encode_chat(tok, m) for m in _messages()]
    plain = decode(model, encoded[1:2], max_new_tokens=12, eos_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id)
    tokens = plain.completion_ids[0].tolist()
    stop_at = tokens[3]  # a token the model emits: make it an end-of-turn id as well
    cut = tokens.index(stop_at)
    model.generation_config.eos_token_id = [tok.eos_token_id, stop_at]
    try:
        assert stop_ids(model, tok) == tuple(sorted({tok.eos_token_id, stop_at}))
        stopped = decode(model, encoded[1:2], max_new_tokens=12, eos_ids=stop_ids(model, tok), pad_id=tok.pad_token_id)
        assert bool(stopped.finished[0]) and stopped.completion_ids[0, : cut + 1].tolist() == tokens[: cut + 1]
        expected = tok.decode(tokens[:cut], skip_special_tokens=True)
        assert greedy_generate(model, tok, encoded[1:2], max_new_tokens=12)[0] == expected
        assert generate_text(model, tok, _messages()[1], max_new_tokens=12) == expected.strip()
    finally:
        model.generation_config.eos_token_id = tok.eos_token_id
