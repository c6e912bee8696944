"""Evaluation of the shapes model (issue 5)."""
