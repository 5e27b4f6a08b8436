"""Demonstration data: load, validate, hash, split and write expert demonstrations (JSONL).

One JSON object per line: `{"id", "prompt", "demonstration", "domain", "rejected"?, "metadata"?}`
(`rejected`: an answer not to give, for `preference_weight`); the prompt
is a string or a chat (a list of `{role, content}` ending with a user turn). `load_demonstrations`
reports every problem in a file at once (`DemoDataError`, one `path:line: field: message` each)
so a bad file is fixed in one pass. A `DemoDataset`'s content hash and train/held-out split
depend only on the records, never on file order or JSON formatting.

Rules beyond the JSON types:

* `domain` is an identifier, because it names files and suites (`domains/<domain>.json`,
  `domain/<domain>`): `^[a-z0-9][a-z0-9_.-]{0,63}$` and no `..` (no path separators, no
  uppercase). Code that builds a path from data uses `sdft_ops.home.inside(root, *parts)`.
* text fields (`id`, `prompt`, chat `content`, `demonstration`, `rejected`, `domain`) must hold a visible
  character: text made only of whitespace, control or format characters (Unicode Cc, Cf, Zs,
  Zl, Zp, lone surrogates; NUL, U+200B, U+202E, ...) or fillers such as U+3164 is blank.
* a chat prompt is an optional leading `system` turn, then `user` / `assistant` alternating,
  starting and ending with `user`.

Limits (`sdft_ops.jsonl`): every bad line is a `DemoDataError` naming its file and line, never a
RecursionError or ValueError from the parser. A line is at most `LoadOptions.max_line_bytes`
(1,000,000) bytes, a file at most `LoadOptions.max_file_bytes` (1 GiB); JSON nesting at most
`MAX_JSON_DEPTH` = 64 levels; integers at most `MAX_INT_DIGITS` = 100 digits; no NaN / Infinity.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from sdft_ops.jsonl import LimitError, field_path, json_type, loads_bounded, text_lines

log = logging.getLogger(__name__)

DuplicatePolicy = Literal["error", "keep_first", "keep_all"]

DOMAIN_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_INVISIBLE_CATEGORIES = {"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"}
_INVISIBLE_LETTERS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}  # blank-looking fillers


def _invisible(char: str) -> bool:
    return (char.isspace() or char in _INVISIBLE_LETTERS
            or unicodedata.category(char) in _INVISIBLE_CATEGORIES)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or whitespace-only")
    if all(_invisible(char) for char in value):
        shown = ", ".join(sorted({f"U+{ord(char):04X}" for char in value})[:5])
        raise ValueError(f"has only invisible characters ({shown}: control, format or "
                         "space characters); write visible text")
    return value


def _domain_name(value: str) -> str:
    if not DOMAIN_PATTERN.fullmatch(value) or ".." in value:
        raise ValueError(f"{value[:80]!r} is not a domain name: use 1-64 lowercase letters, digits, "
                         "'_', '.' or '-', starting with a letter or digit, without '..' "
                         "(it names files and suites), e.g. 'tooluse'")
    return value


NonEmptyStr = Annotated[str, AfterValidator(_not_blank)]
DomainName = Annotated[str, AfterValidator(_not_blank), AfterValidator(_domain_name)]


class ChatMessage(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: NonEmptyStr


_CHAT_ORDER = "[system], user, assistant, user, ..., user"


def _check_chat(messages: list[ChatMessage]) -> list[ChatMessage]:
    if not messages:
        raise ValueError("a chat prompt must not be an empty list; give at least one user message")
    start = 1 if messages[0].role == "system" else 0
    for index, message in enumerate(messages[start:], start=start):
        expected = "user" if (index - start) % 2 == 0 else "assistant"
        if message.role != expected:
            raise ValueError(f"message [{index}] has role {message.role!r} where {expected!r} is "
                             f"expected; chat roles must go {_CHAT_ORDER} (one optional leading "
                             "system turn, then user and assistant alternating)")
    if messages[-1].role != "user":
        raise ValueError(f"a chat prompt must end with a user message, not {messages[-1].role!r}; "
                         "the expert's reply belongs in 'demonstration'")
    return messages


def _prompt_kind(value: Any) -> str | None:
    # Dispatch on the JSON type: one clear error instead of one per union member.
    return "text" if isinstance(value, str) else "chat" if isinstance(value, list | tuple) else None



Prompt = Annotated[
    Annotated[NonEmptyStr, Tag("text")]
    | Annotated[list[ChatMessage], AfterValidator(_check_chat), Tag("chat")],
    Discriminator(_prompt_kind, custom_error_type="prompt_type",
                  custom_error_message="must be a string or a list of {role, content} messages"),
]


class Demonstration(BaseModel):
    """One prompt with the expert's response to it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: NonEmptyStr
    prompt: Prompt
    demonstration: NonEmptyStr = Field(description="the expert response")
    domain: DomainName
    rejected: NonEmptyStr | None = Field(
        None, description="a response not to give (a preference pair with the demonstration; "
        "trained only with `preference_weight` > 0)")
    metadata: dict[str, Any] = Field(default_factory=dict)

    def prompt_messages(self) -> list[dict[str, str]]:
        """The prompt as chat messages; a string prompt is one user message."""
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [message.model_dump() for message in self.prompt]

    def to_json(self) -> dict[str, Any]:
        """The record as written and hashed; no `rejected` key when there is none (so that
        files and content hashes from before the field existed are unchanged)."""
        record = self.model_dump(mode="json")
        if record["rejected"] is None:
            del record["rejected"]
        return record


class DataProblem(BaseModel):
    """One thing wrong with a data file; `line` is 1-based, None for the file as a whole."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field + ': ' if self.field else ''}{self.message}"


class DemoDataError(ValueError):
    """Bad demonstration data; `problems` lists everything found, not just the first."""

    def __init__(self, problems: list[DataProblem]) -> None:
        self.problems = list(problems)
        lines = [str(problem) for problem in self.problems]
        if len(lines) > 1:
            lines.insert(0, f"{len(lines)} problems in demonstration data (fix all, then reload):")
        super().__init__("\n".join(lines))


class LoadOptions(BaseModel):
    """How strict `load_demonstrations` is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    duplicate_content: DuplicatePolicy = "keep_first"
    max_line_bytes: int = Field(1_000_000, gt=0)
    max_file_bytes: int = Field(1 << 30, gt=0)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _content_key(record: Demonstration) -> str:
    # prompt_messages() makes "hi" and [{"role": "user", "content": "hi"}] the same content.
    return _canonical([record.prompt_messages(), record.demonstration, record.domain])


def _duplicate_id_problems(records: Iterable[Demonstration], file: str) -> list[DataProblem]:
    first_position: dict[str, int] = {}
    problems = []
    for position, record in enumerate(records, start=1):
        if record.id in first_position:
            problems.append(DataProblem(
                file=file, line=position, field="id",
                message=f"duplicate id {record.id!r}, first at position "
                        f"{first_position[record.id]}; give each record its own id"))
        first_position.setdefault(record.id, position)
    return problems


class DemoDataset(BaseModel):
    """Validated demonstrations plus what loading found and did about duplicate content."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    records: tuple[Demonstration, ...]
    source: str | None = None
    duplicate_content: tuple[tuple[str, str], ...] = Field(
        (), description="(kept_id, duplicate_id): same prompt + demonstration + domain")
    dropped_ids: tuple[str, ...] = Field((), description="duplicates dropped by 'keep_first'")

    @model_validator(mode="after")
    def _ids_unique(self) -> DemoDataset:
        if problems := _duplicate_id_problems(self.records, self.source or "<records>"):
            raise ValueError(str(DemoDataError(problems)))
        return self

    @classmethod
    def from_records(
        cls, records: Iterable[Demonstration], source: str | None = None
    ) -> DemoDataset:
        """A dataset from in-memory records; duplicate ids raise DemoDataError (line = position)."""
        records = tuple(records)
        if problems := _duplicate_id_problems(records, source or "<records>"):
            raise DemoDataError(problems)
        return cls(records=records, source=source)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def dropped_duplicates(self) -> int:
        return len(self.dropped_ids)

    @property
    def domains(self) -> list[str]:
        return sorted({record.domain for record in self.records})

    @property
    def content_hash(self) -> str:
        """sha256 over the records sorted by id, each as canonical JSON, joined by newlines."""
        ordered = sorted(self.records, key=lambda record: record.id)
        canonical = "\n".join(_canonical(record.to_json()) for record in ordered)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def split(
        self, heldout_fraction: float = 0.2, seed: str = ""
    ) -> tuple[DemoDataset, DemoDataset]:
        """(train, held_out), each sorted by id. A record's side depends only on seed + its id,
        so adding records never moves existing ones across the split."""
        if isinstance(heldout_fraction, bool) or not 0.0 <= heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction!r}; "
                             "e.g. 0.2 holds out 20%")
        train, held_out = [], []
        for record in sorted(self.records, key=lambda record: record.id):
            digest = hashlib.sha256((seed + record.id).encode("utf-8")).digest()
            position = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
            (held_out if position < heldout_fraction else train).append(record)
        return (DemoDataset(records=tuple(train), source=self.source),
                DemoDataset(records=tuple(held_out), source=self.source))

    def write_jsonl(self, path: str | os.PathLike) -> Path:
        """One canonical JSON line per record, in order; atomic: never a half-written file."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
                for record in self.records:
                    handle.write(_canonical(record.to_json()) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp_name, 0o644)  # mkstemp makes it owner-only; data files are shareable
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return target


def _friendly(error: dict[str, Any]) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        in_chat = any(isinstance(part, int) for part in error["loc"])
        model, hint = (ChatMessage, "") if in_chat else (Demonstration, "; put extras in metadata")
        return f"unknown field (allowed: {', '.join(model.model_fields)}){hint}"
    if kind in {"string_type", "dict_type", "prompt_type", "model_type"}:
        return f"{msg[0].lower()}{msg[1:]}, got {json_type(error['input'])}"
    return msg.removeprefix("Value error, ")


def _parse_record(text: str) -> tuple[Demonstration | None, list[tuple[str | None, str]]]:
    """One non-blank line -> (the record, or None if it has problems; [(field, message), ...])."""
    try:
        obj = loads_bounded(text)
    except json.JSONDecodeError as exc:
        return None, [(None, f"malformed JSON: {exc.msg} (column {exc.colno}); each non-blank "
                             "line must be one complete JSON object")]
    except LimitError as exc:
        return None, [(None, str(exc))]
    except (ValueError, RecursionError) as exc:  # backstop: no parser error escapes as a crash
        return None, [(None, f"cannot parse the line as JSON ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]}); write one JSON object per line")]
    if not isinstance(obj, dict):
        return None, [(None, f"expected a JSON object {{...}}, got {json_type(obj)}")]
    try:
        record = Demonstration.model_validate(obj)
        _canonical(record.to_json()).encode("utf-8")  # hashing needs encodable text
    except ValidationError as exc:
        return None, [(field_path(e["loc"]), _friendly(e)) for e in exc.errors()]
    except UnicodeEncodeError:
        return None, [(None, "contains an unpaired surrogate escape such as \\ud800; use the "
                             "real character or a complete surrogate pair")]
    return record, []


def load_demonstrations(
    path: str | os.PathLike, options: LoadOptions = LoadOptions()  # frozen, so sharing is safe
) -> DemoDataset:
    """Load and validate a JSONL file; raise DemoDataError listing every problem found."""
    file = str(path)
    problems: list[DataProblem] = []

    def problem(line: int | None, field: str | None, message: str) -> None:
        problems.append(DataProblem(file=file, line=line, field=field, message=message))

    try:
        handle = open(path, "rb")  # bytes, so bad UTF-8 is reported with its line, not a crash
    except OSError as exc:
        missing = isinstance(exc, FileNotFoundError)
        problem(None, None, f"file not found (looked at {Path(path).resolve()}); check the path"
                if missing else f"cannot read the file ({exc.strerror}); pass a readable file")
        raise DemoDataError(problems) from None

    records: list[Demonstration] = []
    line_of_id: dict[str, int] = {}
    first_with_content: dict[str, tuple[str, int]] = {}
    duplicates: list[tuple[str, str, int, int]] = []  # kept_id, dup_id, kept_line, dup_line
    saw_content = False
    with handle:
        size = os.fstat(handle.fileno()).st_size  # a FIFO or device reports 0: lines still bounded
        if size > options.max_file_bytes:
            problem(None, None, f"file is {size} bytes, over max_file_bytes="
                    f"{options.max_file_bytes}; split it or raise LoadOptions.max_file_bytes")
            raise DemoDataError(problems)
        for line_no, text, unreadable in text_lines(handle, options.max_line_bytes):
            if text is not None and not text.strip():
                continue  # blank lines are allowed
            saw_content = True
            if text is None:
                problem(line_no, None, unreadable)
                continue
            record, found = _parse_record(text)
            for field, message in found:
                problem(line_no, field, message)
            if record is None:
                continue
            if record.id in line_of_id:
                problem(line_no, "id", f"duplicate id {record.id!r}: on line "
                        f"{line_of_id[record.id]} and line {line_no}; ids must be unique")
                continue
            line_of_id[record.id] = line_no
            kept_id, kept_line = first_with_content.setdefault(
                _content_key(record), (record.id, line_no))
            if kept_id != record.id:
                duplicates.append((kept_id, record.id, kept_line, line_no))
            records.append(record)

    if not saw_content:
        problem(None, None, "no demonstrations: the file is empty or has only blank lines; "
                "add one JSON object per line")
    if options.duplicate_content == "error":
        for kept_id, dup_id, kept_line, dup_line in duplicates:
            problem(dup_line, None, f"record {dup_id!r} (line {dup_line}) has the same prompt, "
                    f"demonstration and domain as {kept_id!r} on line {kept_line}; remove one, "
                    "or load with duplicate_content='keep_first'")
    if problems:
        problems.sort(key=lambda p: p.line or 0)  # file-level first, then by line
        raise DemoDataError(problems)

    dropped: tuple[str, ...] = ()
    if options.duplicate_content == "keep_first" and duplicates:
        dropped = tuple(dup_id for _, dup_id, _, _ in duplicates)
        drop = set(dropped)
        records = [record for record in records if record.id not in drop]
        log.warning("%s: dropped %d duplicate-content record(s): %s", file, len(dropped), dropped)
    return DemoDataset(
        records=tuple(records),
        source=file,
        duplicate_content=tuple((kept, dup) for kept, dup, _, _ in duplicates),
        dropped_ids=dropped,
    )
