"""The supervisor's HTTP API (Flask under gunicorn): the legacy serving API and webhooks."""
