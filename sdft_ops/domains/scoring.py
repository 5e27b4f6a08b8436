"""Scorers shared by the domains: pure `(prediction, reference) -> 0.0 | 1.0` functions.

* `json_match`: the first JSON object found in the prediction (code fences and surrounding
  prose are tolerated) equals the reference object. Equality is type-strict where JSON is:
  `true` never equals `1`, while `250` equals `250.0`. Key order does not matter.
* `contains_answer`: the normalized prediction contains the normalized answer key as a whole
  token sequence ("$1,299." contains "1299"; "12" is not found in "1299").
"""

from __future__ import annotations

import json
import re
from typing import Any

from sdft_ops.evaluation.scorers import same_json

_DECODER = json.JSONDecoder()
_DIGIT_GROUPING = re.compile(r"(?<=\d),(?=\d{3}\b)")  # 1,299 -> 1299 (not "3,4")
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+")  # numbers (with decimals) and words


def extract_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text` (e.g. inside ```json fences or after prose), else None."""
    start = text.find("{")
    while start != -1:
        try:
            value, _ = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError:
            pass
        else:
            if isinstance(value, dict):
                return value
        start = text.find("{", start + 1)
    return None


# Structural JSON equality that keeps booleans apart from numbers (shared with the eval scorers).
json_equal = same_json


def json_match(prediction: str, reference: str) -> float:
    """1.0 when the prediction's first JSON object equals the reference JSON object."""
    expected = json.loads(reference)
    found = extract_json_object(prediction)
    return float(found is not None and json_equal(found, expected))


def answer_tokens(text: str) -> list[str]:
    """Lower-cased word and number tokens; digit-grouping commas are dropped first."""
    return _TOKEN.findall(_DIGIT_GROUPING.sub("", text.lower()))


def contains_answer(prediction: str, reference: str) -> float:
    """1.0 when the reference's tokens occur, contiguous and in order, in the prediction's."""
    needle, hay = answer_tokens(reference), answer_tokens(prediction)
    if not needle:
        raise ValueError(f"answer key {reference!r} has no words or numbers; fix the domain data")
    width = len(needle)
    return float(any(hay[i:i + width] == needle for i in range(len(hay) - width + 1)))
