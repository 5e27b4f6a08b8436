"""The one decoder: batched decoding with a KV cache, for rollouts and every greedy answer.

`decode` samples (training rollouts, student and teacher) or decodes greedily; `greedy_generate`
is its batched greedy form returning text, used by the teacher ceiling, every generation suite,
the frozen-answer scripts and the CLI, so that a model answers a prompt the same way wherever it
is asked. One stop rule (`stop_ids`): the tokenizer's EOS and the generation config's EOS ids.

One loop instead of `generate()`: it is where an SDFT step spends most of its time, and owning
it gives per-example sampling seeds. Each row draws its Gumbel noise from its own generator
seeded by (run seed, example id, epoch), so an example's sample does not depend on which other
examples share its batch or process — which makes 1-process and N-process runs, and a resumed
run, sample the same tokens. Gumbel-max over (logits / T) is exact categorical sampling.

How the per-token calls run is the backend (`decode_backend`: eager, static, cuda_graph; see
`_ModelCalls`). On a CPU the loop is bound by reading the weights once per token (~0.5 GB for
the 135M model), so only fewer tokens or more rows per call make it cheaper there.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from sdft_ops.engine.packed_linear import packed_linears
from sdft_ops.engine.prefill import (MIN_SHARED_PREFIX, grouped_prefill, left_pad, position_ids, reserve,
                                    shared_prefix)


def row_seed(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def stop_ids(model, tokenizer) -> tuple[int, ...]:
    """The EOS ids a completion ends at: the tokenizer's EOS and the generation config's."""
    config = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = {tokenizer.eos_token_id, *(config if isinstance(config, list | tuple) else [config])}
    ids.discard(None)
    if not ids:
        raise ValueError("the tokenizer has no EOS token and the model's generation config names none")
    return tuple(sorted(ids))


def until_stop(tokens: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
    """The tokens before the first stop id (all of them if none)."""
    tokens = list(tokens)
    return tokens[: next((t for t, token in enumerate(tokens) if token in eos_ids), len(tokens))]


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P)
    completion_ids: torch.Tensor  # (B, T) pad after EOS
    finished: torch.Tensor  # (B,) ended with EOS within max_new_tokens
    logits: torch.Tensor | None = None  # (B, T, V) raw logits that predicted each token (keep_logits)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p  # keep the token that crosses p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


DecodeBackend = Literal["auto", "eager", "static", "cuda_graph"]
PROMPT_BUCKET = 64  # static backends pad prompts to a multiple of this: few shapes, few graphs
_GRAPH_FAILED: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()
log = logging.getLogger(__name__)


# Bumped when the decoder's arithmetic changes (2: oneDNN-packed few-row calls; 3: the prompt pass
# in length groups): greedy answers cached by an older decoder are not compared with new ones
# (evaluation.battery._signature).
DECODER_VERSION = 3
def resolve_backend(backend: DecodeBackend, device: torch.device) -> str:
    """`auto`: CUDA graphs on a CUDA device, eager elsewhere."""
    if backend == "auto":
        return "cuda_graph" if device.type == "cuda" else "eager"
    if backend == "cuda_graph" and device.type != "cuda":
        raise ValueError(f"decode_backend 'cuda_graph' needs a CUDA device, not {device.type}; "
                         "use 'eager' or 'static' (the same static cache, not compiled)")
    return backend


class _ModelCalls:
    """The model calls of one decode: the prompt, then one token per call.

    - eager: a KV cache reserved for prompt + max_new_tokens, filled in place
      (`prefill.ReservedLayer`); the attention mask grows by a column per token.
      Given the prompts, the prompt pass runs in length groups (`prefill.grouped_prefill`);
      without them (or for a cache of other than plain layers) as one left-padded batch.
    - static: a StaticCache of prompt + max_new_tokens and a mask of that full width (future
      columns 0): every per-token call has the same shapes and buffers.
    - cuda_graph: static, with the per-token call compiled by torch.compile(mode=
      "reduce-overhead"), which replays it as one CUDA graph instead of hundreds of launches.
    """

    def __init__(self, model, ids, mask, max_new_tokens: int, backend: str,
                 prompts: Sequence[Sequence[int]] | None = None, pad_id: int = 0):
        self.backend, self.width = backend, ids.shape[1]
        self.pos = position_ids(mask)[:, -1:]
        if prompts is not None and backend == "eager":
            prefix = shared_prefix(prompts)
            grouped = grouped_prefill(model, prompts, prefix if prefix >= MIN_SHARED_PREFIX else 0, pad_id,
                                      reserve_tokens=max_new_tokens)
            if grouped is not None:
                self.cache, self.attn, self.logits = grouped
                self.pos, self.step_fn, self.width = position_ids(self.attn)[:, -1:], model, self.attn.shape[1]
                return
        if backend == "eager":
            self.attn, self.cache = mask, None
        else:
            from transformers import StaticCache

            self.cache = StaticCache(config=model.config, max_cache_len=self.width + max_new_tokens)
            self.attn = torch.cat([mask, mask.new_zeros(mask.shape[0], max_new_tokens)], dim=1)
        self.step_fn = model
        if backend == "cuda_graph":  # compiled once per model, kept in its __dict__ (not a submodule)
            if "_sdft_graph_forward" not in model.__dict__:
                model.__dict__["_sdft_graph_forward"] = torch.compile(
                    model.forward, mode="reduce-overhead", dynamic=False)
            self.step_fn = model.__dict__["_sdft_graph_forward"]
        out = model(input_ids=ids, attention_mask=self.attn[:, : self.width],
                    position_ids=position_ids(mask), cache=self.cache, use_cache=True, logits_to_keep=1)
        # transformers ≥ 5.24 names the KV cache `cache` (in and out); we require that version
        self.cache, self.logits = out.cache, out.logits[:, -1, :]
        if backend == "eager":  # written in place from here on, not grown by concatenation
            self.cache = reserve(self.cache, max_new_tokens)

    def select(self, keep: torch.Tensor) -> None:
        """Keep only these batch rows (eager): their KV-cache rows, mask, positions and logits."""
        assert self.backend == "eager", "only the eager cache can drop rows"
        self.cache.batch_select_indices(keep)
        self.attn, self.pos, self.logits = self.attn[keep], self.pos[keep], self.logits[keep]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; → the logits (B, V) that predict the next."""
        self.pos = self.pos + 1
        if self.backend == "eager":
            self.attn = torch.cat([self.attn, torch.ones_like(self.attn[:, :1])], dim=-1)
        else:
            self.attn[:, self.width] = 1
            self.width += 1
        if self.backend == "cuda_graph":
            torch.compiler.cudagraph_mark_step_begin()  # the previous replay's outputs are read
        out = self.step_fn(input_ids=tokens.unsqueeze(-1), attention_mask=self.attn, position_ids=self.pos,
                           cache=self.cache, use_cache=True)
        self.logits = out.logits[:, -1, :].clone() if self.backend == "cuda_graph" else out.logits[:, -1, :]
        return self.logits


@torch.no_grad()
def decode(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seeds: Sequence[int] | None = None,
    keep_logits: bool = False,
    backend: DecodeBackend = "eager",
    compact: bool = False,
    settled: Callable[[int, list[int]], bool] | None = None,
    keep_packed: bool = False,
) -> Rollout:
    """Sample (seeds given) or greedy-decode (seeds None) one completion per prompt.
    `keep_logits`: also return the raw logits behind each token (a teacher's rollout then needs
    no second forward to be scored). `backend`: how the per-token calls run (`_ModelCalls`);
    every backend gives the same tokens (tests/test_decoding.py). If compiling or capturing
    the CUDA graph fails, this model decodes eagerly from then on (one warning).
    The eager prompt pass runs a prefix every prompt shares (a chat template's system prompt)
    once and the rest in length groups (`engine/prefill.py`: no padding to the longest prompt).
    `compact` (eager, without keep_logits): a row that reaches its stop id leaves the batch (its
    KV-cache row, mask and position are dropped), so the remaining rows' calls get cheaper. The
    tokens are those of the plain left-padded batch up to float rounding.
    `settled(row, tokens so far) -> bool`: a row whose answer is already decided (its scorer
    cannot change its verdict) stops there like a row at its stop id; it is not `finished`
    (that means: ended at a stop id).
    On a CPU (eager) the few-row calls run on oneDNN-packed weights (`packed_linear`);
    `keep_packed` keeps those copies for the next decode of the same, unchanged weights."""
    device = next(model.parameters()).device
    backend = resolve_backend(backend, device)
    kwargs = dict(max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id, temperature=temperature,
                  top_p=top_p, seeds=seeds, keep_logits=keep_logits, settled=settled,
                  keep_packed=keep_packed,
                  compact=compact and backend == "eager" and not keep_logits)
    if backend == "cuda_graph" and model in _GRAPH_FAILED:
        backend = "eager"
    if backend != "cuda_graph":
        return _decode(model, prompts, backend=backend, **kwargs)
    try:
        return _decode(model, prompts, backend=backend, **kwargs)
    except Exception as err:  # noqa: BLE001  a compiler or capture failure must not stop training
        log.warning("CUDA-graph decoding failed (%s: %s); decoding eagerly from now on",
                    type(err).__name__, err)
        _GRAPH_FAILED.add(model)
        return _decode(model, prompts, backend="eager", **kwargs)


def _decode(model, prompts, *, backend, keep_packed, **kwargs) -> Rollout:
    on_cpu = next(model.parameters()).device.type == "cpu" and backend == "eager"
    with packed_linears(model, keep=keep_packed) if on_cpu else contextlib.nullcontext():
        return _decode_loop(model, prompts, backend=backend, **kwargs)


def _decode_loop(model, prompts, *, max_new_tokens, eos_ids, pad_id, temperature, top_p, seeds,
                 keep_logits, backend, compact, settled) -> Rollout:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    width = None if backend == "eager" else -(-max(map(len, prompts)) // PROMPT_BUCKET) * PROMPT_BUCKET
    ids, mask = left_pad(prompts, pad_id, device, width)
    generators = None
    if seeds is not None:
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    calls = _ModelCalls(model, ids, mask, max_new_tokens, backend,
                        prompts=prompts if backend == "eager" else None, pad_id=pad_id)
    stop = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    done = finished.clone()  # finished, or settled
    rows = torch.arange(len(prompts), device=device)  # the batch rows still decoding (compact)
    completion = torch.full((len(prompts), max_new_tokens), pad_id, dtype=torch.long, device=device)
    kept, steps = None, 0  # (B, max_new_tokens, V): filled in place, no list to stack at the end
    for _ in range(max_new_tokens):
        if keep_logits:  # never compacted: every row's logits, every step
            if kept is None:
                kept = calls.logits.new_empty((len(prompts), max_new_tokens, calls.logits.shape[-1]))
            kept[:, steps] = calls.logits
        logits = calls.logits.float()  # (B, V), or (rows still decoding, V) when compacting
        if generators is None:
            next_tokens = logits.argmax(-1)
        else:
            logits = logits / temperature
            if top_p < 1.0:
                logits = _top_p_filter(logits, top_p)
            uniform = torch.stack([torch.rand(logits.shape[-1], generator=g, device=device)
                                   for g in generators])
            gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20)))
            next_tokens = (logits + gumbel).argmax(-1)
        next_tokens = next_tokens.masked_fill(done[rows], pad_id)
        completion[rows, steps] = next_tokens
        steps += 1
        finished[rows] |= torch.isin(next_tokens, stop)
        done |= finished
        if settled is not None:
            for row in rows[~done[rows]].tolist():
                done[row] = settled(row, completion[row, :steps].tolist())
        if bool(done.all()):
            break
        if compact and bool(done[rows].any()):
            keep = (~done[rows]).nonzero().squeeze(1)
            rows, next_tokens = rows[keep], next_tokens[keep]
            if generators is not None:
                generators = [generators[i] for i in keep.tolist()]
            calls.select(keep)
        calls.step(next_tokens)
    model.train(was_training)
    return Rollout(ids, mask, completion[:, :steps], finished,
                   kept[:, :steps] if keep_logits else None)


def greedy_generate(model, tokenizer, prompts: Sequence[Sequence[int]],
                    max_new_tokens: int | Sequence[int], batch_size: int = 16,
                    backend: DecodeBackend = "auto",
                    settled: Callable[[int, str], bool] | None = None) -> list[str]:
    """Greedy continuations of tokenized prompts (longest first, in batches of `batch_size`),
    cut at the first stop id and decoded without special tokens, in prompt order. A row stops
    costing model calls at its stop id (`decode(compact=True)` on the eager backend).
    `max_new_tokens`: one cap, or one per prompt (several suites' prompts in one decode).
    `settled(i, text so far) -> bool`: prompt i's answer is decided (e.g. a refusal phrase is
    already said): its row stops there and its text is that prefix. The text passed is cut
    before a trailing partial UTF-8 character, so it is a prefix of any longer answer."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    caps = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(caps) != len(prompts) or min(caps, default=1) < 1:
        raise ValueError(f"max_new_tokens: give one cap >= 1, or one per prompt ({len(prompts)})")
    eos_ids, pad = stop_ids(model, tokenizer), tokenizer.pad_token_id
    pad = eos_ids[0] if pad is None else pad
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    texts = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        longest = max(caps[i] for i in batch)
        cut: dict[int, int] = {}  # row -> tokens kept when it settled or reached its own cap

        def row_settled(row: int, tokens: list[int], batch=batch, cut=cut) -> bool:
            if len(tokens) >= caps[batch[row]]:
                cut[row] = len(tokens)
            elif settled is not None:
                text = tokenizer.decode(tokens, skip_special_tokens=True).rstrip("\ufffd")
                if settled(batch[row], text):
                    cut[row] = len(tokens)
            return row in cut

        uneven = any(caps[i] < longest for i in batch)
        out = decode(model, [prompts[i] for i in batch], max_new_tokens=longest,
                     eos_ids=eos_ids, pad_id=pad, backend=backend, compact=True,
                     settled=row_settled if settled is not None or uneven else None, keep_packed=True)
        for row, i in enumerate(batch):
            tokens = out.completion_ids[row].tolist()[: cut.get(row)]
            texts[i] = tokenizer.decode(until_stop(tokens, eos_ids), skip_special_tokens=True)
    return texts
