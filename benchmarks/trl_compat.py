"""Compatibility of our SDFT loss with TRL 1.16's `trl.experimental.sdft.SDFTTrainer`, and a
timing harness for TRL's trainer. Three files: this one (the trainer-level check (b), the report),
`trl_losses.py` (the pure loss-function check (a)), `trl_trainer.py` (building TRL's trainer,
timing its steps).

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
import os
import tempfile
from pathlib import Path

import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
RESULTS = Path(__file__).resolve().parent / "results"


from trl_losses import EMA_RATE, LOGIT_SCALE, SKIP, TOLERANCE, _max_abs, check_loss_functions  # noqa: F401,E402
from trl_trainer import _make_trainer, _quiet, trl_step_seconds  # noqa: F401,E402


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
