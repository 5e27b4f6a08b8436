"""`UpdateConfig`: everything one domain update needs, one pydantic model per concern.

    model     ModelSpec      the base model (used when there is no champion yet)
    train     SDFTConfig     the engine (SDFT or the SFT baseline)
    ceiling   CeilingConfig  the teacher-ceiling pre-flight check
    eval      EvalConfig     which suites, how big, how precise
    gate      GatePolicy     when a candidate may replace the champion
    tracking  TrackingConfig MLflow: where, which experiment, which registered model
    replay    ReplayConfig   demonstrations of the champion's lineage mixed into the update

Load from YAML (`configs/update.yaml`, `configs/demo.yaml`); a `gate` given as a string is a
path to a gate policy YAML, resolved relative to the config file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdft_ops.engine.config import MAX_NEW_TOKENS, SDFTConfig
from sdft_ops.gate import GatePolicy
from sdft_ops.jsonl import validation_error_lines
from sdft_ops.models import ModelSpec
from sdft_ops.replay import ReplayConfig

EVAL_PRECISIONS = ("model", "bf16_autocast")


class CeilingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    sample_size: int = Field(16, ge=1)
    floor: float = Field(0.3, ge=0.0, le=1.0, description="warn (or refuse) below this")
    strict: bool = False


class EvalConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    prior_sizes: dict[str, int | None] = Field(
        default_factory=dict, description="items per prior suite (0 drops it, null = all)")
    safety: bool = True
    safety_items: int | None = Field(None, ge=1, description="seeded subset per safety suite")
    instruction_following: bool = True
    instruction_following_items: int | None = Field(None, ge=1, description="seeded subset")
    drift: bool = True
    drift_items: int | None = Field(None, ge=1, description="seeded subset of the drift answers")
    drift_file: str | None = Field(
        None, description="drift answers of *your* base model (JSONL id/prompt/answer/provenance);"
        " None: the shipped SmolLM2-135M-Instruct answers")
    domain_items: int | None = Field(None, ge=1, description="cap on held-out items per domain")
    domain_max_new_tokens: int | None = Field(
        None, ge=1, le=MAX_NEW_TOKENS, description="cap on answer length for domain suites (None: "
        "each domain's own)")
    batch_size: int = Field(16, ge=1)
    precision: str = Field("bf16_autocast", pattern="^(model|bf16_autocast)$")
    n_boot: int = Field(2000, ge=100)
    seed: int = 0
    stop_at_first_reject: bool = Field(
        False, description="stop scoring a candidate once one of the gate's sequential tests "
        "settles a drop (the verdict is then reject whatever else is scored); the report says so "
        "and holds only the suites scored. The required suites' tests run first")


class TrackingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tracking_uri: str | None = Field(None, description="None: sqlite in the data home")
    experiment: str = "sdft-ops"
    model_name: str = "sdft-ops-policy"


class UpdateConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelSpec = ModelSpec()
    train: SDFTConfig = SDFTConfig()
    ceiling: CeilingConfig = CeilingConfig()
    eval: EvalConfig = EvalConfig()
    gate: GatePolicy = GatePolicy()
    tracking: TrackingConfig = TrackingConfig()
    replay: ReplayConfig = ReplayConfig()
    heldout_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="held-out share of a user's demo file (shipped domains "
        "bring their own eval set)")
    scorer: str = Field("exact_match", description="scorer of a user domain's held-out split")

    def merged(self, overrides: dict) -> "UpdateConfig":
        """This config with `overrides` merged in section by section (nested mappings merge,
        anything else replaces), validated again."""
        def merge(base: dict, over: dict) -> dict:
            out = dict(base)
            for key, value in over.items():
                both = isinstance(value, dict) and isinstance(out.get(key), dict)
                out[key] = merge(out[key], value) if both else value
            return out

        return type(self).model_validate(merge(self.model_dump(mode="json"), overrides))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "UpdateConfig":
        path = Path(path)
        try:
            raw: Any = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"cannot read update config {path}: {e}") from e
        if raw is None:  # an empty file (or comments only) is a mistake, not "all defaults"
            raise ValueError(f"update config {path} is empty: give the sections to set (model, "
                             "train, eval, ...; configs/update.yaml lists them), or {} for the "
                             "built-in defaults")
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping of sections (model, train, eval, ...)")
        if isinstance(raw.get("gate"), str):
            raw["gate"] = GatePolicy.from_yaml(path.parent / raw["gate"])
        try:
            return cls.model_validate(raw)
        except ValidationError as e:  # one line: each problem as `field.path: message`
            problems = [line.removeprefix(f"{path}: ") for line in validation_error_lines(e, path)]
            raise ValueError(f"invalid update config {path}: {'; '.join(problems)}") from e
