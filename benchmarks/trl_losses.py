"""`benchmarks/trl_compat.py` part (a): our loss functions vs TRL 1.16's SDFT loss on identical
synthetic logits (see trl_compat.py's docstring for what is compared and why)."""

from __future__ import annotations

import os
import types
from pathlib import Path

import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = 1e-5
SKIP = 3
EMA_RATE = 0.02
LOGIT_SCALE = 30.0


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


# ---------------------------------------------------------------------------------------------
# (a) pure loss functions
# ---------------------------------------------------------------------------------------------

def _trl_aggregate(per_mode: dict, student_logits, teacher_logits, completion_ids, loss_mask):
    """TRL's `SDFTTrainer._compute_self_distillation_loss`, called unbound on a stub `self`, so the
    aggregation (per-sequence masked mean, then batch mean) is TRL's code, not a copy of it."""
    from trl.experimental.sdft.sdft_trainer import DistillationLogits, SDFTTrainer

    args = types.SimpleNamespace(**{"distillation_topk": None, "distillation_add_tail": False,
                                    "distillation_is_clip": None, **per_mode})
    stub = types.SimpleNamespace(args=args, accelerator=types.SimpleNamespace(gather=lambda x: x),
                                 _log_self_distillation_metric=lambda mode, value: None)
    dl = DistillationLogits(completion_ids=completion_ids, loss_mask=loss_mask,
                            student_logits=student_logits, teacher_logits=teacher_logits)
    return SDFTTrainer._compute_self_distillation_loss(stub, types.SimpleNamespace(training=True), {}, dl)


def _loss_and_grad(fn, student_logits):
    s = student_logits.detach().clone().requires_grad_(True)
    loss = fn(s)
    (grad,) = torch.autograd.grad(loss, s)
    return loss.detach(), grad


def _synthetic_batch(vocab: int, eos_id: int, pad_id: int, seed: int = 0):
    """(B=4, T=12): row 0 no EOS, row 1 EOS at 5, row 2 EOS at 2 (empty after the skip of 3),
    row 3 EOS at 9; pad after EOS; TRL-style completion mask (ones up to and including EOS)."""
    g = torch.Generator().manual_seed(seed)
    B, T = 4, 12
    student = torch.randn(B, T, vocab, generator=g) * 3.0
    teacher = student * 0.5 + torch.randn(B, T, vocab, generator=g) * 2.0
    ids = torch.randint(3, vocab, (B, T), generator=g)
    cmask = torch.ones(B, T, dtype=torch.long)
    for row, eos_at in enumerate([None, 5, 2, 9]):
        if eos_at is not None:
            ids[row, eos_at] = eos_id
            ids[row, eos_at + 1:] = pad_id
            cmask[row, eos_at + 1:] = 0
    return student, teacher, ids, cmask


def _trl_loss_mask(cmask: torch.Tensor, skip: int) -> torch.Tensor:
    """Exactly the lines of `SDFTTrainer._compute_teacher_student_logits` building `loss_mask`."""
    loss_mask = cmask
    if skip > 0:
        token_positions = torch.arange(cmask.size(1), device=cmask.device).unsqueeze(0)
        loss_mask = cmask * (token_positions >= skip).long()
    return loss_mask


def check_loss_functions() -> dict:
    from trl.experimental.sdft.loss_utils import compute_sampled_token_self_distillation_loss

    from sdft_ops.engine.losses import completion_mask, sequence_mean, token_divergence
    from sdft_ops.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    vocab, eos_id, pad_id = len(tok), tok.eos_token_id, tok.pad_token_id
    student, teacher, ids, cmask = _synthetic_batch(vocab, eos_id, pad_id)
    trl_mask = _trl_loss_mask(cmask, SKIP)
    our_mask = completion_mask(ids, eos_id, SKIP)
    cases: dict[str, dict] = {
        "mask": {"max_abs_diff": float((trl_mask.bool() != our_mask).sum()),
                 "note": "TRL loss_mask (completion_mask × position≥skip) vs ours completion_mask(ids, eos, 3): "
                         "count of differing positions",
                 "masked_tokens_per_row": our_mask.sum(-1).tolist()}}

    def ours(div, est="full_vocab", **kw):
        return lambda s: sequence_mean(token_divergence(s, teacher, div, est, **kw), our_mask).mean()

    def trl(mode, alpha, **kw):
        return lambda s: _trl_aggregate({"distillation_mode": mode, "distillation_alpha": alpha, **kw},
                                        s, teacher, ids, trl_mask)

    pairs = {
        "full_forward_kl (alpha=0)": (ours("forward_kl"), trl("full_logits", 0.0)),
        "full_reverse_kl (alpha=1)": (ours("reverse_kl"), trl("full_logits", 1.0)),
        "full_jsd (alpha=beta=0.5)": (ours("jsd", jsd_beta=0.5), trl("full_logits", 0.5)),
        "full_jsd (alpha=beta=0.25)": (ours("jsd", jsd_beta=0.25), trl("full_logits", 0.25)),
        "full_jsd (alpha=beta=0.75)": (ours("jsd", jsd_beta=0.75), trl("full_logits", 0.75)),
        f"topk+tail forward_kl k=V={vocab}": (
            ours("forward_kl", "top_k", top_k=vocab),
            trl("topk_logits", 0.0, distillation_topk=vocab, distillation_add_tail=True)),
        f"topk+tail reverse_kl k=V={vocab}": (
            ours("reverse_kl", "top_k", top_k=vocab),
            trl("topk_logits", 1.0, distillation_topk=vocab, distillation_add_tail=True)),
        "topk+tail reverse_kl k=16 (both: student support)": (
            ours("reverse_kl", "top_k", top_k=16),
            trl("topk_logits", 1.0, distillation_topk=16, distillation_add_tail=True)),
    }
    for name, (f_ours, f_trl) in pairs.items():
        lo, go = _loss_and_grad(f_ours, student)
        lt, gt = _loss_and_grad(f_trl, student)
        diff = max(_max_abs(lo, lt), _max_abs(go, gt))
        cases[name] = {"ours": float(lo), "trl": float(lt), "loss_abs_diff": _max_abs(lo, lt),
                       "grad_max_abs_diff": _max_abs(go, gt), "max_abs_diff": diff,
                       "pass": diff <= TOLERANCE}

    # Documented differences (not pass/fail): forward-KL top-k support, and sampled-token values.
    lo, go = _loss_and_grad(ours("forward_kl", "top_k", top_k=16), student)
    lt, gt = _loss_and_grad(trl("topk_logits", 0.0, distillation_topk=16, distillation_add_tail=True), student)
    lfull, _ = _loss_and_grad(ours("forward_kl"), student)
    cases["topk+tail forward_kl k=16 (ours: teacher support, TRL: student support)"] = {
        "ours": float(lo), "trl": float(lt), "full_vocab": float(lfull),
        "max_abs_diff": _max_abs(lo, lt), "grad_max_abs_diff": _max_abs(go, gt),
        "expected_difference": True,
        "note": "different supports by design; both are lower bounds of the full-vocab KL "
                "(data-processing inequality on the k+1 coarsening)"}

    def ours_sampled(s):
        return sequence_mean(token_divergence(s, teacher, "reverse_kl", "sampled_token", sampled_ids=ids),
                             our_mask).mean()

    def trl_sampled(s):
        per_token = compute_sampled_token_self_distillation_loss(s, teacher, ids, distillation_alpha=1.0)
        return (per_token * trl_mask).sum(-1).div(trl_mask.sum(-1).clamp(min=1.0)).mean()

    lo, go = _loss_and_grad(ours_sampled, student)
    lt, gt = _loss_and_grad(lambda s: _trl_aggregate(
        {"distillation_mode": "sampled_token", "distillation_alpha": 1.0}, s, teacher, ids, trl_mask), student)
    cases["sampled_token reverse_kl: gradient"] = {
        "grad_max_abs_diff": _max_abs(go, gt), "max_abs_diff": _max_abs(go, gt),
        "pass": _max_abs(go, gt) <= TOLERANCE,
        "note": "gradients agree (both d·∇log p_S(y))"}
    cases["sampled_token reverse_kl: value"] = {
        "ours": float(lo), "trl": float(lt), "max_abs_diff": _max_abs(lo, lt), "expected_difference": True,
        "trl_check_direct": float(trl_sampled(student)),
        "note": "TRL's per-token value is d·log p_S(y) (surrogate), ours is d = log p_S(y) − log p_T(y) "
                "(the KL estimate); only the logged loss differs"}
    return {"vocab": vocab, "batch": list(student.shape[:2]), "cases": cases}
