"""Shared fixtures: tiny random models (instant, in code) and an isolated data home."""

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
