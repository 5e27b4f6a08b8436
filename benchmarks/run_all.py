"""`make bench-all`: every product benchmark in turn (not part of CI). Each writes
benchmarks/results/*; the table of what each backs is benchmarks/README.md.

The order matters: recipes.py trains the candidates (from its own safety champion) that
gate_calibration.py and gate_power.py read from benchmarks/results/cache/recipes/, and writes the
`chosen` recipe that continual.py runs. recipes.py and continual.py take most of the time; both
resume from their caches (benchmarks/results/cache/), so re-running skips what is already there.
gpu_check.py runs only with `--gpu-model-dir DIR` (a folder with SmolLM2's config.json and
tokenizer) on a machine with a CUDA GPU.

    .venv/bin/python benchmarks/run_all.py [--gpu-model-dir DIR]
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    ["trl_compat.py"],
    ["step_cost.py"],
    ["eval_base.py"],
    ["teacher_ceiling.py"],
    ["safety_champion.py", "--champion"],
    ["recipes.py"],
    ["gate_calibration.py"],
    ["gate_power.py"],
    ["continual.py"],
]

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--gpu-model-dir", default=None, help="run gpu_check.py on this model folder")
args = parser.parse_args()
if args.gpu_model_dir:
    SCRIPTS.append(["gpu_check.py", "--model-dir", args.gpu_model_dir,
                    "--out", str(HERE / "results" / "gpu_check.json")])

began = time.perf_counter()
for script, *script_args in SCRIPTS:
    print(f"\n=== {script} {' '.join(script_args)} ===", flush=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(HERE / script), *script_args])
    print(f"=== {script}: {time.perf_counter() - started:.0f} s ===", flush=True)
    if done.returncode != 0:
        sys.exit(f"{script} failed with exit code {done.returncode}")
if not args.gpu_model_dir:
    print("\ngpu_check.py skipped (no --gpu-model-dir)")
print(f"\nall benchmarks: {(time.perf_counter() - began) / 60:.1f} min")
