"""Reading one credential out of an ``Authorization`` header, strictly and without I/O.

Three forms are accepted because clients already send them: ``Bearer <token>`` (the seed's
Python snippet), Basic ``token:<token>`` (the seed's ``curl -u token:$DATABRICKS_TOKEN``) and
Basic ``<mlflow user>:<password>`` (MLflow's own clients). Anything ambiguous is refused rather
than guessed at: two credentials in one header, an unknown scheme, Basic that is not valid
base64 or UTF-8, a token with characters no token of ours has. A refused header is a 401, never
"no credential", so a malformed header can never fall through to a weaker path.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Literal

# The username the seed's curl uses to carry a token in Basic auth.
TOKEN_USERNAME = "token"
# RFC 6750 b64token: what a bearer token may contain at all.
_B64TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]+")


class BadCredential(Exception):
    """The header holds something that is not exactly one credential we understand."""


@dataclass(frozen=True)
class Credential:
    kind: Literal["token", "password"]
    secret: str  # the token, or the password
    username: str = ""  # for passwords only

    def __repr__(self) -> str:  # never print a secret into a log
        return f"Credential({self.kind}, {self.username!r})"


def parse(header: str | None) -> Credential | None:
    """The one credential in ``header``; None when there is no header at all."""
    if header is None or header == "":
        return None
    if "," in header or any(ord(ch) < 0x20 or ord(ch) > 0x7E for ch in header):
        raise BadCredential("The Authorization header must hold exactly one credential")
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if not value or " " in value:
        raise BadCredential("The Authorization header must hold exactly one credential")
    if scheme.lower() == "bearer":
        if not _B64TOKEN.fullmatch(value):
            raise BadCredential("Malformed bearer token")
        return Credential("token", value)
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as exc:
            raise BadCredential("Malformed Basic credentials") from exc
        username, sep, password = decoded.partition(":")
        if not sep or not username or not password:
            raise BadCredential("Basic credentials need a username and a password")
        if username == TOKEN_USERNAME:
            if not _B64TOKEN.fullmatch(password):
                raise BadCredential("Malformed token")
            return Credential("token", password)
        return Credential("password", password, username)
    raise BadCredential(f"Unsupported authorization scheme '{scheme[:20]}'; use Bearer or Basic")


def parse_headers(values: list[str]) -> Credential | None:
    """Like ``parse`` for every ``Authorization`` header of a request: more than one is refused."""
    if len(values) > 1:
        raise BadCredential("Send one Authorization header, not several")
    return parse(values[0] if values else None)
