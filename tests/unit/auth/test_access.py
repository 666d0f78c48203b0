"""Decisions: admins do everything, READ scores and reads, MANAGE enables; tokens are their owner."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from supervisor.auth import tokens
from supervisor.auth.access import Access, Forbidden, Unauthenticated
from supervisor.settings import Settings
from supervisor.store import Store
from tests.support import FakeUsers


@pytest.fixture()
def access(tmp_path: Path) -> Access:
    users = FakeUsers()
    users.add("root", "rootpw", admin=True)
    users.add("alice", "alicepw")
    users.grants[("alice", "a")] = "READ"
    users.grants[("alice", "m")] = "MANAGE"
    users.grants[("alice", "d")] = "DENY"
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    return Access(Settings(data_dir=tmp_path), store, users)  # type: ignore[arg-type]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_passwords_tokens_and_permissions(access: Access) -> None:
    alice = access.authenticate([basic("alice", "alicepw")])
    assert (alice.username, alice.is_admin, alice.via) == ("alice", False, "password")
    assert access.allowed(alice, "a", "read") and not access.allowed(alice, "a", "manage")
    assert access.allowed(alice, "m", "read") and access.allowed(alice, "m", "manage")
    assert not access.allowed(alice, "d", "read") and not access.allowed(alice, "other", "read")
    with pytest.raises(Forbidden):
        access.require(alice, "a", "manage")
    root = access.authenticate([basic("root", "rootpw")])
    assert access.allowed(root, "anything", "manage")
    value, _ = tokens.create_token(access.store, "alice")
    for header in (f"Bearer {value}", basic("token", value)):
        who = access.authenticate([header])
        assert (who.username, who.via) == ("alice", "token")


@pytest.mark.parametrize("headers", [[], ["Bearer nope"], [basic("alice", "wrong")], [basic("nobody", "x")],
                                     ["Bearer a, Bearer b"], ["Bearer x", "Bearer y"]])
def test_unauthenticated(access: Access, headers: list[str]) -> None:
    with pytest.raises(Unauthenticated):
        access.authenticate(headers)


def test_a_token_dies_with_its_owner(access: Access) -> None:
    value, _ = tokens.create_token(access.store, "alice")
    assert access.users is not None
    del access.users.passwords["alice"]  # type: ignore[attr-defined]
    with pytest.raises(Unauthenticated):
        access.authenticate([f"Bearer {value}"])


def test_auth_off_lets_everyone_in(tmp_path: Path) -> None:
    off = Access(Settings(data_dir=tmp_path, auth=False), Store(f"sqlite:///{tmp_path / 's.db'}"))
    who = off.authenticate([])
    assert who.is_admin and off.allowed(who, "any", "manage")
