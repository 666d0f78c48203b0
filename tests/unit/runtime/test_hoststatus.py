"""A status record rewritten by model code misreports nothing but itself."""

from __future__ import annotations

from supervisor.runtime import hoststatus


def test_only_wanted_versions_with_checked_fields() -> None:
    record = {"versions": {
        "1": {"state": "running", "pid": 42, "restarts": 2, "last_exit": "x" * 5000, "answering": True},
        "2": {"state": "exploded", "pid": "1; rm -rf /", "restarts": -5, "last_exit": {"a": 1}, "old_groups": "x"},
        "other-model": {"state": "running", "pid": 7},
    }}
    got = hoststatus.versions_of(record, ["1", "2", "3"])
    assert set(got) == {"1", "2"}
    assert got["1"]["pid"] == 42 and got["1"]["restarts"] == 2 and len(got["1"]["last_exit"]) == hoststatus.MAX_TEXT
    assert got["2"] == {"state": "stopped", "pid": None, "restarts": 0, "last_exit": None, "answering": False,
                        "workers": 0, "old_groups": []}
    procs = hoststatus.processes(got)
    assert procs["1"].running and not procs["2"].running


def test_garbage_reads_as_nothing_known() -> None:
    for junk in (None, {}, {"versions": []}, {"versions": {"1": "running"}}):
        assert hoststatus.versions_of(junk, ["1"]) == {}
    assert hoststatus.versions_of({"versions": {"1": {"pid": True, "restarts": True}}}, ["1"])["1"]["pid"] is None


def test_unhashable_values_read_as_not_known() -> None:
    # Found by the hostile suite: a list or an object as the state failed every reconcile tick.
    for state in (["running"], {"running": 1}):
        got = hoststatus.versions_of({"versions": {"1": {"state": state}}}, ["1"])
        assert got["1"]["state"] == "stopped"
