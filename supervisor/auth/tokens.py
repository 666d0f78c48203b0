"""Personal access tokens: made at random, shown once, kept only as a hash.

A token is ``msk`` + a 16-hex id + 48 hex of secret (192 random bits). The id finds the row
without scanning; the stored SHA-256 of the whole token is compared with ``hmac.compare_digest``.
A plain hash is enough here (no salt, no slow KDF) because the token is high-entropy random,
not a password a person chose. These functions are what the API, the CLI (through the API) and
the pages all call, so the rules live in one place.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from supervisor.store import Store, TokenRecord

PREFIX = "msk"
_FORMAT = re.compile(rf"{PREFIX}([0-9a-f]{{16}})[0-9a-f]{{48}}")
MAX_COMMENT = 200
# Expiry is stored in milliseconds as a 64-bit integer: a lifetime past a century is a mistake,
# and a huge one (schemathesis sent 1.4e307) would overflow the conversion.
MAX_LIFETIME_SECONDS = 100 * 365 * 86400


class TokenError(Exception):
    """A request about tokens that cannot be done (bad lifetime, unknown token)."""


@dataclass(frozen=True)
class TokenInfo:
    token_id: str
    owner: str
    comment: str
    creation_time: int  # ms
    expiry_time: int  # ms; -1: never
    revoked: bool

    def to_json(self) -> dict[str, Any]:
        # The shape of Databricks' token API (token/list), plus the owner.
        return {"token_id": self.token_id, "comment": self.comment, "creation_time": self.creation_time,
                "expiry_time": self.expiry_time, "created_by_username": self.owner}


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _info(r: TokenRecord) -> TokenInfo:
    return TokenInfo(r.token_id, r.owner, r.comment, r.created, r.expires if r.expires is not None else -1,
                     r.revoked is not None)


def create_token(store: Store, owner: str, comment: str = "", lifetime_seconds: float | None = None
                 ) -> tuple[str, TokenInfo]:
    """A new token for ``owner``: (the token itself, shown this once; its info)."""
    if lifetime_seconds is not None and not 0 < lifetime_seconds <= MAX_LIFETIME_SECONDS:  # NaN fails too
        raise TokenError(f"lifetime_seconds must be positive and at most {MAX_LIFETIME_SECONDS} "
                         "(omit it for a token that does not expire)")
    if len(comment) > MAX_COMMENT:
        raise TokenError(f"comment is longer than {MAX_COMMENT} characters")
    token_id = secrets.token_hex(8)
    token = PREFIX + token_id + secrets.token_hex(24)
    now = int(time.time() * 1000)
    expires = now + int(lifetime_seconds * 1000) if lifetime_seconds is not None else None
    record = store.add_token(token_id, owner, comment, _hash(token), now, expires)
    return token, _info(record)


def list_tokens(store: Store, owner: str | None) -> list[TokenInfo]:
    """The live (not revoked, not expired) tokens of ``owner``; of everyone with None."""
    now = int(time.time() * 1000)
    return [_info(r) for r in store.tokens(owner)
            if r.revoked is None and (r.expires is None or r.expires > now)]


def revoke_token(store: Store, token_id: str, owner: str | None) -> None:
    """Revoke one token of ``owner`` (any owner's with None: admins)."""
    if not store.revoke_token(token_id, owner, int(time.time() * 1000)):
        raise TokenError(f"No token '{token_id[:40]}' to revoke")


def verify_token(store: Store, token: str) -> str | None:
    """The owner of a live token; None for anything else (unknown, revoked, expired, malformed)."""
    m = _FORMAT.fullmatch(token)
    if m is None:
        return None
    record = store.token(m.group(1))
    if record is None or not hmac.compare_digest(record.token_hash, _hash(token)):
        return None
    if record.revoked is not None or (record.expires is not None and record.expires <= time.time() * 1000):
        return None
    return record.owner
