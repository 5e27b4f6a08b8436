"""The same training code under `accelerate launch --num_processes 2` (gloo on CPU) gives the
same weights as one process with the same global batch, under DDP and under FSDP2 full
sharding (PyTorch runs `fully_shard` on CPU with gloo, so no GPU is needed); an FSDP checkpoint
resumes in one process, and a one-process checkpoint under FSDP.

accelerate 1.x's `--cpu` flag starts a single process unless MPI is set up (its simple
launcher), so the two CPU processes are started with `--multi_gpu`, which uses torchrun; with
no GPU present the engine joins the process group with gloo. Tolerance 1e-5: the two runs sum
gradients in a different order (DDP's all-reduce vs one batch), nothing else differs — samples are
seeded per example, so both runs train on identical tokens."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).parent / "scripts" / "train_tiny.py"
ACCELERATE = Path(__file__).resolve().parents[1] / "deploy" / "accelerate"  # the shipped launch configs


def _run(cmd, env):
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
ACCELERATE_CLI = str(Path(sys.executable).parent / "accelerate")
needs_accelerate = pytest.mark.skipif(
    shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None,
    reason="accelerate CLI not installed")


def _one(out, overrides, ckpt=None):
    _run([sys.executable, str(SCRIPT), str(out), json.dumps(overrides), *([str(ckpt)] if ckpt else [])], ENV)


def _two(out, overrides, ckpt=None):
    _run([ACCELERATE_CLI, "launch", "--config_file", str(ACCELERATE / "cpu-2proc.yaml"), str(SCRIPT),
          str(out), json.dumps(overrides), *([str(ckpt)] if ckpt else [])], ENV)


def _assert_same(path_a, path_b):
    one, two = load_file(path_a), load_file(path_b)
    initial = __import__("sdft_ops.tiny", fromlist=["build_tiny"]).build_tiny(seed=0)[0]
    moved = any(not torch.equal(one[n], p) for n, p in initial.named_parameters())
    assert moved and one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=0, msg=name)


@needs_accelerate
@pytest.mark.parametrize("overrides", [
    {},  # SDFT as the paper: student rollouts
    {"method": "sft"},
    # teacher/student mix, the SFT anchor (a second forward in the same backward) and gradient
    # accumulation (DDP's no_sync on all but the last micro-batch)
    {"rollout": "mixed", "student_fraction": 0.5, "sft_weight": 0.5, "grad_accum_steps": 2},
    # FSDP2: sharded student and EMA teacher; the mix makes ranks decode different numbers of
    # rows from each model (gathered weights), the preference rows ride in the anchor's forward
    {"distributed": "fsdp"},
    {"distributed": "fsdp", "method": "sft", "preference_weight": 0.5},
    {"distributed": "fsdp", "rollout": "mixed", "student_fraction": 0.5, "sft_weight": 0.5,
     "grad_accum_steps": 2},
], ids=["sdft", "sft", "sdft-mixed-anchor-accum", "fsdp-sdft", "fsdp-sft-preference",
        "fsdp-sdft-mixed-anchor-accum"])
def test_two_processes_match_one(tmp_path, overrides):
    _one(tmp_path / "one.safetensors", {k: v for k, v in overrides.items() if k != "distributed"})
    _two(tmp_path / "two.safetensors", overrides)
    _assert_same(tmp_path / "one.safetensors", tmp_path / "two.safetensors")


@needs_accelerate
def test_checkpoints_resume_across_world_sizes(tmp_path):
    """3 steps, a checkpoint at step 2: written by 2 FSDP ranks and resumed by one process
    (and the other way round), the final weights equal an uninterrupted one-process run."""
    cfg = {"checkpoint_every": 2, "rollout": "mixed", "student_fraction": 0.5}
    _one(tmp_path / "plain.safetensors", cfg)
    for first, second, name in ((_two, _one, "fsdp-then-one"), (_one, _two, "one-then-fsdp")):
        ckpt = tmp_path / name
        first(tmp_path / f"{name}-first.safetensors", {**cfg, "distributed": "fsdp"}, ckpt)
        assert sorted(p.name for p in ckpt.iterdir()) == ["step-000002"]
        second(tmp_path / f"{name}.safetensors", {**cfg, "distributed": "fsdp"}, ckpt)
        _assert_same(tmp_path / "plain.safetensors", tmp_path / f"{name}.safetensors")


def test_shipped_launch_configs_load_in_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"1gpu.yaml": ("NO", 1), "8gpu-ddp.yaml": ("MULTI_GPU", 8),
                "8gpu-fsdp.yaml": ("MULTI_GPU", 8), "cpu-2proc.yaml": ("MULTI_GPU", 2)}
    assert sorted(p.name for p in ACCELERATE.glob("*.yaml")) == sorted(expected)
    for name, (kind, processes) in expected.items():
        config = load_config_from_file(str(ACCELERATE / name))  # refuses unknown keys
        assert (config.distributed_type.value, config.num_processes) == (kind, processes), name
        assert config.mixed_precision == "no"  # the engine's own autocast decides precision

