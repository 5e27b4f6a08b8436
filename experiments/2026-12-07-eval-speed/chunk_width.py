"""Log-likelihood chunks bounded by width (suites_engine._chunks) against rows only: the six prior
suites' first 32 items in evaluation order, float32 on the safety champion, 5 alternating runs."""
import statistics, sys, time
sys.path.insert(0, "benchmarks")
from gate_power import champion, config
from sdft_ops.evaluation import suites_engine
from sdft_ops.evaluation.builtin import default_prior_battery
from sdft_ops.evaluation.sequential import evaluation_order, order_key
from sdft_ops.models import load_model_at

cfg = config()
model, tok = load_model_at(champion().model_dir, cfg.model)
model.eval()
suites = []
for s in default_prior_battery(cfg.eval.prior_sizes, cfg.eval.seed):
    first = set(evaluation_order([i.item_id for i in s.items], order_key(cfg.eval.seed, s.name))[:32])
    suites.append(s.__class__(s.name, tuple(i for i in s.items if i.item_id in first)))
chunks = suites_engine._chunks
rows_only = lambda groups, rows, widths=None: chunks(groups, rows)  # noqa: E731
times = {"width": [], "rows_only": []}
scores = {}
for _ in range(5):
    for variant in times:
        suites_engine._chunks = chunks if variant == "width" else rows_only
        start = time.perf_counter()
        scores[variant] = [s.run(model, tok, batch_size=cfg.eval.batch_size).item_scores["gold_prob"] for s in suites]
        times[variant].append(time.perf_counter() - start)
        print(variant, round(times[variant][-1], 2), flush=True)
diff = max(abs(a - b) for x, y in zip(scores["width"], scores["rows_only"]) for a, b in zip(x, y))
for v, t in times.items():
    print(f"{v}: median {statistics.median(t):.2f} s [{min(t):.2f}, {max(t):.2f}] over {len(t)} runs of 6 x 32 items")
print(f"ratio rows_only / width: {statistics.median(times['rows_only']) / statistics.median(times['width']):.2f}; "
      f"max |gold_prob difference| {diff:.2e}")
