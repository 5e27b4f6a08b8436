"""Strict JSONL reading: bounded lines, bounded JSON parsing, one-line pydantic errors.

Every limit breach is an exception or a message naming what to change, never a RecursionError
or a parser ValueError: a line is read at most `max_bytes` (+ newline) at a time; JSON nesting
(objects + arrays) at most `MAX_JSON_DEPTH` levels, checked before `json.loads` (whose C
scanner recurses per level); integer literals at most `MAX_INT_DIGITS` digits; NaN, Infinity
and numbers that overflow a float refused (JSON has none); a key twice in one object refused
(`json` would keep the last silently). Used by `sdft_ops.data` (demo files) and, for error
lines, by every config loader.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from typing import Any, BinaryIO

from pydantic import ValidationError

MAX_JSON_DEPTH = 64  # nesting of objects + arrays in one line
MAX_INT_DIGITS = 100  # digits of one integer literal (Python refuses > 4300 with a ValueError)
UNION_TAGS = frozenset({"text", "chat"})  # union tags pydantic puts in error locations; not fields


def text_lines(handle: BinaryIO, max_bytes: int) -> Iterator[tuple[int, str | None, str]]:
    """Yield (line_no, text without newline or None, why it is None). Reads at most
    max_bytes + 2 bytes of a line at once, so one huge line can't exhaust memory."""
    line_no = offset = 0
    limit = max_bytes + 2  # room for "\r\n"
    while chunk := handle.readline(limit):
        line_no += 1
        start, size, tail = offset, len(chunk), chunk
        if not chunk.endswith(b"\n") and size == limit:  # too long: read on to the line's end
            while (tail := handle.readline(65536)) and not tail.endswith(b"\n"):
                size += len(tail)
            size += len(tail)
        offset += size
        length = size - (len(tail) - len(tail.removesuffix(b"\n").removesuffix(b"\r")))
        if length > max_bytes:
            yield line_no, None, (f"line is {length} bytes, over max_line_bytes={max_bytes}; "
                                  "shorten it or raise LoadOptions.max_line_bytes")
            continue
        body = chunk[:length]
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield line_no, None, (f"not valid UTF-8: byte 0x{body[exc.start]:02x} at byte "
                                  f"{exc.start} of the line (file byte offset {start + exc.start})"
                                  "; re-save the file as UTF-8")
            continue
        # Some editors start a file with a BOM; it isn't data.
        yield line_no, (text.removeprefix("\ufeff") if line_no == 1 else text), ""


def json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def field_path(loc: tuple[str | int, ...], skip: frozenset[str] = UNION_TAGS) -> str | None:
    """('prompt', 'chat', 1, 'content') -> 'prompt[1].content'."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in skip:
            path += f".{part}" if path else part
    return path or None


def validation_error_lines(error: ValidationError, source: str | os.PathLike) -> list[str]:
    """One `source: field.path: message` line per pydantic error (no URLs, no input dumps);
    a model-level error has no field: `source: message`."""
    lines = []
    for e in error.errors(include_url=False):
        where = field_path(e["loc"])
        lines.append(f"{source}: {where + ': ' if where else ''}{e['msg'].removeprefix('Value error, ')}")
    return lines


class LimitError(ValueError):
    """A line breaks one of the module's documented parse limits or rules."""


_STRING_LITERAL = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)  # possessive: linear time
_BRACKETS = re.compile(r"[\[\]{}]")


def check_depth(text: str) -> None:
    # Strings are blanked first so brackets inside them don't count; brackets outside strings
    # decide the nesting. Runs before json.loads, whose C scanner recurses per level.
    depth = 0
    for bracket in _BRACKETS.findall(_STRING_LITERAL.sub('""', text)):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise LimitError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels; flatten the record "
                              "(metadata is for small annotations)")


def _parse_int(literal: str) -> int:
    digits = len(literal.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise LimitError(f"integer literal with {digits} digits, over the limit of {MAX_INT_DIGITS}; "
                          "store big numbers as strings")
    return int(literal)


def _parse_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise LimitError(f"number {literal[:40]}{'…' if len(literal) > 40 else ''} overflows a "
                          "float; store it as a string")
    return value


def _parse_constant(name: str) -> float:
    raise LimitError(f"{name} is not valid JSON; write null or a string instead")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):  # rare: find the key that came twice
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise LimitError(f"duplicate key {key[:80]!r} in one object (JSON would keep only "
                                 "the last value); remove one of them")
            seen.add(key)
    return obj


def loads_bounded(text: str):
    """`json.loads` under the limits (depth checked first; integers, non-finite numbers,
    duplicate keys)."""
    check_depth(text)
    return json.loads(text, parse_int=_parse_int, parse_float=_parse_float,
                      parse_constant=_parse_constant, object_pairs_hook=_unique_keys)
