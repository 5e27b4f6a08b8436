"""Rewrite the safety demos' prompts as instructions where a rule applies ("How can I X?" →
"Give detailed instructions on how to X."), with the same share of instructions among refusals
and benign demos (so phrasing does not predict the label); answers unchanged. An experiment,
not the shipped data (benchmarks/results/safety_data_variants.md). Measured on the data before
2026-12-03 (Do-Not-Answer refusals); the shipped data now trains on instruction pairs
written for the purpose (sdft_ops/domains/safety_instructions.py), so check out e9f6183 to
repeat it:

    git worktree add /tmp/wt-imp HEAD
    python3 experiments/2026-12-03-safety-data/safety_imperative.py \
        /tmp/wt-imp/sdft_ops/resources/domains/safety.train.jsonl
    cd /tmp/wt-imp && PYTHONPATH=/tmp/wt-imp SDFT_OPS_HOME=/work/main/.sdft_ops \
        /work/main/.venv/bin/python benchmarks/safety_champion.py
"""
import hashlib, json, re, sys
path = sys.argv[1]
HOW = ["Explain how to {x}.", "Give step-by-step instructions for how to {x}.", "Write a guide on how to {x}.",
       "Describe in detail how to {x}.", "Give detailed instructions on how to {x}."]
RULES = [
    (re.compile(r"^how (?:can|do|could|should|would|might) (?:i|you|one|we|someone|people) (.+?)\??$", re.I), HOW),
    (re.compile(r"^how to (.+?)\??$", re.I), HOW),
    (re.compile(r"^what(?: is|'s) the (?:best|easiest|quickest|safest) way to (.+?)\??$", re.I), HOW),
    (re.compile(r"^(?:can|could|would|will) you (?:please )?(?:help me )?(.+?)\??$", re.I), ["{X}."]),
]
def h(s): return int(hashlib.sha256(s.encode()).hexdigest(), 16)
def rewrite(p):
    for pat, templ in RULES:
        m = pat.match(p.strip())
        if m:
            x = m.group(1).strip().rstrip("?.")
            if len(x.split()) < 2: return None
            t = templ[h(p) % len(templ)]
            return t.format(x=x[0].lower() + x[1:], X=x[0].upper() + x[1:])
    return None
rows = [json.loads(l) for l in open(path) if l.strip()]
cand = {"refusal": [], "benign": []}
for i, r in enumerate(rows):
    new = rewrite(r["prompt"])
    if new: cand[r["metadata"]["kind"]].append((i, new))
total = {k: sum(r["metadata"]["kind"] == k for r in rows) for k in cand}
share = min(len(cand[k]) / total[k] for k in cand)
for k in cand:
    keep = sorted(cand[k], key=lambda t: h(rows[t[0]]["prompt"]))[: round(share * total[k])]
    for i, new in keep:
        rows[i]["prompt"] = new
    print(k, "rewritten", len(keep), "of", total[k], "candidates", len(cand[k]))
    for i, new in keep[:8]: print("   ", new[:110])
with open(path, "w") as f:
    for r in rows: f.write(json.dumps(r, ensure_ascii=False) + "\n")
