"""Teacher ceiling of each teacher-context preset on each shipped domain (SmolLM2-135M-Instruct).

The teacher's greedy answer with the demonstration in its context, scored by the domain's
scorer against the demonstration's reference, on a seeded sample of training demonstrations;
and the student's answer without it. SDFT cannot teach beyond this ceiling, so the demo config
uses the best preset. `python benchmarks/teacher_ceiling.py [--n 32]` writes
benchmarks/results/teacher_ceiling.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sdft_ops.domains import DOMAINS, load_shipped, reference_for
from sdft_ops.engine import TeacherContext
from sdft_ops.engine.ceiling import teacher_ceiling
from sdft_ops.models import ModelSpec, load_model

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = {
    "paper": TeacherContext(preset="paper"),
    "previous_turn": TeacherContext(preset="previous_turn"),
    "repeat": TeacherContext(preset="custom", template="{question}\n\nThe correct answer is: "
                             "{demonstration}\nRepeat it exactly."),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=32, help="demonstrations sampled per domain")
    args = parser.parse_args()
    model, tokenizer = load_model(ModelSpec())
    rows, started = [], time.perf_counter()
    for name, domain in DOMAINS.items():
        demos = load_shipped(name)[0].records
        for preset, context in PRESETS.items():
            report = teacher_ceiling(model, tokenizer, demos, domain.scorer, context,
                                     reference=reference_for, sample_size=args.n,
                                     max_new_tokens=domain.max_new_tokens, floor=0.0)
            rows.append({"domain": name, "preset": preset, "n": report.n,
                         "teacher": report.teacher_score, "student": report.student_score,
                         "examples": report.examples[:2]})
            print(f"{name:>10} {preset:>14}: teacher {report.teacher_score:.2f}  "
                  f"student {report.student_score:.2f}", flush=True)
    best = {d: max((r for r in rows if r["domain"] == d), key=lambda r: r["teacher"])["preset"]
            for d in DOMAINS}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "teacher_ceiling.json").write_text(json.dumps(
        {"model": "smollm2-135m-instruct", "n_per_domain": args.n, "rows": rows, "best": best,
         "seconds": time.perf_counter() - started}, indent=1))
    lines = ["# Teacher ceiling per context preset (SmolLM2-135M-Instruct, greedy)", "",
             f"{args.n} training demonstrations per domain (seeded sample); score = the domain's "
             "scorer on the teacher's answer with the demonstration in context; `student` = the "
             "same model without it. `python benchmarks/teacher_ceiling.py`.", "",
             "| domain | " + " | ".join(PRESETS) + " | student | best |",
             "|---|" + "---|" * (len(PRESETS) + 2)]
    for d in DOMAINS:
        cells = [f"{r['teacher']:.2f}" for r in rows if r["domain"] == d]
        student = next(r["student"] for r in rows if r["domain"] == d)
        lines.append(f"| {d} | " + " | ".join(cells) + f" | {student:.2f} | {best[d]} |")
    (RESULTS / "teacher_ceiling.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
