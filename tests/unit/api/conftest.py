"""The API with access control on, MLflow's users faked: one builder for every access test."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from pathlib import Path

from flask import Flask

from supervisor.api.app import create_app
from supervisor.auth.access import Access
from supervisor.registry import RegistryModel, RegistryVersion
from supervisor.settings import Settings
from supervisor.store import Store
from tests.support import FakeRegistry, FakeUsers
from tests.unit.api.test_legacy import FakeRuntime


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def access_app(tmp_path: Path, models: Iterable[str], grants: dict[tuple[str, str], str]) -> tuple[Flask, Store]:
    """An app whose users are root (admin), reader and boss, with `grants` as (user, model) -> right."""
    settings = Settings(data_dir=tmp_path)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    users = FakeUsers()
    users.add("root", "rootpw", admin=True)
    users.add("reader", "readerpw")
    users.add("boss", "bosspw")
    users.grants.update(grants)
    registry = FakeRegistry({n: RegistryModel(n, (RegistryVersion("1"),)) for n in models})
    app = create_app(settings, store=store, registry=registry, runtime=FakeRuntime(),  # type: ignore[arg-type]
                     access=Access(settings, store, users))  # type: ignore[arg-type]
    return app, store
