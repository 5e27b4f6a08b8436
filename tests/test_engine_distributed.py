"""The same training code under `accelerate launch --num_processes 2` (gloo on CPU) gives the
same weights as one process with the same global batch.

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


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None,
                    reason="accelerate CLI not installed")
@pytest.mark.parametrize("overrides", [
    {},  # SDFT as the paper: student rollouts
    {"method": "sft"},
    # teacher/student mix, the SFT anchor (a second forward in the same backward) and gradient
    # accumulation (DDP's no_sync on all but the last micro-batch)
    {"rollout": "mixed", "student_fraction": 0.5, "sft_weight": 0.5, "grad_accum_steps": 2},
], ids=["sdft", "sft", "sdft-mixed-anchor-accum"])
def test_two_processes_match_one(tmp_path, overrides):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    extra = [json.dumps(overrides)]
    _run([sys.executable, str(SCRIPT), str(tmp_path / "one.safetensors"), *extra], env)
    accelerate = str(Path(sys.executable).parent / "accelerate")
    _run([accelerate, "launch", "--config_file", str(ACCELERATE / "cpu-2proc.yaml"),
          str(SCRIPT), str(tmp_path / "two.safetensors"), *extra], env)
    one, two = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    initial = __import__("sdft_ops.tiny", fromlist=["build_tiny"]).build_tiny(seed=0)[0]
    moved = any(not torch.equal(one[n], p) for n, p in initial.named_parameters())
    assert moved and one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=0, msg=name)


def test_shipped_launch_configs_load_in_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"1gpu.yaml": ("NO", 1), "8gpu-ddp.yaml": ("MULTI_GPU", 8), "cpu-2proc.yaml": ("MULTI_GPU", 2)}
    assert sorted(p.name for p in ACCELERATE.glob("*.yaml")) == sorted(expected)
    for name, (kind, processes) in expected.items():
        config = load_config_from_file(str(ACCELERATE / name))  # refuses unknown keys
        assert (config.distributed_type.value, config.num_processes) == (kind, processes), name
        assert config.mixed_precision == "no"  # the engine's own autocast decides precision

