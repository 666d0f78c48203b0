"""Exactly one credential per request, in the three forms clients send; anything else is refused."""

from __future__ import annotations

import base64

import pytest

from supervisor.auth.credentials import BadCredential, Credential, parse, parse_headers


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_three_forms() -> None:
    assert parse("Bearer msk0123") == Credential("token", "msk0123")
    assert parse("bearer msk0123") == Credential("token", "msk0123")
    assert parse(basic("token", "msk0123")) == Credential("token", "msk0123")
    assert parse(basic("alice", "pa:ss wörd")) == Credential("password", "pa:ss wörd", "alice")
    assert parse(None) is None and parse("") is None
    assert parse_headers([]) is None


@pytest.mark.parametrize("header", [
    "Bearer a, Basic b", "Bearer a b", "Bearer", "Bearer ", "Digest x", "Token abc", "Bearer a\tb",
    "Bearer tok\x00", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(),
    basic("", "pw"), basic("alice", ""), basic("token", "bad token"), "Basic " + base64.b64encode(b"\xff:\xfe").decode(),
    "Bearer t\u00e9",
])
def test_refused(header: str) -> None:
    with pytest.raises(BadCredential):
        parse(header)


def test_two_headers_are_refused() -> None:
    with pytest.raises(BadCredential):
        parse_headers(["Bearer a", "Bearer a"])


def test_repr_hides_the_secret() -> None:
    assert "s3cret" not in repr(Credential("password", "s3cret", "alice"))
