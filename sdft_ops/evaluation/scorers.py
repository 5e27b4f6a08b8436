"""Generation scorers: any callable `(prediction: str, reference: str) -> float`.

The four named ones (usable by name in suite files, see `SCORERS`) return 0.0 or 1.0:
- `exact_match`: equal after stripping surrounding whitespace; `ignore_case=True` case-folds.
- `json_equal`: the reference and the first JSON value found in the prediction parse to the
  same structure. The prediction may wrap it in text or a ```json code fence. Comparison is
  strict about types (`true` != `1`) but not about number form (`1` == `1.0`) or key order.
  Unparsable prediction -> 0.0.
- `contains`: the stripped reference occurs in the prediction (`ignore_case=True` to fold).
- `regex`: the reference is a pattern `re.search`-ed in the prediction (use `(?i)` etc. inline).

A scorer may carry an early stop (`settle_rule`): exact_match is settled at 0 once the answer
so far cannot become the reference, contains at 1 once the reference is in it. Decoding stops
such a row there; the score is the one the whole answer would get.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

Scorer = Callable[[str, str], float]

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
NO_JSON = object()  # extract_json found nothing (None would be JSON null)


def exact_match(prediction: str, reference: str, ignore_case: bool = False) -> float:
    prediction, reference = prediction.strip(), reference.strip()
    if ignore_case:
        prediction, reference = prediction.casefold(), reference.casefold()
    return float(prediction == reference)


def contains(prediction: str, reference: str, ignore_case: bool = False) -> float:
    reference = reference.strip()
    if ignore_case:
        prediction, reference = prediction.casefold(), reference.casefold()
    return float(reference in prediction)


def regex(prediction: str, reference: str) -> float:
    try:
        return float(re.search(reference, prediction) is not None)
    except re.error as e:
        raise ValueError(f"regex scorer: reference {reference!r} is not a valid pattern ({e})") from e


def extract_json(text: str) -> Any:
    """The first JSON value in `text`: the whole text, else a code fence's body, else the first
    `{...}` / `[...]` that parses. Returns `NO_JSON` if none does."""
    decoder = json.JSONDecoder()
    candidates = [text.strip()] + [m.group(1).strip() for m in _FENCE.finditer(text)]
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            pass
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
            return value
        except ValueError:
            continue
    return NO_JSON


def same_json(a: Any, b: Any) -> bool:
    """Structural equality where bools are not numbers (Python says True == 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def json_equal(prediction: str, reference: str) -> float:
    expected = extract_json(reference)
    if expected is NO_JSON:
        raise ValueError(f"json_equal scorer: the reference is not JSON: {reference[:80]!r}")
    found = extract_json(prediction)
    return float(found is not NO_JSON and same_json(found, expected))


def _exact_match_settled(prefix: str, reference: str) -> bool:
    """No answer starting with `prefix` can equal `reference` (after stripping)."""
    said, wanted = prefix.lstrip(), reference.strip()
    return bool(said) and not wanted.startswith(said) and not (
        said.startswith(wanted) and not said[len(wanted):].strip())


exact_match.settled = _exact_match_settled
contains.settled = lambda prefix, reference: reference.strip() in prefix


def settle_rule(scorer: Scorer) -> Callable[[str, str], bool] | None:
    """The scorer's early stop, if it has one: `(prefix, reference) -> True` once every answer
    that starts with `prefix` gets the score `prefix` gets, so decoding can stop that row
    (`greedy_generate(settled=)`). Scorers name it in a `settled` attribute; tests check that
    no continuation changes a settled score."""
    return getattr(scorer, "settled", None)


SCORERS: dict[str, Scorer] = {
    "exact_match": exact_match,
    "json_equal": json_equal,
    "contains": contains,
    "regex": regex,
}


def get_scorer(name: str) -> Scorer:
    try:
        return SCORERS[name]
    except KeyError:
        raise ValueError(f"unknown scorer {name!r}; use one of {', '.join(SCORERS)}") from None
