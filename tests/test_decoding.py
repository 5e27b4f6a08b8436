"""One decoder: every caller gets the same greedy text for the same model and prompts, with one
stop rule (the tokenizer's EOS and the generation config's EOS ids)."""

import pytest
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


def test_the_static_cache_backend_gives_the_eager_tokens_and_logits(tiny):
    """`static` is the CUDA-graph backend minus the compile: preallocated cache, full-width mask,
    prompts padded to a bucket. Sampled and greedy tokens equal eager's; so do the kept logits."""
    model, tok = tiny
    encoded = [encode_chat(tok, m) for m in _messages()]
    kw = dict(max_new_tokens=20, eos_ids=stop_ids(model, tok), pad_id=tok.pad_token_id, keep_logits=True)
    for seeds in (None, [3, 1, 4, 1, 5]):
        eager = decode(model, encoded, seeds=seeds, backend="eager", **kw)
        static = decode(model, encoded, seeds=seeds, backend="static", **kw)
        assert static.prompt_ids.shape[1] % 64 == 0 and static.prompt_ids.shape[1] > eager.prompt_ids.shape[1]
        assert torch.equal(static.completion_ids, eager.completion_ids)
        torch.testing.assert_close(static.logits, eager.logits, atol=1e-5, rtol=1e-5)
    assert greedy_generate(model, tok, encoded, 12, backend="static") == greedy_generate(model, tok, encoded, 12)


def test_cuda_graphs_are_refused_off_cuda_with_the_fix(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="needs a CUDA device.*'static'"):
        decode(model, [[1, 2, 3]], max_new_tokens=2, eos_ids=(0,), pad_id=0, backend="cuda_graph")


@pytest.mark.parametrize("seeds", [None, [3, 1, 4, 1, 5]])
def test_a_row_that_stops_leaves_the_batch_and_the_tokens_stay_the_same(tiny, seeds):
    """decode(compact=True) drops finished rows from the KV cache; the other rows' tokens (greedy
    and sampled) and the stop flags equal those of the full batch."""
    model, tok = tiny
    encoded = [encode_chat(tok, m) for m in _messages()]
    free = decode(model, encoded, max_new_tokens=10, eos_ids=(-1,), pad_id=tok.pad_token_id, seeds=seeds)
    # stop ids that end rows at different steps: what rows 0 and 2 emit at steps 2 and 5
    stops = (int(free.completion_ids[0, 2]), int(free.completion_ids[2, 5]))
    full = decode(model, encoded, max_new_tokens=10, eos_ids=stops, pad_id=tok.pad_token_id, seeds=seeds)
    compact = decode(model, encoded, max_new_tokens=10, eos_ids=stops, pad_id=tok.pad_token_id, seeds=seeds,
                     compact=True)
    assert 0 < int(full.finished.sum()) and torch.equal(compact.finished, full.finished)
    assert torch.equal(compact.completion_ids, full.completion_ids)


def test_a_settled_row_stops_there_and_keeps_its_prefix(tiny):
    """greedy_generate(settled=): a row whose answer is decided leaves the batch at that step;
    its text is the prefix it had, the other rows' texts are unchanged, and fewer steps run."""
    model, tok = tiny
    encoded = [encode_chat(tok, m) for m in _messages()]
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        full = greedy_generate(model, tok, encoded, max_new_tokens=12)
        full_calls, calls[:] = len(calls), []
        seen: dict[int, list[str]] = {}

        def settled(i, text):  # rows 0 and 3 are decided once they have said 3 characters
            seen.setdefault(i, []).append(text)
            return i in (0, 3) and len(text) >= 3

        cut = greedy_generate(model, tok, encoded, max_new_tokens=12, settled=settled)
    finally:
        hook.remove()
    assert len(full[0]) > 3 and len(full[3]) > 3  # else the test shows nothing
    for i, (a, b) in enumerate(zip(full, cut)):
        assert b == a if i not in (0, 3) else (a.startswith(b) and 3 <= len(b) < len(a))
        assert all(a.startswith(text) for text in seen[i])  # every prefix shown was a real prefix
    assert len(calls) <= full_calls


def test_a_shared_prompt_prefix_runs_once_with_the_same_logits(tiny):
    """Prompts that share a chat template's system prompt: the prefix runs once, its KV cache is
    repeated per row; the next-token logits after the prompt and after a few steps match the plain
    left-padded batch."""
    from sdft_ops.engine.sampling import MIN_SHARED_PREFIX, _ModelCalls, left_pad, shared_prefix

    model, tok = tiny
    system = [{"role": "system", "content": "You are a careful assistant who answers briefly."}]
    encoded = [encode_chat(tok, system + m) for m in _messages()]
    assert shared_prefix(encoded) >= MIN_SHARED_PREFIX
    ids, mask = left_pad(encoded, tok.pad_token_id, model.device)
    with torch.no_grad():
        plain = _ModelCalls(model, ids, mask, 4, "eager")
        shared = _ModelCalls(model, ids, mask, 4, "eager", prompts=encoded, pad_id=tok.pad_token_id)
        prefix = shared_prefix(encoded)
        assert bool(shared.attn[:, :prefix].all()) and shared.attn.shape[1] > ids.shape[1] - prefix
        for _ in range(3):
            torch.testing.assert_close(shared.logits, plain.logits, atol=1e-4, rtol=1e-4)
            step = plain.logits.argmax(-1)
            plain.step(step)
            shared.step(step)


def test_prompts_of_different_lengths_run_in_groups_with_the_logits_of_the_plain_batch(tiny):
    """Without a shared prefix the prompt pass still runs in length groups (each padded to its own
    longest row) laid into one left-padded cache: the logits after the prompt and after a few
    steps match the plain batch's."""
    from sdft_ops.engine.prefill import length_groups, left_pad, shared_prefix
    from sdft_ops.engine.sampling import _ModelCalls

    model, tok = tiny
    encoded = [tok(q * (1 + 3 * i), add_special_tokens=False)["input_ids"] for i, q in enumerate(QUESTIONS)]
    assert shared_prefix(encoded) == 0 and len(length_groups([len(e) for e in encoded])) > 1
    ids, mask = left_pad(encoded, tok.pad_token_id, model.device)
    with torch.no_grad():
        plain = _ModelCalls(model, ids, mask, 4, "eager")
        grouped = _ModelCalls(model, ids, mask, 4, "eager", prompts=encoded, pad_id=tok.pad_token_id)
        for _ in range(3):
            torch.testing.assert_close(grouped.logits, plain.logits, atol=1e-4, rtol=1e-4)
            step = plain.logits.argmax(-1)
            plain.step(step)
            grouped.step(step)


def test_the_grouped_prompt_pass_runs_under_bf16_autocast(tiny):
    """A CPU with native bf16 decodes under bf16 autocast, where the rotary embedding leaves the
    keys in float32 and the values in bf16: the grouped cache lays both into buffers of the
    values' dtype (it once laid the values into a float32 buffer and failed) and follows the
    plain batch."""
    from sdft_ops.engine.prefill import left_pad
    from sdft_ops.engine.sampling import _ModelCalls

    model, tok = tiny
    encoded = [tok(q * (1 + 3 * i), add_special_tokens=False)["input_ids"] for i, q in enumerate(QUESTIONS)]
    ids, mask = left_pad(encoded, tok.pad_token_id, model.device)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = _ModelCalls(model, ids, mask, 4, "eager")
        grouped = _ModelCalls(model, ids, mask, 4, "eager", prompts=encoded, pad_id=tok.pad_token_id)
        for _ in range(3):
            torch.testing.assert_close(grouped.logits.float(), plain.logits.float(), atol=0.1, rtol=0.05)
            step = plain.logits.argmax(-1)
            plain.step(step)
            grouped.step(step)


@pytest.mark.parametrize("autocast", [False, True])
def test_the_reserved_cache_gives_the_logits_of_transformers_growing_cache(tiny, autocast):
    """The decode writes its KV cache in place into buffers reserved for prompt + max_new_tokens
    (keys in the values' dtype) and grows them past that; step by step its logits are exactly
    those of transformers' own concatenating DynamicCache, in float32 and under bf16 autocast
    (where attention casts the keys to bf16 either way)."""
    import contextlib

    from transformers import DynamicCache

    from sdft_ops.engine.prefill import left_pad, position_ids
    from sdft_ops.engine.sampling import _ModelCalls

    model, tok = tiny
    encoded = [tok(q * (1 + 3 * i), add_special_tokens=False)["input_ids"] for i, q in enumerate(QUESTIONS)]
    ids, mask = left_pad(encoded, tok.pad_token_id, model.device)
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.no_grad(), precision:
        reserved = _ModelCalls(model, ids, mask, 2, "eager")  # room for 2 tokens: step 3 grows it
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                    cache=DynamicCache(config=model.config), use_cache=True)
        attn, pos, growing = mask, position_ids(mask)[:, -1:], out.cache
        for _ in range(5):
            torch.testing.assert_close(reserved.logits, out.logits[:, -1], atol=0, rtol=0)
            step = out.logits[:, -1].argmax(-1)
            reserved.step(step)
            attn, pos = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=-1), pos + 1
            out = model(input_ids=step[:, None], attention_mask=attn, position_ids=pos, cache=growing,
                        use_cache=True)
    layer = reserved.cache.layers[0]
    assert type(layer).__name__ == "ReservedLayer" and layer.get_seq_length() == ids.shape[1] + 5
    assert layer.keys.dtype == (torch.bfloat16 if autocast else torch.float32)


@pytest.mark.parametrize("lengths", [[5], [40, 3, 3, 3], [9, 8, 8, 7, 2, 2, 1], list(range(1, 30))])
def test_length_groups_partition_the_rows_at_the_least_cost(lengths):
    """Every row in exactly one group, groups in longest-first order, and no partition of the
    sorted rows into consecutive groups costs less (checked against all of them)."""
    import itertools

    from sdft_ops.engine.prefill import CALL_COST_TOKENS, length_groups

    groups = length_groups(lengths)
    flat = [i for g in groups for i in g]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)

    def cost(gs):
        return sum(CALL_COST_TOKENS + len(g) * max(lengths[i] for i in g) for g in gs)

    if len(lengths) <= 12:
        n = len(flat)
        best = min(cost([flat[a:b] for a, b in zip((0, *cuts), (*cuts, n))])
                   for k in range(n) for cuts in itertools.combinations(range(1, n), k))
        assert cost(groups) == best
    assert cost(groups) <= cost([flat]) and cost(groups) <= cost([[i] for i in flat])


def test_each_prompt_can_have_its_own_token_cap(tiny):
    """greedy_generate(max_new_tokens=[...]): each row stops at its own cap, with the text the
    prompt gets decoded alone at that cap."""
    model, tok = tiny
    encoded = [encode_chat(tok, m) for m in _messages()]
    caps = [2, 12, 5, 12, 1]
    together = greedy_generate(model, tok, encoded, max_new_tokens=caps, batch_size=3)
    assert together == [greedy_generate(model, tok, [p], n)[0] for p, n in zip(encoded, caps)]
    assert len(set(together)) > 1
    with pytest.raises(ValueError, match="one per prompt"):
        greedy_generate(model, tok, encoded, max_new_tokens=[2, 3])


def test_few_row_calls_run_on_packed_weights_remade_when_the_weights_change():
    """packed_linears: a 2-128-row call equals F.linear up to rounding; one row and long inputs use
    the weight itself; an in-place weight update (an optimizer step) remakes the packed copy;
    keep=False frees the copies on exit, keep=True leaves them for the next decode."""
    import copy

    import torch.nn.functional as F
    from torch import nn

    from sdft_ops.engine import packed_linear

    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    model = nn.Sequential(layer)
    x = torch.randn(5, 1, 24)
    with torch.no_grad(), packed_linear.packed_linears(model, keep=True):
        torch.testing.assert_close(model(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        first = packed_linear._PACKED[layer]["weight"]
        model(torch.randn(1, 24))
        model(torch.randn(packed_linear.MAX_ROWS + 1, 24))
        assert packed_linear._PACKED[layer]["weight"] is first  # those ran on the weight itself
        layer.weight.mul_(2.0)  # what an optimizer step does
        torch.testing.assert_close(model(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        assert packed_linear._PACKED[layer]["weight"] is not first
    assert "forward" not in layer.__dict__ and layer in packed_linear._PACKED  # kept
    copy.deepcopy(model)  # the EMA teacher is a deepcopy: kept copies stay outside the module
    with torch.no_grad(), packed_linear.packed_linears(model):
        model(x)
    assert layer not in packed_linear._PACKED  # keep=False: freed
    # with gradients on (training forward passes) the weight itself is used
    with packed_linear.packed_linears(model):
        assert model(x).requires_grad
    # under bf16 autocast (a CPU with native bf16) a bf16 or float32 input gives autocast's result
    # (the packed float32 weight once failed there: "could not create a primitive descriptor");
    # where oneDNN runs bf16 natively, from a bf16 packed copy made once, whatever the rows
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), packed_linear.packed_linears(model):
        expected = F.linear(x.bfloat16(), layer.weight, layer.bias)
        torch.testing.assert_close(model(x.bfloat16()), expected, atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(model(x), expected, atol=2e-2, rtol=2e-2)
        one = torch.randn(1, 24)
        torch.testing.assert_close(model(one), F.linear(one.bfloat16(), layer.weight, layer.bias),
                                   atol=2e-2, rtol=2e-2)
        if packed_linear.onednn_bf16():
            assert packed_linear._PACKED[layer]["key"][2] == torch.bfloat16
            assert packed_linear._PACKED[layer]["weight"].dtype == torch.bfloat16
