"""Metrics and baselines: how a model is measured, the same way for base and tuned."""
