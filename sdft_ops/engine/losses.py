"""Per-token divergences between teacher and student, and the completion mask. Pure functions.

Shapes: logits (B, T, V) over the T completion positions (position t predicts completion
token t); masks (B, T). The loss of a batch is the mean over its sequences of each sequence's
mean per-token divergence over masked positions (the paper's normalisation; official code
and TRL do the same). A sequence with an empty mask contributes a zero that stays attached to
the graph, so backward works on any batch.

Divergences (p_T teacher, p_S student, over the full vocabulary unless said otherwise):
- forward_kl  KL(p_T ‖ p_S) = Σ_v p_T (log p_T − log p_S) — what produced the paper's results.
- reverse_kl  KL(p_S ‖ p_T) = Σ_v p_S (log p_S − log p_T).
- jsd         generalised JSD with teacher weight β: m = β p_T + (1−β) p_S,
              β·KL(p_T ‖ m) + (1−β)·KL(p_S ‖ m)  (TRL's `generalized_jsd_loss` convention).
Estimators:
- full_vocab     exact sum over V. Forward KL runs as `ChunkedForwardKL`: a few positions at a
                 time, keeping nothing of size (B, T, V) beyond the two logit tensors and the
                 gradient (the generic path holds ~5 such fp32 tensors; benchmarks/step_cost.md).
- top_k          the k most likely tokens of the distribution the expectation is under (teacher
                 for forward KL, student for reverse KL) plus one "rest" bucket holding the
                 remaining mass: the exact KL between those k+1-way coarsenings (a lower bound of
                 the full KL; equal to it when k = V).
- sampled_token  reverse KL only: one-sample Monte-Carlo estimate at the student's own token y,
                 d = log p_S(y) − log p_T(y). Its value is d; its gradient is d·∇log p_S(y), the
                 score-function gradient of KL(p_S ‖ p_T) (∇ of d itself would be biased).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) summed over the last dim, from log-probabilities."""
    return (logp.exp() * (logp - logq)).sum(-1)


def _with_rest_bucket(logp_on_support: torch.Tensor) -> torch.Tensor:
    """Append log of the mass outside the support: (..., k) → (..., k+1)."""
    rest = (1.0 - logp_on_support.exp().sum(-1, keepdim=True)).clamp(min=1e-12)
    return torch.cat([logp_on_support, rest.log()], dim=-1)


class ChunkedForwardKL(torch.autograd.Function):
    """KL(softmax(t) ‖ softmax(s)) per position, `CHUNK` positions at a time, in float32.

    Forward keeps only the inputs; backward recomputes, per chunk, the gradient with respect to
    the student's logits, softmax(s) − softmax(t), scaled by the incoming per-token gradient.
    The same values and gradients as autograd through log_softmax (tests/test_engine_losses.py),
    without its saved (B, T, V) intermediates."""

    CHUNK = 32  # positions per chunk: 32 × 49k-vocab rows ≈ 6 MB of float32 per temporary

    @staticmethod
    def _chunks(logits: torch.Tensor):
        for b in range(logits.shape[0]):
            for t0 in range(0, logits.shape[1], ChunkedForwardKL.CHUNK):
                yield b, slice(t0, t0 + ChunkedForwardKL.CHUNK)

    @staticmethod
    def forward(ctx, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        out = torch.empty(student_logits.shape[:2], dtype=torch.float32, device=student_logits.device)
        for b, span in ChunkedForwardKL._chunks(student_logits):
            s = F.log_softmax(student_logits[b, span].float(), dim=-1)
            t = F.log_softmax(teacher_logits[b, span].float(), dim=-1)
            out[b, span] = _kl(t, s)
        ctx.save_for_backward(student_logits, teacher_logits)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        student_logits, teacher_logits = ctx.saved_tensors
        grad = torch.empty(student_logits.shape, dtype=student_logits.dtype, device=student_logits.device)
        for b, span in ChunkedForwardKL._chunks(student_logits):
            p_s = F.softmax(student_logits[b, span].float(), dim=-1)
            p_t = F.softmax(teacher_logits[b, span].float(), dim=-1)
            grad[b, span] = (p_s.sub_(p_t)).mul_(grad_out[b, span].unsqueeze(-1))
        return grad, None


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    divergence: str = "forward_kl",
    estimator: str = "full_vocab",
    *,
    jsd_beta: float = 0.5,
    top_k: int = 64,
    sampled_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, T, V), (B, T, V) → (B, T) per-token divergence. Gradients flow to the student only."""
    teacher_logits = teacher_logits.detach()
    if divergence == "forward_kl" and estimator == "full_vocab":
        return ChunkedForwardKL.apply(student_logits, teacher_logits)
    s = F.log_softmax(student_logits.float(), dim=-1)
    t = F.log_softmax(teacher_logits.float(), dim=-1)

    if estimator == "sampled_token":
        if divergence != "reverse_kl" or sampled_ids is None:
            raise ValueError("sampled_token needs divergence='reverse_kl' and sampled_ids")
        s_y = s.gather(-1, sampled_ids.unsqueeze(-1)).squeeze(-1)
        t_y = t.gather(-1, sampled_ids.unsqueeze(-1)).squeeze(-1)
        d = (s_y - t_y).detach()
        return d + d * (s_y - s_y.detach())  # value d, gradient d·∇log p_S(y)

    if estimator == "top_k":
        if divergence not in ("forward_kl", "reverse_kl"):
            raise ValueError("top_k supports forward_kl and reverse_kl")
        anchor = t if divergence == "forward_kl" else s
        support = anchor.detach().topk(min(top_k, anchor.shape[-1]), dim=-1).indices
        s, t = _with_rest_bucket(s.gather(-1, support)), _with_rest_bucket(t.gather(-1, support))
    elif estimator != "full_vocab":
        raise ValueError(f"unknown estimator {estimator!r}")

    if divergence == "forward_kl":
        return _kl(t, s)
    if divergence == "reverse_kl":
        return _kl(s, t)
    if divergence == "jsd":
        mix = torch.logsumexp(
            torch.stack([s + math.log(1.0 - jsd_beta), t + math.log(jsd_beta)]), dim=0
        )
        return jsd_beta * _kl(t, mix) + (1.0 - jsd_beta) * _kl(s, mix)
    raise ValueError(f"unknown divergence {divergence!r}")


def completion_mask(completion_ids: torch.Tensor, eos_ids: int | Sequence[int], skip_first: int) -> torch.Tensor:
    """(B, T) ids → (B, T) bool: tokens up to and including the first EOS (any of `eos_ids`),
    minus the first `skip_first` tokens of each completion (the paper skips 3: the teacher's
    first tokens are dominated by its context's phrasing)."""
    stop = torch.tensor([eos_ids] if isinstance(eos_ids, int) else list(eos_ids), device=completion_ids.device)
    is_eos = torch.isin(completion_ids, stop)
    eos_before = torch.cumsum(is_eos.long(), dim=-1) - is_eos.long()  # EOS strictly before t
    valid = eos_before == 0
    positions = torch.arange(completion_ids.shape[-1], device=completion_ids.device)
    return valid & (positions >= skip_first)


def sequence_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T), (B, T) → (B,) mean over each sequence's masked tokens; 0 (attached) when empty."""
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def odds_ratio_loss(chosen_logp: torch.Tensor, rejected_logp: torch.Tensor) -> torch.Tensor:
    """ORPO's odds-ratio term (Hong et al. 2024), (N,), (N,) → (N,): −log σ(log odds(chosen) −
    log odds(rejected)) from each answer's mean token log-probability x, where
    odds = P / (1 − P) with P = exp(x), so log odds = x − log(1 − exp(x))."""
    def log_odds(x: torch.Tensor) -> torch.Tensor:
        return x - torch.log1p(-torch.exp(x.clamp(max=-1e-6)))
    return -F.logsigmoid(log_odds(chosen_logp) - log_odds(rejected_logp))
