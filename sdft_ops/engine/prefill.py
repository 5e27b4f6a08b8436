"""The eager decoder's prompt pass without padding waste: a shared prefix once, then the rows in
groups of similar length, assembled into one left-padded KV cache.

A batch of chat prompts shares the template's system prompt (24-30 tokens of a 40-60 token
prompt), and its own parts vary in length (HarmBench's 16 on average, 32 at most). Left-padding
the batch to its longest prompt runs every row at that width; on a CPU the prompt pass is
compute-bound, so the padding is paid in full. Here:

1. the prefix every prompt shares runs once (one row), its KV cache is repeated per row;
2. the rows' own tokens run in groups (sorted by length, cut where a group's padding would cost
   more than a forward call: `length_groups`), each group left-padded to its own longest row;
3. the groups' caches are laid into one cache of the batch's width, each row as
   [prefix][padding][its own tokens]; the padding is masked and the positions are those of the
   row's own prompt, so the next calls see what a plain left-padded batch would (up to rounding).

Only for caches made of plain `DynamicLayer`s (full attention); other layouts (sliding windows)
take the plain batch.

The assembled cache is made of `ReservedLayer`s: buffers of the prompt width plus the tokens the
decode may add, filled in place. transformers' `DynamicLayer` grows by concatenation, which
allocates a new cache-sized tensor per layer per token (a 32-row teacher rollout: ~12 MB, 60 times
per token); that churn cost ~1.4 s of a 10 s rollout and fragmented the heap, so a training
process's RSS crept up by ~0.1 GB per rollout (experiments/2026-12-07-step-cost/LOG.md).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

MIN_SHARED_PREFIX = 8  # tokens every prompt of a batch must share before they are run once


def shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all prompts share (each keeps at least one of its own)."""
    if len(prompts) < 2:
        return 0
    first, limit = prompts[0], min(map(len, prompts)) - 1
    length = 0
    while length < limit and all(p[length] == first[length] for p in prompts):
        length += 1
    return length


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device,
             width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged ids → (B, L) ids and attention mask, padded on the left (for decoding) to the
    longest or to `width`."""
    width = width or max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding: 0 at each row's first real token."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


CALL_COST_TOKENS = 32  # a forward call's fixed cost, in token rows of work (weights read, launch)


def length_groups(lengths: Sequence[int], call_cost: int = CALL_COST_TOKENS) -> list[list[int]]:
    """Indices grouped for the prompt pass: sorted longest first, cut to minimise the padded
    token rows plus `call_cost` per group (an exact partition of the sorted order, O(n^2))."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j rows of `order`
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # the last group is order[i:j], padded to order[i]'s length
            cost = best[i] + call_cost + (j - i) * lengths[order[i]]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def prefix_cache(model, tokens: Sequence[int]):
    """The KV cache of `tokens` run once (one row), as [(keys, values)] per layer, or None where
    the model's cache is not made of plain layers."""
    if not _plain_layers(model):
        return None
    device = next(model.parameters()).device
    ids = torch.tensor([list(tokens)], dtype=torch.long, device=device)
    out = model(input_ids=ids, position_ids=torch.arange(len(tokens), device=device)[None],
                use_cache=True, logits_to_keep=1)
    return [(layer.keys, layer.values) for layer in out.cache.layers]


def repeated(head, rows: int):
    """A fresh cache holding `head` (a prefix_cache) once per row (views, no copies)."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
                                        for k, v in head])


@functools.cache
def _reserved_layer_class():
    """`ReservedLayer`, defined on first use: transformers is imported only by what decodes."""
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        """A `DynamicLayer` whose keys and values live in buffers reserved up front: `update`
        writes the new tokens in place (growing the buffers only past their capacity). Keys are
        stored in the values' dtype: under bf16 autocast they leave the rotary embedding in
        float32 and attention casts them to bf16 at every call, so bf16 storage gives the same
        numbers at 3/4 of the cache's memory."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
            super().__init__()
            self.device, self.is_initialized = keys.device, True
            self._buffers, self.length = (keys, values), length
            self._view()

        def _view(self) -> None:
            keys, values = self._buffers
            self.keys, self.values = keys[:, :, : self.length], values[:, :, : self.length]

        def update(self, key_states, value_states, *args, **kwargs):
            keys, values = self._buffers
            end = self.length + key_states.shape[-2]
            if end > keys.shape[-2]:  # past the reservation: grow by doubling, not per token
                grown = [b.new_empty(*b.shape[:2], max(end, 2 * b.shape[-2]), b.shape[-1])
                         for b in self._buffers]
                for new, old in zip(grown, self._buffers):
                    new[:, :, : self.length] = old[:, :, : self.length]
                keys, values = self._buffers = tuple(grown)
            keys[:, :, self.length : end] = key_states
            values[:, :, self.length : end] = value_states
            self.length = end
            self._view()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self._buffers = tuple(b[indices] for b in self._buffers)
            self._view()

        def _unsupported(self, *args, **kwargs):
            raise NotImplementedError("the decoder's reserved KV cache only grows and drops rows")

        # DynamicLayer's versions would replace the views and leave the buffers behind
        crop = reorder_cache = batch_repeat_interleave = reset = _unsupported

    return ReservedLayer


def _buffers(like: torch.Tensor, rows: int, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed (keys, values) buffers of `capacity` positions for `rows` rows, both in the dtype of
    `like` (a layer's values: see `ReservedLayer`)."""
    shape = (rows, like.shape[1], capacity, like.shape[3])
    return like.new_zeros(shape), like.new_zeros(shape)


def reserved_cache(layers: Sequence[tuple[torch.Tensor, torch.Tensor]], length: int):
    """A DynamicCache of `ReservedLayer`s over per-layer (keys, values) buffers whose first
    `length` positions hold the cache (their last dimension but one is the capacity)."""
    from transformers import DynamicCache

    cls = _reserved_layer_class()
    cache = DynamicCache()
    cache.layers = [cls(keys, values, length) for keys, values in layers]
    return cache


def reserve(cache, extra: int):
    """`cache` (plain layers) copied into a `reserved_cache` with room for `extra` more tokens;
    any other cache is returned as it is."""
    from transformers.cache_utils import DynamicLayer

    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return cache
    length, buffers = cache.layers[0].keys.shape[-2], []
    for layer in cache.layers:
        keys, values = _buffers(layer.values, layer.values.shape[0], length + extra)
        keys[:, :, :length], values[:, :, :length] = layer.keys, layer.values
        buffers.append((keys, values))
    return reserved_cache(buffers, length)


def _plain_layers(model) -> bool:
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)


def grouped_prefill(model, prompts: Sequence[Sequence[int]], prefix: int, pad_id: int,
                    reserve_tokens: int = 0):
    """→ (cache, attention mask (B, prefix + widest own part), logits (B, V) after each prompt),
    or None where the model's cache is not made of plain layers. `prefix`: leading tokens every
    prompt shares (0: none); each prompt keeps at least one token of its own. The cache is a
    `reserved_cache` with room for `reserve_tokens` more."""
    if not _plain_layers(model):
        return None
    device = next(model.parameters()).device
    head = prefix_cache(model, prompts[0][:prefix]) if prefix else None
    own = [list(p[prefix:]) for p in prompts]
    widest = max(map(len, own))
    attn = torch.zeros(len(prompts), prefix + widest, dtype=torch.long, device=device)
    attn[:, :prefix] = 1
    logits, parts = None, []
    for group in length_groups([len(o) for o in own]):
        rows = torch.tensor(group, device=device)
        ids, mask = left_pad([own[i] for i in group], pad_id, device)  # (G, w)
        group_attn = torch.cat([mask.new_ones(len(group), prefix), mask], dim=1)
        cache = None if head is None else repeated(head, len(group))
        out = model(input_ids=ids, attention_mask=group_attn,
                    position_ids=position_ids(group_attn)[:, prefix:], cache=cache, use_cache=True,
                    logits_to_keep=1)
        if logits is None:
            logits = out.logits.new_empty(len(prompts), out.logits.shape[-1])
        logits[rows] = out.logits[:, -1, :]
        attn[rows, prefix + widest - ids.shape[1]:] = mask
        parts.append((rows, ids.shape[1], [(layer.keys, layer.values) for layer in out.cache.layers]))
    layers = []
    for index in range(len(parts[0][2])):
        keys, values = _buffers(parts[0][2][index][1], len(prompts), prefix + widest + reserve_tokens)
        if head is not None:
            keys[:, :, :prefix], values[:, :, :prefix] = head[index]
        for rows, width, group_layers in parts:
            k, v = group_layers[index]
            keys[rows, :, prefix + widest - width : prefix + widest] = k[:, :, prefix:].to(keys.dtype)
            values[rows, :, prefix + widest - width : prefix + widest] = v[:, :, prefix:]
        layers.append((keys, values))
    return reserved_cache(layers, prefix + widest), attn, logits
