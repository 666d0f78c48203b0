"""The scoring server's spool writer: whole lines, large bodies truncated, a retired file never written again."""

from __future__ import annotations

import json
import os
from pathlib import Path

from supervisor.scoring.spool import MAX_BODY, SpoolWriter, record

RID = "0123456789abcdef0123456789abcdef"


def test_a_record_is_one_json_line_with_the_body_or_its_size() -> None:
    small = json.loads(record(RID, b'{"predictions": [1]}'))
    assert small == {"id": RID, "size": 20, "body": '{"predictions": [1]}'}
    big = record(RID, b"x" * (MAX_BODY + 1))
    assert big.endswith(b"\n") and big.count(b"\n") == 1
    assert json.loads(big) == {"id": RID, "size": MAX_BODY + 1, "truncated": True}
    assert json.loads(record(RID, b"a\nb\xff"))["body"] == "a\nb\ufffd"  # newlines escaped: still one line


def test_appends_go_to_the_file_the_path_names_after_a_rename(tmp_path: Path) -> None:
    path = tmp_path / "v.spool"
    writer = SpoolWriter(str(path))
    assert writer.append(RID, b"one")
    os.rename(path, tmp_path / "retired")  # what the ingester does to retire it
    assert writer.append(RID.replace("0", "1"), b"two")
    assert [json.loads(x)["body"] for x in (tmp_path / "retired").read_bytes().splitlines()] == ["one"]
    assert [json.loads(x)["body"] for x in path.read_bytes().splitlines()] == ["two"]


def test_a_spool_that_cannot_be_written_is_reported_not_raised(tmp_path: Path) -> None:
    assert not SpoolWriter(str(tmp_path / "missing-dir" / "v.spool")).append(RID, b"x")
