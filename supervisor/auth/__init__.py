"""Access control: who is calling (tokens, MLflow passwords) and what they may do (MLflow permissions)."""
