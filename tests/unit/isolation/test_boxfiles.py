"""What a box wrote is read without following its symlinks, bounded, and only as regular files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from supervisor.isolation import boxfiles


def test_records_and_logs_are_read_when_plain(tmp_path: Path) -> None:
    (tmp_path / "versions").mkdir()
    (tmp_path / "status.json").write_text(json.dumps({"versions": {}}))
    (tmp_path / "versions" / "1.log").write_text("line one\nline two\n")
    assert boxfiles.read_record(tmp_path, "status.json") == {"versions": {}}
    assert boxfiles.tail(tmp_path, "versions/1.log", 9) == "line two\n"


def test_symlinks_anywhere_below_the_root_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(json.dumps({"password": "hunter2"}))
    box = tmp_path / "box"
    box.mkdir()
    os.symlink(secret, box / "status.json")
    os.symlink(tmp_path, box / "versions")  # a directory link: the log path goes through it
    (tmp_path / "1.log").write_text("hunter2")
    assert boxfiles.read_record(box, "status.json") is None
    assert boxfiles.tail(box, "versions/1.log", 1000) == ""
    assert boxfiles.tail(box, "../secret", 1000) == ""


def test_huge_or_odd_records_read_as_nothing(tmp_path: Path) -> None:
    (tmp_path / "status.json").write_text("[" * 10 + "1" + "]" * 10)
    assert boxfiles.read_record(tmp_path, "status.json") is None
    (tmp_path / "big.json").write_text('{"x": "' + "a" * (boxfiles.MAX_RECORD_BYTES + 10) + '"}')
    assert boxfiles.read_record(tmp_path, "big.json") is None
    os.mkfifo(tmp_path / "fifo.json")
    assert boxfiles.read_record(tmp_path, "fifo.json") is None  # never blocks on a FIFO
