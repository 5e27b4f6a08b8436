"""When tracking fails: bounded waits and one-line errors.

* `tracking_calls()` — a block (or decorator) for the project's own MLflow calls: HTTP timeouts
  and retries bounded (`mlflow_store.bounded_http`, restored after), and a failed call (no
  answer, a refused or dropped connection, an HTTP 5xx, a locked sqlite store) re-raised as one
  line naming the fix (`TrackingUnreachable`, `StoreLocked`), chained to MLflow's error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator

from sdft_ops.mlflow_store import StoreLocked, TrackingUnreachable, bounded_http

log = logging.getLogger(__name__)

_URL = re.compile(r"https?://[^/\s'\"]+")


# ---------------------------------------------------------------------------- one-line errors


def tracking_failure(e: BaseException) -> OSError | None:
    """The one-line error a failed tracking call stands for, or None when `e` is something else
    (an MLflow 'not found', a bug). Call it while the HTTP limits are set: it names them."""
    text = " ".join(str(e).split())
    module = type(e).__module__
    if "database is locked" in text and module.startswith(("mlflow", "sqlalchemy", "sqlite3")):
        return StoreLocked("the MLflow sqlite store is locked by another process; let that "
                           "process finish or stop it, then rerun")
    http = module.startswith("mlflow") and text.startswith("API request to")
    if not (http or module.startswith(("requests", "urllib3"))):
        return None
    found = _URL.search(text)
    server = f"MLflow tracking server {found[0]}" if found else "the MLflow tracking server"
    low = text.lower()
    if code := re.search(r"error code (\d{3})|(\d{3}) (?:Client|Server) Error", text):
        return TrackingUnreachable(f"{server} failed a request (HTTP {code[1] or code[2]}); see "
                                   "the server's log, then rerun")
    if "timed out" in low or "timeout" in low:
        wait = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
        reason, fix = f"no answer within {wait} s", " (MLFLOW_HTTP_REQUEST_TIMEOUT waits longer)"
    elif "refused" in low:
        reason, fix = "connection refused", ""
    elif any(word in low for word in ("reset", "aborted", "disconnected", "broken pipe")):
        reason, fix = "connection dropped", ""
    else:
        reason, fix = text[:100], ""
    return TrackingUnreachable(f"{server} stopped answering ({reason}); check that it is up, "
                               f"then rerun{fix}")


@contextlib.contextmanager
def tracking_calls() -> Iterator[None]:
    """Bounded HTTP limits inside the block; a tracking failure leaves it as one line."""
    with bounded_http():
        try:
            yield
        except Exception as e:
            failure = tracking_failure(e)
            if failure is None:
                raise
            raise failure from e
