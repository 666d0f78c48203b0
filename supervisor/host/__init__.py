"""The model host: runs every version of one model, one scoring server process each."""
