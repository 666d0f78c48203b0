"""Safe identifiers for user-chosen model names.

Registered model names are free text (spaces, quotes, slashes, braces...) and end up in file
paths, Nginx upstream names and container names. Nothing derived from a name is ever used
raw: ``model_id`` is a short readable slug plus a hash of the exact name, so two different
names can never collide and no name can escape a folder or inject a directive.
"""

from __future__ import annotations

import hashlib
import re

_SLUG = re.compile(r"[^a-z0-9]+")


def model_id(name: str) -> str:
    """``iris-classifier-1a2b3c4d``: lowercase ASCII slug (max 40 chars) + 8 hex of sha256(name)."""
    slug = _SLUG.sub("-", name.lower()).strip("-")[:40].strip("-") or "model"
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}"


def upstream_name(name: str, version: str) -> str:
    """An Nginx upstream identifier for one version: only [a-z0-9_]."""
    digest = hashlib.sha256(f"{name}\x00{version}".encode()).hexdigest()[:12]
    return f"ms_{digest}"


def url_digest(*parts: str) -> str:
    """12 hex of a hash of ``parts``: an Nginx identifier piece for user-chosen names."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:12]
