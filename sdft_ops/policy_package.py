"""The registered policy as an MLflow pyfunc: what a version's artifact is, and loading the champion.

A registered version is a model folder (`save_trained_model`: config.json and safetensors
weights, no pickle weights; `check_model_folder`) saved as an MLflow **pyfunc** whose code is
`sdft_ops/policy_model.py` (models-from-code: nothing pickled), with `pip_requirements` pinned to
the installed torch / transformers / safetensors and a string → string signature with a
`max_new_tokens` param. `load_champion` loads `models:/<name>@champion` through an explicit
client (a local sqlite store or a server alike).
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.pyfunc import PyFuncModel

CANDIDATE, CHAMPION = "candidate", "champion"
POLICY_CODE = Path(__file__).with_name("policy_model.py")
REQUIRED_PACKAGES = ("torch", "transformers", "safetensors")
WEIGHT_SUFFIXES_REFUSED = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def pip_requirements() -> list[str]:
    """torch, transformers, safetensors pinned to the installed versions (local tags like +cpu dropped)."""
    return [f"{dist}=={metadata.version(dist).split('+')[0]}" for dist in REQUIRED_PACKAGES]


def policy_signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from sdft_ops.policy_model import DEFAULT_MAX_NEW_TOKENS

    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]),
                          params=ParamSchema([ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS)]))


def check_model_folder(folder: str | os.PathLike) -> Path:
    """A `save_trained_model` folder: config.json and safetensors weights, no pickle weights."""
    folder = Path(folder)
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ValueError(f"{folder} is not a model folder (no config.json); register the folder written "
                         "by sdft_ops.engine.checkpoint.save_trained_model")
    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"{folder} has no *.safetensors weights; save the model with "
                         "save_pretrained(..., safe_serialization=True)")
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES_REFUSED)
    if pickled:
        raise ValueError(f"{folder} holds pickle-format files {pickled}; only safetensors are registered — "
                         "remove them (the safetensors weights are enough)")
    return folder


def not_found(e: Exception) -> bool:
    return getattr(e, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE",
                                            "NOT_FOUND")



def load_champion(name: str | None = None, tracking_uri: str | None = None, *,
                  home: str | os.PathLike | None = None, dst_path: str | os.PathLike | None = None,
                  alias: str = CHAMPION) -> "PyFuncModel":
    """`models:/<name>@champion` as a pyfunc model, resolved through an explicit client (works
    with a local sqlite store and a remote server alike, without touching the global URI)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from sdft_ops.mlflow_store import ready_tracking_uri
    from sdft_ops.settings import TrackingConfig

    name = name or TrackingConfig().model_name

    uri = ready_tracking_uri(tracking_uri, home)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        version = client.get_model_version_by_alias(name, alias).version
    except MlflowException as e:
        if not_found(e):
            raise LookupError(f"models:/{name}@{alias} does not exist in {uri}; promote a version "
                              "first (PolicyRegistry.promote)") from e
        raise
    source = client.get_model_version_download_uri(name, str(version))
    local = mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=uri,
                                                dst_path=None if dst_path is None else str(dst_path))
    return mlflow.pyfunc.load_model(local)
