"""Tokens are random, kept only as a hash, and stop working when revoked or expired."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from supervisor.auth import tokens
from supervisor.store import Store


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 's.db'}")


def test_create_verify_list_revoke(store: Store) -> None:
    value, info = tokens.create_token(store, "alice", "laptop")
    other, _ = tokens.create_token(store, "bob")
    assert value != other and len(value) == 67 and value.startswith("msk")
    assert tokens.verify_token(store, value) == "alice"
    assert tokens.verify_token(store, other) == "bob"
    # Only a hash is stored.
    assert all(value not in repr(r) and r.token_hash != value for r in store.tokens())
    assert [t.token_id for t in tokens.list_tokens(store, "alice")] == [info.token_id]
    assert {t.owner for t in tokens.list_tokens(store, None)} == {"alice", "bob"}
    with pytest.raises(tokens.TokenError):
        tokens.revoke_token(store, info.token_id, "bob")  # not bob's
    assert tokens.verify_token(store, value) == "alice"
    tokens.revoke_token(store, info.token_id, "alice")
    assert tokens.verify_token(store, value) is None
    assert tokens.list_tokens(store, "alice") == []
    with pytest.raises(tokens.TokenError):
        tokens.revoke_token(store, info.token_id, None)  # already revoked


def test_near_misses_are_refused(store: Store) -> None:
    value, _ = tokens.create_token(store, "alice")
    other, _ = tokens.create_token(store, "bob")
    spliced = value[:19] + other[19:]
    for bad in (value[:-1], value + "0", value.upper(), spliced, "msk", "", value[3:], "x" + value[1:]):
        assert tokens.verify_token(store, bad) is None, bad


def test_expiry(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # A clock moved by hand: with a real one, a write stalled on a busy disk between creating
    # and checking could outlast the short lifetime and fail the "still valid" step.
    now = [time.time()]
    monkeypatch.setattr(tokens, "time", SimpleNamespace(time=lambda: now[0]))
    value, info = tokens.create_token(store, "alice", lifetime_seconds=0.2)
    assert info.expiry_time > info.creation_time
    assert tokens.verify_token(store, value) == "alice"
    now[0] += 0.3
    assert tokens.verify_token(store, value) is None
    with pytest.raises(tokens.TokenError):
        tokens.create_token(store, "alice", lifetime_seconds=-1)


@pytest.mark.parametrize("lifetime", [1.4749959427140329e307, float("inf"), float("nan"), 10**30])
def test_absurd_lifetimes_are_refused_not_overflowed(store: Store, lifetime: float) -> None:
    # Found by schemathesis: 1.47e307 s overflowed the millisecond conversion (HTTP 500).
    with pytest.raises(tokens.TokenError):
        tokens.create_token(store, "alice", lifetime_seconds=lifetime)
    assert tokens.list_tokens(store, "alice") == []
