"""The promotion ledger: an append-only JSONL file of `LedgerEntry`, one per registry action.

`<home>/registry/<name>.ledger.jsonl` (MLflow keeps no history of alias moves): who, what
(`promote`, `reject`, `manual_promote`, `rollback`), when (UTC ISO-8601), why, `from_version` /
`to_version` (the champion before / after) and `version` (the version acted on). Replaying it
gives the champion stack (`champion_stack`): promotions push, a rollback pops. Every writer holds
an exclusive `fcntl.flock` on `<ledger>.lock` for its read-check-move-append
(`PromotionLedger.locked`), so racing processes leave a consistent file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Action = Literal["promote", "reject", "manual_promote", "rollback"]


class RegistryError(RuntimeError):
    """A registry action was refused; the message says why and what to do."""


class StalePromotionError(RegistryError):
    """The champion moved since the candidate was made: its expected champion is not current."""


class LedgerEntry(BaseModel):
    """One line of the promotion ledger."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int = Field(ge=1, description="1, 2, 3 ... in file order")
    model_name: str = Field(min_length=1)
    action: Action
    who: str = Field(min_length=1)
    when: str = Field(description="ISO-8601 UTC timestamp")
    why: str = Field(min_length=1)
    version: str = Field(min_length=1, description="the version acted on")
    from_version: str | None = Field(description="champion before the action")
    to_version: str | None = Field(description="champion after the action")


def champion_stack(entries: list[LedgerEntry]) -> list[str]:
    """Replay the ledger: promote/manual_promote push, rollback pops, reject changes nothing."""
    stack: list[str] = []
    for entry in entries:
        if entry.action in ("promote", "manual_promote"):
            stack.append(entry.version)
        elif entry.action == "rollback":
            stack.pop()
    return stack


class _LockedLedger:
    """The ledger while its lock is held: the entries read under the lock, and append."""

    def __init__(self, ledger: "PromotionLedger", entries: list[LedgerEntry]) -> None:
        self.ledger = ledger
        self.entries = entries

    def append(self, **fields: Any) -> LedgerEntry:
        entry = LedgerEntry(seq=len(self.entries) + 1,
                            when=datetime.now(timezone.utc).isoformat(timespec="microseconds"), **fields)
        with open(self.ledger.path, "a", encoding="utf-8") as f:
            f.write(entry.model_dump_json() + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries.append(entry)
        return entry


class PromotionLedger:
    """Append-only JSONL of `LedgerEntry`, guarded by `fcntl.flock` on a sibling `.lock` file."""

    def __init__(self, path: str | os.PathLike, lock_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout_s = lock_timeout_s

    @contextlib.contextmanager
    def locked(self, exclusive: bool = True) -> Iterator[_LockedLedger]:
        """Hold the lock (exclusive for writers, shared for readers) and yield the entries."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lock_file:
            mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
            deadline = time.monotonic() + self.lock_timeout_s
            while True:
                try:
                    fcntl.flock(lock_file.fileno(), mode)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RegistryError(
                            f"another registry action has held {self.lock_path} for over "
                            f"{self.lock_timeout_s:.0f}s; wait for it or find the process holding it "
                            f"(e.g. `fuser {self.lock_path}`)") from None
                    time.sleep(0.02)
            try:
                yield _LockedLedger(self, self._read())
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    def read(self) -> list[LedgerEntry]:
        with self.locked(exclusive=False) as ledger:
            return list(ledger.entries)

    def _read(self) -> list[LedgerEntry]:
        if not self.path.is_file():
            return []
        entries = []
        for line_no, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = LedgerEntry.model_validate_json(line)
            except ValidationError as e:
                raise RegistryError(
                    f"{self.path} line {line_no} is not a ledger entry ({e.error_count()} problems: "
                    f"{e.errors()[0]['msg']}); the ledger is append-only — restore it from a backup, or "
                    "delete that line if a crash cut it short") from e
            if entry.seq != len(entries) + 1:
                raise RegistryError(f"{self.path} line {line_no} has seq {entry.seq}, expected "
                                    f"{len(entries) + 1}; the ledger was edited — restore it from a backup")
            entries.append(entry)
        return entries
