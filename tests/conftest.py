"""Shared fixtures: tiny random models (instant, in code) and an isolated data home."""

import os
from pathlib import Path

import pytest

from sdft_ops.tiny import build_tiny


@pytest.fixture
def tiny():
    """(model, tokenizer): a 2-layer random Llama and a byte-level BPE tokenizer with ChatML."""
    return build_tiny(seed=0)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh SDFT_OPS_HOME for tests that write models, runs or checkpoints."""
    path = tmp_path / "home"
    monkeypatch.setenv("SDFT_OPS_HOME", str(path))
    return path


@pytest.fixture(scope="session")
def mlflow_template(request, tmp_path_factory) -> Path:
    """An empty, migrated MLflow sqlite db to copy per test: creating one runs MLflow's migrations
    (~8 s), copying it takes milliseconds. Kept in pytest's cache (per MLflow version) when the
    cache plugin is on, else once per session."""
    import mlflow
    from mlflow import MlflowClient

    cache = getattr(request.config, "cache", None)
    folder = Path(cache.mkdir("sdft_ops_mlflow")) if cache is not None else tmp_path_factory.getbasetemp()
    path = folder / f"empty-mlflow-{mlflow.__version__}.db"
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        MlflowClient(f"sqlite:///{tmp}").search_experiments()
        os.replace(tmp, path)  # atomic: concurrent sessions never see half a db
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box OpenMP threads
    spinning against other jobs made a module 3-4x slower; restored afterwards. A module opts in
    with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def registry(home, mlflow_template, monkeypatch):
    """A PolicyRegistry on a fresh copy of the migrated MLflow store in `home`."""
    import shutil

    from sdft_ops.mlflow_store import tracking_uri
    from sdft_ops.registry import PolicyRegistry

    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(mlflow_template, home / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(home))
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return PolicyRegistry(home=home, user="tester")
