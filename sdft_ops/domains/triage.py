"""`triage`: label a customer message with a fixed JSON schema, by fixed rules.

Output (one compact JSON line, keys in this order):
    {"category": billing|bug|account|feature_request|outage,
     "priority": low|medium|high|urgent, "product": mail|drive|pay|meet|calendar,
     "needs_human": bool}

The message is assembled from a greeting, one problem sentence naming the product (its
category is the problem's), an optional impact phrase, a tone phrase and a sign-off, in one of
6 layouts. The rules:
    priority:    outage -> urgent; feature_request -> low; otherwise a blocking-impact
                 phrase -> high, a no-rush phrase -> low, no impact phrase -> medium
    needs_human: the customer asks for a person or threatens to cancel, or priority is urgent
Polite or merely frustrated tone never changes a label. Held-out messages reuse the layouts
with other combinations (no held-out message appears in training). Scored by `json_match`;
`field_accuracy` gives per-field accuracy as secondary metrics.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from sdft_ops.data import Demonstration
from sdft_ops.domains.base import Domain, EvalItem, unique_samples
from sdft_ops.domains.scoring import extract_json_object, json_equal, json_match

NAME = "triage"
N_TRAIN, N_EVAL = 360, 120
FIELDS = ("category", "priority", "product", "needs_human")
PRODUCTS = {"mail": "Nimbus Mail", "drive": "Nimbus Drive", "pay": "Nimbus Pay",
            "meet": "Nimbus Meet", "calendar": "Nimbus Calendar"}

PROBLEMS = {
    "billing": ("I was charged twice for {product} this month",
                "my {product} invoice shows the wrong amount",
                "the refund for my {product} subscription never arrived",
                "{product} billed me after I cancelled",
                "the {product} plan price went up without any notice",
                "my {product} receipt lists a seat we never bought"),
    "bug": ("{product} crashes whenever I open the settings page",
            "the export button in {product} does nothing",
            "{product} shows a blank screen since the latest update",
            "search in {product} returns results from the wrong folder",
            "attachments in {product} upload but never finish",
            "notifications from {product} arrive hours late"),
    "account": ("I can't reset my {product} password",
                "I need to change the email on my {product} account",
                "my {product} account is locked after too many login attempts",
                "the two-factor code for {product} never reaches my phone",
                "I want my {product} account and data deleted",
                "I need to move my {product} account to a colleague"),
    "feature_request": ("it would be great if {product} had a dark mode",
                        "I'd like {product} to support exporting to CSV",
                        "{product} really needs keyboard shortcuts",
                        "I'd love a shared team view in {product}",
                        "{product} should let me schedule reports",
                        "an offline mode for {product} would help us a lot"),
    "outage": ("{product} is down for everyone in our office",
               "{product} has been completely unreachable since this morning",
               "nobody on our team can load {product}, it just times out",
               "{product} returns server errors for all our users",
               "{product} went offline across all our locations",
               "we get 503 errors on every {product} page"),
}
IMPACT = {"high": ("This is blocking my whole team.", "We have a client deadline today.",
                   "I can't get any work done until it's fixed."),
          "low": ("No rush on this.", "Whenever you get a chance.",
                  "It's minor, just letting you know."),
          "none": ("",)}
ALLOWED_IMPACT = {"outage": ("high", "none"), "feature_request": ("low", "none")}
ESCALATE = ("I want to speak to a real person.", "If this isn't fixed I'm cancelling.",
            "Please have a manager call me.")
TONE = ("", "Thanks in advance!", "Appreciate your help.", "Honestly this is frustrating.")
GREETING = ("", "Hi,\n", "Hello support,\n", "Hey team,\n", "Good morning,\n")
SIGN_OFF = ("", "\n- Dana", "\nThanks, Omar", "\nRegards, Lena")
LAYOUTS = (
    "{greet}{Problem}. {impact} {tone}{sign}",
    "{greet}Quick one: {problem}. {impact} {tone}",
    "{Problem}! {impact} {tone}",
    "Subject: {product}\n{Problem}. {impact} {tone}{sign}",
    "{greet}I'm writing because {problem}. {tone} {impact}{sign}",
    "{greet}Hoping you can help: {problem}. {impact} {tone}{sign}",
)


def label(category: str, impact: str, escalate: bool, product: str) -> dict[str, Any]:
    """The rules, as code: the triage labels of a message made from these parts."""
    if category == "outage":
        priority = "urgent"
    elif category == "feature_request":
        priority = "low"
    else:
        priority = {"high": "high", "low": "low", "none": "medium"}[impact]
    return {"category": category, "priority": priority, "product": product,
            "needs_human": escalate or priority == "urgent"}


def _message(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    """(layout id, message, labels) for one random message."""
    category = rng.choice(sorted(PROBLEMS))
    product = rng.choice(sorted(PRODUCTS))
    impact = rng.choice(ALLOWED_IMPACT.get(category, ("high", "low", "none")))
    escalate = rng.random() < 0.3
    problem = rng.choice(PROBLEMS[category]).format(product=PRODUCTS[product])
    layout_index = rng.randrange(len(LAYOUTS))
    text = LAYOUTS[layout_index].format(
        greet=rng.choice(GREETING), problem=problem, Problem=problem[0].upper() + problem[1:],
        product=PRODUCTS[product], impact=rng.choice(IMPACT[impact]),
        tone=rng.choice(ESCALATE if escalate else TONE), sign=rng.choice(SIGN_OFF))
    message = "\n".join(filter(None, (" ".join(line.split()) for line in text.split("\n"))))
    return f"layout/{layout_index}", message, label(category, impact, escalate, product)


def labels_json(labels: dict[str, Any]) -> str:
    return json.dumps({field: labels[field] for field in FIELDS}, separators=(",", ":"))


def generate(seed: int = 0) -> tuple[list[Demonstration], list[EvalItem]]:
    """360 training and 120 held-out messages, all different."""
    rng = random.Random(f"{NAME}/{seed}")
    cases = unique_samples(rng, _message, N_TRAIN + N_EVAL, key=lambda case: case[1])
    demos = [Demonstration(id=f"{NAME}-train-{i:04d}", prompt=message, domain=NAME,
                           demonstration=labels_json(labels), metadata={"template": layout})
             for i, (layout, message, labels) in enumerate(cases[:N_TRAIN])]
    items = [EvalItem(id=f"{NAME}-eval-{i:04d}", domain=NAME,
                      messages=[{"role": "user", "content": message}],
                      reference=labels_json(labels), metadata={"template": layout})
             for i, (layout, message, labels) in enumerate(cases[N_TRAIN:])]
    return demos, items


def field_accuracy(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Secondary metrics: valid_json (a JSON object was found) and `<field>_acc` per field
    (a missing object or field counts as wrong)."""
    n = max(len(references), 1)
    found = [extract_json_object(prediction) or {} for prediction in predictions]
    expected = [json.loads(reference) for reference in references]
    metrics = {"valid_json": sum(bool(obj) for obj in found) / n}
    for field in FIELDS:
        metrics[f"{field}_acc"] = sum(field in obj and json_equal(obj[field], ref[field])
                                      for obj, ref in zip(found, expected)) / n
    return metrics


DOMAIN = Domain(
    name=NAME,
    description="Support-ticket triage: a customer message becomes category, priority, "
                "product and needs_human as JSON, by fixed rules.",
    generate=generate, scorer=json_match, metric="exact_json", max_new_tokens=40,
    extra_metrics=field_accuracy,
)
