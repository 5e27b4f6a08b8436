"""Dagster definitions for sdft-ops: `dagster dev -f definitions.py` (or `make dev`).

Kept import-light: torch / transformers / mlflow load inside asset and sensor bodies, never here.
"""

import dagster as dg

from assets.base_model import base_model
from assets.resources import SdftOpsResource
from assets.sensors import gating_sensor, inbox_sensor, update_schedule
from assets.updates import champion_promotion, demo_dataset, domain_update_job, eval_results, sdft_checkpoint

defs = dg.Definitions(
    assets=[base_model, demo_dataset, sdft_checkpoint, eval_results, champion_promotion],
    jobs=[domain_update_job],
    sensors=[inbox_sensor, gating_sensor],
    schedules=[update_schedule],
    resources={"sdft_ops": SdftOpsResource()},  # $SDFT_OPS_CONFIG / _INBOX / _HOME, read when used
)
