"""A tiny, fast update config shared by the pipeline, CLI and Dagster tests."""

import json
from pathlib import Path

from sdft_ops.settings import UpdateConfig
from sdft_ops.tiny import build_tiny

FAST_EVAL = {"prior_sizes": {"arc_easy": 8, "arc_challenge": 0, "hellaswag": 0, "piqa": 0,
                             "winogrande": 0, "mmlu": 0},
             "safety": True, "safety_items": 6, "instruction_following": False, "drift": True,
             "domain_items": 4, "domain_max_new_tokens": 8, "n_boot": 200, "precision": "model", "batch_size": 32}


def tiny_base(folder: Path) -> Path:
    model, tokenizer = build_tiny(seed=0)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


DRIFT_PROMPTS = ["Why is the sky blue?", "Name a fruit.", "How do I boil an egg?",
                 "What is 2 plus 2?", "Say hello.", "Describe a cat.", "What is rain?",
                 "Give me a color.", "Count to three.", "What is a noun?", "Name a planet.",
                 "Suggest a pet name."]


def freeze_tiny_drift(base: Path, path: Path) -> Path:
    """The tiny base model's own greedy answers: what its drift suite scores (as for SmolLM2)."""
    from sdft_ops.chat import encode_chat
    from sdft_ops.engine.sampling import decode
    from sdft_ops.models import ModelSpec, load_model

    model, tok = load_model(ModelSpec(name_or_path=str(base)))
    prompts = [encode_chat(tok, [{"role": "user", "content": p}]) for p in DRIFT_PROMPTS]
    out = decode(model, prompts, max_new_tokens=16, eos_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id)
    answers = tok.batch_decode(out.completion_ids, skip_special_tokens=True)
    path.write_text("".join(json.dumps({"id": f"drift-{i}", "prompt": p, "answer": a.strip() or "ok",
                                        "provenance": {"model": str(base), "decoding": "greedy"}}) + "\n"
                            for i, (p, a) in enumerate(zip(DRIFT_PROMPTS, answers))))
    return path


def tiny_config(base: Path, **train) -> UpdateConfig:
    """SDFT for 2 steps on the tiny model; gate: no safety suites here, and the drift suite
    (log-prob of the base model's answers) must not drop by more than 0.05 nats."""
    return UpdateConfig.model_validate({
        "model": {"name_or_path": str(base)},
        "train": {"max_steps": 2, "prompts_per_step": 4, "max_new_tokens": 8,
                  "autocast_bf16": False, "learning_rate": 1e-5, **train},
        "ceiling": {"sample_size": 2},
        "eval": {**FAST_EVAL, "drift_file": str(freeze_tiny_drift(base, base / "drift.jsonl"))},
        "gate": {"default_rule": {"max_drop": 0.5},
                 "domain_rule": {"min_gain": -1.0}, "required_suites": ["drift"],
                 "safety_rule": {"max_drop": 0.5}, "rules": {"drift": {"max_drop": 0.05},
                                                           "safety_benign_compliance": {"max_drop": 0.5}}},
    })


# SFT at a high learning rate: measurably damages the drift suite (a real reject).
DAMAGING = {"method": "sft", "learning_rate": 5e-2, "max_steps": 3}


def fast_config(base: Path) -> UpdateConfig:
    """`tiny_config` cut to what the weights-identity and fault-injection tests need (~2 s an
    update on 2 cores): one gentle SFT step, no teacher ceiling, the drift and domain suites."""
    cfg = tiny_config(base, method="sft", max_steps=1)
    return cfg.model_copy(update={
        "ceiling": cfg.ceiling.model_copy(update={"enabled": False}),
        "eval": cfg.eval.model_copy(update={
            "safety": False, "prior_sizes": dict.fromkeys(cfg.eval.prior_sizes, 0)})})


def fresh_home(folder: Path, mlflow_template: Path) -> Path:
    """A data home whose MLflow store is a copy of the empty migrated template (no 8 s migration)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(mlflow_template, folder / "mlflow.db")
    return folder
