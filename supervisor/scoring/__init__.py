"""The scoring server, run inside each version's own Python environment."""
