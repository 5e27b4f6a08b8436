"""sdft-ops: Self-Distillation Fine-Tuning (Shenfeld et al. 2026, arXiv 2601.19897) as an
operable pipeline — demo data, the SDFT engine, evaluation, a promotion gate and MLflow tracking.

This package imports no Dagster; the Dagster skin lives in `assets/` and `definitions.py`.
"""

__version__ = "0.1.0"

import os as _os

# Offline unless the user opts in (export HF_HUB_OFFLINE=0): nothing is downloaded at run time,
# and a misspelt hub id fails at once instead of after a minute of hub retries. Set before
# huggingface_hub is imported, which reads it once.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
