"""SDFT — Self-Distillation Fine-Tuning (Shenfeld et al. 2026, arXiv 2601.19897), and an SFT
baseline behind the same interface.

Algorithm (one optimizer step, `sdft_step`):
  1. one completion per prompt (no grad): by default the student samples it without the
     demonstration (T=1, the paper); `rollout: teacher` samples it from the teacher with the
     demonstration in context (the seed's pseudo-code), `mixed` picks per prompt (rollout.py);
     `steps_per_generation` k > 1 decodes the rollouts of k steps in one batch ahead (TRL's
     name): on a CPU a decode is bound by reading the weights, so k steps' rows cost little
     more than one step's, and a rollout is up to k − 1 steps stale;
  2. the teacher — the same network with the demonstration in its context — scores
     [teacher prompt + completion] (no grad; a teacher rollout's scores are its decode's logits);
  3. the student scores [prompt + completion] with grad;
  4. per-token divergence (default forward KL(teacher‖student), full vocabulary) over the
     completion after its first `skip_first_tokens` tokens, padding and post-EOS masked; mean
     per sequence, then over the global batch;
     `teacher_rollout_loss: nll` uses the NLL of the sampled tokens on teacher rollouts instead,
     `demonstration_loss: nll` the NLL on rows that hold a demonstration (the filter replaced the
     rollout, or replay learns it as such) — SFT on those rows, GKD's λ per row;
     `sft_weight` > 0 adds that weight × the demonstration's NLL (an SFT anchor), and
     `preference_weight` > 0 ORPO's odds-ratio term where a demonstration has a rejected answer;
  5. backward, clip (1.0), AdamW + warmup/cosine step, then the teacher update (EMA, rate 0.02).

Deviations from the paper / official code, all deliberate:
  - default teacher context `previous_turn` (the paper's one-turn template fails on 135M models;
    `paper` is a preset);
  - sampling by our own KV-cache loop with per-example seeds (same samples whatever the batch or
    process split; see sampling.py); bf16 autocast by default on the forwards;
  - LoRA EMA is exact on the effective weights (see teacher.py).

Multi-process: run the same code under `accelerate launch` / `torchrun`; each rank takes its
share of the global batch; `distributed: ddp` (torch DDP, gloo on CPU, nccl on GPU) or `fsdp`
(FSDP2 full sharding of student, EMA teacher and optimizer state) synchronises the gradients
(distributed.py). Under DDP only the student's forward with grad goes through the wrapper
(`grad_model`); under FSDP each rollout's model is gathered for its decode (rollout.py).

  from sdft_ops.engine import SDFTConfig, train
  result = train(model, tokenizer, demos, SDFTConfig(max_steps=40), output_dir="ckpt/")
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sdft_ops.data import Demonstration
from sdft_ops.engine.checkpoint import resume_latest, save_checkpoint
from sdft_ops.engine.config import SDFTConfig
from sdft_ops.engine.context import PreparedExample, prepare_examples
from sdft_ops.engine.distributed import full, join_process_group, no_gradient_sync, shard
from sdft_ops.engine.losses import completion_mask, odds_ratio_loss, sequence_mean, token_divergence
from sdft_ops.engine.memory import limit_heap_fragmentation, peak_rss_gb, release_freed_memory, reset_peak_rss
from sdft_ops.engine.precision import bf16_autocast, bf16_is_fast, frozen_weights_in_bf16
from sdft_ops.engine.rollout import Completions, RolloutCheck, sample_completions, teacher_rows
from sdft_ops.engine.sampling import left_pad, position_ids, row_seed, stop_ids
from sdft_ops.engine.teacher import Teacher, is_peft

StepCallback = Callable[[int, dict[str, float]], None]


class TrainingDiverged(RuntimeError):
    """A non-finite loss: training stops, nothing is saved as a good checkpoint."""


@dataclass
class TrainResult:
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    demo_tokens_cut: int = 0  # demonstration tokens dropped to fit teacher prompts
    max_new_tokens: int = 0  # sample length used (after `demo_length_cap`)
    peak_rss_gb: float | None = None  # the process's peak resident memory while training

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def _autocast(model, enabled: bool):
    return bf16_autocast(next(model.parameters()).device.type, enabled)


def completion_logits(model, prompt_ids, prompt_mask, completion) -> torch.Tensor:
    """Logits that predict each completion token: (B, P), (B, P), (B, T) → (B, T, V)."""
    ids = torch.cat([prompt_ids, completion], dim=1)
    mask = torch.cat([prompt_mask, torch.ones_like(completion)], dim=1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                logits_to_keep=completion.shape[1] + 1)
    return out.logits[:, :-1]


def sdft_step(model, teacher: Teacher, batch: Sequence[PreparedExample], seeds,
              from_teacher: Sequence[bool], cfg: SDFTConfig, eos_ids: Sequence[int], pad_id: int,
              check: RolloutCheck | None = None, grad_model=None,
              rollout: Completions | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over `batch` of per-sequence mean loss (caller divides by the global batch).
    `grad_model`: what the student's forward with grad runs through (the DDP wrapper);
    `rollout`: the batch's completions, decoded ahead (`steps_per_generation`)."""
    teacher_model = teacher.module(model)
    if rollout is None:
        with _autocast(model, cfg.autocast_bf16):                              # 1. rollout
            rollout = sample_completions(model, teacher_model, batch, seeds, from_teacher, cfg,
                                         eos_ids, pad_id, check)                # per row: student or teacher
    completion = rollout.ids                                                   # (B, T)
    mask = completion_mask(completion, eos_ids, cfg.skip_first_tokens)
    nll_rows = torch.zeros_like(rollout.finished)  # rows learned by the NLL of their tokens
    if cfg.teacher_rollout_loss == "nll":  # the teacher's sampled tokens (and demonstrations)
        nll_rows |= rollout.from_teacher
    if cfg.demonstration_loss == "nll":  # a replaced or replayed demonstration: SFT on it
        nll_rows |= rollout.demonstration_rows
    divergence_rows = ~nll_rows
    # the divergence rows first, so that each loss reads a view of the logits, never a copy
    order = torch.cat([divergence_rows.nonzero().squeeze(1), nll_rows.nonzero().squeeze(1)])
    split, rows = int(divergence_rows.sum()), [batch[i] for i in order.tolist()]
    completion, mask = completion[order], mask[order]
    teacher_logits = rollout.teacher_logits  # teacher rollouts: kept from their own decode
    if teacher_logits is not None:  # (rolled-out rows, T, V) → the divergence rows'
        teacher_logits = _take(teacher_logits, divergence_rows[rollout.rolled_out])
    # whether the teacher scores the batch follows from the config, not the rows: every FSDP
    # rank takes part in its forward
    elif not (cfg.rollout == "teacher" and cfg.teacher_rollout_loss == "nll"):
        with torch.no_grad(), _autocast(model, cfg.autocast_bf16):             # 2. teacher
            t_ids, t_mask = left_pad([e.teacher_prompt for e in rows], pad_id, completion.device)
            teacher_logits = completion_logits(teacher_model, t_ids, t_mask, completion)[:split]
    with _autocast(model, cfg.autocast_bf16):                                  # 3. student
        s_ids, s_mask = left_pad([e.student_prompt for e in rows], pad_id, completion.device)
        student_logits = completion_logits(model if grad_model is None else grad_model, s_ids, s_mask, completion)
    per_token = torch.zeros(completion.shape, device=completion.device)       # (B, T)
    if split < len(rows):
        per_token[split:] = F.cross_entropy(student_logits[split:].float().transpose(1, 2),
                                            completion[split:], reduction="none")
    if split:  # kept decode logits end where the decode did; a longer demonstration row only
        width = teacher_logits.shape[1]  # pads the batch past it
        per_token[:split, :width] = token_divergence(
            student_logits[:split, :width], teacher_logits, cfg.divergence, cfg.estimator,
            jsd_beta=cfg.jsd_beta, top_k=cfg.top_k, sampled_ids=completion[:split, :width]).float()
    del student_logits, teacher_logits
    loss_sum = sequence_mean(per_token, mask).sum()                            # 4. loss
    if cfg.sft_weight or cfg.preference_weight:  # the SFT anchor (+ w × the demonstration's NLL)
        loss_sum = loss_sum + sft_step(model, batch, cfg, pad_id, nll_weight=cfg.sft_weight)[0]
    lengths = completion_mask(completion, eos_ids, 0).sum(-1).float()
    return loss_sum, {"tokens": float(lengths.sum()), "eos": float(rollout.finished.sum()),
                      "teacher_rollouts": float(rollout.from_teacher.sum()),
                      "replaced": float(rollout.replaced)}


def _take(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """t[rows] for a (B,) bool mask, without a copy when it keeps every row."""
    return t if bool(rows.all()) else t[rows]


def answer_nll(model, rows: Sequence[tuple[Sequence[int], Sequence[int]]], cfg: SDFTConfig,
               pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt ids, answer ids) rows → (R,) mean NLL of each answer's tokens and the (R, T)
    answer mask; the prompt is never a label."""
    width = max(len(answer) for _, answer in rows)
    device = next(model.parameters()).device
    target = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for row, (_, answer) in enumerate(rows):
        target[row, : len(answer)] = torch.tensor(answer)
    target = target.to(device)
    mask = torch.arange(width, device=device) < torch.tensor([len(a) for _, a in rows],
                                                              device=device).unsqueeze(-1)
    prompt_ids, prompt_mask = left_pad([prompt for prompt, _ in rows], pad_id, device)
    with _autocast(model, cfg.autocast_bf16):
        logits = completion_logits(model, prompt_ids, prompt_mask, target)
    nll = F.cross_entropy(logits.float().transpose(1, 2), target, reduction="none")
    return sequence_mean(nll, mask), mask


def sft_step(model, batch: Sequence[PreparedExample], cfg: SDFTConfig, pad_id: int, grad_model=None,
             nll_weight: float = 1.0):
    """`nll_weight` × the cross-entropy on the demonstration tokens, plus `preference_weight` ×
    ORPO's odds-ratio term on the examples that carry a rejected answer (their rejected rows
    ride in the same forward)."""
    paired = [r for r, e in enumerate(batch) if e.rejected is not None] if cfg.preference_weight else []
    rows = [(e.student_prompt, e.target) for e in batch] + [(batch[r].student_prompt, batch[r].rejected)
                                                            for r in paired]
    nll, mask = answer_nll(model if grad_model is None else grad_model, rows, cfg, pad_id)
    loss_sum = nll_weight * nll[: len(batch)].sum()
    if paired:
        loss_sum = loss_sum + cfg.preference_weight * odds_ratio_loss(-nll[paired], -nll[len(batch):]).sum()
    return loss_sum, {"tokens": float(mask[: len(batch)].sum()), "eos": float(len(batch)),
                      "teacher_rollouts": 0.0, "replaced": 0.0}


def warmup_cosine(total_steps: int, warmup: int, floor: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def batch_positions(step: int, n_examples: int, cfg: SDFTConfig) -> list[tuple[int, int]]:
    """(global position, example index) of a step's prompts: epochs of seeded permutations."""
    out = []
    for q in range(step * cfg.prompts_per_step, (step + 1) * cfg.prompts_per_step):
        epoch, offset = divmod(q, n_examples)
        order = list(range(n_examples))
        random.Random(f"{cfg.seed}-{epoch}").shuffle(order)
        out.append((q, order[offset]))
    return out


def train(model, tokenizer, demos: Sequence[Demonstration], cfg: SDFTConfig, *,
          output_dir: str | Path | None = None, callbacks: Sequence[StepCallback] = (),
          rollout_check: Callable[[str, Demonstration], bool] | None = None,
          progress: bool = True, demonstration_ids: Collection[str] = ()) -> TrainResult:
    """Train `model` in place on `demos` (SDFT or SFT per `cfg.method`); resumes from the latest
    checkpoint in `output_dir` if there is one. `rollout_check(answer text, demonstration)`:
    whether a teacher rollout is right (needed by `rollout_filter: scorer`). `demonstration_ids`:
    examples learned as their demonstration, never rolled out (replay's `learn_as`)."""
    rank, world = join_process_group()
    if cfg.prompts_per_step % (world * cfg.grad_accum_steps):
        raise ValueError(f"prompts_per_step {cfg.prompts_per_step} must divide into "
                         f"{world} processes × {cfg.grad_accum_steps} accumulation steps")
    examples = prepare_examples(demos, tokenizer, cfg, demonstration_ids)
    check = None
    if cfg.rollout_filter == "scorer":
        if rollout_check is None:
            raise ValueError("rollout_filter 'scorer' needs train(..., rollout_check=) — the "
                             "domain's scorer against each demonstration's reference")
        by_id = {d.id: d for d in demos}
        check = lambda ids, e: rollout_check(  # noqa: E731
            tokenizer.decode(ids, skip_special_tokens=True).strip(), by_id[e.id])
    total = cfg.max_steps or cfg.epochs * math.ceil(len(examples) / cfg.prompts_per_step)
    if cfg.demo_length_cap:  # one sample length for the whole run, fixed by the data
        longest = max((len(e.target) for e in examples if not e.as_demonstration),  # rolled out
                      default=max(len(e.target) for e in examples))
        cfg = cfg.model_copy(update={"max_new_tokens": min(
            cfg.max_new_tokens, math.ceil(cfg.demo_length_cap * longest))})
    eos_ids, pad_id = stop_ids(model, tokenizer), tokenizer.pad_token_id
    fsdp = world > 1 and cfg.distributed == "fsdp"
    teacher = Teacher(model, cfg.teacher, cfg.ema_rate, share_frozen=not fsdp) if cfg.method == "sdft" else None
    if fsdp:  # student and teacher sharded alike, so the EMA runs shard by shard
        if is_peft(model):
            raise ValueError("distributed: fsdp with LoRA is not supported; LoRA runs on one "
                             "device or under ddp")
        if cfg.decode_backend == "cuda_graph":
            raise ValueError("decode_backend 'cuda_graph' cannot run under distributed: fsdp (each "
                             "decode gathers the weights anew); use 'auto' or 'eager'")
        if cfg.decode_backend == "auto":
            cfg = cfg.model_copy(update={"decode_backend": "eager"})
        shard(model)
        if teacher is not None and teacher.model is not None:
            shard(teacher.model)
    params = [p for p in model.parameters() if p.requires_grad]  # after sharding: the shards
    # fused: one pass over each parameter, no full-size temporaries (step_cost.md: less time, less RSS)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total, cfg.warmup_steps, cfg.min_lr_ratio))
    torch.manual_seed(cfg.seed)
    ckpt_dir = Path(output_dir) if output_dir else None
    start = resume_latest(ckpt_dir, model=model, teacher=teacher, optimizer=optimizer,
                          scheduler=scheduler, fingerprint=cfg.fingerprint())
    if cfg.gradient_checkpointing:  # decoding runs in eval mode, where the KV cache stays on
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x's name
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):  # LoRA: frozen embeddings feed the graph
            model.enable_input_require_grads()
    # DDP and FSDP average gradients over ranks; the loss below is a sum over the global batch: × world
    device = next(model.parameters()).device
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 and not fsdp else None
    model.train()
    # frozen Linear weights in bf16 while autocast casts them to bf16 anyway (same results)
    in_bf16 = cfg.autocast_bf16 and bf16_is_fast(device.type) and world == 1 and not is_peft(model)
    with frozen_weights_in_bf16(model, in_bf16, spill_dir=ckpt_dir):
        limit_heap_fragmentation()
        reset_peak_rss()  # the model, teacher and optimizer are resident by now: the window counts them
        result, began = TrainResult(steps=total, seconds=0.0,
                                    demo_tokens_cut=sum(e.demo_tokens_cut for e in examples),
                                    max_new_tokens=cfg.max_new_tokens), time.perf_counter()
        bar = tqdm(range(start, total), initial=start, total=total, disable=not progress or rank != 0,
                   desc=f"{cfg.method} update", unit="step")
        ahead: dict[int, Completions] = {}  # global position → its completion, decoded ahead
        for step in bar:
            t0 = time.perf_counter()
            mine = batch_positions(step, len(examples), cfg)[rank::world]
            optimizer.zero_grad(set_to_none=True)  # before the decode: the last step's gradients are spent
            if teacher is not None and cfg.steps_per_generation > 1 and mine[0][0] not in ahead:
                ahead = rollout = None  # the spent batch's kept logits go before the next decode
                ahead = _decode_ahead(model, teacher, examples, step, min(step + cfg.steps_per_generation, total),
                                      total, rank, world, cfg, eos_ids, pad_id, check)
            micro = len(mine) // cfg.grad_accum_steps
            if cfg.grad_accum_steps > 1:  # rows of like length share a micro-batch: less padding computed
                mine = sorted(mine, key=lambda qi: (len(examples[qi[1]].student_prompt) + len(examples[qi[1]].target), qi))
            totals = torch.zeros(5)  # loss sum, completion tokens, ending in EOS, teacher rollouts, replaced
            chunks = [mine[i : i + micro] for i in range(0, len(mine), micro)]
            for c, chunk in enumerate(chunks):
                batch = [examples[i] for _, i in chunk]
                # gradients are synchronised on the last micro-batch only
                with no_gradient_sync(model, ddp, skip=c < len(chunks) - 1):
                    if teacher is not None:
                        seeds = [row_seed(cfg.seed, examples[i].id, q) for q, i in chunk]
                        sources = teacher_rows(cfg, step, total, [(examples[i].id, q) for q, i in chunk])
                        rollout = _rows(ahead, [q for q, _ in chunk]) if ahead else None
                        loss_sum, stats = sdft_step(model, teacher, batch, seeds, sources, cfg, eos_ids,
                                                    pad_id, check, grad_model=ddp, rollout=rollout)
                    else:
                        loss_sum, stats = sft_step(model, batch, cfg, pad_id, grad_model=ddp)
                    (loss_sum * world / cfg.prompts_per_step).backward()
                totals += torch.tensor([loss_sum.item(), stats["tokens"], stats["eos"],
                                        stats["teacher_rollouts"], stats["replaced"]])
            if world > 1:  # the step's metrics (not gradients) summed over ranks
                torch.distributed.all_reduce(totals)
            loss = totals[0].item() / cfg.prompts_per_step
            if not math.isfinite(loss):
                raise TrainingDiverged(f"non-finite loss {loss} at step {step}; lower the learning "
                                       "rate or check the data. No checkpoint was written for it.")
            grad_norm = full(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)).item()
            optimizer.step()
            scheduler.step()
            if teacher is not None:
                teacher.update(model)                                              # 5. EMA
            seconds = time.perf_counter() - t0
            metrics = {"train/loss": loss, "train/grad_norm": grad_norm,
                       "train/lr": scheduler.get_last_lr()[0], "train/step_seconds": seconds,
                       "train/tokens_per_s": totals[1].item() / seconds,
                       "train/completion_tokens": totals[1].item() / cfg.prompts_per_step,
                       "train/eos_rate": totals[2].item() / cfg.prompts_per_step,
                       "train/teacher_rollout_rate": totals[3].item() / cfg.prompts_per_step,
                       "train/filter_replaced": totals[4].item()}
            if (rss := peak_rss_gb()) is not None:
                metrics["train/peak_rss_gb"] = rss
            result.history.append({"step": step + 1, **metrics})
            bar.set_postfix(loss=f"{loss:.4f}", gnorm=f"{grad_norm:.2f}", s=f"{seconds:.1f}")
            if rank == 0:
                for callback in callbacks:
                    callback(step + 1, metrics)
            if ckpt_dir and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
                if rank == 0 or fsdp:  # FSDP: every rank gathers its shards, rank 0 writes
                    save_checkpoint(ckpt_dir, step + 1, model=model, teacher=teacher, optimizer=optimizer,
                                    scheduler=scheduler, fingerprint=cfg.fingerprint(), write=rank == 0)
                if world > 1:  # no rank reads a half-written checkpoint folder
                    torch.distributed.barrier()
        result.seconds, result.peak_rss_gb = time.perf_counter() - began, peak_rss_gb()
    return result


def _decode_ahead(model, teacher: Teacher, examples, first: int, end: int, total: int, rank: int,
                  world: int, cfg: SDFTConfig, eos_ids, pad_id: int, check) -> dict[int, Completions]:
    """The completions of steps [first, end) for this rank, decoded in one batch (a decode here
    is bound by reading the weights, not by its rows); {global position: its row}."""
    positions, sources = [], []
    for step in range(first, end):
        mine = batch_positions(step, len(examples), cfg)[rank::world]
        positions += mine
        sources += teacher_rows(cfg, step, total, [(examples[i].id, q) for q, i in mine])
    batch = [examples[i] for _, i in positions]
    seeds = [row_seed(cfg.seed, examples[i].id, q) for q, i in positions]
    if next(model.parameters()).device.type == "cpu" and end - first > 1:
        # the k steps since the last decode left freed heap in holes: hand it back before the
        # decode's buffers are laid on top (a triage update peaked at 2.69 GB, not 2.82; LOG.md).
        # Not at k = 1: a garbage collection every step would cost more than it frees
        release_freed_memory()
    with _autocast(model, cfg.autocast_bf16):
        rollout = sample_completions(model, teacher.module(model), batch, seeds, sources, cfg,
                                     eos_ids, pad_id, check)
    return {q: rollout.rows([r]) for r, (q, _) in enumerate(positions)}


def _rows(ahead: dict[int, Completions], positions: Sequence[int]) -> Completions:
    """One micro-batch's completions from single-row entries (same width: one decode)."""
    parts = [ahead.pop(q) for q in positions]
    logits = None if parts[0].teacher_logits is None else torch.cat([p.teacher_logits for p in parts])
    return Completions(torch.cat([p.ids for p in parts]), torch.cat([p.from_teacher for p in parts]),
                       torch.cat([p.finished for p in parts]), torch.cat([p.replaced_rows for p in parts]), logits,
                       torch.cat([~p.rolled_out for p in parts]))
