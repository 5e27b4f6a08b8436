"""`make bench`: every benchmark in turn (not part of CI). Each writes benchmarks/results/*."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["trl_compat.py", "step_cost.py", "eval_base.py", "teacher_ceiling.py", "continual.py"]

for script in SCRIPTS:
    print(f"\n=== {script} ===", flush=True)
    done = subprocess.run([sys.executable, str(HERE / script)])
    if done.returncode != 0:
        sys.exit(f"{script} failed with exit code {done.returncode}")
