"""Users and per-model permissions, asked of MLflow's own auth app over its REST API.

The supervisor keeps no user list of its own: a password is checked by calling MLflow as that
user (``users/current``), and a permission is read with the admin's credentials
(``users/permissions/get``, which resolves grants, roles and ``default_permission`` exactly the
way MLflow's own checks do). Talking HTTP rather than opening MLflow's auth database keeps an
external tracking server working. Answers are cached per worker for ``ttl`` seconds, so a busy
API worker asks MLflow about a (user, model) pair at most once per TTL; a password is cached
only as an HMAC under a key that lives in this process.
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests

T = TypeVar("T")

# MLflow's permission names, weakest first; DENY and NO_PERMISSIONS grant nothing.
READ_OR_MORE = frozenset({"READ", "USE", "EDIT", "MANAGE"})
# Seconds MLflow is taken as unreachable after a request to it failed.
BACKOFF_SECONDS = 3.0


class AuthBackendError(Exception):
    """MLflow's auth app did not give an answer (down, misconfigured, not an auth server)."""


@dataclass(frozen=True)
class User:
    username: str
    is_admin: bool


@dataclass
class _Entry:
    fetched: float
    value: Any
    compute: Callable[[], Any]
    used: float


class TTLCache:
    """A small dict with expiry; bounded so a flood of bad credentials cannot grow it forever.

    Kept warm: a background thread recomputes every entry that is past half its life and was
    used within ``keep_warm`` seconds, so a key in steady use never expires on the path of a
    request. That matters because MLflow's password hash costs hundreds of milliseconds on a
    busy machine, and because with several API workers each one's copy would otherwise be
    found expired by the one request in a few seconds that Nginx sends it.

    An entry past its TTL is returned only while MLflow cannot answer (``AuthBackendError``),
    and for ``grace`` seconds at most: known callers keep the rights they had during a short
    registry outage, and a removed permission still stops working within ``ttl`` whenever
    MLflow can say so."""

    def __init__(self, ttl: float, max_size: int = 10000, keep_warm: float = 60.0, grace: float = 0.0) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self.keep_warm = keep_warm
        self.grace = grace
        self._data: dict[Any, _Entry] = {}
        self._lock = threading.Lock()
        self._warmer_pid = 0  # the process whose warmer thread runs (threads do not survive fork)

    def get_or(self, key: Any, compute: Callable[[], T]) -> T:
        if self.ttl <= 0:
            return compute()
        now = time.monotonic()
        with self._lock:
            hit = self._data.get(key)
            if hit is not None:
                hit.used = now
                if now - hit.fetched < self.ttl:
                    return hit.value  # type: ignore[no-any-return]
        try:
            value = compute()
        except AuthBackendError:
            if hit is not None and now - hit.fetched < self.ttl + self.grace:
                return hit.value  # type: ignore[no-any-return]
            raise
        self._put(key, _Entry(now, value, compute, now))
        return value

    def _put(self, key: Any, entry: _Entry) -> None:
        with self._lock:
            if len(self._data) >= self.max_size:
                self._data = {k: v for k, v in self._data.items()
                              if entry.fetched - v.fetched < self.ttl + self.grace}
                if len(self._data) >= self.max_size:
                    self._data.clear()
            self._data[key] = entry
            if self.keep_warm > 0 and self._warmer_pid != os.getpid():
                self._warmer_pid = os.getpid()
                threading.Thread(target=self._warm, daemon=True, name="auth-cache-warmer").start()

    def _warm(self) -> None:
        while True:
            time.sleep(max(0.05, self.ttl / 4))
            now = time.monotonic()
            with self._lock:
                due = [(k, e) for k, e in self._data.items()
                       if now - e.fetched >= self.ttl / 2 and now - e.used < self.keep_warm]
            for key, entry in due:
                started = time.monotonic()
                try:
                    value = entry.compute()
                except Exception:  # noqa: BLE001 - the entry ages; its next caller decides (see get_or)
                    continue
                self._put(key, _Entry(started, value, entry.compute, entry.used))

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class MlflowUsers:
    def __init__(self, tracking_uri: str, admin_username: str, admin_password: str, ttl: float,
                 timeout: float = 10.0, grace: float = 0.0) -> None:
        self.base = tracking_uri.rstrip("/")
        self.admin = (admin_username, admin_password)
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False  # never let a ~/.netrc replace the credentials we send
        self.cache = TTLCache(ttl, grace=grace)
        self._key = secrets.token_bytes(32)
        self._unreachable_until = 0.0
        self._last_error = ""

    def _get(self, path: str, auth: tuple[str, str], params: dict[str, str] | None = None
             ) -> requests.Response:
        # After a failure, callers are not made to wait for MLflow's timeout one by one: for a
        # few seconds the answer is "unreachable" at once (known callers then get their last
        # decision, see TTLCache), then MLflow is asked again.
        if time.monotonic() < self._unreachable_until:
            raise AuthBackendError(f"MLflow's auth API was unreachable moments ago: {self._last_error}")
        for attempt in (1, 2):
            try:
                return self.session.get(self.base + path, params=params, auth=auth, timeout=self.timeout)
            except requests.RequestException as exc:
                # A pooled keep-alive connection MLflow closed just as it was reused (uvicorn
                # drops idle ones after 5 s) is not an outage: a GET on a new one is safe. A
                # timeout is not asked again: that would only double the wait for a hung MLflow.
                if attempt == 1 and isinstance(exc, requests.ConnectionError) \
                        and not isinstance(exc, requests.Timeout):
                    continue
                self._last_error = str(exc)
                self._unreachable_until = time.monotonic() + BACKOFF_SECONDS
                raise AuthBackendError(f"MLflow's auth API is unreachable: {exc}") from exc
        raise AssertionError("not reached")

    @staticmethod
    def _json(resp: requests.Response) -> dict[str, Any]:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise AuthBackendError(f"MLflow's auth API answered {resp.status_code} without JSON; "
                                   "is the tracking server started with --app-name basic-auth?")
        return body

    def check_password(self, username: str, password: str) -> User | None:
        """The user when ``password`` is theirs; None when MLflow refuses it."""
        digest = hmac.new(self._key, password.encode(), "sha256").digest()
        return self.cache.get_or(("password", username, digest), lambda: self._check_password(username, password))

    def _check_password(self, username: str, password: str) -> User | None:
        resp = self._get("/api/2.0/mlflow/users/current", (username, password))
        if resp.status_code in (401, 403):
            return None
        if resp.status_code != 200:
            raise AuthBackendError(f"users/current answered {resp.status_code}")
        user = self._json(resp).get("user") or {}
        if user.get("username") != username:
            raise AuthBackendError("users/current answered for another user")
        return User(username, bool(user.get("is_admin")))

    def user(self, username: str) -> User | None:
        """A user by name (for a token's owner); None when MLflow has no such user."""
        return self.cache.get_or(("user", username), lambda: self._user(username))

    def _user(self, username: str) -> User | None:
        resp = self._get("/api/2.0/mlflow/users/get", self.admin, {"username": username})
        if resp.status_code == 404 or (resp.status_code == 400 and "RESOURCE_DOES_NOT_EXIST" in resp.text):
            return None
        if resp.status_code != 200:
            raise AuthBackendError(f"users/get answered {resp.status_code} (are the admin credentials right?)")
        user = self._json(resp).get("user") or {}
        return User(username, bool(user.get("is_admin")))

    def permission(self, username: str, model: str) -> str:
        """The user's effective permission on a registered model: READ, USE, EDIT, MANAGE, NO_PERMISSIONS..."""
        return self.cache.get_or(("perm", username, model), lambda: self._permission(username, model))

    def _permission(self, username: str, model: str) -> str:
        resp = self._get("/api/3.0/mlflow/users/permissions/get", self.admin,
                         {"username": username, "resource_type": "registered_model", "resource_id": model})
        if resp.status_code == 404:
            return "NO_PERMISSIONS"
        if resp.status_code != 200:
            raise AuthBackendError(f"users/permissions/get answered {resp.status_code}: {resp.text[:200]}")
        return str(self._json(resp).get("permission", "NO_PERMISSIONS"))
