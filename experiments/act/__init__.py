"""Pieces of the action classification task (experiments.action)."""
