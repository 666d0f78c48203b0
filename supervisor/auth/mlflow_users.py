"""Users and per-model permissions, asked of MLflow's own auth app over its REST API.

The supervisor keeps no user list of its own: a password is checked by calling MLflow as that
user (``users/current``), and a permission is read with the admin's credentials
(``users/permissions/get``, which resolves grants, roles and ``default_permission`` exactly the
way MLflow's own checks do). Talking HTTP rather than opening MLflow's auth database keeps an
external tracking server working. Answers are cached per worker for ``ttl`` seconds, so a busy
API worker asks MLflow about a (user, model) pair at most once per TTL; a password is cached
only as an HMAC under a key that lives in this process.

When MLflow does not answer (restarting, stopped, overloaded), an answer it gave within the last
``stale_seconds`` is used again instead of failing: serving must not stop because the registry
is away (issue 7), and nothing can be revoked in MLflow while it is away either. Such a stale
answer is re-armed for a few seconds, so a hung MLflow costs one slow refresh per key now and
then, not a timeout per request.
"""

from __future__ import annotations

import hmac
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


class AuthBackendError(Exception):
    """MLflow's auth app did not give an answer (down, misconfigured, not an auth server)."""


@dataclass(frozen=True)
class User:
    username: str
    is_admin: bool


class TTLCache:
    """A small dict with expiry; bounded so a flood of bad credentials cannot grow it forever.

    ``stale_on``: errors of ``compute`` that mean "no answer now"; the last good value of the key
    is returned instead while it is at most ``stale_seconds`` past its expiry."""

    RETRY_STALE_AFTER = 2.0  # seconds a reused stale answer is kept before MLflow is asked again

    def __init__(self, ttl: float, max_size: int = 10000, stale_seconds: float = 0.0,
                 stale_on: tuple[type[Exception], ...] = ()) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self.stale_seconds = stale_seconds
        self.stale_on = stale_on
        # key -> (valid until, value, when the answer was last fresh)
        self._data: dict[Any, tuple[float, Any, float]] = {}
        self._lock = threading.Lock()

    def get_or(self, key: Any, compute: Callable[[], T]) -> T:
        if self.ttl <= 0:
            return compute()
        now = time.monotonic()
        with self._lock:
            hit = self._data.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]  # type: ignore[no-any-return]
        try:
            value = compute()
        except self.stale_on:
            if hit is None or now - hit[2] > self.ttl + self.stale_seconds:
                raise
            with self._lock:
                self._data[key] = (now + min(self.ttl, self.RETRY_STALE_AFTER), hit[1], hit[2])
            return hit[1]  # type: ignore[no-any-return]
        with self._lock:
            if len(self._data) >= self.max_size:
                self._data = {k: v for k, v in self._data.items() if v[0] > now}
                if len(self._data) >= self.max_size:
                    self._data.clear()
            self._data[key] = (now + self.ttl, value, now)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class MlflowUsers:
    def __init__(self, tracking_uri: str, admin_username: str, admin_password: str, ttl: float,
                 timeout: float = 10.0, stale_seconds: float = 0.0) -> None:
        self.base = tracking_uri.rstrip("/")
        self.admin = (admin_username, admin_password)
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False  # never let a ~/.netrc replace the credentials we send
        self.cache = TTLCache(ttl, stale_seconds=stale_seconds, stale_on=(AuthBackendError,))
        self._key = secrets.token_bytes(32)

    def _get(self, path: str, auth: tuple[str, str], params: dict[str, str] | None = None
             ) -> requests.Response:
        for attempt in (1, 2):
            try:
                return self.session.get(self.base + path, params=params, auth=auth, timeout=self.timeout)
            except requests.Timeout as exc:  # a hung MLflow: asking again would only double the wait
                raise AuthBackendError(f"MLflow's auth API is unreachable: {exc}") from exc
            except requests.ConnectionError as exc:
                # Most often a pooled keep-alive connection MLflow closed just as it was reused
                # (uvicorn drops idle ones after 5 s): a GET on a fresh connection is safe to send.
                if attempt == 2:
                    raise AuthBackendError(f"MLflow's auth API is unreachable: {exc}") from exc
            except requests.RequestException as exc:
                raise AuthBackendError(f"MLflow's auth API is unreachable: {exc}") from exc
        raise AssertionError("unreachable")

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
