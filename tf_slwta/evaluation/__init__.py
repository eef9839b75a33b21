"""Evaluation: robustness tables (and, later, certification and figures)."""
