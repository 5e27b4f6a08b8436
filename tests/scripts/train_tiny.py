"""Train a tiny model for a few steps and save its weights: run once plainly and once under
`accelerate launch --num_processes 2` by tests/test_engine_distributed.py. Optional second
argument: SDFTConfig overrides as JSON; optional third: a checkpoint folder (resumed from)."""

import json
import os
import sys

import torch
from safetensors.torch import save_file

from sdft_ops.data import Demonstration
from sdft_ops.engine import SDFTConfig, train
from sdft_ops.engine.checkpoint import trainable_state
from sdft_ops.tiny import build_tiny

out_path = sys.argv[1]
model, tokenizer = build_tiny(seed=0)
demos = [Demonstration(id=f"d{i}", prompt=f"What is {i} plus {i}?",
                       demonstration=f"The answer is {2 * i}.", domain="math") for i in range(10)]
cfg = SDFTConfig(max_steps=3, prompts_per_step=4, max_new_tokens=12, learning_rate=1e-3,
                 autocast_bf16=False, **(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}))
train(model, tokenizer, demos, cfg, progress=False, output_dir=sys.argv[3] if len(sys.argv) > 3 else None)
weights = trainable_state(model)  # whole tensors (FSDP shards gathered on every rank)
if int(os.environ.get("RANK", "0")) == 0:
    save_file(weights, out_path)
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
