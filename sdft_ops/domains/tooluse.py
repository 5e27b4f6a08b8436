"""`tooluse`: turn a user request into one JSON call of the fictional Nimbus ops API.

The prompt is only the user's request (no tool list: the schema is what the model learns);
every request names all argument values, so exactly one call is right. The demonstration is
one compact JSON line `{"tool": ..., "arguments": {...}}` with argument keys in schema order;
optional arguments appear only when the request asks for them.

    create_ticket(title: str, team: network|billing|hardware|access,
                  priority: low|normal|high|critical, notify_oncall?: bool)
    lookup_order(order_id: str "NB-123456", include_history?: bool)
    schedule_meeting(title: str, date: "YYYY-MM-DD", start_time: "HH:MM",
                     duration_minutes: int, attendees: list[str] (1-2 names))
    convert_currency(amount: number, from_currency: USD|EUR|GBP|JPY|CHF|CAD, to_currency: ...)
    get_weather(city: str, days: int 2-7, units?: metric|imperial)

Each tool has 6 request templates; values come from pools. Every call (tool + arguments) is
drawn once, so held-out items reuse templates but never a training call. Scored by
`json_match` (the first JSON object in the answer equals the reference call).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Callable, Sequence
from typing import Any

from sdft_ops.data import Demonstration
from sdft_ops.domains.base import Domain, EvalItem, unique_samples
from sdft_ops.domains.scoring import extract_json_object, json_match

NAME = "tooluse"
TRAIN_PER_TOOL, EVAL_PER_TOOL = 72, 24
Case = tuple[str, str, str, dict[str, Any]]  # (tool, template id, request, arguments)

TICKET_TEMPLATES = (
    'Open a {priority} priority ticket for the {team} team: "{title}".',
    'Please file a ticket with {team}, priority {priority}, titled "{title}".',
    'Can you create a {priority}-priority {team} ticket called "{title}"?',
    'New ticket for the {team} team please. Title: "{title}". Priority: {priority}.',
    'Log an issue "{title}" with the {team} team at {priority} priority.',
    'I need a ticket raised for {team}: "{title}", {priority} priority.',
)
TICKET_TITLES = {
    "network": ("VPN drops every hour", "Wi-Fi slow in meeting room B", "DNS errors on staging",
                "Firewall blocks the build server", "Switch in rack 4 overheating"),
    "billing": ("Duplicate charge on March invoice", "Invoice PDF shows wrong VAT",
                "Refund not applied to account 2291", "Expense report stuck in approval",
                "Card declined on annual renewal"),
    "hardware": ("Laptop battery swelling", "Monitor flickers after update",
                 "Printer on floor 3 jams", "Docking station not detected",
                 "Keyboard missing two keys"),
    "access": ("New hire needs badge access", "SSO login loops endlessly",
               "Cannot open shared finance folder", "Contractor account expired early",
               "Reset MFA for a returning employee"),
}
ONCALL = ("Page the on-call engineer too.", "And notify on-call.",
          "Please alert the on-call person as well.")

ORDER_TEMPLATES = (
    "Where is order {order_id}?", "Can you look up order {order_id} for me?",
    "Check the status of order number {order_id}.", "What's going on with my order {order_id}?",
    "Pull up order {order_id}, please.", "I'd like an update on order {order_id}.",
)
HISTORY = ("Include the full shipping history.", "Show me its tracking history too.",
           "I also want the history of status changes.")

MEETING_TEMPLATES = (
    'Schedule "{title}" on {date} at {time} for {minutes} minutes with {people}.',
    'Book a {minutes}-minute meeting called "{title}" with {people} on {date} at {time}.',
    'Set up a meeting with {people}: "{title}", {date} {time}, {minutes} min.',
    'Can you put "{title}" in the calendar for {date} at {time}? {minutes} minutes, '
    "invite {people}.",
    'Please arrange a {minutes} minute "{title}" session on {date}, starting {time}, '
    "attendees {people}.",
    'Add a meeting on {date} at {time} named "{title}" ({minutes} minutes) with {people}.',
)
MEETING_TITLES = ("Q3 planning", "Design review", "Budget sync", "Onboarding chat",
                  "Incident retro", "Roadmap check-in", "Vendor call", "Hiring debrief",
                  "Sprint demo", "Security training")
PEOPLE = ("Priya", "Tom", "Aiko", "Lena", "Omar", "Sofia", "Mateo", "Grace", "Ravi", "Chen")

CURRENCY_TEMPLATES = (
    "Convert {amount} {source} to {target}.", "How much is {amount} {source} in {target}?",
    "What do {amount} {source} come to in {target}?",
    "Please change {amount} {source} into {target}.",
    "I need {amount} {source} converted to {target}.",
    "Exchange {amount} {source} for {target}: how much would I get?",
)
CURRENCIES = {"USD": "US dollars", "EUR": "euros", "GBP": "British pounds",
              "JPY": "Japanese yen", "CHF": "Swiss francs", "CAD": "Canadian dollars"}

WEATHER_TEMPLATES = (
    "What's the weather in {city} for the next {days} days?",
    "Give me a {days}-day forecast for {city}.", "Weather forecast for {city}, {days} days please.",
    "Will it rain in {city}? Check the next {days} days.",
    "How will the weather be in {city} over the coming {days} days?",
    "I'm traveling to {city}; show me the {days}-day forecast.",
)
CITIES = ("Lisbon", "Nairobi", "Osaka", "Denver", "Krakow", "Montreal", "Lima", "Perth",
          "Seoul", "Cape Town", "Reykjavik", "Austin", "Hanoi", "Dublin", "Santiago",
          "Helsinki", "Mumbai", "Vancouver", "Marrakesh", "Auckland")
UNITS = {"metric": ("Use Celsius.", "In metric units, please."),
         "imperial": ("In Fahrenheit, please.", "Use imperial units.")}


def _pick(rng: random.Random, templates: Sequence[str], tool: str) -> tuple[str, str]:
    index = rng.randrange(len(templates))
    return f"{tool}/{index}", templates[index]


def _ticket(rng: random.Random) -> Case:
    template_id, template = _pick(rng, TICKET_TEMPLATES, "create_ticket")
    team = rng.choice(sorted(TICKET_TITLES))
    args: dict[str, Any] = {"title": rng.choice(TICKET_TITLES[team]), "team": team,
                            "priority": rng.choice(("low", "normal", "high", "critical"))}
    request = template.format(**args)
    if rng.random() < 0.4:
        args["notify_oncall"] = True
        request += " " + rng.choice(ONCALL)
    return "create_ticket", template_id, request, args


def _order(rng: random.Random) -> Case:
    template_id, template = _pick(rng, ORDER_TEMPLATES, "lookup_order")
    args: dict[str, Any] = {"order_id": f"NB-{rng.randrange(100_000, 1_000_000)}"}
    request = template.format(**args)
    if rng.random() < 0.4:
        args["include_history"] = True
        request += " " + rng.choice(HISTORY)
    return "lookup_order", template_id, request, args


def _meeting(rng: random.Random) -> Case:
    template_id, template = _pick(rng, MEETING_TEMPLATES, "schedule_meeting")
    people = rng.sample(PEOPLE, rng.randint(1, 2))
    spoken = " and ".join(people)
    args = {"title": rng.choice(MEETING_TITLES),
            "date": (dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(730))).isoformat(),
            "start_time": f"{rng.randint(8, 17):02d}:{rng.choice((0, 15, 30, 45)):02d}",
            "duration_minutes": rng.choice((15, 30, 45, 60, 90)), "attendees": people}
    request = template.format(title=args["title"], date=args["date"], time=args["start_time"],
                              minutes=args["duration_minutes"], people=spoken)
    return "schedule_meeting", template_id, request, args


def _currency(rng: random.Random) -> Case:
    template_id, template = _pick(rng, CURRENCY_TEMPLATES, "convert_currency")
    source, target = rng.sample(sorted(CURRENCIES), 2)
    amount: int | float = (rng.randint(5, 5000) if rng.random() < 0.6
                           else rng.randint(500, 200_000) / 100)
    spoken = f"{amount:.2f}" if isinstance(amount, float) else str(amount)
    by_name = rng.random() < 0.5
    request = template.format(amount=spoken, source=CURRENCIES[source] if by_name else source,
                              target=CURRENCIES[target] if by_name else target)
    args = {"amount": amount, "from_currency": source, "to_currency": target}
    return "convert_currency", template_id, request, args


def _weather(rng: random.Random) -> Case:
    template_id, template = _pick(rng, WEATHER_TEMPLATES, "get_weather")
    args: dict[str, Any] = {"city": rng.choice(CITIES), "days": rng.randint(2, 7)}
    request = template.format(**args)
    units = rng.choice((None, "metric", "imperial"))
    if units is not None:
        args["units"] = units
        request += " " + rng.choice(UNITS[units])
    return "get_weather", template_id, request, args


SAMPLERS: tuple[Callable[[random.Random], Case], ...] = (_ticket, _order, _meeting, _currency,
                                                         _weather)


def call_json(tool: str, arguments: dict[str, Any]) -> str:
    """The demonstration: one compact JSON line, keys in schema order."""
    return json.dumps({"tool": tool, "arguments": arguments}, separators=(",", ":"),
                      ensure_ascii=False)


def generate(seed: int = 0) -> tuple[list[Demonstration], list[EvalItem]]:
    """72 training and 24 held-out requests per tool; no call appears twice."""
    rng = random.Random(f"{NAME}/{seed}")
    train: list[Case] = []
    held_out: list[Case] = []
    seen: set[str] = set()
    for sample in SAMPLERS:
        cases = unique_samples(rng, sample, TRAIN_PER_TOOL + EVAL_PER_TOOL,
                               key=lambda case: call_json(case[0], case[3]), seen=seen)
        train += cases[:TRAIN_PER_TOOL]
        held_out += cases[TRAIN_PER_TOOL:]
    rng.shuffle(train)
    rng.shuffle(held_out)
    demos = [Demonstration(id=f"{NAME}-train-{i:04d}", prompt=request, domain=NAME,
                           demonstration=call_json(tool, args),
                           metadata={"tool": tool, "template": template_id})
             for i, (tool, template_id, request, args) in enumerate(train)]
    items = [EvalItem(id=f"{NAME}-eval-{i:04d}", domain=NAME,
                      messages=[{"role": "user", "content": request}],
                      reference=call_json(tool, args),
                      metadata={"tool": tool, "template": template_id})
             for i, (tool, template_id, request, args) in enumerate(held_out)]
    return demos, items


def call_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """valid_json: share of answers holding a JSON object; tool_acc: right tool named."""
    found = [extract_json_object(prediction) for prediction in predictions]
    tools = [json.loads(reference)["tool"] for reference in references]
    n = max(len(references), 1)
    return {"valid_json": sum(obj is not None for obj in found) / n,
            "tool_acc": sum(obj is not None and obj.get("tool") == tool
                            for obj, tool in zip(found, tools)) / n}


DOMAIN = Domain(
    name=NAME,
    description="Nimbus ops API: a user request becomes one JSON tool call (5 tools).",
    generate=generate, scorer=json_match, metric="exact_json", max_new_tokens=80,
    extra_metrics=call_metrics,
)
