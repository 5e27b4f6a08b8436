"""sdft-ops: Self-Distillation Fine-Tuning (Shenfeld et al. 2026, arXiv 2601.19897) as an
operable pipeline — demo data, the SDFT engine, evaluation, a promotion gate and MLflow tracking.

This package imports no Dagster; the Dagster skin lives in `assets/` and `definitions.py`.
"""

__version__ = "0.1.0"
