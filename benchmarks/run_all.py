"""`make bench`: every benchmark in turn (not part of CI). Each writes benchmarks/results/*.

Budget: 90 minutes on a 2-core CPU in all; continual.py takes most of it (resumable per cell:
re-running skips the cells already in benchmarks/results/cache/continual/).
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
print(f"\nmake bench: {(time.perf_counter() - began) / 60:.1f} min in all (budget 90)")
