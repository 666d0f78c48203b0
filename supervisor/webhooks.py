"""MLflow webhooks that wake the reconciler the moment the registry changes.

MLflow (3.3+, SQL backends) can POST to a URL when a version is created or an alias moves. That
only speeds the reconciler up: its schedule re-reads everything anyway (and stage transitions
have no webhook event at all). Registration is idempotent (found by name, updated in place) and
best effort: a registry without webhooks, or one that refuses loopback URLs, just means the
schedule does all the work.
"""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from supervisor.registry import fail_fast_http

log = logging.getLogger("modelserve.webhooks")

WEBHOOK_NAME = "modelserve-reconciler"
EVENTS: list[Any] = [
    "model_version.created",
    "model_version_tag.set",
    "model_version_alias.created",
    "model_version_alias.deleted",
]


def kept_secret(path: Path, make: Callable[[], str] = lambda: secrets.token_urlsafe(32)) -> str:
    """A random secret kept in a file only the owner can read, created on first use."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    path.touch(mode=0o600)
    path.write_text(value)
    return value


def encryption_key(path: Path) -> str:
    """The key the embedded tracking server encrypts webhook secrets with (a Fernet key). It must
    outlive the server: with a new key per start, the stored webhook could not be read back."""
    return kept_secret(path, lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())


def register(tracking_uri: str, url: str, secret: str) -> bool:
    """Create or update our webhook; False (and a log line) when the registry cannot have one."""
    fail_fast_http()
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        for hook in client.list_webhooks():
            if hook.name == WEBHOOK_NAME:
                client.update_webhook(hook.webhook_id, url=url, events=EVENTS, secret=secret, status="ACTIVE")
                return True
        client.create_webhook(WEBHOOK_NAME, url, events=EVENTS, secret=secret, status="ACTIVE",
                              description="Wakes the modelserve reconciler when the registry changes")
        return True
    except Exception as exc:
        log.warning("MLflow webhooks unavailable (%s); relying on the reconcile schedule", exc)
        return False
