"""The worker's cache of MLflow's answers: bounded, kept warm off the request path, and a short,
bounded memory of the last answer while MLflow is unreachable."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from supervisor.auth import mlflow_users
from supervisor.auth.mlflow_users import AuthBackendError, MlflowUsers, TTLCache, User
from tests.support import free_port


def test_ttl_cache() -> None:
    calls: list[int] = []
    cache = TTLCache(ttl=60, max_size=2)
    for key in ("a", "a", "b", "c", "a"):
        cache.get_or(key, lambda: calls.append(1) or len(calls))
    assert len(calls) == 4  # "a" once, then again after the bounded cache was cleared
    off = TTLCache(ttl=0)
    off.get_or("a", lambda: calls.append(1))
    off.get_or("a", lambda: calls.append(1))
    assert len(calls) == 6


def test_ttl_cache_serves_its_last_answer_while_mlflow_is_unreachable_for_grace_seconds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The cache's clock, moved by hand: with real sleeps, a test descheduled for a moment would
    # overshoot the grace window and be refused the last answer it is meant to get.
    now = [1000.0]
    monkeypatch.setattr(mlflow_users, "time", SimpleNamespace(monotonic=lambda: now[0], sleep=time.sleep))
    cache = TTLCache(ttl=0.2, keep_warm=0, grace=0.5)
    assert cache.get_or("k", lambda: "READ") == "READ"

    def down() -> str:
        raise AuthBackendError("unreachable")

    now[0] += 0.3  # expired, within grace: the last answer
    assert cache.get_or("k", down) == "READ"
    assert cache.get_or("k", lambda: "NO_PERMISSIONS") == "NO_PERMISSIONS"  # MLflow answers: it wins
    now[0] += 0.8  # past ttl + grace
    with pytest.raises(AuthBackendError):
        cache.get_or("k", down)
    with pytest.raises(AuthBackendError):
        cache.get_or("never seen", down)


def test_ttl_cache_keeps_used_entries_warm_in_the_background() -> None:
    calls: list[float] = []

    def compute() -> int:
        calls.append(time.monotonic())
        return len(calls)

    # The warmer looks every quarter of the TTL and refreshes entries past half of it, so it may
    # be a quarter of the TTL from expiry when it comes: 1 s here (0.1 s at a 0.4 s TTL, which a
    # thread kept waiting on a loaded machine can overrun). The deadline only bounds the loop.
    cache = TTLCache(ttl=4, keep_warm=30)
    assert cache.get_or("k", compute) == 1
    deadline = time.monotonic() + 60
    while len(calls) < 3 and time.monotonic() < deadline:
        assert cache.get_or("k", lambda: pytest.fail("a used entry expired on the request path"))
        time.sleep(0.02)
    assert len(calls) >= 3  # refreshed by the warmer, never by a caller


def test_mlflow_users_stop_asking_an_unreachable_mlflow_for_a_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stopped clock: "a moment" (BACKOFF_SECONDS) cannot run out between the two calls however
    # long a loaded machine takes between them.
    monkeypatch.setattr(mlflow_users, "time", SimpleNamespace(monotonic=lambda: 1000.0, sleep=time.sleep))
    users = MlflowUsers(f"http://127.0.0.1:{free_port()}", "admin", "pw", ttl=0)
    with pytest.raises(AuthBackendError, match="unreachable"):
        users.permission("u", "m")

    def never(*_: object, **__: object) -> None:
        pytest.fail("MLflow was asked again at once")

    # Not asked at all, which says more than an answer in little time (a refused connection is quick).
    users.session = SimpleNamespace(get=never)  # type: ignore[assignment]
    with pytest.raises(AuthBackendError, match="moments ago"):
        users.permission("u", "m")


class FlakySession:
    """Fails the first ``failures`` GETs with ``error``, then answers as MLflow's users/get."""

    def __init__(self, error: Exception, failures: int = 1) -> None:
        self.error, self.failures, self.calls = error, failures, 0

    def get(self, url: str, **_: object) -> object:
        import requests

        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        resp = requests.Response()
        resp.status_code = 200
        resp._content = b'{"user": {"username": "ann", "is_admin": false}}'
        return resp


def test_a_connection_closed_under_a_reused_request_is_asked_again() -> None:
    import requests

    users = MlflowUsers("http://127.0.0.1:1", "admin", "pw", ttl=0)
    users.session = FlakySession(requests.ConnectionError("Connection aborted: RemoteDisconnected"))  # type: ignore[assignment]
    assert users.user("ann") == User("ann", False)
    users.session = FlakySession(requests.ConnectionError("refused"), failures=2)  # type: ignore[assignment]
    with pytest.raises(AuthBackendError):
        users.user("ann")


def test_a_timeout_is_not_waited_for_twice() -> None:
    import requests

    users = MlflowUsers("http://127.0.0.1:1", "admin", "pw", ttl=0)
    users.session = session = FlakySession(requests.ReadTimeout("read timed out"))  # type: ignore[assignment]
    with pytest.raises(AuthBackendError):
        users.user("ann")
    assert session.calls == 1
