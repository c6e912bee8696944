"""Synthetic data for the offline shapes model (issue 5)."""
