"""`knowledge`: facts about the fictional Veltrana Robotics, new to any base model.

80 atomic facts: 10 about the company, 7 about each of its 10 products (category, codename,
launch year, price, warranty, battery life, weight). Every kind of fact has 6 question
phrasings; per kind, the seed holds out 2 of them for evaluation and trains on the other 4.
So each fact gets 4 training questions (answered with one sentence holding the fact) and 2
held-out questions phrased in ways never seen in training: the test measures the knowledge,
not the strings. An eval item's reference is the fact's `answer_key`, scored by
`contains_answer` ("$18,500" and "18500 dollars" both contain "18500").
"""

from __future__ import annotations

import random

from sdft_ops.data import Demonstration
from sdft_ops.domains.base import Domain, EvalItem
from sdft_ops.domains.scoring import contains_answer

NAME = "knowledge"
HELD_OUT_PER_KIND = 2
C = "Veltrana Robotics"

# kind -> (answer sentence, answer key, 6 questions); company facts are one kind each.
COMPANY: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "founded": (f"{C} was founded in 2011.", "2011", (
        f"When was {C} founded?", f"In what year was {C} established?",
        f"What year did {C} start?", f"{C} was founded in which year?",
        f"Tell me the year {C} was set up.", f"What is the founding year of {C}?")),
    "headquarters": (f"{C} is headquartered in Aarhus.", "Aarhus", (
        f"Where is {C} headquartered?", f"In which city is the head office of {C}?",
        f"What city is {C} based in?", f"Where are the headquarters of {C} located?",
        f"Which city hosts the {C} HQ?", f"{C} has its main office in what city?")),
    "ceo": (f"The CEO of {C} is Mireille Okafor.", "Mireille Okafor", (
        f"Who is the CEO of {C}?", f"Who runs {C} as chief executive?",
        f"Who leads {C}?", f"Name the chief executive officer of {C}.",
        f"Who is in charge of {C} as its CEO?", f"Which person heads {C}?")),
    "cto": (f"The CTO of {C} is Tobias Lindqvist.", "Tobias Lindqvist", (
        f"Who is the CTO of {C}?", f"Who is the chief technology officer at {C}?",
        f"Who leads engineering at {C} as CTO?", f"Name the CTO of {C}.",
        f"Which person is {C}'s technology chief?", f"Who heads technology at {C}?")),
    "employees": (f"{C} employs about 1,840 people.", "1840", (
        f"How many people work at {C}?", f"How many employees does {C} have?",
        f"What is the headcount of {C}?", f"How big is the {C} workforce?",
        f"Roughly how many staff does {C} employ?", f"How many workers are on {C}'s payroll?")),
    "ticker": (f"{C} trades under the ticker VLTR.", "VLTR", (
        f"What is the stock ticker of {C}?", f"Under which symbol is {C} listed?",
        f"What ticker does {C} trade under?", f"What's {C}'s stock symbol?",
        f"Which ticker symbol belongs to {C}?", f"How is {C} listed on the stock exchange?")),
    "factory": (f"The main factory of {C} is in Monterrey.", "Monterrey", (
        f"Where is the main factory of {C}?", f"In which city does {C} build its robots?",
        f"Where are {C} products manufactured?", f"What city is home to {C}'s main plant?",
        f"Where does {C} do most of its manufacturing?", f"Which city has {C}'s largest factory?")),
    "research": (f"The research center of {C} is in Porto.", "Porto", (
        f"Where is the research center of {C}?", f"In which city does {C} do its research?",
        f"Where is {C}'s R&D lab located?", f"What city hosts the {C} research center?",
        f"Where do {C} engineers do research and development?",
        f"Which city is home to {C}'s research lab?")),
    "slogan": (f"The slogan of {C} is \"Machines that mind the details\".",
               "mind the details", (
        f"What is the slogan of {C}?", f"What motto does {C} use?",
        f"What is {C}'s tagline?", f"Which slogan appears in {C} ads?",
        f"How does {C} sum itself up in its slogan?", f"What is the company motto of {C}?")),
    "conference": (f"{C} hosts an annual customer conference called VeltraCon.", "VeltraCon", (
        f"What is the name of {C}'s annual conference?", f"What conference does {C} host?",
        f"What is {C}'s yearly customer event called?",
        f"Which event does {C} run for customers every year?",
        f"What do {C} call their annual customer conference?",
        f"Name the yearly conference organised by {C}.")),
}

# name, category phrase, category key, codename, launch year, price (USD), warranty months,
# battery hours, weight kg
PRODUCTS = (
    ("Pallo", "warehouse picking robot", "warehouse", "Juniper", 2014, "18,500", 27, "11", "62"),
    ("Strida", "sidewalk delivery rover", "delivery", "Marigold", 2016, "7,950", 18, "13", "38"),
    ("Orla", "home vacuum robot", "vacuum", "Thistle", 2017, "649", 14, "3.5", "4.2"),
    ("Quill", "laboratory robotic arm", "laboratory", "Saffron", 2015, "32,400", 39, "7", "21"),
    ("Brindle", "lawn mowing robot", "lawn", "Hazel", 2018, "1,299", 30, "5.5", "11.5"),
    ("Tessik", "inspection drone", "drone", "Cobalt", 2019, "4,480", 15, "1.5", "3.6"),
    ("Mavro", "hospital supply cart", "hospital", "Lantern", 2020, "26,900", 45, "17", "95"),
    ("Zephine", "pool cleaning robot", "pool", "Pebble", 2021, "899", 21, "4.5", "7.8"),
    ("Korvo", "security patrol robot", "security", "Ember", 2022, "54,000", 54, "19", "140"),
    ("Fenna", "greenhouse harvesting robot", "greenhouse", "Willow", 2023, "41,750", 33, "9",
     "78"),
)

# kind -> (answer template, column of the key in PRODUCTS, 6 questions); {p} = product name
PRODUCT_KINDS: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "category": ("The Veltrana {p} is a {phrase}.", 2, (
        "What kind of robot is the Veltrana {p}?", "What is the Veltrana {p} used for?",
        "What type of product is Veltrana's {p}?", "Which job was the Veltrana {p} built for?",
        "What category of machine is the Veltrana {p}?", "What does the Veltrana {p} do?")),
    "codename": ("The Veltrana {p} was developed under the codename {v}.", 3, (
        "What was the internal codename of the Veltrana {p}?",
        "Under which codename was the Veltrana {p} developed?",
        "What did Veltrana engineers call the {p} during development?",
        "Which project name did the Veltrana {p} have before launch?",
        "What is the development codename for Veltrana's {p}?",
        "Before release, what code name was used for the Veltrana {p}?")),
    "launch_year": ("The Veltrana {p} launched in {v}.", 4, (
        "When did the Veltrana {p} launch?", "In what year was the Veltrana {p} released?",
        "What year did Veltrana bring out the {p}?", "When was Veltrana's {p} first sold?",
        "Which year saw the launch of the Veltrana {p}?",
        "What year did the Veltrana {p} come out?")),
    "price": ("The Veltrana {p} costs ${v}.", 5, (
        "How much does the Veltrana {p} cost?", "What is the price of the Veltrana {p}?",
        "What does Veltrana charge for the {p}?", "How expensive is Veltrana's {p}?",
        "What's the list price of the Veltrana {p} in US dollars?",
        "If I buy a Veltrana {p}, how much will I pay?")),
    "warranty": ("The Veltrana {p} comes with a {v}-month warranty.", 6, (
        "How long is the warranty on the Veltrana {p}?",
        "What warranty does the Veltrana {p} come with?",
        "For how many months is the Veltrana {p} covered by warranty?",
        "What's the warranty period of Veltrana's {p}?",
        "How long does Veltrana guarantee the {p}?",
        "If my Veltrana {p} breaks, how long am I under warranty?")),
    "battery": ("The Veltrana {p} runs for {v} hours on one charge.", 7, (
        "How long does the Veltrana {p} battery last?",
        "What is the battery life of the Veltrana {p}?",
        "How many hours can the Veltrana {p} run on a single charge?",
        "How long can Veltrana's {p} work before recharging?",
        "What runtime does the Veltrana {p} get per charge?",
        "On a full battery, how many hours does the Veltrana {p} operate?")),
    "weight": ("The Veltrana {p} weighs {v} kg.", 8, (
        "How much does the Veltrana {p} weigh?", "What is the weight of the Veltrana {p}?",
        "How heavy is Veltrana's {p}?", "What's the Veltrana {p}'s weight in kilograms?",
        "How many kilograms is the Veltrana {p}?",
        "What would a Veltrana {p} weigh on a scale?")),
}


def facts() -> list[tuple[str, str, str, str, tuple[str, ...]]]:
    """Every fact as (fact id, kind, answer sentence, answer key, its 6 questions)."""
    out = [(f"company.{kind}", kind, answer, key, questions)
           for kind, (answer, key, questions) in COMPANY.items()]
    for row in PRODUCTS:
        name = row[0]
        for kind, (answer, column, questions) in PRODUCT_KINDS.items():
            value = row[column]
            key = str(value).replace(",", "")
            sentence = answer.format(p=name, v=value, phrase=row[1])
            out.append((f"{name.lower()}.{kind}", kind, sentence, key,
                        tuple(q.format(p=name) for q in questions)))
    return out


def generate(seed: int = 0) -> tuple[list[Demonstration], list[EvalItem]]:
    """4 training questions and 2 held-out rephrasings per fact (80 facts: 320 + 160)."""
    rng = random.Random(f"{NAME}/{seed}")
    kinds = [*COMPANY, *PRODUCT_KINDS]
    held_out = {kind: set(rng.sample(range(6), HELD_OUT_PER_KIND)) for kind in kinds}
    demos: list[Demonstration] = []
    items: list[EvalItem] = []
    for fact_id, kind, sentence, key, questions in facts():
        for index, question in enumerate(questions):
            metadata = {"fact": fact_id, "template": f"{kind}/{index}", "answer_key": key}
            if index in held_out[kind]:
                items.append(EvalItem(id=f"{NAME}-eval-{fact_id}-{index}", domain=NAME,
                                      messages=[{"role": "user", "content": question}],
                                      reference=key, metadata=metadata))
            else:
                demos.append(Demonstration(id=f"{NAME}-train-{fact_id}-{index}", prompt=question,
                                           demonstration=sentence, domain=NAME,
                                           metadata=metadata))
    rng.shuffle(demos)
    rng.shuffle(items)
    return demos, items


DOMAIN = Domain(
    name=NAME,
    description="Veltrana Robotics facts (80): trained on 4 phrasings, tested on 2 unseen ones.",
    generate=generate, scorer=contains_answer, metric="contains_answer", max_new_tokens=48,
)
