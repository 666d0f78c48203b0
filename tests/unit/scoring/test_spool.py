"""The scoring server's spool writer: whole lines, large bodies truncated, a retired file never written again."""

from __future__ import annotations

import json
import os
from pathlib import Path

from supervisor.scoring.spool import MAX_BODY, SpoolWriter, record

RID = "0123456789abcdef0123456789abcdef"


def test_a_record_is_one_line_with_the_body_as_it_is_escaped_or_only_its_size() -> None:
    assert record(RID, b'{"predictions": [1]}') == RID.encode() + b' 20 R {"predictions": [1]}\n'
    assert record(RID, b"") == RID.encode() + b" 0 R \n"
    assert record(RID, b"x" * (MAX_BODY + 1)) == RID.encode() + b" %d T\n" % (MAX_BODY + 1)
    escaped = record(RID, b"a\nb\xff")  # a newline in the body: escaped, still one line
    assert escaped.count(b"\n") == 1 and escaped.startswith(RID.encode() + b" 4 J ")
    assert json.loads(escaped.split(b" ", 3)[3]) == "a\nb\ufffd"


def test_appends_go_to_the_file_the_path_names_after_a_rename(tmp_path: Path) -> None:
    path = tmp_path / "v.spool"
    writer = SpoolWriter(str(path))
    assert writer.append(RID, b"one")
    os.rename(path, tmp_path / "retired")  # what the ingester does to retire it
    assert writer.append(RID.replace("0", "1"), b"two")
    assert [x.split(b" ", 3)[3] for x in (tmp_path / "retired").read_bytes().splitlines()] == [b"one"]
    assert [x.split(b" ", 3)[3] for x in path.read_bytes().splitlines()] == [b"two"]


def test_a_spool_that_cannot_be_written_is_reported_not_raised(tmp_path: Path) -> None:
    assert not SpoolWriter(str(tmp_path / "missing-dir" / "v.spool")).append(RID, b"x")
