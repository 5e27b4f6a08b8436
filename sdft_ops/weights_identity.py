"""One identity for a model's weights, from training to the champion alias.

The identity is `weights_sha256(folder)`: the sha256 of the folder's `sha256sum *.safetensors`
listing (`<file sha256>  <name>` per line, files sorted by name), so a shell reproduces it with
`sha256sum *.safetensors | sha256sum`. Each file is read once, streamed in 1 MiB chunks. A folder
is hashed once, when it is published (`publish_model`), and the hash is recorded, never
recomputed on a read: in the update's `state.json` (`weights_sha256`), on its MLflow run and
on its registered version (tag `sdft_ops.weights_sha256`). The eval report records the hash of
the model it scored (`EvalReport.model_sha256`); the version also records the digest of that
report file (tag `sdft_ops.report_sha256`), which ties the per-item scores to the weights. The
gate refuses a report that does not match its candidate version (`version_identity`), and
`PolicyRegistry.promote` moves the champion only to the version whose hash the gate judged
(`check_judged`).

Trained weights never overwrite a folder: each training run publishes a new folder
`updates/<id>/model-<first 16 hex of the hash>` (written under a temp name, renamed when
complete), and `updates/<id>/model` is a symlink to the latest one. A champion's folder is
never written again.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from sdft_ops.ledger import RegistryError

if TYPE_CHECKING:
    from sdft_ops.gate import GateDecision

TAG_WEIGHTS_SHA256 = "sdft_ops.weights_sha256"  # on the registered version and the MLflow run
TAG_REPORT_SHA256 = "sdft_ops.report_sha256"  # on the version: the eval report it was gated on
MODEL_LINK = "model"  # updates/<id>/model → the latest model-<hash> folder
SHORT = 16  # hex digits of the hash in folder names and model refs
CHUNK_BYTES = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(folder: str | os.PathLike) -> str:
    """The identity of a folder's weights (see module docstring); ValueError if it has none."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder} has no *.safetensors weights to hash; save the model with "
                         "save_pretrained(..., safe_serialization=True)")
    listing = "".join(f"{file_sha256(f)}  {f.name}\n" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def model_ref(update_id: str, sha256: str | None) -> str:
    """The name an update's model is scored (and its scores cached) under: other weights of the
    same update, e.g. retrained from a newer champion, are another model."""
    return f"update:{update_id}@{sha256[:SHORT]}" if sha256 else f"update:{update_id}"


def publish_model(write: Callable[[Path], Path], folder: Path) -> tuple[Path, str]:
    """Write a model with `write(dest)` into a new folder under `folder` and publish it as
    `model-<hash>`: returns (that folder, its hash). An existing folder is never written: the
    same weights published again reuse it. `model` is then re-pointed at it (atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    staged = write(folder / f".{MODEL_LINK}-staged-{secrets.token_hex(4)}")
    try:
        sha256 = weights_sha256(staged)
        final = folder / f"{MODEL_LINK}-{sha256[:SHORT]}"
        if final.is_dir():  # the same weights are published already
            shutil.rmtree(staged)
        else:
            os.rename(staged, final)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    _point_link(folder / MODEL_LINK, final.name)
    return final, sha256


def _point_link(link: Path, target: str) -> None:
    """`link` → `target` (relative), replaced atomically; a real folder there (written before
    model folders were content-addressed) is left alone."""
    if link.exists() and not link.is_symlink():
        return
    tmp = link.with_name(f".{link.name}-link-{secrets.token_hex(4)}")
    os.symlink(target, tmp)
    os.replace(tmp, link)


def report_sha256(path: str | os.PathLike) -> str:
    """The digest of an eval report file, as the candidate version records it."""
    return file_sha256(path)


def check_judged(decision: "GateDecision", version: str, tags: Mapping[str, str]) -> None:
    """Refuse a gated promotion of `version` when the gate judged other weights than the ones
    the version holds (a decision with no judged hash is not checked)."""
    judged, held = decision.model_sha256, tags.get(TAG_WEIGHTS_SHA256)
    if judged is not None and judged != held:
        raise RegistryError(
            f"the gate judged weights {judged[:SHORT]} but version {version} holds "
            f"{(held or 'unrecorded weights')[:SHORT]}; promote the version registered for the "
            "judged weights, or re-run the update to register and gate them")
