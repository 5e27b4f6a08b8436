"""`SDFTConfig`: the single source of truth for an update's training settings (SDFT or SFT)."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

QUESTION, DEMONSTRATION = "{question}", "{demonstration}"
# The most tokens one sample may have. A decode reserves its KV cache for prompt + max_new_tokens
# up front, and a teacher rollout keeps (rows, max_new_tokens, vocabulary) logits: at 4096, 8 rows
# of a 49k vocabulary (SmolLM2) already hold 6.4 GB of them. Answers this long are past what a
# demonstration teaches (`demo_length_cap`) and past most small models' training length; a larger
# value (1e9) is a typo that would fail only at the first decode, out of memory
MAX_NEW_TOKENS = 4096


class TeacherContext(BaseModel):
    """How the demonstration enters the teacher's context.

    - `paper`: the official template, one user turn: question, blank line, "This is an example
      for a response to the question:", the demonstration, blank line, "Now answer with a
      response of your own, including the thinking process."
    - `previous_turn`: the demonstration as the assistant's earlier answer to the same question
      (user: q → assistant: demo → user: q). Far stronger on small models (docs/results.md).
    - `custom`: `template`, one user turn with `{question}` and `{demonstration}` placeholders.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: Literal["paper", "previous_turn", "custom"] = "previous_turn"
    template: str | None = None

    @model_validator(mode="after")
    def _template_iff_custom(self) -> "TeacherContext":
        if self.preset == "custom":
            if not self.template or QUESTION not in self.template or DEMONSTRATION not in self.template:
                raise ValueError(
                    "teacher_context preset 'custom' needs a template containing both "
                    f"{QUESTION} and {DEMONSTRATION}"
                )
        elif self.template is not None:
            raise ValueError(f"template is only used with preset 'custom', not {self.preset!r}")
        return self


class SDFTConfig(BaseModel):
    """Training settings of one domain update. Defaults follow the paper where it is explicit.

    Steps: `max_steps` if set, else `epochs` passes over the training demonstrations.
    One optimizer step consumes `prompts_per_step` prompts (global, across processes), split in
    `grad_accum_steps` micro-batches.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["sdft", "sft"] = "sdft"

    # optimisation
    learning_rate: float = Field(5e-5, gt=0)
    prompts_per_step: int = Field(8, ge=1)
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per step, filled with rows of like "
                                  "length (prompt + demonstration): a micro-batch pads little")
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="cosine floor, × learning_rate")
    max_grad_norm: float = Field(1.0, gt=0)
    weight_decay: float = Field(0.0, ge=0.0)
    seed: int = 0
    autocast_bf16: bool = Field(
        True, description="bf16 autocast for sampling and forwards (~3× faster on CPUs with native bf16; "
        "ignored, float32, on CPUs without it: engine/precision.py)"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute the student's activations in backward (transformers' "
        "non-reentrant checkpointing): ~10x less activation memory for ~30% more step time; "
        "the same gradients. For 7B models on one GPU (docs/scaling.md)")

    # on-policy generation (student samples; the paper: one sample per prompt at T = 1.0)
    max_prompt_tokens: int = Field(512, ge=8)
    max_new_tokens: int = Field(64, ge=1, le=MAX_NEW_TOKENS)
    demo_length_cap: float | None = Field(
        None, gt=0, description="also cap samples at this × the longest demonstration (tokens, "
        "EOS included): a student rambling far past any demonstration costs decode time and "
        "teaches nothing the first tokens do not; None: max_new_tokens only")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1.0)
    samples_per_prompt: Literal[1] = 1
    steps_per_generation: int = Field(
        1, ge=1, description="decode the rollouts of this many steps in one batch, then train on "
        "them step by step (TRL's name): a rollout is up to steps_per_generation - 1 steps stale. "
        "On a CPU the decode is bound by reading the weights, so 4 steps' rows cost ~1.3x one "
        "step's (experiments/2026-12-07-step-cost). A resume decodes afresh from its step")
    decode_backend: Literal["auto", "eager", "static", "cuda_graph"] = Field(
        "auto", description="how rollouts decode (sampling._ModelCalls): eager, static (a "
        "preallocated KV cache) or cuda_graph; auto: cuda_graph on CUDA (eager under fsdp), eager "
        "elsewhere. The same tokens whichever")

    # where each prompt's completion comes from (one per prompt)
    rollout: Literal["student", "teacher", "mixed"] = Field(
        "student", description="student: the paper (on-policy, the student samples without the "
        "demonstration); teacher: the seed's pseudo-code / TRL generate_from_teacher (the teacher "
        "samples with the demonstration in context, the student learns that answer without it); "
        "mixed: per prompt, student with probability `student_fraction`, else teacher (GKD's λ)")
    student_fraction: float = Field(0.5, ge=0.0, le=1.0, description="`mixed` only")
    student_fraction_ramp: bool = Field(
        False, description="`mixed` only: the student's share grows linearly from 0 at the "
        "first step to `student_fraction` at the last")
    teacher_temperature: float = Field(1.0, gt=0, description="sampling T of teacher rollouts")
    teacher_rollout_loss: Literal["divergence", "nll"] = Field(
        "divergence", description="loss on a teacher rollout: the configured divergence against "
        "the teacher's distribution, or the NLL of the sampled tokens")
    demonstration_loss: Literal["divergence", "nll"] = Field(
        "divergence", description="loss on a row whose completion is a demonstration (a teacher "
        "rollout the filter replaced, a replayed example learned as its demonstration): the "
        "divergence against the teacher's scores of it (a teacher forward), or its NLL (SFT on "
        "that row; under `rollout: teacher` the rollouts then keep their decode's logits as the "
        "teacher's scores, so the step runs no teacher forward)")
    rollout_filter: Literal["none", "scorer"] = Field(
        "none", description="scorer: a teacher rollout the domain's scorer rejects against its "
        "demonstration is replaced by the demonstration (Yang et al. 2024); train() needs "
        "`rollout_check`")
    sft_weight: float = Field(
        0.0, ge=0.0, description="adds this × the demonstration's NLL to the self-distillation "
        "loss (an SFT anchor); 0: pure SDFT")
    preference_weight: float = Field(
        0.0, ge=0.0, description="adds this × ORPO's odds-ratio loss (Hong et al. 2024) on the "
        "demonstrations that carry a `rejected` answer: −log σ(log odds(demonstration) − log "
        "odds(rejected)), odds = P/(1−P) of the mean token probability. SFT's NLL barely resists "
        "a refusal on a benign prompt; this term pushes it below the answer. 0: off")

    # loss
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    jsd_beta: float = Field(0.5, gt=0.0, lt=1.0, description="JSD mixture weight of the teacher")
    estimator: Literal["full_vocab", "top_k", "sampled_token"] = "full_vocab"
    top_k: int = Field(64, ge=1)
    skip_first_tokens: int = Field(3, ge=0)

    # teacher
    teacher: Literal["ema", "frozen", "live"] = "ema"
    ema_rate: float = Field(0.02, gt=0.0, le=1.0)
    teacher_context: TeacherContext = TeacherContext()

    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints; 0 = none")
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description="with several processes: ddp (whole model per rank) or fsdp (student, "
        "EMA teacher and optimizer state fully sharded; engine/distributed.py)")

    @model_validator(mode="after")
    def _consistent(self) -> "SDFTConfig":
        if self.prompts_per_step % self.grad_accum_steps:
            raise ValueError(
                f"prompts_per_step ({self.prompts_per_step}) must be a multiple of "
                f"grad_accum_steps ({self.grad_accum_steps})"
            )
        if self.estimator == "sampled_token" and self.rollout != "student":
            raise ValueError("estimator 'sampled_token' needs the student's own samples; use "
                             "rollout 'student', or full_vocab / top_k with teacher rollouts")
        if self.estimator == "sampled_token" and self.divergence != "reverse_kl":
            raise ValueError(
                "estimator 'sampled_token' is only unbiased for divergence 'reverse_kl' "
                "(the sample comes from the student); use full_vocab or top_k instead"
            )
        if self.method == "sft" and (self.rollout != "student" or self.sft_weight
                                     or self.rollout_filter != "none"):
            raise ValueError("rollout, rollout_filter and sft_weight are SDFT settings; "
                             "method 'sft' trains on the demonstrations alone")
        if self.rollout_filter == "scorer" and self.rollout == "student":
            raise ValueError("rollout_filter 'scorer' checks teacher rollouts; set rollout to "
                             "'teacher' or 'mixed'")
        if self.estimator == "top_k" and self.divergence == "jsd":
            raise ValueError("estimator 'top_k' supports forward_kl and reverse_kl, not jsd")
        return self

    def fingerprint(self) -> str:
        """Hash of everything that changes training results (resume refuses a mismatch); not the
        distributed mode or the decode backend: checkpoints resume across ddp / fsdp and world sizes."""
        relevant = self.model_dump(mode="json", exclude={"checkpoint_every", "gradient_checkpointing", "distributed",
                                                         "decode_backend"})
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
