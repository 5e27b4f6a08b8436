"""`benchmarks/trl_compat.py`'s TRL side: building TRL 1.16's SDFTTrainer with our settings,
and timing its steps (`trl_step_seconds`, also used by step_cost.py)."""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from trl_losses import EMA_RATE, SKIP  # noqa: F401


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
