"""Reading suite JSONL files (user suites and the shipped resources) with errors that name the
file, the line and the field, in the `path:line: field: message` form of `sdft_ops.data`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from sdft_ops.data import DataProblem
from sdft_ops.jsonl import field_path

RecordT = TypeVar("RecordT", bound=BaseModel)


class SuiteFileError(ValueError):
    """A bad suite file; `problems` lists everything found (fix all, then reload)."""

    def __init__(self, problems: list[DataProblem]) -> None:
        self.problems = list(problems)
        lines = [str(problem) for problem in self.problems]
        if len(lines) > 1:
            lines.insert(0, f"{len(lines)} problems in suite file (fix all, then reload):")
        super().__init__("\n".join(lines))


def resource_path(name: str) -> Path:
    """A data file shipped in `sdft_ops/resources/eval/` (package data).

    Located from this file rather than importlib.resources: under an editable install
    `sdft_ops` can import as a namespace package, which `files()` rejects."""
    return Path(__file__).resolve().parent.parent / "resources" / "eval" / name


def _friendly(error: dict[str, Any]) -> str:
    if error["type"] == "missing":
        return "required field is missing"
    if error["type"] == "extra_forbidden":
        return "unknown field"
    return error["msg"].removeprefix("Value error, ")


def read_records(
    path: str | os.PathLike,
    pick_model: Callable[[int, dict[str, Any]], type[RecordT] | str],
) -> list[tuple[int, RecordT]]:
    """Parse a JSONL file into validated records; blank lines are skipped.

    `pick_model(line_no, obj)` returns the pydantic model for a line, or a message saying why
    none fits. Raises SuiteFileError with every problem: unreadable file, malformed JSON, a
    non-object line, validation errors (with the field), duplicate ids, an empty file.
    """
    file = str(path)
    problems: list[DataProblem] = []

    def problem(line: int | None, field: str | None, message: str) -> None:
        problems.append(DataProblem(file=file, line=line, field=field, message=message))

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        problem(None, None, f"file not found (looked at {Path(path).resolve()}); check the path")
        raise SuiteFileError(problems) from None
    except (OSError, UnicodeDecodeError) as e:
        problem(None, None, f"cannot read the file as UTF-8 text ({e}); re-save it as UTF-8")
        raise SuiteFileError(problems) from e

    records: list[tuple[int, RecordT]] = []
    first_line_of: dict[str, int] = {}
    for line_no, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problem(line_no, None, f"malformed JSON: {e.msg} (column {e.colno}); each non-blank "
                    "line must be one complete JSON object")
            continue
        if not isinstance(obj, dict):
            problem(line_no, None, f"expected a JSON object {{...}}, got {type(obj).__name__}")
            continue
        model = pick_model(line_no, obj)
        if isinstance(model, str):
            problem(line_no, None, model)
            continue
        try:
            record = model.model_validate(obj)
        except ValidationError as e:
            for error in e.errors():
                problem(line_no, field_path(error["loc"]), _friendly(error))
            continue
        record_id = getattr(record, "id")
        if record_id in first_line_of:
            problem(line_no, "id", f"duplicate id {record_id!r}, first on line "
                    f"{first_line_of[record_id]}; ids must be unique")
            continue
        first_line_of[record_id] = line_no
        records.append((line_no, record))
    if not records and not problems:
        problem(None, None, "empty file: no records; write one JSON object per line")
    if problems:
        problems.sort(key=lambda p: p.line or 0)
        raise SuiteFileError(problems)
    return records
