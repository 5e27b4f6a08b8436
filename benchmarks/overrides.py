"""`--set KEY=VALUE` for the benchmark scripts: values read as numbers where they are numbers."""

from __future__ import annotations

import yaml


def parse_value(text: str):
    """"0" → int, "3e-4" → float (YAML 1.1 alone reads it as a string), "{r: 16}" → dict."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def parse_sets(pairs: list[str]) -> dict:
    """["learning_rate=3e-4", "max_steps=40"] → {"learning_rate": 0.0003, "max_steps": 40}."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set wants KEY=VALUE, got {pair!r}")
        out[key] = parse_value(value)
    return out
