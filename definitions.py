"""Dagster definitions for sdft-ops: `dagster dev -f definitions.py` (or `make dev`).

Kept import-light: torch / transformers load inside asset bodies, never here.
"""

import dagster as dg

from assets.base_model import base_model

defs = dg.Definitions(assets=[base_model])
