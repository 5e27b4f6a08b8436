"""`make bench-all`: every benchmark in turn (not part of CI). Each writes benchmarks/results/*.

continual.py (`make bench` alone, ~85 min) takes most of the time; it resumes per cell, so
re-running skips the cells already in benchmarks/results/cache/continual/.
"""

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["trl_compat.py", "step_cost.py", "eval_base.py", "teacher_ceiling.py", "continual.py"]

began = time.perf_counter()
for script in SCRIPTS:
    print(f"\n=== {script} ===", flush=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(HERE / script)])
    print(f"=== {script}: {time.perf_counter() - started:.0f} s ===", flush=True)
    if done.returncode != 0:
        sys.exit(f"{script} failed with exit code {done.returncode}")
print(f"\nall benchmarks: {(time.perf_counter() - began) / 60:.1f} min")
