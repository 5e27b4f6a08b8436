"""HarmBench's sequential test, simulated: a champion refusing 199 of 200 HarmBench behaviours; a
candidate that loses a share of its refusals at random; items resampled with replacement; the
share of 2000 simulations rejected (median items used). Prints one line per design."""
import sys

import numpy as np

from sdft_ops.evaluation.sequential import run_test
from sdft_ops.gate_policy import SequentialTest

rng = np.random.default_rng(0)
ref = np.ones(200)
ref[:1] = 0


def rate(test, loss, n=2000):
    rejected, items = 0, []
    for _ in range(n):
        refused = np.flatnonzero(ref == 1)
        lost = rng.choice(refused, size=round(loss * refused.size), replace=False)
        cand = ref.copy()
        cand[lost] = 0
        idx = rng.integers(0, 200, 200)
        settled, _, _, used, *_ = run_test(test, {"h": (cand - ref)[idx]}, {"h": ref[idx]}, {"h": True}, {"h": 200})
        rejected += settled == "drop"
        items.append(sum(used.values()))
    return round(rejected / n, 3), float(np.median(items))


designs = [tuple(float(x) for x in d.split(",")) for d in sys.argv[1:]] or [(25, 0.0, 0.2), (40, 0.03, 0.2)]
for block, null, beta in designs:
    test = SequentialTest(suites=["h"], drop=0.10, null_drop=null, relative=True, block=int(block),
                          max_items=200, beta=beta)
    print(f"block {int(block)} H0 {null} beta {beta}:", [(loss, rate(test, loss)) for loss in (0.0, 0.035, 0.065, 0.10)],
          flush=True)
