"""Batched decoding with a KV cache: the student's on-policy samples, and greedy answers.

One loop instead of `generate()`: it is where an SDFT step spends most of its time, and owning
it gives per-example sampling seeds. Each row draws its Gumbel noise from its own generator
seeded by (run seed, example id, epoch), so an example's sample does not depend on which other
examples share its batch or process — which makes 1-process and N-process runs, and a resumed
run, sample the same tokens. Gumbel-max over (logits / T) is exact categorical sampling.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged ids → (B, L) ids and attention mask, padded on the left (for decoding)."""
    width = max(len(s) for s in seqs)
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


def row_seed(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P)
    completion_ids: torch.Tensor  # (B, T) pad after EOS
    finished: torch.Tensor  # (B,) ended with EOS within max_new_tokens


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p  # keep the token that crosses p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


@torch.no_grad()
def decode(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seeds: Sequence[int] | None = None,
) -> Rollout:
    """Sample (seeds given) or greedy-decode (seeds None) one completion per prompt."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    generators = None
    if seeds is not None:
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                use_cache=True, logits_to_keep=1)
    # transformers ≥ 5.24 names the KV cache `cache` (in and out); we require that version
    cache, attn, pos = out.cache, mask, position_ids(mask)[:, -1:]
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    tokens_out = []
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1, :].float()  # (B, V)
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
        next_tokens = next_tokens.masked_fill(finished, pad_id)
        tokens_out.append(next_tokens)
        finished |= next_tokens == eos_id
        if bool(finished.all()):
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=-1)
        pos = pos + 1
        out = model(input_ids=next_tokens.unsqueeze(-1), attention_mask=attn, position_ids=pos,
                    cache=cache, use_cache=True)
    model.train(was_training)
    return Rollout(ids, mask, torch.stack(tokens_out, dim=1), finished)
