"""Reading a spool the model wrote: malformed or overlong lines skipped, partial lines wait, retiring loses nothing."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from supervisor.capture.spool import MAX_LINE, SpoolRecord, read_records, retire
from supervisor.scoring.spool import MAX_BODY, SpoolWriter, record

RID = "0123456789abcdef0123456789abcdef"


def rid(n: int) -> str:
    return f"{n:032x}"


def test_whole_records_are_read_and_a_partial_line_waits(tmp_path: Path) -> None:
    path = tmp_path / "v.spool"
    path.write_bytes(record(rid(1), b"a") + record(rid(2), b"x" * (MAX_BODY + 5)) + b'{"id": "' + rid(3).encode())
    got, offset = read_records(path, 0)
    assert got == [SpoolRecord(rid(1), 1, "a"), SpoolRecord(rid(2), MAX_BODY + 5, None)]
    with path.open("ab") as f:
        f.write(b'", "size": 1, "body": "b"}\n')
    assert read_records(path, offset) == ([SpoolRecord(rid(3), 1, "b")], path.stat().st_size)


def test_every_body_comes_back_as_written_and_the_older_json_form_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "v.spool"
    bodies = [b'{"predictions": [1]}', b"", b"two\nlines\r\n", "caf\u00e9 \u2603".encode(), b"bad \xff byte",
              b"x" * MAX_BODY]
    legacy = json.dumps({"id": rid(99), "size": 3, "body": "old"}).encode() + b"\n"
    path.write_bytes(b"".join(record(rid(n), b) for n, b in enumerate(bodies)) + legacy)
    got, _ = read_records(path, 0)
    assert got == [SpoolRecord(rid(n), len(b), b.decode("utf-8", errors="replace")) for n, b in enumerate(bodies)] \
        + [SpoolRecord(rid(99), 3, "old")]


def test_lines_a_model_could_forge_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "v.spool"
    bad = [b"not json", b"[1]", json.dumps({"id": "../etc", "size": 1, "body": "x"}).encode(),
           json.dumps({"id": RID, "size": -1, "body": "x"}).encode(),
           json.dumps({"id": RID, "size": 5, "truncated": True}).encode(),  # small but "truncated"
           json.dumps({"id": RID, "size": 1, "body": 7}).encode(),
           json.dumps({"id": RID, "size": 1, "body": "y" * (MAX_BODY + 1)}).encode(),
           b"../etc 1 R x", RID.encode() + b" -1 R x", RID.encode() + b" 5 T",  # small but "truncated"
           RID.encode() + b" 1 Q x", RID.encode() + b" 1 R", RID.encode() + b" 1 J not-json",
           RID.encode() + b" 1 J 7", RID.encode() + b" 1 R " + b"y" * (MAX_BODY + 1),
           RID.encode() + b" %d T extra" % (MAX_BODY + 1), b"\xff" * 32 + b" 1 R x", RID.encode()]
    path.write_bytes(b"\n".join(bad) + b"\n" + record(rid(9), b"ok"))
    assert read_records(path, 0) == ([SpoolRecord(rid(9), 2, "ok")], path.stat().st_size)


def test_a_line_longer_than_any_record_is_skipped_without_stalling(tmp_path: Path) -> None:
    path = tmp_path / "v.spool"
    path.write_bytes(b"z" * (MAX_LINE + 10))  # no newline yet, already too long
    got, offset = read_records(path, 0)
    assert got == [] and offset == MAX_LINE + 10
    with path.open("ab") as f:
        f.write(b"zz\n" + record(rid(4), b"after"))
    assert read_records(path, offset)[0] == [SpoolRecord(rid(4), 5, "after")]


def test_retiring_under_concurrent_writers_loses_and_repeats_no_record(tmp_path: Path) -> None:
    path = tmp_path / "v.spool"
    writer = SpoolWriter(str(path))
    n = 2000
    written: list[bool] = []

    def write(start: int) -> None:
        written.extend(writer.append(rid(i), b"r") for i in range(start, n, 2))

    threads = [threading.Thread(target=write, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    seen: list[str] = []
    for _ in range(200):  # bounded: retire and drain repeatedly while the writers run
        retired = retire(path)
        if retired is not None:
            seen += [r.request_id for r in read_records(retired, 0)[0]]
            retired.unlink()
        if not any(t.is_alive() for t in threads):
            break
    for t in threads:
        t.join(timeout=60)
    last = retire(path)
    if last is not None:
        seen += [r.request_id for r in read_records(last, 0)[0]]
    assert all(written) and len(written) == n
    assert sorted(seen) == sorted(rid(i) for i in range(n))


def test_nothing_to_retire(tmp_path: Path) -> None:
    assert retire(tmp_path / "v.spool") is None


def test_a_symlink_or_fifo_in_the_models_folder_is_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(record(rid(1), b"not the model's to read"))
    (tmp_path / "v.spool").symlink_to(secret)
    retired = retire(tmp_path / "v.spool")
    assert retired is not None and read_records(retired, 0) == ([], 0)
    os.mkfifo(tmp_path / "f.spool")
    fifo = retire(tmp_path / "f.spool")
    assert fifo is not None and read_records(fifo, 0) == ([], 0)
