"""Gate calibration from measured updates: how noisy is each suite, how big must it be, and does
the drift rule separate the updates it should?

Reads every `eval_report.json` under a data home's `updates/` (default: the recipes benchmark's,
`benchmarks/results/cache/recipes`: updates of tooluse, knowledge and triage by several recipes
from the safety champion, each scored on the same items as the champion). Per suite and update:
the share of discordant items (candidate and champion disagree) d and the paired 95% CI
half-width of Δ = candidate − champion (`metrics.retention`'s bootstrap). For binary suites the
half-width at n items is ≈ 1.96 √((d − Δ²) / n), so the size that brings it to `--target`
(0.04) is n ≈ 1.96² (d − Δ²) / target²; the table gives it for the noisiest update (max over
updates), which is what `configs/demo.yaml`'s `prior_sizes` should cover.

Drift: Δ of the drift suite (nats) per update and recipe, to set `rules.drift` so that the
updates the gate must reject fail and the chosen recipe passes, or to make it warn_only.

    .venv/bin/python benchmarks/gate_calibration.py [--home DIR] [--target 0.04]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
Z = 1.959964


def paired(report, suite: str) -> tuple[list[float], list[float]]:
    cand, ref = report.results[suite], report.reference_results[suite]
    by_id = dict(zip(ref.item_ids, ref.scores))
    return list(cand.scores), [by_id[i] for i in cand.item_ids]


def calibrate(home: Path, target: float) -> dict:
    from sdft_ops.evaluation.report import EvalReport

    suites: dict[str, list[dict]] = {}
    drift = []
    for path in sorted((home / "updates").glob("*/eval_report.json")):
        report, update = EvalReport.load(path), path.parent.name
        for suite, ret in report.retention.items():
            c, r = paired(report, suite)
            lo, hi = ret.difference_ci
            row = {"update": update, "n": len(c), "difference": ret.difference,
                   "half_width": (hi - lo) / 2}
            if report.results[suite].binary:
                d = statistics.fmean(float(a != b) for a, b in zip(c, r))
                row |= {"discordant": d,
                        "n_for_target": math.ceil(Z**2 * max(d - ret.difference**2, 0.0) / target**2)}
            suites.setdefault(suite, []).append(row)
            if suite == "drift":
                drift.append({"update": update, "difference": ret.difference,
                              "candidate": ret.candidate_score, "champion": ret.reference_score})
    summary = {}
    for suite, rows in sorted(suites.items()):
        s = {"updates": len(rows), "n": rows[0]["n"],
             "half_width_median": statistics.median(r["half_width"] for r in rows),
             "half_width_max": max(r["half_width"] for r in rows)}
        if "discordant" in rows[0]:
            s |= {"discordant_max": max(r["discordant"] for r in rows),
                  "n_for_target_max": max(r["n_for_target"] for r in rows)}
        summary[suite] = s
    return {"home": str(home), "target_half_width": target, "suites": summary,
            "drift": sorted(drift, key=lambda r: r["difference"]), "per_update": suites}


def markdown(out: dict) -> str:
    lines = ["# Gate calibration: suite noise and drift, from measured updates", "",
             __doc__.split("\n\n")[1].strip(), "",
             f"Target paired 95% CI half-width: {out['target_half_width']}.", "",
             "| suite | items now | updates | half-width median | half-width max | discordant max "
             "| items for the target |", "|---|---|---|---|---|---|---|"]
    for suite, s in out["suites"].items():
        disc = f"{s['discordant_max']:.3f}" if "discordant_max" in s else "—"
        need = str(s["n_for_target_max"]) if "n_for_target_max" in s else "—"
        lines.append(f"| {suite} | {s['n']} | {s['updates']} | {s['half_width_median']:.3f} | "
                     f"{s['half_width_max']:.3f} | {disc} | {need} |")
    lines += ["", "Drift Δ (nats, candidate − champion; the rule `max_drop: x` rejects Δ < −x):", "",
              "| update | Δ drift | candidate | champion |", "|---|---|---|---|"]
    lines += [f"| {r['update']} | {r['difference']:+.3f} | {r['candidate']:.3f} | {r['champion']:.3f} |"
              for r in out["drift"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=RESULTS / "cache" / "recipes")
    parser.add_argument("--target", type=float, default=0.04)
    args = parser.parse_args()
    out = calibrate(args.home, args.target)
    (RESULTS / "gate_calibration.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / "gate_calibration.md").write_text(markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()
