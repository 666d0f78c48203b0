"""The API workers' cache of MLflow's answers keeps the last good answer while MLflow is away."""

from __future__ import annotations

import pytest

from supervisor.auth import mlflow_users
from supervisor.auth.mlflow_users import AuthBackendError, TTLCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(mlflow_users.time, "monotonic", c)
    return c


def down() -> str:
    raise AuthBackendError("MLflow's auth API is unreachable")


def test_a_backend_error_reuses_the_last_good_answer_within_the_grace(clock: Clock) -> None:
    cache = TTLCache(ttl=5, stale_seconds=60, stale_on=(AuthBackendError,))
    assert cache.get_or("k", lambda: "READ") == "READ"
    clock.now += 30
    assert cache.get_or("k", down) == "READ"
    # Re-armed for a moment: the next requests do not wait for a hung MLflow again.
    calls: list[int] = []
    assert cache.get_or("k", lambda: calls.append(1) or "MANAGE") == "READ" and calls == []
    clock.now += 3
    assert cache.get_or("k", lambda: "MANAGE") == "MANAGE"  # MLflow back: its new answer wins


def test_past_the_grace_or_without_an_answer_the_error_stands(clock: Clock) -> None:
    cache = TTLCache(ttl=5, stale_seconds=60, stale_on=(AuthBackendError,))
    with pytest.raises(AuthBackendError):
        cache.get_or("never-answered", down)
    cache.get_or("k", lambda: "READ")
    clock.now += 66
    with pytest.raises(AuthBackendError):
        cache.get_or("k", down)


def test_reused_answers_do_not_extend_the_grace(clock: Clock) -> None:
    cache = TTLCache(ttl=5, stale_seconds=20, stale_on=(AuthBackendError,))
    cache.get_or("k", lambda: "READ")
    for _ in range(20):  # MLflow away, asked every 2.4 s
        clock.now += 2.4
        try:
            cache.get_or("k", down)
        except AuthBackendError:
            break
    else:
        raise AssertionError("a stale answer was served past the grace")
    assert clock.now - 1000.0 > 25


def test_other_errors_are_never_hidden(clock: Clock) -> None:
    cache = TTLCache(ttl=5, stale_seconds=60, stale_on=(AuthBackendError,))
    cache.get_or("k", lambda: "READ")
    clock.now += 6

    def broken() -> str:
        raise ValueError("bug")

    with pytest.raises(ValueError):
        cache.get_or("k", broken)


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

    users = mlflow_users.MlflowUsers("http://127.0.0.1:1", "admin", "pw", ttl=0)
    users.session = FlakySession(requests.ConnectionError("Connection aborted: RemoteDisconnected"))  # type: ignore[assignment]
    assert users.user("ann") == mlflow_users.User("ann", False)
    users.session = FlakySession(requests.ConnectionError("refused"), failures=2)  # type: ignore[assignment]
    with pytest.raises(AuthBackendError):
        users.user("ann")


def test_a_timeout_is_not_waited_for_twice() -> None:
    import requests

    users = mlflow_users.MlflowUsers("http://127.0.0.1:1", "admin", "pw", ttl=0)
    users.session = session = FlakySession(requests.ReadTimeout("read timed out"))  # type: ignore[assignment]
    with pytest.raises(AuthBackendError):
        users.user("ann")
    assert session.calls == 1
