"""Where sdft-ops keeps what it makes: converted models, MLflow store, checkpoints.

`SDFT_OPS_HOME` sets it; the default is `.sdft_ops/` in the working directory so that a
checkout is self-contained and nothing is written to the user's home behind their back.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV_VAR = "SDFT_OPS_HOME"


def data_home(override: str | os.PathLike | None = None) -> Path:
    """The data home: `override`, else $SDFT_OPS_HOME, else ./.sdft_ops (created if missing)."""
    raw = override if override is not None else os.environ.get(HOME_ENV_VAR) or ".sdft_ops"
    home = Path(raw).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def inside(root: str | os.PathLike, *parts: str | os.PathLike) -> Path:
    """`root / parts...` resolved (symlinks and `..` followed); ValueError if it leaves `root`.

    Use it for every path built from data (a domain name, an update id):
    `inside(home / "domains", f"{domain}.json")`.
    """
    base = Path(root).resolve()
    target = base.joinpath(*parts).resolve()
    if not target.is_relative_to(base):
        shown = "/".join(str(part) for part in parts)
        raise ValueError(f"path {shown!r} leads outside {base} (to {target}); names taken from "
                         "data must not contain '..', '/' or absolute paths")
    return target
