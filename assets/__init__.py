"""Dagster assets: a thin skin over `sdft_ops` (heavy imports stay inside asset bodies)."""
