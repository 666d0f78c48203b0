"""gunicorn's entry point: ``gunicorn supervisor.api.wsgi:app``."""

from supervisor.api.app import create_app

app = create_app()
