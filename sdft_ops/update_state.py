"""What one update knows between its steps: `<home>/updates/<id>/state.json`, one frozen model.

Each step adds the fields it produced (stage: the data; train: the MLflow run, the parent, the
model folder; eval: the registered version; gate: the verdict), so a step can run in another
process (a Dagster asset) and read what the earlier ones wrote. `UpdateState.need` turns a field
an earlier step did not write into a one-line error naming that step.
"""

from __future__ import annotations

import json
import logging
import secrets
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from sdft_ops.weights_identity import weights_sha256

log = logging.getLogger(__name__)
WRITTEN_BY = {"run_id": "sdft_checkpoint (train)", "parent": "sdft_checkpoint (train)",
              "model_dir": "sdft_checkpoint (train)", "method": "sdft_checkpoint (train)",
              "weights_sha256": "sdft_checkpoint (train)",
              "version": "eval_results (eval)", "promoted": "gate (promote/reject)"}


class Parent(BaseModel):
    """The model an update trains from."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    version: str | None  # registered version, None = the base model
    model_dir: str  # folder or hub id to load
    ref: str  # stable identity for caches and reports
    run_id: str | None = None
    weights_sha256: str | None = None  # as recorded on the version; None: hashed when needed


class UpdateState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    # stage
    domain: str
    dataset_hash: str
    n_train: int
    n_heldout: int
    source: str | None = None
    duplicates_dropped: int = 0
    # train
    run_id: str | None = None
    parent: Parent | None = None
    model_dir: str | None = None
    weights_sha256: str | None = None  # weights_identity.weights_sha256(model_dir), hashed once
    method: str | None = None
    train_final: dict[str, float] = {}
    train_seconds: float | None = None
    train_peak_rss_gb: float | None = None  # the training process's peak resident memory
    ceiling: dict | None = None
    replay_ids: list[str] = []
    # eval
    version: str | None = None
    eval_seconds: float | None = None  # the whole evaluation, wall clock (both models, cache reused)
    # gate
    promoted: bool | None = None
    reasons: list[str] = []

    def need(self, name: str):
        """The field's value; a one-line error naming the step that writes it when it is unset."""
        value = getattr(self, name)
        if value is None:
            raise RuntimeError(f"update state has no {name!r} yet; run {WRITTEN_BY.get(name, 'the earlier steps')} first")
        return value


def update_dir(home: Path, update_id: str) -> Path:
    """`<home>/updates/<update_id>`; an id that would lead outside it is refused."""
    from sdft_ops.home import inside

    return inside(Path(home) / "updates", update_id)


def state_path(home: Path, update_id: str) -> Path:
    return update_dir(home, update_id) / "state.json"


def load_state(home: Path, update_id: str) -> UpdateState:
    path = state_path(home, update_id)
    if not path.is_file():
        raise FileNotFoundError(f"update {update_id!r} has no state in {path.parent}; run its "
                                "earlier steps first (demo_dataset → sdft_checkpoint → eval_results)")
    return UpdateState.model_validate_json(path.read_text())


def save_state(home: Path, update_id: str, **fields) -> UpdateState:
    """Merge `fields` into the update's state (validated), written atomically."""
    path = state_path(home, update_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.is_file() else {}
    state = UpdateState.model_validate({**old, **fields})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.model_dump_json(indent=1))
    tmp.replace(path)
    return state


class UpdateFinished(RuntimeError):
    """The update was gated already; its steps are not run again."""


def refuse_finished(home: Path, update_id: str) -> None:
    """A one-line `UpdateFinished` when the update was gated (promoted or rejected): running its
    steps again would retrain a champion from itself. Nothing is written."""
    path = state_path(home, update_id)
    state = UpdateState.model_validate_json(path.read_text()) if path.is_file() else None
    if state is not None and state.promoted is not None:
        verdict = "promoted" if state.promoted else "rejected"
        raise UpdateFinished(f"update {update_id!r} is finished: version {state.version} was "
                             f"{verdict}; nothing was changed — start a new update with another "
                             "--update-id (a new partition in Dagster)")


def new_update_id(domain: str, home: Path) -> str:
    """`<UTC time>-<domain>-<6 hex>`, its folder created atomically: two updates started in the
    same second never share an id (mkdir fails for the second, which draws again)."""
    (Path(home) / "updates").mkdir(parents=True, exist_ok=True)
    while True:
        update_id = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{domain}-{secrets.token_hex(3)}"
        try:
            update_dir(home, update_id).mkdir()
            return update_id
        except FileExistsError:
            continue


def parent_identity(parent: Parent) -> dict:
    """The parent an update trains from: registered version, ref and the hash of its weights
    (the recorded one; hashed here only for a parent with none recorded, e.g. the base model)."""
    digest = parent.weights_sha256
    if digest is None:
        folder = Path(parent.model_dir)
        digest = weights_sha256(folder) if any(folder.glob("*.safetensors")) else ""
    return {"version": parent.version, "ref": parent.ref, "weights_sha256": digest}


def fresh_checkpoints(folder: Path, parent: Parent) -> Path:
    """`folder`, emptied when its checkpoints were trained from another parent than `parent`
    (an update killed mid-training, another promoted meanwhile): resuming them would train
    from the old champion while recording the new one as parent. The rerun starts cleanly."""
    import shutil

    identity, record = parent_identity(parent), folder / "parent.json"
    if folder.is_dir() and (not record.is_file() or json.loads(record.read_text()) != identity):
        log.warning("checkpoints in %s were trained from another parent; restarting from %s",
                    folder, parent.ref)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(identity))
    return folder
