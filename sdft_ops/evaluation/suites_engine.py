"""The two batched model calls every suite is built from: continuation log-likelihoods and greedy
generation. Pure functions of (model, token ids); suites own tokenization and scoring.

Log-likelihood (`score_continuations`), lm-evaluation-harness conventions: a request is
(context ids, continuation ids); the model reads `context + continuation[:-1]` and each
continuation token is scored by the log-softmax at the position before it. `encode_pair` is
lm-eval's `HFLM._encode_pair`: trailing whitespace of the context moves to the continuation,
context and context+continuation are tokenized (no special tokens) and the continuation ids are
the tail of the latter past the length of the former.

Batching, two stages per chunk of requests, both right-padded:
  1. every distinct context once: (G, Lc) with the KV cache kept; only the logits at each
     context's last position are materialized (`logits_to_keep` = those positions), which
     score every continuation's first token. Requests sharing a context (an item's choices, a
     safety prompt's two answers) therefore share this forward.
  2. each continuation minus its last token, (R, Lq), on top of its context's cache rows
     (`batch_select_indices` repeats them), positions continuing from the context's length and
     the context's padding masked out. Skipped when every continuation is one token (MMLU).
A prefix every context shares (a chat template's system prompt: drift's contexts) runs once, its
KV cache under every chunk's contexts. Scores equal one-request-at-a-time scoring up to float
rounding (tested).

Generation: `sdft_ops.engine.sampling.greedy_generate`, the engine's own decoder (one stop rule
for training rollouts, the teacher ceiling, every suite and the CLI).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from sdft_ops.engine.prefill import MIN_SHARED_PREFIX, prefix_cache, repeated, shared_prefix

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class TokenScores(NamedTuple):
    """Per-token log-probs of one continuation and whether each token was the argmax."""

    logprobs: tuple[float, ...]
    greedy: tuple[bool, ...]

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))

    @property
    def mean(self) -> float:
        return self.total / len(self.logprobs)


def prefix_token_id(tokenizer: "PreTrainedTokenizerBase") -> int:
    """What lm-eval puts before an empty context: BOS if the tokenizer has one, else EOS."""
    token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token_id is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token; an empty context "
                         "cannot be scored — give every request a non-empty context")
    return token_id


def encode_pair(
    tokenizer: "PreTrainedTokenizerBase", context: str, continuation: str
) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) exactly as lm-eval's HFLM splits them."""
    if not continuation:
        raise ValueError("empty continuation: there is nothing to score")
    if not context:
        return [prefix_token_id(tokenizer)], _encode(tokenizer, continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = _encode(tokenizer, context + continuation)
    context_ids = _encode(tokenizer, context)
    return context_ids, whole[len(context_ids):]


def pad_id(tokenizer: "PreTrainedTokenizerBase") -> int:
    """The id used for padding (always masked out): the pad token, else EOS."""
    token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if token_id is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
    return token_id


def _encode(tokenizer: "PreTrainedTokenizerBase", text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _cache_argument(model: "PreTrainedModel") -> str:
    """The forward() keyword for a KV cache: `cache` in transformers >= 5.2x, else
    `past_key_values` (peft wrappers pass keywords through to the base model)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _max_length(model: "PreTrainedModel") -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def _truncate(context: Sequence[int], continuation: Sequence[int], max_length: int | None):
    """Left-truncate the context so context + continuation[:-1] fits (lm-eval does the same)."""
    if max_length is None or len(context) + len(continuation) - 1 <= max_length:
        return tuple(context)
    keep = max_length - len(continuation) + 1
    if keep < 1:
        raise ValueError(f"a continuation of {len(continuation)} tokens does not fit the model's "
                         f"{max_length} positions; shorten it")
    return tuple(context[-keep:])


def _right_pad(
    rows: Sequence[Sequence[int]], pad_id: int, device
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(ids, attention mask), each (len(rows), longest row), padding on the right."""
    import torch

    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def _chunks(groups: list[tuple[tuple[int, ...], list[int]]], rows_per_batch: int):
    """Consecutive groups whose continuations add up to at most rows_per_batch (>= 1 group)."""
    chunk: list = []
    rows = 0
    for group in groups:
        if chunk and rows + len(group[1]) > rows_per_batch:
            yield chunk
            chunk, rows = [], 0
        chunk.append(group)
        rows += len(group[1])
    if chunk:
        yield chunk


def _token_scores(
    logits: "torch.Tensor", targets: "torch.Tensor"
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """logits (..., V), targets (...) -> (log-prob of each target, target is the argmax)."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - logits.logsumexp(-1), logits.argmax(-1) == targets


def score_continuations(
    model: "PreTrainedModel",
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 16,
    pad_token_id: int = 0,
) -> list[TokenScores]:
    """Per-token log-probs of each request's continuation given its context (see module doc).

    `batch_size` bounds the (context, continuation) pairs per forward. Order of results = order
    of requests. Runs under `torch.inference_mode`; the caller picks precision (e.g. autocast).
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    max_length = _max_length(model)
    by_context: dict[tuple[int, ...], list[int]] = {}
    for index, (context, continuation) in enumerate(requests):
        if not context or not continuation:
            raise ValueError(f"request {index}: context and continuation must both be non-empty "
                             "token lists (encode_pair puts BOS before an empty context)")
        by_context.setdefault(_truncate(context, continuation, max_length), []).append(index)
    # Longest first (as lm-eval): an out-of-memory shows on the first batch, padding stays low.
    groups = sorted(by_context.items(),
                    key=lambda g: -(len(g[0]) + max(len(requests[i][1]) for i in g[1])))

    results: list[TokenScores | None] = [None] * len(requests)
    device = model.device
    with torch.inference_mode():
        prefix = shared_prefix([context for context, _ in groups])
        head = prefix_cache(model, groups[0][0][:prefix]) if prefix >= MIN_SHARED_PREFIX else None
        for chunk in _chunks(groups, batch_size):
            _score_chunk(model, chunk, requests, results, pad_token_id, device, head, prefix if head else 0)
    assert all(result is not None for result in results)
    return results  # type: ignore[return-value]


def _score_chunk(model, chunk, requests, results, pad_token_id, device, head=None, prefix=0) -> None:
    """One chunk's two stages. `head`: the KV cache of the `prefix` tokens every context shares
    (run once for all chunks); each context's own tokens then run on top of it."""
    import torch

    contexts = [context[prefix:] for context, _ in chunk]
    context_lengths = torch.tensor([prefix + len(c) for c in contexts], device=device)  # (G,)
    ids, mask = _right_pad(contexts, pad_token_id, device)  # (G, Lc)
    if head is not None:
        mask = torch.cat([mask.new_ones(len(contexts), prefix), mask], dim=1)  # (G, P + Lc)
    last = sorted({len(c) - 1 for c in contexts})
    column_of = {position: column for column, position in enumerate(last)}
    rows = [(g, index) for g, (_, indices) in enumerate(chunk) for index in indices]
    needs_stage_two = any(len(requests[index][1]) > 1 for _, index in rows)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=prefix + torch.arange(ids.shape[1], device=device).expand_as(ids),
        use_cache=needs_stage_two or head is not None,
        logits_to_keep=torch.tensor(last, device=device),
        **({_cache_argument(model): repeated(head, len(contexts))} if head is not None else {}),
    )
    columns = torch.tensor([column_of[len(contexts[g]) - 1] for g, _ in rows], device=device)
    groups = torch.tensor([g for g, _ in rows], device=device)
    first_targets = torch.tensor([requests[index][1][0] for _, index in rows], device=device)
    first_logits = out.logits[groups, columns]  # (R, V)
    first_lp, first_greedy = _token_scores(first_logits, first_targets)
    del first_logits

    rest_lp = rest_greedy = None
    if needs_stage_two:
        cache = out.get("cache", None)
        if cache is None:  # transformers < 5.2x names it past_key_values
            cache = out.get("past_key_values")
        cache.batch_select_indices(groups)  # one cache row per continuation (rows repeat)
        # Input cont[:-1] scores cont[1:]; a one-token continuation gets a masked placeholder.
        inputs = [list(requests[index][1][:-1]) for _, index in rows]
        cont_ids, cont_mask = _right_pad([row or [pad_token_id] for row in inputs], pad_token_id, device)
        for r, row in enumerate(inputs):
            if not row:
                cont_mask[r, 0] = 0
        # (R, Lq): positions go on from each context's own length, past its padding.
        positions = context_lengths[groups].unsqueeze(1) + torch.arange(cont_ids.shape[1], device=device)
        out2 = model(
            input_ids=cont_ids,
            attention_mask=torch.cat([mask[groups], cont_mask], dim=1),  # (R, Lc + Lq)
            position_ids=positions,
            use_cache=False,
            **{_cache_argument(model): cache},
        )
        targets, _ = _right_pad([list(requests[index][1][1:]) or [pad_token_id] for _, index in rows],
                                pad_token_id, device)  # (R, Lq)
        rest_lp, rest_greedy = _token_scores(out2.logits, targets)
        del out2, cache
    del out

    first_lp, first_greedy = first_lp.tolist(), first_greedy.tolist()
    if rest_lp is not None:
        rest_lp, rest_greedy = rest_lp.tolist(), rest_greedy.tolist()
    for r, (_, index) in enumerate(rows):
        n_rest = len(requests[index][1]) - 1
        logprobs = [first_lp[r]] + (rest_lp[r][:n_rest] if n_rest else [])
        greedy = [first_greedy[r]] + (rest_greedy[r][:n_rest] if n_rest else [])
        results[index] = TokenScores(tuple(logprobs), tuple(bool(g) for g in greedy))
