"""`make dev`: `dagster dev` under a supervisor, so that one Ctrl-C always stops it.

    .venv/bin/python -m assets.dev -h 127.0.0.1 -p 3000 -f definitions.py   # args go to dagster dev

dagster dev runs the webserver, the daemon and a code server as child processes. On this
project's 2-core machines it was seen (issue #14) not to exit after two Ctrl-C's, with the
children left running; it could not be reproduced since (one SIGINT stopped it in 4-5 s in every
try, idle, under load, mid-startup and with a browser on the asset pages). The supervisor makes the
promise independent of that: dagster dev runs in its own process group; the first SIGINT or
SIGTERM is forwarded to that group, dagster gets `GRACE_S` seconds to shut down cleanly (its
storage is sqlite: let it), then whatever is left of the group is killed. The supervisor says
which of the two happened.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

GRACE_S = 8.0


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.Popen([str(dagster), "dev", *args], start_new_session=True)
    stopping = threading.Event()

    def forward(signum, frame) -> None:
        if not stopping.is_set():
            stopping.set()
            print(f"sdft-ops dev: stopping dagster dev (at most {GRACE_S:.0f} s)", file=sys.stderr, flush=True)
            _signal_group(proc.pid, signal.SIGINT)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    while proc.poll() is None and not stopping.wait(timeout=0.5):
        pass
    if stopping.is_set():
        try:
            proc.wait(timeout=GRACE_S)
            print("sdft-ops dev: dagster dev stopped cleanly", file=sys.stderr, flush=True)
        except subprocess.TimeoutExpired:
            print(f"sdft-ops dev: dagster dev was still running after {GRACE_S:.0f} s; killed its "
                  "processes", file=sys.stderr, flush=True)
    _signal_group(proc.pid, signal.SIGKILL)  # children that outlived their parent, if any
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
