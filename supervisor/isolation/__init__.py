"""Keeping model code in its own box: identity, files, network and limits of a served model."""
