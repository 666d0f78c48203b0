"""The gateway reaches a box's socket only through a verified link the box cannot change."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from supervisor.runtime import sockets


def listening(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)
    return s


def test_a_symlink_put_in_place_of_the_socket_is_never_published(tmp_path: Path) -> None:
    base = tmp_path / "s"
    (base / "model").mkdir(parents=True)
    (base / "other").mkdir()
    mine, theirs = base / "model" / "1.sock", base / "other" / "1.sock"
    a, b = listening(mine), listening(theirs)
    try:
        published = sockets.published_path(base, mine)
        assert published == base / "p" / "model" / "1.sock"
        assert sockets.source_path(base, published) == mine
        assert sockets.publish(mine, published)
        assert os.stat(published).st_ino == os.stat(mine).st_ino
        # The box swaps its socket for a link to another model's: the published link keeps the
        # model's own listener, and a new publish refuses the link.
        os.unlink(mine)
        os.symlink(theirs, mine)
        assert not sockets.publish(mine, published)
        assert os.stat(published).st_ino != os.stat(theirs).st_ino
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(published))
        conn, _ = a.accept()  # the model's own listener got it, not the other one
        conn.close()
        client.close()
        # A server that binds afresh gets a new inode, which the next publish links.
        os.unlink(mine)
        a.close()
        a = listening(mine)
        assert sockets.publish(mine, published) and os.stat(published).st_ino == os.stat(mine).st_ino
        (base / "model" / "2.sock").write_text("not a socket")
        assert not sockets.publish(base / "model" / "2.sock", base / "p" / "model" / "2.sock")
    finally:
        a.close()
        b.close()
