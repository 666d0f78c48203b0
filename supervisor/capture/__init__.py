"""Inference tables: the gateway's capture log and the versions' spools -> rows in the store."""
