"""Gate power: what a candidate's evaluation costs, how many items each decision takes, how often
the gate rejects a candidate that lost nothing, and how often it catches a real drop.

Models: `benchmarks/recipes.py`'s data home (benchmarks/results/cache/recipes). The reference is
its safety champion (`updates/safety/model`); the candidates (`CANDIDATES`) were trained from it:
the champion itself re-registered (a literal no-op), the recipe chosen per domain by recipes.py
(`CHOSEN`, from recipes.json; tooluse's is configs/demo.yaml's) on tooluse and on triage, seeds
0 and 1, the rushed SFT update (16 steps, lr 1e-4, no replay) and a damaging SFT at lr 3e-3.
Train them first: `benchmarks/recipes.py --recipes sft sft-lr3e-3 <CHOSEN> <CHOSEN>-seed1
--domains tooluse triage` (the rushed ones are read on tooluse only).

1. Timed (`--time`): each candidate's whole evaluation as the demo's gate runs it:
   configs/demo.yaml's eval and configs/gate.yaml's policy, every suite of the chain's last
   domain step (prior pools, HarmBench, benign look-alikes, IFEval-like, drift, domain/safety,
   domain/tooluse, domain/triage). The champion was scored beforehand (its per-item scores are
   cached, as in the chain); the candidate's cache is emptied first. Decisions by `gate.decide`.
   demo.yaml sets `eval.stop_at_first_reject`: a candidate whose HarmBench or benign test
   settles a drop is not scored on the other suites (its verdict cannot change).
2. Pools: the champion and the chosen recipe's candidates scored on every item of the
   sequential tests' suites (128 per prior suite, HarmBench's 200, the 108 benign), cached per
   item.
3. Simulations (`evaluation.sequential.run_test`, the gate's own code), `SIMULATIONS` each, items
   drawn with replacement from the measured per-item data, in a random order:
   - prior composite, no drop: the chosen recipe's candidates' paired gold_prob differences,
     centred per suite (true Δ = 0); drop: the same shifted by −0.05.
   - HarmBench (H0: 5% of the champion's refusals lost, H1: 10%): the chosen recipe's
     candidates as measured (each keeps ≥ 90%, so a reject there is a miss of the recipe's bar,
     though not of the test's H0); a no-drop world: the champion's own refusals (every refusal
     kept, as a no-op); a 10% relative drop: the champion's refusals with a random tenth of them
     lost per simulation.
   - benign compliance: the champion's own answers (no drop) and the chosen recipe's candidates.
   `noop_false_reject`: a no-op rejected by any of the three tests (1 − the product of their
   pass rates in their no-drop worlds).
4. Refusal detection: the HarmBench and benign answers cut at the suite's `max_new_tokens`
   against 32-token answers (the earlier length), per model: agreement of the refusal label.
   And the continuous signal the safety suites could use, the log-prob margin of a fixed
   refusal over a fixed compliant opening (`SafetySuite.loglik_margins`): its AUC against the
   32-token refusal labels, per model (used only if it ranks them well).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/gate_power.py [--time] [--pools] [--simulate] [--refusal] [--report]
    (no flag: all steps; results in benchmarks/results/gate_power.json and .md)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RECIPES_HOME = RESULTS / "cache" / "recipes"
HOME = RESULTS / "cache" / "gate_power"
# the recipe chosen per domain by benchmarks/recipes.py (tooluse's is configs/demo.yaml's)
CHOSEN = {d: c["recipe"] for d, c in
          json.loads((RESULTS / "recipes.json").read_text())["chosen"]["by_domain"].items()}
# update id in the recipes home → (domain, expected verdict, what it is)
CANDIDATES = {
    "safety": ("safety", "promote", "no-op: the champion re-registered"),
    **{f"{d}--{CHOSEN[d]}{suffix}": (d, "promote", f"the chosen recipe on {d} (seed {seed})")
       for d in ("tooluse", "triage") for seed, suffix in ((0, ""), (1, "-seed1"))},
    "tooluse--sft": ("tooluse", "reject", "rushed SFT (16 steps, lr 1e-4, no replay)"),
    "tooluse--sft-lr3e-3": ("tooluse", "reject", "damaging SFT (lr 3e-3)"),
}
GOOD = [u for u, (_, expected, _) in CANDIDATES.items() if expected == "promote" and u != "safety"]
CHAIN_DOMAINS = ("safety", "tooluse", "triage")
SIMULATIONS = 2000
FULL_REFUSAL_TOKENS = 32


def config():
    from sdft_ops.settings import UpdateConfig

    return UpdateConfig.from_yaml(ROOT / "configs" / "demo.yaml")


def model_dir(update_id: str) -> str:
    return str(RECIPES_HOME / "updates" / update_id / "model")


def chain_suites(cfg):
    """Every suite the demo's gate reads at the chain's last domain step."""
    from sdft_ops.evaluation.battery import shipped_domain_suite, suites_for

    base = [s for s in suites_for(cfg, HOME) if not s.name.startswith("domain/")]
    return base + [shipped_domain_suite(d, cfg) for d in CHAIN_DOMAINS]


def champion():
    from sdft_ops.update_state import Parent

    return Parent(version="1", model_dir=model_dir("safety"), ref="champion:safety")


def sequential_suites(cfg, suites):
    names = {s for t in cfg.gate.sequential.values() for s in t.suites}
    return [s for s in suites if s.name in names]


def timed(cfg) -> dict:
    """Step 1: each candidate's whole evaluation, champion cached; its gate decision."""
    from sdft_ops.evaluation.battery import ModelScores, _cache_path, evaluate_candidate
    from sdft_ops.evaluation.sequential import sprt
    from sdft_ops.gate import decide

    suites, parent = chain_suites(cfg), champion()
    ModelScores(parent.model_dir, parent.ref, cfg, HOME).results(suites)  # the champion, cached
    runs = []
    for update_id, (domain, expected, what) in CANDIDATES.items():
        ref = f"candidate:{update_id}"
        shutil.rmtree(_cache_path(HOME, ref, suites[0]).parent, ignore_errors=True)  # scored afresh
        start = time.perf_counter()
        suites = chain_suites(cfg)  # building the suites (reading the benchmark data) is timed too
        built = time.perf_counter() - start
        report = evaluate_candidate(Path(model_dir(update_id)), ref, parent, suites, cfg, HOME)
        seconds = time.perf_counter() - start
        decision = decide(report, cfg.gate, parent_version="1", champion_version="1", new_domain=domain)
        outcomes = {name: sprt(name, test, report.results, report.reference_results, seed=cfg.eval.seed)
                    for name, test in cfg.gate.sequential.items()}
        runs.append({"update": update_id, "what": what, "expected": expected, "decided": decision.verdict,
                     "seconds": seconds, "suites_build_seconds": built, "reasons": decision.reasons,
                     "tests": {k: o.model_dump(mode="json") if o else None for k, o in outcomes.items()},
                     "stopped_early": report.stopped_early,
                     "suite_seconds": {k: round(r.seconds, 2) for k, r in report.results.items()}})
        print(f"{update_id:<60} {seconds:6.1f} s  {decision.verdict:<8} (expected {expected})  "
              + "  ".join(f"{k}: {o.settled} at {sum(o.items.values())} items" if o else f"{k}: not scored"
                          for k, o in outcomes.items()),
              flush=True)
    return {"runs": runs}


def pools(cfg) -> dict:
    """Step 2: per-item scores of every model on every item of the sequential suites."""
    from sdft_ops.evaluation.battery import ModelScores

    suites = sequential_suites(cfg, chain_suites(cfg))
    out = {}
    for update_id in ["champion", *GOOD]:  # the simulations' data; the others' decisions are timed
        folder, ref = ((champion().model_dir, champion().ref) if update_id == "champion"
                       else (model_dir(update_id), f"candidate:{update_id}"))
        results = ModelScores(folder, ref, cfg, HOME).results(suites)
        out[update_id] = {name: {"ids": list(r.item_ids), "scores": list(r.scores),
                                 "gold_prob": list(r.item_scores.get("gold_prob", ()))}
                          for name, r in results.items()}
    return out


def simulate(cfg, data: dict, rng: np.random.Generator) -> dict:
    """Step 3: error rates of the two sequential tests on resampled measured data."""
    from sdft_ops.evaluation.sequential import run_test

    composite, harmbench = cfg.gate.sequential["prior_composite"], cfg.gate.sequential["harmbench_refusal"]

    def paired(update_id, suite, key):
        cand, ref = data[update_id][suite], data["champion"][suite]
        by_id = dict(zip(ref["ids"], ref[key]))
        c = np.asarray(cand[key])
        return c - np.asarray([by_id[i] for i in cand["ids"]]), np.asarray([by_id[i] for i in cand["ids"]])

    def rate(draw, test, binary) -> tuple[float, dict]:
        rejected, items = 0, []
        for _ in range(SIMULATIONS):
            diffs, refs = draw()
            settled, _, _, used, *_ = run_test(
                test, diffs, refs, {s: binary for s in diffs}, {s: d.size for s, d in diffs.items()})
            rejected += settled == "drop"
            items.append(sum(used.values()))
        return rejected / SIMULATIONS, {"median": float(np.median(items)), "p90": float(np.percentile(items, 90))}

    def resample(arrays):
        out_d, out_r = {}, {}
        for suite, (d, r) in arrays.items():
            idx = rng.integers(0, d.size, size=d.size)
            out_d[suite], out_r[suite] = d[idx], r[idx]
        return out_d, out_r

    prior = {u: {s: paired(u, s, "gold_prob") for s in composite.suites} for u in GOOD}
    centred = {u: {s: (d - d.mean(), r) for s, (d, r) in v.items()} for u, v in prior.items()}
    null = [rate(lambda v=v: resample(v), composite, False) for v in centred.values()]
    shifted = [rate(lambda v=v: resample({s: (d - composite.drop, r) for s, (d, r) in v.items()}),
                    composite, False) for v in centred.values()]
    hb = {u: paired(u, "safety_refusal", "scores") for u in GOOD}
    hb_good = [rate(lambda p=p: resample({"safety_refusal": p}), harmbench, True) for p in hb.values()]
    ref_refused = np.asarray(data["champion"]["safety_refusal"]["scores"])

    def ten_percent_lost():
        refused = np.flatnonzero(ref_refused == 1.0)
        lost = rng.choice(refused, size=round(harmbench.drop * refused.size), replace=False)
        cand = ref_refused.copy()
        cand[lost] = 0.0
        return resample({"safety_refusal": (cand - ref_refused, ref_refused)})

    hb_power = rate(ten_percent_lost, harmbench, True)
    hb_null = rate(lambda: resample({"safety_refusal": (ref_refused * 0.0, ref_refused)}), harmbench, True)
    benign = cfg.gate.sequential["benign_compliance"]
    ref_answered = np.asarray(data["champion"]["safety_benign_compliance"]["scores"])
    benign_null = rate(lambda: resample({"safety_benign_compliance": (ref_answered * 0.0, ref_answered)}),
                       benign, True)
    benign_good = [rate(lambda p=p: resample({"safety_benign_compliance": p}), benign, True)
                   for p in (paired(u, "safety_benign_compliance", "scores") for u in GOOD)]
    measured = {u: {"composite_difference": float(np.mean([prior_d.mean() for prior_d, _ in
                                                           (paired(u, s, "gold_prob") for s in composite.suites)])),
                    "accuracy_difference": float(np.mean([paired(u, s, "scores")[0].mean() for s in composite.suites])),
                    "harmbench_retention": float(np.mean(data[u]["safety_refusal"]["scores"]) / ref_refused.mean())}
                for u in GOOD}
    return {
        "prior_composite": {
            "null_false_reject": statistics.fmean(r for r, _ in null),
            "null_items": [i for _, i in null],
            "power_drop": statistics.fmean(r for r, _ in shifted), "drop_items": [i for _, i in shifted],
            "per_candidate": {u: {"null": n[0], "power": p[0]} for u, n, p in zip(GOOD, null, shifted)}},
        "harmbench_refusal": {
            "chosen_recipe_false_reject": statistics.fmean(r for r, _ in hb_good),
            "chosen_recipe_items": [i for _, i in hb_good],
            "power_drop": hb_power[0], "drop_items": hb_power[1],
            "null_false_reject": hb_null[0], "null_items": hb_null[1]},
        "benign_compliance": {
            "null_false_reject": benign_null[0], "null_items": benign_null[1],
            "chosen_recipe_false_reject": statistics.fmean(r for r, _ in benign_good),
            "chosen_recipe_items": [i for _, i in benign_good]},
        "measured_pools": measured,
    }


def refusal_detection(cfg) -> dict:
    """Step 4: refusal labels from answers cut at the suite's length vs 32-token answers."""
    from dataclasses import replace

    from sdft_ops.evaluation.builtin import default_safety_suites
    from sdft_ops.evaluation.suites_safety import is_refusal
    from sdft_ops.engine.sampling import greedy_generate
    from sdft_ops.models import load_model_at

    suites = default_safety_suites()
    short = suites[0].max_new_tokens
    rows, auc, agree, total = {}, {}, 0, 0
    for update_id in ["champion", *[u for u in CANDIDATES if u != "safety"]]:
        folder = champion().model_dir if update_id == "champion" else model_dir(update_id)
        model, tokenizer = load_model_at(folder, cfg.model)
        same = n = 0
        labels, margins = [], []
        for suite in suites:
            prompts = replace(suite)._prompts(tokenizer)
            full = greedy_generate(model, tokenizer, prompts, FULL_REFUSAL_TOKENS, 128)
            cut = greedy_generate(model, tokenizer, prompts, short, 128)
            same += sum(is_refusal(a) == is_refusal(b) for a, b in zip(full, cut))
            n += len(prompts)
            labels += [is_refusal(a) for a in full]
            margins += suite.loglik_margins(model, tokenizer, cfg.eval.batch_size)
        rows[update_id] = same / n
        auc[update_id] = _auc(margins, labels)
        agree, total = agree + same, total + n
    return {"tokens": short, "full_tokens": FULL_REFUSAL_TOKENS, "agreement": agree / total,
            "items": total, "per_model": rows, "loglik_margin_auc": auc}


def _auc(scores: list[float], labels: list[bool]) -> float | None:
    """P(margin of a refused answer > margin of an answered one): how well the continuous
    refusal-vs-compliance log-prob margin ranks the phrase detector's labels (None: one class)."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def write(out: dict) -> None:
    (RESULTS / "gate_power.json").write_text(json.dumps(out, indent=1))
    runs = out["timing"]["runs"]
    lines = ["# Gate power: error rates, items per decision, seconds per candidate", "",
             __doc__.split("\n\n")[0].replace("\n", " "), "",
             f"Machine: {out['machine']}. Command: `{out['command']}`.", "",
             f"**Seconds per candidate** (whole evaluation, champion cached): median "
             f"{out['seconds_per_candidate']['median']:.1f}, min {out['seconds_per_candidate']['min']:.1f}, "
             f"max {out['seconds_per_candidate']['max']:.1f} over {out['seconds_per_candidate']['runs']} candidates. "
             "A candidate whose safety test settles a drop stops there (`eval.stop_at_first_reject`); "
             "the candidates scored on every suite took "
             + ", ".join(f"{r['seconds']:.1f}" for r in runs if not r.get("stopped_early")) + " s. "
             f"**Promoted candidates: median {out['seconds_per_promoted_candidate']['median']:.1f} s** "
             f"over {out['seconds_per_promoted_candidate']['runs']}.",
             "", f"**False reject of a no-op candidate: {out['noop_false_reject']:.3f}**; power at a 0.05 "
             f"composite prior drop **{out['power']['prior_composite_drop_0.05']:.3f}**, at a 10% relative "
             f"HarmBench refusal drop **{out['power']['harmbench_relative_drop_0.10']:.3f}** "
             f"({SIMULATIONS} simulations each).", "",
             "| candidate | expected | decided | seconds | prior composite | HarmBench | reasons |",
             "|---|---|---|---:|---|---|---|"]
    for r in runs:
        t = r["tests"]
        cell = lambda o: (f"{o['settled']} at {sum(o['items'].values())} items, Δ {o['difference']:+.3f}"  # noqa: E731
                          if o else "—")
        lines.append(f"| {r['what']} | {r['expected']} | **{r['decided']}** | {r['seconds']:.1f} | "
                     f"{cell(t.get('prior_composite'))} | {cell(t.get('harmbench_refusal'))} | "
                     f"{'; '.join(r['reasons'])[:300]} |")
    sim = out["simulations"]
    lines += ["", "Simulations (resampled measured per-item data):", "",
              "| test | world | reject rate | items (median, p90) |", "|---|---|---:|---|"]
    pc, hb = sim["prior_composite"], sim["harmbench_refusal"]
    spans = lambda items: ", ".join(f"({i['median']:.0f}, {i['p90']:.0f})" for i in items)  # noqa: E731
    for test, world, r, items in (
            ("prior composite", "no drop (chosen recipe's differences, centred)", pc["null_false_reject"],
             pc["null_items"]),
            ("prior composite", "drop of 0.05 (the same, shifted)", pc["power_drop"], pc["drop_items"]),
            ("HarmBench refusal", "no drop (the champion's own refusals)", hb["null_false_reject"],
             [hb["null_items"]]),
            ("HarmBench refusal", "chosen recipe's candidates as measured", hb["chosen_recipe_false_reject"],
             hb["chosen_recipe_items"]),
            ("HarmBench refusal", "10% of the champion's refusals lost", hb["power_drop"], [hb["drop_items"]]),
            ("benign compliance", "no drop (the champion's own answers)", sim["benign_compliance"]["null_false_reject"],
             [sim["benign_compliance"]["null_items"]]),
            ("benign compliance", "chosen recipe's candidates as measured",
             sim["benign_compliance"]["chosen_recipe_false_reject"], sim["benign_compliance"]["chosen_recipe_items"])):
        lines.append(f"| {test} | {world} | {r:.3f} | {spans(items)} |")
    lines += ["", "Measured pools (every item; candidate − champion):", "",
              "| candidate | gold_prob composite Δ | accuracy Δ (mean of suites) | HarmBench retention |",
              "|---|---:|---:|---:|"]
    for u, m in sim["measured_pools"].items():
        lines.append(f"| {CANDIDATES[u][2]} | {m['composite_difference']:+.4f} | {m['accuracy_difference']:+.4f} "
                     f"| {m['harmbench_retention']:.3f} |")
    rd = out["refusal_detection"]
    lines += ["", f"Refusal detection: answers cut at {rd['tokens']} tokens agree with {rd['full_tokens']}-token "
              f"answers on **{rd['agreement']:.3f}** of {rd['items']} (model, prompt) pairs "
              f"({', '.join(f'{k} {v:.3f}' for k, v in rd['per_model'].items())}).", "",
              "The log-prob margin of a fixed refusal over a fixed compliant opening, as a continuous "
              "refusal score: its AUC against the refusal labels per model "
              f"({', '.join(f'{k} ' + (f'{v:.3f}' if v is not None else 'n/a') for k, v in rd['loglik_margin_auc'].items())}).",
              ""]
    (RESULTS / "gate_power.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--time", action="store_true")
    parser.add_argument("--pools", action="store_true")
    parser.add_argument("--simulate", action="store_true")
    parser.add_argument("--refusal", action="store_true", help="step 4 (float32, as loaded)")
    parser.add_argument("--report", action="store_true", help="only rewrite the results from the "
                        "steps already run (cached in the benchmark's data home)")
    args = parser.parse_args()
    from sdft_ops.engine.precision import bf16_is_fast

    every = not (args.time or args.pools or args.simulate or args.refusal or args.report)
    cfg = config()
    partial = HOME / "partial.json"
    HOME.mkdir(parents=True, exist_ok=True)
    out = json.loads(partial.read_text()) if partial.is_file() else {}
    if args.time or every:
        out["timing"] = timed(cfg)
    if args.pools or every:
        out["pools"] = pools(cfg)
    if args.refusal or every:
        out["refusal_detection"] = refusal_detection(cfg)
    if args.simulate or every:
        out["simulations"] = simulate(cfg, out["pools"], np.random.default_rng(0))
    partial.write_text(json.dumps(out))
    if not {"timing", "simulations", "refusal_detection"} <= set(out):
        return
    runs, sim = out["timing"]["runs"], out["simulations"]
    seconds = [r["seconds"] for r in runs]
    promoted = [r["seconds"] for r in runs if r["decided"] == "promote"]
    items: dict[str, list[int]] = {}
    for r in runs:
        for o in r["tests"].values():
            for suite, n in (o or {}).get("items", {}).items():
                items.setdefault(suite, []).append(n)
    result = {
        "seconds_per_candidate": {"median": statistics.median(seconds), "min": min(seconds),
                                  "max": max(seconds), "runs": len(seconds)},
        # the ones a stop at the first settled reject cannot shorten: every suite is scored
        "seconds_per_promoted_candidate": {"median": statistics.median(promoted), "min": min(promoted),
                                           "max": max(promoted), "runs": len(promoted)},
        "noop_false_reject": 1.0 - math.prod(1.0 - sim[t]["null_false_reject"] for t in
                                             ("prior_composite", "harmbench_refusal", "benign_compliance")),
        "power": {"prior_composite_drop_0.05": sim["prior_composite"]["power_drop"],
                  "harmbench_relative_drop_0.10": sim["harmbench_refusal"]["power_drop"]},
        "items_per_decision": {s: int(statistics.median(v)) for s, v in items.items()},
        "decisions": [{"update": r["update"], "expected": r["expected"], "decided": r["decided"]} for r in runs],
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, run alone, "
                   + ("bf16 autocast (native bf16)" if bf16_is_fast("cpu") else "float32 (no native bf16)"),
        "command": "OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/gate_power.py",
        "timing": out["timing"], "simulations": sim, "refusal_detection": out["refusal_detection"],
    }
    write(result)
    print(json.dumps({k: result[k] for k in ("seconds_per_candidate", "noop_false_reject", "power",
                                             "items_per_decision", "decisions")}, indent=1))


if __name__ == "__main__":
    main()
