"""The one resource every asset uses: where the data lives and which configs apply.

Per deployment, set the fields (Dagster run config, or `SdftOpsResource(...)` in code) or the
environment read when they are used, never at import: `SDFT_OPS_CONFIG` (update YAML),
`SDFT_OPS_INBOX` (folder the inbox sensor watches), `SDFT_OPS_HOME` (data home).
"""

import os
from pathlib import Path

import dagster as dg
import yaml


class SdftOpsResource(dg.ConfigurableResource):
    """Data home, update config (YAML in the repo) and launchpad overrides.

    `overrides_yaml` is YAML merged over the config file, e.g. `train: {learning_rate: 1e-5}` or
    `gate: {domain_rule: {min_gain: 0.05}}` — set it in the launchpad to change one run.
    """

    config_path: str | None = None  # None: $SDFT_OPS_CONFIG, else configs/update.yaml
    home: str | None = None  # None: $SDFT_OPS_HOME, else ./.sdft_ops
    inbox: str | None = None  # None: $SDFT_OPS_INBOX, else ./inbox (watched for demo files)
    overrides_yaml: str = ""

    def config_file(self) -> Path:
        return Path(self.config_path or os.environ.get("SDFT_OPS_CONFIG") or "configs/update.yaml")

    def inbox_dir(self) -> Path:
        return Path(self.inbox or os.environ.get("SDFT_OPS_INBOX") or "inbox")

    def settings(self):
        from sdft_ops.settings import UpdateConfig

        path = self.config_file()
        cfg = UpdateConfig.from_yaml(path) if path.is_file() else UpdateConfig()
        if not self.overrides_yaml.strip():
            return cfg
        overrides = yaml.safe_load(self.overrides_yaml) or {}
        if not isinstance(overrides, dict):
            raise ValueError("overrides_yaml must be a YAML mapping, e.g. 'train: {max_steps: 10}'")
        return cfg.merged(overrides)

    def data_home(self) -> Path:
        from sdft_ops.home import data_home

        return data_home(self.home)

    def registry(self):
        from sdft_ops.registry import PolicyRegistry

        return PolicyRegistry.from_config(self.settings(), self.data_home())

    def submission(self, partition_key: str) -> Path:
        """The validated demonstration file behind a partition (copied there by the sensor)."""
        return self.data_home() / "submissions" / f"{partition_key}.jsonl"
