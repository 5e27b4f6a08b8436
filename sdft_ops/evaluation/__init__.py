"""Evaluation: suites (what is measured), metrics (CIs, retention, continual-learning), reports."""
