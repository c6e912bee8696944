"""Training code: the EditMGT objective, the tiny VQ trainer and the shapes recipe."""
