"""A real Nginx with an inference table: it samples, tells the scoring server which requests to
spool (a client cannot), logs each drawn request, and the ingester turns that into rows."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from supervisor.capture.ingester import Ingester
from supervisor.capture.spool import spool_path
from supervisor.gateway import Gateway
from supervisor.routing import EndpointRoutes, EntityRoute, ModelRoutes, VersionRoute
from supervisor.scoring.spool import HEADER, INLINE_HEADER, INLINE_MAX, SpoolWriter, inline
from supervisor.settings import Settings
from supervisor.store import READY, Store
from tests.support import free_port
from tests.unit.test_gateway import Echo, UnixEcho


class Scoring(Echo):
    """A scoring server stand-in: answers with the capture header it got (padded as the request
    asks) and hands a sampled answer's body over as the real one does: small ones in the answer's
    capture header, larger ones to the spool."""

    spool: SpoolWriter

    def do_POST(self) -> None:  # noqa: N802
        asked = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        body = json.dumps({"predictions": [1], "capture": self.headers.get(HEADER),
                           "pad": "x" * asked.get("pad", 0)}).encode()
        carried = None
        if self.headers.get(HEADER):
            carried = inline(body)
            if carried is None:
                self.spool.append(self.headers[HEADER], body)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if carried is not None:
            self.send_header(INLINE_HEADER, carried)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def system(tmp_path: Path) -> Iterator[tuple[Gateway, Store]]:
    settings = Settings(data_dir=tmp_path, port=free_port(), api_port=free_port(), mlflow_port=free_port(),
                        nginx_bin=shutil.which("nginx") or "/usr/sbin/nginx", auth=False)
    spool = spool_path(settings.spool_dir, "m", "1")
    spool.parent.mkdir(parents=True)
    Scoring.spool = SpoolWriter(str(spool))
    server = UnixEcho(str(tmp_path / "m1.sock"), Scoring)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    for name in ("cap", "half", "plain", "dead"):
        assert store.create_endpoint(f"{name}-id", name, "boss", {"served_entities": []}, [], False)
    store.upsert_deployment("m", "1", state=READY)
    store.upsert_deployment("gone", "1", state=READY)
    gw = Gateway(settings)
    gw.start()
    entity = (EntityRoute("m-1", ("m", "1"), 100),)
    gw.apply_routes([ModelRoutes("m", (VersionRoute("1", "ready", f"unix:{server.server_address}"),), legacy=False),
                     ModelRoutes("gone", (VersionRoute("1", "ready", f"unix:{tmp_path / 'no.sock'}"),), legacy=False)],
                    [EndpointRoutes("cap", entity, capture=1.0), EndpointRoutes("half", entity, capture=0.5),
                     EndpointRoutes("plain", entity),
                     EndpointRoutes("dead", (EntityRoute("gone-1", ("gone", "1"), 100),), capture=1.0)])
    yield gw, store
    gw.stop()
    server.shutdown()
    server.server_close()


def post(gw: Gateway, endpoint: str, body: dict[str, object], **headers: str) -> requests.Response:
    # Sent unescaped (ensure_ascii off): the line must carry any character a body can hold.
    return requests.post(f"{gw.settings.gateway_url}/serving-endpoints/{endpoint}/invocations",
                         data=json.dumps(body, ensure_ascii=False).encode(),
                         headers={"Content-Type": "application/json", **headers}, timeout=30)


def test_drawn_requests_become_rows_and_a_client_cannot_ask_for_capture(system: tuple[Gateway, Store]) -> None:
    gw, store = system
    first = post(gw, "cap", {"inputs": [[1]], "client_request_id": "mine", "note": "tab\t\"q\" \\ \u2028 \u00e9 \x85"})
    assert first.status_code == 200 and len(first.json()["capture"]) == 32
    assert INLINE_HEADER not in first.headers  # the gateway keeps the carried body to itself
    large = post(gw, "cap", {"inputs": [[9]], "client_request_id": "large", "pad": INLINE_MAX})
    assert large.status_code == 200 and len(large.content) > INLINE_MAX and INLINE_HEADER not in large.headers
    forged = post(gw, "plain", {"inputs": [[2]]}, **{HEADER: "f" * 32})
    assert forged.status_code == 200 and forged.json()["capture"] is None
    drawn = sum(post(gw, "half", {"inputs": [[n]]}).json()["capture"] is not None for n in range(200))
    assert post(gw, "dead", {"inputs": [[3]]}).status_code == 503  # its model does not answer
    assert 60 <= drawn <= 140  # 100 expected; binomial(200, 0.5) leaves this range with p < 1e-8

    ingester = Ingester(gw.settings, store, reopen=gw.reopen_logs)
    added = 0
    for _ in range(100):  # Nginx writes a line just after the answer left: a client may be quicker
        added += ingester.poll()
        if added >= 3 + drawn:
            break
        time.sleep(0.1)
    assert added == 3 + drawn
    row, big = sorted(store.inference_rows("cap-id"), key=lambda r: r["client_request_id"] != "mine")
    assert big["client_request_id"] == "large" and big["response"] == large.text  # from the spool
    assert (row["client_request_id"], row["status_code"], row["model"], row["version"], row["served_entity"]) == (
        "mine", 200, "m", "1", "m-1")
    assert json.loads(row["request"]) == {"inputs": [[1]], "client_request_id": "mine",
                                          "note": "tab\t\"q\" \\ \u2028 \u00e9 \x85"}
    assert json.loads(row["response"])["capture"] == row["request_id"] and row["sampling_fraction"] == 1.0
    half = list(store.inference_rows("half-id"))
    assert len(half) == drawn and {r["sampling_fraction"] for r in half} == {0.5}
    assert all(r["response"] for r in half) and list(store.inference_rows("plain-id")) == []
    (dead,) = store.inference_rows("dead-id")
    assert (dead["status_code"], dead["response"], dead["model"], dead["request_truncated"]) == (503, None, "gone", False)
    assert json.loads(dead["request"]) == {"inputs": [[3]]}
