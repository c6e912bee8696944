"""Training code any EditMGT run reuses: the objective and optimiser (`objective`), the copy-head
initialisation (`init`) and a small VQ trainer (`vq_train`)."""
