"""Request metrics: Nginx logs each scoring request, the reconciler aggregates, the API exposes."""
