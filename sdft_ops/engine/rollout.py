"""Where each prompt's completion comes from: the student, the teacher, or a per-prompt mix.

- `student` (the paper): the student samples without the demonstration, at `temperature`.
- `teacher` (the seed's pseudo-code; TRL's `generate_from_teacher`; "context distillation"):
  the teacher samples *with* the demonstration in its context, at `teacher_temperature`; the
  student, without it, is trained towards the teacher on that answer.
- `mixed` (GKD's λ): per prompt, a student rollout with probability `student_fraction`, else a
  teacher rollout; optionally ramped from 0 to `student_fraction` over the update. The draw is
  seeded by (run seed, example id, global position), so it does not depend on the batch, the
  process split or a resume.

Under `rollout: teacher` every sampled row is the teacher's own sample, so the logits its
decode computed are the teacher's scores of that completion: they are kept (`teacher_logits`,
the decoded rows' in order) and the step runs no second teacher forward, provided no row needs
the teacher's scores of anything else: no filter and no replayed demonstration, or
`demonstration_loss: nll` (a row holding a demonstration is then learned by its NLL). `mixed`
and the other filtered runs score every row with one teacher forward, so all ranks under FSDP
issue the same collectives.

`rollout_filter: scorer` (Yang et al. 2024, "self-distillation bridges distribution gap"): a
teacher rollout that the domain's scorer rejects against its demonstration is replaced by the
demonstration itself, so the student is never pulled towards a wrong answer of the teacher.

An example prepared `as_demonstration` (replay's `learn_as: demonstration`) is not rolled out:
its completion is its demonstration, learned as a teacher row (its NLL under `nll` or
`demonstration_loss: nll`, else the teacher's scores of it), so it costs no decode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sdft_ops.engine.config import SDFTConfig
from sdft_ops.engine.context import PreparedExample
from sdft_ops.engine.distributed import gathered
from sdft_ops.engine.sampling import decode, row_seed, until_stop

# (completion token ids without padding, the example) → keep the teacher's rollout?
RolloutCheck = Callable[[list[int], PreparedExample], bool]


def student_share(cfg: SDFTConfig, step: int, total_steps: int) -> float:
    """Probability that a prompt of `step` (0-based) gets a student rollout."""
    if cfg.rollout != "mixed":
        return 1.0 if cfg.rollout == "student" else 0.0
    if not cfg.student_fraction_ramp:
        return cfg.student_fraction
    return cfg.student_fraction * min(1.0, step / max(1, total_steps - 1))


def teacher_rows(cfg: SDFTConfig, step: int, total_steps: int,
                 keys: Sequence[tuple[str, int]]) -> list[bool]:
    """Per (example id, global position): True when the rollout is the teacher's."""
    share = student_share(cfg, step, total_steps)
    if share in (0.0, 1.0):
        return [share == 0.0] * len(keys)
    uniform = [row_seed(cfg.seed, "rollout-source", example_id, q) / 2**63 for example_id, q in keys]
    return [u >= share for u in uniform]


@dataclass
class Completions:
    ids: torch.Tensor  # (B, T), pad after EOS
    from_teacher: torch.Tensor  # (B,) bool
    finished: torch.Tensor  # (B,) ended with EOS
    replaced_rows: torch.Tensor  # (B,) bool: the filter replaced the rollout by its demonstration
    teacher_logits: torch.Tensor | None = None  # (rolled-out rows, T, V) from the teacher's decode
    unrolled_rows: torch.Tensor | None = None  # (B,) bool: learned as their demonstration, never
    # rolled out (replay's learn_as); teacher_logits holds the other rows, in order. None: none

    @property
    def demonstration_rows(self) -> torch.Tensor:
        """(B,) bool: rows whose completion is a demonstration (replaced, or never rolled out)."""
        return self.replaced_rows if self.unrolled_rows is None else self.replaced_rows | self.unrolled_rows

    @property
    def rolled_out(self) -> torch.Tensor:
        return ~self.unrolled_rows if self.unrolled_rows is not None else torch.ones_like(self.finished)

    @property
    def replaced(self) -> int:
        """Teacher rollouts replaced by their demonstration (rollout_filter)."""
        return int(self.replaced_rows.sum())

    def rows(self, index: Sequence[int]) -> "Completions":
        """These rows, in this order (a prefetched batch split into its steps). The width stays
        the batch's: the extra columns are padding after EOS, which the loss masks."""
        index = list(index)
        logits = None
        if self.teacher_logits is not None:  # the rolled-out rows among these, by their positions
            rolled = self.rolled_out
            at = (rolled.cumsum(0) - 1).tolist()
            held = [at[i] for i in index if rolled[i]]
            if not held or held == list(range(held[0], held[-1] + 1)):  # a run: a view, no copy
                held = slice(held[0], held[-1] + 1) if held else slice(0, 0)
            logits = self.teacher_logits[held]
        unrolled = None if self.unrolled_rows is None else self.unrolled_rows[index]
        return Completions(self.ids[index], self.from_teacher[index], self.finished[index],
                           self.replaced_rows[index], logits, unrolled)


def _stack(rows: list[torch.Tensor], pad_id: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long, device=rows[0].device)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


@torch.no_grad()
def sample_completions(student, teacher_model, batch: Sequence[PreparedExample],
                       seeds: Sequence[int], from_teacher: Sequence[bool], cfg: SDFTConfig,
                       eos_ids: Sequence[int], pad_id: int, check: RolloutCheck | None = None) -> Completions:
    """One completion per example, each from its source (student prompt or teacher prompt)."""
    rows: list[torch.Tensor | None] = [None] * len(batch)
    finished = [False] * len(batch)
    # the sources the config can use, the same on every rank: under FSDP each one's weights are
    # gathered by all ranks, even those with no row from it, one model at a time
    sources = [t for t in (False, True) if cfg.rollout == "mixed" or t == (cfg.rollout == "teacher")]
    keep_logits = (cfg.rollout == "teacher" and cfg.teacher_rollout_loss == "divergence"  # nll: unused
                   and (cfg.demonstration_loss == "nll"  # else a demonstration row needs a forward
                        or (cfg.rollout_filter == "none" and not any(e.as_demonstration for e in batch))))
    from_teacher = [t or e.as_demonstration for t, e in zip(from_teacher, batch)]
    logits = None
    for use_teacher in sources:
        idx = [i for i, t in enumerate(from_teacher) if t == use_teacher and not batch[i].as_demonstration]
        model = teacher_model if use_teacher else student
        prompts = [batch[i].teacher_prompt if use_teacher else batch[i].student_prompt for i in idx]
        with gathered(model):
            if not idx:
                continue
            out = decode(model, prompts, max_new_tokens=cfg.max_new_tokens, eos_ids=eos_ids,
                         pad_id=pad_id, top_p=cfg.top_p, seeds=[seeds[i] for i in idx],
                         temperature=cfg.teacher_temperature if use_teacher else cfg.temperature,
                         keep_logits=keep_logits, backend=cfg.decode_backend)
            logits = out.logits
        for j, i in enumerate(idx):
            rows[i], finished[i] = out.completion_ids[j], bool(out.finished[j])
    device = next(student.parameters()).device
    for i, example in enumerate(batch):
        if example.as_demonstration:
            rows[i], finished[i] = torch.tensor(example.target, device=device), True
    replaced = [False] * len(batch)
    if cfg.rollout_filter == "scorer":
        assert check is not None  # train() refuses rollout_filter without a check
        for i, example in enumerate(batch):
            if from_teacher[i] and not example.as_demonstration and not check(
                    until_stop(rows[i].tolist(), eos_ids), example):
                rows[i] = torch.tensor(example.target, device=device)
                finished[i], replaced[i] = True, True
    return Completions(_stack(rows, pad_id), torch.tensor(list(from_teacher), device=device),
                       torch.tensor(finished, device=device), torch.tensor(replaced, device=device), logits,
                       torch.tensor([e.as_demonstration for e in batch], device=device))
