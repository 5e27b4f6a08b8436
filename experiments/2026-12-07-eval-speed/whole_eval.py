"""Whole evaluation of the no-op and the chosen triage candidate (champion cached first, untimed) in
home argv[1], label argv[2] (or the candidates named in argv[3:], gate_power's ids); prints
seconds per candidate and per suite. A/B: run it with
PYTHONPATH pointing at an older package copy (`git archive <commit> sdft_ops | tar -x -C DIR`)."""
import sys, time, shutil
from pathlib import Path
sys.path.insert(0, "benchmarks")
import sdft_ops
from gate_power import chain_suites, champion, config, model_dir, CHOSEN
from sdft_ops.evaluation.battery import ModelScores, _cache_path, evaluate_candidate
home = Path(sys.argv[1]); home.mkdir(parents=True, exist_ok=True)
label = sys.argv[2]
cfg = config(); suites = chain_suites(cfg); parent = champion()
ModelScores(parent.model_dir, parent.ref, cfg, home).results(suites, progress=False)
for update_id in sys.argv[3:] or ["safety", f"triage--{CHOSEN}-seed1"]:
    ref = f"candidate:{update_id}"
    shutil.rmtree(_cache_path(home, ref, suites[0]).parent, ignore_errors=True)
    t = time.perf_counter()
    report = evaluate_candidate(Path(model_dir(update_id)), ref, parent, chain_suites(cfg), cfg, home)
    s = time.perf_counter() - t
    print(f"RESULT {label} {update_id[:40]} {s:.1f} s", {k: round(r.seconds, 1) for k, r in report.results.items()}, flush=True)
