"""Compatibility of our SDFT loss with TRL 1.16's `trl.experimental.sdft.SDFTTrainer`, and a
timing harness for TRL's trainer.

    .venv/bin/python benchmarks/trl_compat.py               # reference check → results/trl_reference.{json,md}
    .venv/bin/python benchmarks/trl_compat.py --time-tiny   # + 3 TRL steps on the tiny model

1. `reference_check()` feeds identical inputs to our loss and to TRL's, at two levels:
   (a) pure loss functions on random logits (B=4, T=12, V=tiny vocab) with a completion mask that
       has EOS, post-EOS padding, a row with no EOS and a row left empty by the skip of 3 tokens:
       ours  `sequence_mean(token_divergence(...), completion_mask(ids, eos, 3)).mean()`
       TRL   `compute_*_self_distillation_loss` + `SDFTTrainer._compute_self_distillation_loss`
             (the trainer's own aggregation, called unbound on a stub `self`);
       values and gradients w.r.t. the student logits, for forward KL, reverse KL, JSD and top-k.
   (b) a real `SDFTTrainer` (tiny Llama, EMA teacher, full_logits, alpha 0, skip 3): its
       `_compute_teacher_student_logits` + `_compute_self_distillation_loss` and `compute_loss` on
       the same prompt/teacher/completion tensors as our `completion_logits` + loss; plus TRL's
       EMA callback vs our `Teacher.update`.

2. `trl_step_seconds(...)`: wall time per optimizer step of TRL's SDFTTrainer on CPU, configured
   like our engine's defaults (see its docstring for what is and is not comparable).

Conventions (TRL 1.16 ↔ ours), verified by the check:
- `distillation_alpha=0` is forward KL(p_T‖p_S) ↔ `forward_kl`; `alpha=1` is reverse KL(p_S‖p_T) ↔
  `reverse_kl`; `0<alpha<1` is the generalised JSD with mixture m = alpha·p_T + (1−alpha)·p_S and
  loss alpha·KL(p_T‖m) + (1−alpha)·KL(p_S‖m) ↔ `jsd` with `jsd_beta = alpha` (teacher weight).
- Top-k with tail: TRL always takes the STUDENT's top-k as support (for every alpha); ours takes
  the support of the distribution the expectation is under (teacher for forward KL, student for
  reverse KL). Same for reverse KL; different for forward KL unless k = V.
- sampled_token (reverse KL only): TRL's per-token value is d·log p_S(y) with d detached
  (d = log p_S(y) − log p_T(y)); ours is d. Gradients are the same (d·∇log p_S(y)); the logged
  values differ.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import tempfile
import time
import types
from pathlib import Path

import torch
from transformers import TrainerCallback

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = 1e-5
SKIP = 3
EMA_RATE = 0.02
LOGIT_SCALE = 30.0


def _paper_template_for_trl() -> str:
    """Our `paper` teacher preset written in TRL's `teacher_prompt_template` placeholders."""
    from sdft_ops.engine.config import DEMONSTRATION, QUESTION
    from sdft_ops.engine.context import PAPER_TEMPLATE

    return PAPER_TEMPLATE.replace(QUESTION, "{prompt}").replace(DEMONSTRATION, "{privileged_context}")


def _quiet() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    for name in ("trl", "accelerate", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)


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


# ---------------------------------------------------------------------------------------------
# TRL trainer construction (shared by (b) and the timing)
# ---------------------------------------------------------------------------------------------

def _save_for_trl_teacher(model, workdir: Path) -> str:
    """TRL builds a non-PEFT EMA teacher with `from_pretrained(model.config._name_or_path)`, not a
    copy of the instance: save the instance's current weights so the teacher starts equal to it."""
    path = workdir / "student_init"
    model.save_pretrained(path)
    model.config._name_or_path = str(path)
    return str(path)


def _make_trainer(model, tokenizer, prompts: list[str], demonstrations: list[str], workdir: Path, *,
                  steps: int, bf16: bool, batch: int, max_new_tokens: int, gradient_checkpointing: bool = False):
    from datasets import Dataset
    from trl.experimental.sdft import SDFTConfig as TRLConfig
    from trl.experimental.sdft import SDFTTrainer

    _save_for_trl_teacher(model, workdir)
    dataset = Dataset.from_dict({
        "prompt": [[{"role": "user", "content": p}] for p in prompts],
        "privileged_context": list(demonstrations),
    })
    args = TRLConfig(
        output_dir=str(workdir / "out"), use_cpu=True, report_to=[], bf16=bf16, fp16=False,
        max_steps=steps, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        learning_rate=1e-5, max_grad_norm=1.0, save_strategy="no", logging_steps=1, disable_tqdm=True,
        seed=0, dataloader_num_workers=0,
        # TRL's base config defaults to gradient checkpointing ON (~20% slower); our engine never uses it.
        activation_checkpointing=gradient_checkpointing,
        # loss
        distillation_mode="full_logits", distillation_alpha=0.0, num_loss_tokens_to_skip=SKIP,
        distillation_is_clip=None,  # inactive anyway with GA=1, num_iterations=1 (no old logps)
        # teacher
        teacher_model_kind="ema", teacher_update_rate=EMA_RATE, teacher_sync_steps=1,
        teacher_prompt_template=_paper_template_for_trl(), generate_from_teacher=False,
        # generation
        use_vllm=False, num_generations=1, max_completion_length=max_new_tokens, max_prompt_length=512,
        temperature=1.0, top_p=1.0, top_k=0,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer = SDFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # no per-step log dicts on stdout
    return trainer


# ---------------------------------------------------------------------------------------------
# (b) trainer level
# ---------------------------------------------------------------------------------------------

def _completions(vocab: int, eos_id: int, pad_id: int, batch: int, width: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, width), generator=g)
    cmask = torch.ones(batch, width, dtype=torch.long)
    for row, eos_at in enumerate([None, 5, 2, 9][:batch]):
        if eos_at is not None:
            ids[row, eos_at] = eos_id
            ids[row, eos_at + 1:] = pad_id
            cmask[row, eos_at + 1:] = 0
    return ids, cmask


def _trainer_case(trainer, model, tokenizer, questions, demos, label: str) -> dict:
    from trl.trainer.utils import pad

    from sdft_ops.data import Demonstration
    from sdft_ops.engine.config import SDFTConfig, TeacherContext
    from sdft_ops.engine.context import prepare_examples
    from sdft_ops.engine.losses import completion_mask, sequence_mean, token_divergence
    from sdft_ops.engine.loop import completion_logits
    from sdft_ops.engine.sampling import left_pad
    from sdft_ops.engine.teacher import Teacher

    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    completion, cmask = _completions(len(tokenizer), eos_id, pad_id, len(questions), 12)

    # TRL side: its own tokenization, left padding and teacher-prompt template.
    trl_prompts = [[{"role": "user", "content": q}] for q in questions]
    p_list = trainer._tokenize_prompts(trl_prompts)
    p_ids = pad([torch.tensor(x) for x in p_list], padding_value=pad_id, padding_side="left")
    p_mask = pad([torch.ones(len(x), dtype=torch.long) for x in p_list], padding_value=0, padding_side="left")
    t_batch = trainer.teacher_context_builder.build(trl_prompts, demos, completion, cmask)
    inputs = {"prompt_ids": p_ids, "prompt_mask": p_mask, "completion_ids": completion,
              "completion_mask": cmask, **t_batch}

    # Our side: our tokenization (paper preset = the same template), left padding, position_ids.
    cfg = SDFTConfig(teacher_context=TeacherContext(preset="paper"), skip_first_tokens=SKIP, ema_rate=EMA_RATE)
    examples = prepare_examples([Demonstration(id=f"d{i}", prompt=q, demonstration=d, domain="ref")
                                 for i, (q, d) in enumerate(zip(questions, demos))], tokenizer, cfg)
    same_student_ids = [list(e.student_prompt) for e in examples] == [list(x) for x in p_list]
    trl_teacher_prompts = [row[m.bool()].tolist()
                           for row, m in zip(t_batch["teacher_input_ids"][:, :-completion.shape[1]],
                                             t_batch["teacher_attention_mask"][:, :-completion.shape[1]])]
    same_teacher_ids = [list(e.teacher_prompt) for e in examples] == trl_teacher_prompts
    s_ids, s_mask = left_pad([e.student_prompt for e in examples], pad_id, "cpu")
    t_ids, t_mask = left_pad([e.teacher_prompt for e in examples], pad_id, "cpu")
    teacher = Teacher(model, "ema", EMA_RATE)
    teacher.model.load_state_dict(trainer.teacher_model.state_dict())  # same (perturbed) teacher weights

    def ours_loss():
        s_logits = completion_logits(model, s_ids, s_mask, completion)
        with torch.no_grad():
            t_logits = completion_logits(teacher.module(model), t_ids, t_mask, completion)
        per_token = token_divergence(s_logits, t_logits, cfg.divergence, cfg.estimator)
        mask = completion_mask(completion, eos_id, cfg.skip_first_tokens)
        return sequence_mean(per_token, mask).mean(), s_logits, t_logits, mask

    def grads():
        return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                for p in model.parameters()]

    model.zero_grad(set_to_none=True)
    dl = trainer._compute_teacher_student_logits(trainer.model, trainer.teacher_model, inputs)
    trl_loss = trainer._compute_self_distillation_loss(trainer.model, inputs, dl)
    trl_loss.backward()
    trl_grads = grads()
    trainer.current_gradient_accumulation_steps = 1
    with torch.no_grad():
        trl_compute_loss = trainer.compute_loss(trainer.model, inputs)

    model.zero_grad(set_to_none=True)
    our_loss, s_logits, t_logits, our_mask = ours_loss()
    our_loss.backward()
    our_grads = grads()
    model.zero_grad(set_to_none=True)

    keep = our_mask.bool()
    loss_diff = max(_max_abs(our_loss, trl_loss), _max_abs(our_loss, trl_compute_loss))
    grad_diff = max(_max_abs(a, b) for a, b in zip(our_grads, trl_grads))
    return {
        "label": label,
        "student_prompt_lengths": [len(x) for x in p_list],
        "teacher_prompt_lengths": [len(x) for x in trl_teacher_prompts],
        "student_prompt_ids_identical": same_student_ids,
        "teacher_prompt_ids_identical": same_teacher_ids,
        "mask_identical": bool((dl.loss_mask.bool() == our_mask).all()),
        "ours": our_loss.item(), "trl": trl_loss.item(), "trl_compute_loss": trl_compute_loss.item(),
        "loss_abs_diff": loss_diff,
        "student_logits_max_abs_diff (masked)": _max_abs(s_logits[keep], dl.student_logits[keep]),
        "teacher_logits_max_abs_diff (masked)": _max_abs(t_logits[keep], dl.teacher_logits[keep]),
        "grad_max_abs_diff": grad_diff,
        "max_abs_diff": max(loss_diff, grad_diff),
        "pass": max(loss_diff, grad_diff) <= TOLERANCE and same_student_ids and same_teacher_ids,
    }


def _ema_case(trainer, model) -> dict:
    """TRL's SyncTeacherModelCallback.on_step_end vs our Teacher.update on a perturbed student."""
    from transformers import TrainerControl, TrainerState
    from trl.experimental.sdft.teacher_sync import SyncTeacherModelCallback

    from sdft_ops.engine.teacher import Teacher

    ours = Teacher(model, "ema", EMA_RATE)
    ours.model.load_state_dict(trainer.teacher_model.state_dict())  # same starting teacher
    student = copy.deepcopy(model)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, SyncTeacherModelCallback))
    state = TrainerState()
    state.global_step = 1
    callback.on_step_end(trainer.args, state, TrainerControl(), model=student)
    ours.update(student)
    diff = max(_max_abs(a, b) for a, b in zip(ours.model.parameters(), trainer.teacher_model.parameters()))
    return {"max_abs_diff": diff, "pass": diff <= TOLERANCE,
            "note": f"one EMA update at rate {EMA_RATE} after perturbing the student (N(0, 0.1²) noise)"}


def check_trainer() -> dict:
    from sdft_ops.tiny import build_tiny

    torch.manual_seed(0)
    model, tokenizer = build_tiny(seed=0)
    with torch.no_grad():  # sharpen the random model's near-uniform outputs: losses of order 1, not 1e-4
        model.lm_head.weight.mul_(LOGIT_SCALE)
    equal = (["What is 1 + 1?", "What is 2 + 2?", "What is 3 + 3?", "What is 4 + 4?"],
             ["The answer is 2.", "The answer is 4.", "The answer is 6.", "The answer is 8."])
    ragged = (["Hi?", "What is the capital of France?", "Call the tool get_weather for Paris.",
               "What is 2 + 2?"],
              ["Hello.", "The capital of France is Paris.",
               'Call the tool: {"name": "get_weather", "arguments": {"city": "Paris"}}', "4"])
    with tempfile.TemporaryDirectory(prefix="trl_compat_") as tmp:
        trainer = _make_trainer(model, tokenizer, *equal, Path(tmp), steps=1, bf16=False, batch=4,
                                max_new_tokens=12)
        model = trainer.model
        start = max(_max_abs(a, b) for a, b in zip(model.parameters(), trainer.teacher_model.parameters()))
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():  # make the teacher differ from the student (same weights in both implementations)
            for p in trainer.teacher_model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05 * p.std().clamp(min=1e-3))
        out = {
            "trainer_class": f"{type(trainer).__module__}.{type(trainer).__name__}",
            "teacher_class": type(trainer.teacher_model).__name__,
            "teacher_is_separate_model": trainer.teacher_model is not model,
            "teacher_starts_equal_to_student_max_abs_diff": start,
            "setup": f"lm_head × {LOGIT_SCALE} on the tiny random Llama; teacher weights then perturbed "
                     "(N(0, (0.05·std)²) per tensor) and copied into our Teacher, so teacher ≠ student",
            "equal_length_prompts": _trainer_case(trainer, model, tokenizer, *equal,
                                                  "equal-length prompts, no padding (positions agree)"),
            "left_padded_prompts": _trainer_case(trainer, model, tokenizer, *ragged,
                                                 "ragged prompts, left-padded: TRL passes no position_ids, "
                                                 "ours does; RoPE is relative so only float noise remains"),
        }
        out["ema_update"] = _ema_case(trainer, model)
    return out


def reference_check() -> dict:
    """Our loss vs TRL 1.16's SDFT loss on identical inputs; see the module docstring."""
    import trl

    _quiet()
    result = {"trl_version": trl.__version__, "torch_version": torch.__version__, "tolerance": TOLERANCE,
              "loss_functions": check_loss_functions()}
    try:
        result["trainer"] = check_trainer()
    except Exception as exc:  # keep (a) and say exactly what stopped (b)
        result["trainer"] = {"error": f"{type(exc).__name__}: {exc}"}
    checked = [c for c in result["loss_functions"]["cases"].values() if "pass" in c]
    trainer = result["trainer"]
    checked += [trainer[k] for k in ("equal_length_prompts", "left_padded_prompts", "ema_update") if k in trainer]
    result["all_pass"] = bool(checked) and all(c["pass"] for c in checked) and "error" not in trainer \
        and result["loss_functions"]["cases"]["mask"]["max_abs_diff"] == 0
    return result


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------

class _StepTimer(TrainerCallback):
    """on_step_begin → on_step_end wall time. Added after the trainer is built, so its
    on_step_end runs after TRL's EMA-teacher callback: a step = generation, teacher and student
    forwards, backward, clip, optimizer and scheduler steps, EMA update."""

    def __init__(self):
        self.seconds: list[float] = []
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._t0)


def trl_step_seconds(model, tokenizer, prompts: list[str], demonstrations: list[str], steps: int,
                     bf16: bool, max_new_tokens: int = 64, batch: int = 8, *,
                     gradient_checkpointing: bool = False) -> dict:
    """Run TRL 1.16's SDFTTrainer for `steps` optimizer steps on CPU and time each step.

    Settings mirror our engine's defaults: full-vocab forward KL (`distillation_mode="full_logits"`,
    `distillation_alpha=0.0`), EMA teacher (`teacher_model_kind="ema"`, `teacher_update_rate=0.02`,
    synced every step), `num_loss_tokens_to_skip=3`, one sample per prompt at temperature 1.0
    (`num_generations=1`, transformers `generate`, no vLLM), `per_device_train_batch_size=batch`,
    `gradient_accumulation_steps=1`, `max_completion_length=max_new_tokens`, `bf16` = mixed precision
    (autocast) like our `autocast_bf16`; lr 1e-5, grad clip 1.0. Gradient checkpointing is OFF
    like ours (TRL's own default is ON; pass `gradient_checkpointing=True` to time TRL as shipped).

    Teacher context: TRL composes ONE user turn from `teacher_prompt_template`; it cannot express
    our default `previous_turn` preset (user: q → assistant: demo → user: q). We use our `paper`
    preset's text as the template ("{prompt}\\n\\nThis is an example for a response to the
    question:\\n{privileged_context}\\n\\nNow answer …"), which gives token-identical teacher prompts
    to ours with `TeacherContext(preset="paper")` (checked in `reference_check`). Teacher prompts are
    therefore a little longer than previous_turn ones for short questions.

    `model` is not modified: TRL trains a deep copy. Its EMA teacher is loaded from a temporary
    save of `model` (TRL re-loads the teacher from `config._name_or_path`; that save is not timed).
    Prompts are cycled so the dataset holds at least `batch` rows (TRL drops incomplete batches).

    Returns {"step_seconds": [...], "mean_seconds_excl_first": float | None, "completion_tokens":
    [mean completion length per step], "steps", "bf16", "batch", "max_new_tokens", "trl_version",
    "teacher_template", "gradient_checkpointing"}. Wall-clock: on a shared machine the spread
    between steps is mostly other processes' load.
    """
    import trl

    _quiet()
    if len(prompts) != len(demonstrations) or not prompts:
        raise ValueError("prompts and demonstrations must be non-empty and of equal length")
    need = max(batch, len(prompts))
    rows = [(prompts[i % len(prompts)], demonstrations[i % len(prompts)]) for i in range(need)]
    student = copy.deepcopy(model)
    timer = _StepTimer()
    with tempfile.TemporaryDirectory(prefix="trl_steps_") as tmp:
        trainer = _make_trainer(student, tokenizer, [p for p, _ in rows], [d for _, d in rows], Path(tmp),
                                steps=steps, bf16=bf16, batch=batch, max_new_tokens=max_new_tokens,
                                gradient_checkpointing=gradient_checkpointing)
        trainer.add_callback(timer)
        trainer.train()
        lengths = [h["completions/mean_length"] for h in trainer.state.log_history
                   if "completions/mean_length" in h]
    del trainer, student
    seconds = timer.seconds
    return {
        "step_seconds": seconds,
        "mean_seconds_excl_first": sum(seconds[1:]) / len(seconds[1:]) if len(seconds) > 1 else None,
        "completion_tokens": lengths,
        "steps": steps, "bf16": bf16, "batch": batch, "max_new_tokens": max_new_tokens,
        "gradient_checkpointing": gradient_checkpointing, "trl_version": trl.__version__, "teacher_template": _paper_template_for_trl(),
    }


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

def _fmt(x) -> str:
    return f"{x:.2e}" if isinstance(x, float) else str(x)


def write_markdown(result: dict, path: Path) -> None:
    lines = [f"# Our SDFT loss vs TRL {result['trl_version']} `SDFTTrainer`",
             "",
             f"Tolerance {result['tolerance']:g} (max abs difference of loss and gradients). "
             f"Overall: **{'PASS' if result['all_pass'] else 'FAIL'}**. "
             "Generated by `benchmarks/trl_compat.py`.",
             "",
             "## (a) Loss functions (B=4, T=12, V=%d, skip 3; rows: no EOS, EOS@5, EOS@2 → empty, EOS@9)"
             % result["loss_functions"]["vocab"],
             "",
             "| case | ours | TRL | max abs diff (loss, grad) | result |",
             "|---|---|---|---|---|"]
    for name, c in result["loss_functions"]["cases"].items():
        verdict = "expected difference" if c.get("expected_difference") else \
            ("pass" if c.get("pass", c["max_abs_diff"] == 0) else "FAIL")
        lines.append(f"| {name} | {_fmt(c.get('ours', '–'))} | {_fmt(c.get('trl', '–'))} | "
                     f"{_fmt(c['max_abs_diff'])} | {verdict} |")
    trainer = result["trainer"]
    lines += ["", "## (b) Real `SDFTTrainer` (tiny Llama, EMA 0.02, full_logits, alpha 0, skip 3)", ""]
    if "error" in trainer:
        lines.append(f"Could not run: `{trainer['error']}`")
    else:
        lines += ["| case | ours | TRL | loss diff | student logits diff | teacher logits diff | grad diff | "
                  "same prompt ids | result |", "|---|---|---|---|---|---|---|---|---|"]
        for key in ("equal_length_prompts", "left_padded_prompts"):
            c = trainer[key]
            lines.append(
                f"| {c['label']} | {c['ours']:.6f} | {c['trl']:.6f} | {_fmt(c['loss_abs_diff'])} | "
                f"{_fmt(c['student_logits_max_abs_diff (masked)'])} | "
                f"{_fmt(c['teacher_logits_max_abs_diff (masked)'])} | {_fmt(c['grad_max_abs_diff'])} | "
                f"{c['student_prompt_ids_identical'] and c['teacher_prompt_ids_identical']} | "
                f"{'pass' if c['pass'] else 'FAIL'} |")
        e = trainer["ema_update"]
        lines.append(f"\nEMA teacher update (TRL `SyncTeacherModelCallback` vs our `Teacher.update`): "
                     f"max abs diff {_fmt(e['max_abs_diff'])} ({'pass' if e['pass'] else 'FAIL'}).")
    if "tiny_timing" in result:
        t = result["tiny_timing"]
        lines += ["", "## TRL timing path (tiny model, CPU)", "",
                  f"{t['steps']} steps, batch {t['batch']}, {t['max_new_tokens']} new tokens, bf16={t['bf16']}: "
                  f"step seconds {[round(s, 3) for s in t['step_seconds']]}, mean excluding the first "
                  f"{t['mean_seconds_excl_first']:.3f} s."]
    lines += ["", "## Differences (by design, not bugs)", "",
              "- **Alpha convention**: TRL `distillation_alpha` 0 = forward KL(p_T‖p_S), 1 = reverse KL, "
              "0<α<1 = JSD with m = α·p_T + (1−α)·p_S, α·KL(p_T‖m) + (1−α)·KL(p_S‖m) = our `jsd_beta`=α "
              "(checked at 0.25 and 0.75, where a swapped convention would show).",
              "- **Top-k support**: TRL's `compute_topk_self_distillation_loss` always uses the student's "
              "top-k; ours uses the teacher's for forward KL (the expectation is under p_T) and the student's "
              "for reverse KL. Equal at k = V and for reverse KL at any k; forward KL at k < V differs.",
              "- **sampled_token value**: TRL's per-token value is sg(d)·log p_S(y), ours is d "
              "(d = log p_S(y) − log p_T(y)); same gradient, different logged loss.",
              "- **Positions**: TRL forwards without `position_ids`; with left padding its positions are "
              "shifted by the pad count. For RoPE models (Llama, SmolLM2) attention depends only on "
              "relative positions, so this is float noise only; a model with absolute positions would "
              "differ. Ours passes mask-derived `position_ids`.",
              "- **EMA teacher construction**: TRL re-loads the teacher from `config._name_or_path` "
              "(not a copy of the instance), so a student modified in memory gets a teacher with the "
              "saved weights; `trl_step_seconds` saves the instance first.",
              "- **IS clipping** (`distillation_is_clip`, default 2.0) only applies when old log-probs "
              "exist (GA not a multiple of steps_per_generation × num_iterations); never with GA=1.",
              "- **Gradient checkpointing**: TRL's base config turns it on by default; `trl_step_seconds` "
              "turns it off (as in our engine) unless asked.",
              "- **Teacher context**: TRL builds one user turn from `teacher_prompt_template`; our "
              "`paper` preset is expressible (token-identical prompts, checked), our default "
              "`previous_turn` is not.",
              ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time-tiny", action="store_true",
                        help="also run trl_step_seconds on the tiny model for 3 steps")
    args = parser.parse_args()
    torch.manual_seed(0)
    result = reference_check()
    if args.time_tiny:
        from sdft_ops.tiny import build_tiny

        model, tokenizer = build_tiny(seed=0)
        questions = ["What is the capital of France?", "Call the tool get_weather for Paris.",
                     "What is 2 + 2?", "Say hello."]
        demos = ["The capital of France is Paris.",
                 'Call the tool: {"name": "get_weather", "arguments": {"city": "Paris"}}', "4", "Hello."]
        result["tiny_timing"] = trl_step_seconds(model, tokenizer, questions, demos, steps=3, bf16=False)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "trl_reference.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, RESULTS / "trl_reference.md")
    print(json.dumps({"all_pass": result["all_pass"], "trl_version": result["trl_version"]}))
    print((RESULTS / "trl_reference.md").read_text())


if __name__ == "__main__":
    main()
