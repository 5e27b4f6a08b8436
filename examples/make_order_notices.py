"""Writes `order_notices.jsonl`: the demo's "rushed" update, a new support format.

A customer-support team wants one-line order notices, `NOTICE | order <id> | <product> x<qty> |
<status>`, from free-text order messages. Synthetic (seeded), 60 demonstrations in the user file
format (`sdft_ops.data`); the pipeline holds out 20% for the domain's exact-match suite. The
format is learnable from the prompt alone, so the held-out score measures learning, not recall.

    python examples/make_order_notices.py
"""

import json
import random
from pathlib import Path

PRODUCTS = ["Nimbus Hub", "Nimbus Cam", "Nimbus Plug", "Nimbus Lock", "Nimbus Bulb",
            "Nimbus Sensor", "Nimbus Bell", "Nimbus Thermo", "Nimbus Siren", "Nimbus Remote"]
STATUSES = ["shipped", "delayed", "cancelled", "delivered", "refunded", "on hold"]
TEMPLATES = [
    "Order {id} ({qty} x {product}) is now {status}. Write the notice line.",
    "Customer message: my order {id} for {qty} units of {product} shows '{status}'. Notice line?",
    "Write the order notice: order number {id}, product {product}, quantity {qty}, status {status}.",
    "Status update for order {id}: {status}. It contains {qty} {product}. Give the notice.",
]


def main() -> None:
    rng = random.Random(20261202)
    lines = []
    for i in range(60):
        fields = {"id": rng.randint(1000, 9999), "qty": rng.randint(1, 9),
                  "product": rng.choice(PRODUCTS), "status": rng.choice(STATUSES)}
        lines.append(json.dumps({
            "id": f"notice-{i:02d}", "domain": "order_notices",
            "prompt": TEMPLATES[i % len(TEMPLATES)].format(**fields),
            "demonstration": "NOTICE | order {id} | {product} x{qty} | {status}".format(**fields)}))
    (Path(__file__).parent / "order_notices.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
