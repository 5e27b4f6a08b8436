"""Where a no-op candidate's evaluation goes: prefill vs per-token decode vs log-likelihood, per suite.
Scores the champion's weights as a fresh candidate in a temp home (the gate_power chain suites, demo
config), at the first look of each sequential test."""
import collections, sys, tempfile, time
sys.path.insert(0, "benchmarks")
from gate_power import chain_suites, champion, config
from sdft_ops.engine import sampling
from sdft_ops.evaluation import suites_engine, suites as suites_mod
from sdft_ops.evaluation.battery import ModelScores
from sdft_ops.evaluation.sequential import evaluation_order, order_key
from sdft_ops.evaluation.battery import _item_ids

acc = collections.defaultdict(float); counts = collections.Counter()
current = ["?"]
def timed(obj, name, label):
    fn = getattr(obj, name)
    def wrapper(*a, **k):
        t = time.perf_counter(); out = fn(*a, **k)
        acc[(current[0], label)] += time.perf_counter() - t; counts[(current[0], label)] += 1
        return out
    setattr(obj, name, wrapper)
timed(sampling._ModelCalls, "__init__", "prefill")
timed(sampling._ModelCalls, "step", "decode_step")
timed(suites_engine, "_score_chunk", "loglik")
orig_run = suites_mod.run_suites
cfg = config()
if len(sys.argv) > 1:
    cfg = cfg.merged({"eval": {"precision": sys.argv[1]}})
if len(sys.argv) > 2:
    cfg = cfg.merged({"eval": {"batch_size": int(sys.argv[2])}})
if len(sys.argv) > 3:
    for t in cfg.gate.sequential.values():
        object.__setattr__(t, "block", t.block * int(sys.argv[3]))
suites = chain_suites(cfg)
seq = {s for t in cfg.gate.sequential.values() for s in t.suites}
want = {}
for t in cfg.gate.sequential.values():
    for s in suites:
        if s.name in t.suites:
            want[s.name] = evaluation_order(_item_ids(s), order_key(cfg.eval.seed, s.name))[:t.block]
home = tempfile.mkdtemp()
ms = ModelScores(champion().model_dir, "noop", cfg, home)
ms._load()
total = time.perf_counter()
for s in suites:
    current[0] = s.name
    t = time.perf_counter()
    ms.results([s], {s.name: want[s.name]} if s.name in want else None, progress=False)
    acc[(s.name, "total")] += time.perf_counter() - t
print(f"total {time.perf_counter() - total:.1f} s")
for s in suites:
    parts = {label: acc[(s.name, label)] for label in ("total", "prefill", "decode_step", "loglik")}
    print(f"{s.name:26s} " + "  ".join(f"{k} {v:6.2f}" for k, v in parts.items())
          + f"  steps {counts[(s.name, 'decode_step')]}  prefills {counts[(s.name, 'prefill')]}")
