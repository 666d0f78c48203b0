"""A model version's scoring server: MLflow's scoring protocol, old and new, over stdlib HTTP.

It runs inside the version's own environment (the model's MLflow 2.x or 3.x, its pandas), so it
imports nothing from the supervisor and adds no dependency: the HTTP server is the stdlib's
threading server speaking HTTP/1.1 with keep-alive (Nginx keeps upstream connections open).
It accepts a strict superset of what MLflow's servers accept, so that both old and new clients
work: the 2.x/3.x JSON keys and CSV (answered ``{"predictions": ...}``) and the 1.x forms the
Databricks documentation sends (``format=pandas-records``/``pandas-split``, bare lists and split
dicts, ``json-numpy-split``), answered with a bare list as 1.x did. A client's mistake is always
a JSON 4xx, never a 500 and never a crash. Work that can be done once (loading, reading the input
schema, inspecting ``predict``, deciding whether MLflow's per-request schema enforcement can be
skipped: ``direct.py``) is done at start-up; concurrent requests share predict calls
(``batching.py``); float rows become frames cheaply (``frames.py``). Those siblings are imported
from this file's own folder, so the whole folder is what a runtime must ship.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import gc
import inspect
import io
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

try:  # orjson is faster; it is optional because the model's environment decides
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None  # type: ignore[assignment]

# Run as a script inside the model's environment (the usual way) or imported as part of the
# supervisor package (tests): the sibling modules are found either way.
if __package__:
    from . import handoff, spool, v2
    from .batching import ROW_INDEPENDENT, Batcher
    from .direct import DirectPredict, loader_module
    from .frames import column_index, float_frame, records_frame
else:  # pragma: no cover - exercised by the real server processes
    import handoff  # type: ignore[import-not-found,no-redef]
    import spool  # type: ignore[import-not-found,no-redef]
    import v2  # type: ignore[import-not-found,no-redef]
    from batching import ROW_INDEPENDENT, Batcher  # type: ignore[import-not-found,no-redef]
    from direct import DirectPredict, loader_module  # type: ignore[import-not-found,no-redef]
    from frames import column_index, float_frame, records_frame  # type: ignore[import-not-found,no-redef]

MAX_BODY = 64 * 1024 * 1024
NEW_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
CONTENT_TYPES = ["application/json", "text/csv", "application/json-numpy-split"]
FORMATS = ["pandas-records", "pandas-split"]
PREDICT_ERROR = ("Encountered an unexpected error while evaluating the model. Verify that the serialized input "
                 "Dataframe is compatible with the model for inference.")


class ClientError(Exception):
    def __init__(self, status: int, message: str, error_code: str = "BAD_REQUEST") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code


# --- request parsing -----------------------------------------------------------------------
def parse_content_type(header: str | None) -> tuple[str, dict[str, str]]:
    if not header:
        return "application/json", {}
    parts = [p.strip() for p in header.split(";")]
    params = {}
    for p in parts[1:]:
        if not p:
            continue
        key, _, value = p.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return parts[0].lower(), params


def _unsupported(content_type: str) -> ClientError:
    return ClientError(
        415,
        f"This predictor only supports the following content types: Types: {CONTENT_TYPES}; "
        f"Formats: {FORMATS}. Got '{content_type}'.",
        "UNSUPPORTED_MEDIA_TYPE",
    )


def _load_json(text: str) -> Any:
    if orjson is not None:
        try:
            return orjson.loads(text)
        except (ValueError, TypeError):
            # orjson is strict JSON; MLflow's servers use the stdlib's parser, which also takes
            # NaN/Infinity (what Python's json.dumps writes for them) and integers past 64 bits.
            pass
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ClientError(400, f"Invalid input. Ensure that input is a valid JSON formatted string. Error: {exc}")


def _split_frame(obj: Any, where: str) -> pd.DataFrame:
    if not isinstance(obj, dict):
        raise ClientError(400, f"Invalid input. Dataframe split format must be a dictionary. Got {type(obj).__name__}"
                               f" in {where}.")
    if "data" not in obj or set(obj) - {"columns", "index", "data"}:
        raise ClientError(400, "Dataframe split format must have 'data' field and optionally 'columns' and 'index' "
                               f"fields. Got {sorted(obj)}.")
    data = obj["data"]
    if data is not None and not isinstance(data, list):  # null: no rows, as MLflow reads it
        raise ClientError(400, "Dataframe split 'data' must be a list of rows.")
    columns, index = obj.get("columns"), obj.get("index")
    if columns is not None and not isinstance(columns, list):
        raise ClientError(400, "Dataframe split 'columns' must be a list.")
    if index is not None and (not isinstance(index, list) or len(index) != len(data or [])):
        # pandas would repeat a short 'data' along a longer index; a client means no such thing.
        raise ClientError(400, "Dataframe split 'index' must be a list as long as 'data'.")
    if index is None and data is not None:
        fast = float_frame(data, columns)
        if fast is not None:
            return fast
    try:
        return pd.DataFrame(data=data, columns=column_index(columns) if columns else columns, index=index)
    except Exception as exc:
        raise ClientError(400, f"Provided dataframe_split field is not a valid dataframe representation: {exc}")


def _records_frame(obj: Any, columns: list[str] | None) -> pd.DataFrame:
    if not isinstance(obj, list):
        raise ClientError(400, "Invalid input. Dataframe records format must be a list of records. "
                               f"Got {type(obj).__name__}.")
    try:
        if obj and all(isinstance(r, list) for r in obj):
            width = len(obj[0])
            cols = columns if columns and len(columns) == width and all(len(r) == width for r in obj) else None
            return pd.DataFrame(obj, columns=cols)
        fast = records_frame(obj)
        if fast is not None:
            return fast
        if not all(isinstance(r, dict) for r in obj):
            raise ClientError(400, "Invalid input. Each record must be a JSON object (or every record a list).")
        return pd.DataFrame.from_records(obj) if obj else pd.DataFrame()
    except ClientError:
        raise
    except Exception as exc:
        raise ClientError(400, f"Failed to parse input as a Pandas DataFrame: {exc}")


def _tf_serving(obj: dict[str, Any], key: str, columns: list[str] | None) -> Any:
    value = obj[key]
    # Row-format records for a model with named columns are plainly a DataFrame.
    if key == "instances" and isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
        return pd.DataFrame.from_records(value)
    if key == "inputs" and isinstance(value, dict) and columns and set(columns) <= set(value):
        try:
            return pd.DataFrame(value)
        except Exception:
            pass
    try:
        from mlflow.utils.proto_json_utils import parse_tf_serving_input

        parsed = parse_tf_serving_input({key: value})
    except Exception as exc:
        raise ClientError(400, f"Invalid input. Failed to parse '{key}': {exc}")
    if isinstance(parsed, dict) and columns and set(columns) <= set(parsed):
        try:
            return pd.DataFrame({k: np.asarray(v).tolist() for k, v in parsed.items()})
        except Exception:
            return parsed
    return parsed


def parse_request(body: bytes, content_type: str | None, columns: list[str] | None
                  ) -> tuple[Any, dict[str, Any] | None, bool, str | None]:
    """-> (data, params, legacy, wrapper key). ``legacy`` answers bare, as MLflow 1.x did."""
    mime, params = parse_content_type(content_type)
    charset = params.pop("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise ClientError(415, "The scoring server only supports UTF-8", "UNSUPPORTED_MEDIA_TYPE")
    fmt = params.pop("format", None)
    if mime not in CONTENT_TYPES or (fmt is not None and fmt not in FORMATS) or (fmt and mime != "application/json"):
        raise _unsupported(content_type or "")
    if not body:
        raise ClientError(400, "Invalid input. The request body is empty.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientError(400, "Invalid input. The request body is not valid UTF-8.")
    if mime == "text/csv":
        try:
            return pd.read_csv(io.StringIO(text)), None, False, "predictions"
        except Exception as exc:
            raise ClientError(400, "Failed to parse input as a Pandas DataFrame. Ensure that the input is a valid "
                                   f"CSV-formatted Pandas DataFrame produced using DataFrame.to_csv(): {exc}")
    obj = _load_json(text)
    if mime == "application/json-numpy-split":
        return _split_frame(obj, "the request").infer_objects(), None, True, None
    if fmt == "pandas-records":
        return _records_frame(obj, columns), None, True, None
    if fmt == "pandas-split":
        if isinstance(obj, dict) and set(obj) == {"dataframe_split"}:
            return _split_frame(obj["dataframe_split"], "dataframe_split"), None, True, None
        return _split_frame(obj, "the request"), None, True, None
    if isinstance(obj, list):
        return _records_frame(obj, columns), None, True, None
    if not isinstance(obj, dict):
        raise ClientError(400, "Invalid input. The input must be a JSON dictionary with exactly one of the input "
                               f"fields {set(NEW_KEYS)}. Received unexpected input type '{type(obj).__name__}'.")
    keys = [k for k in NEW_KEYS if k in obj]
    if len(keys) > 1:
        raise ClientError(400, "Invalid input. The input must be a JSON dictionary with exactly one of the input "
                               f"fields {set(NEW_KEYS)}. Received dictionary with input fields: {keys}.")
    if not keys:
        if "data" in obj:  # a bare 1.x split dict
            return _split_frame(obj, "the request"), None, True, None
        raise ClientError(400, "Invalid input. The input must be a JSON dictionary with exactly one of the input "
                               f"fields {set(NEW_KEYS)}. Received dictionary with input fields: {sorted(obj)}.")
    extra = obj.get("params")
    if extra is not None and not isinstance(extra, dict):
        raise ClientError(400, "Invalid input. 'params' must be a JSON object.")
    key = keys[0]
    if key == "dataframe_split":
        data: Any = _split_frame(obj[key], key)
    elif key == "dataframe_records":
        data = _records_frame(obj[key], columns)
    else:
        data = _tf_serving(obj, key, columns)
    return data, extra, False, "predictions"


# --- predictions -> JSON -------------------------------------------------------------------
def jsonable(value: Any) -> Any:
    if isinstance(value, pd.DataFrame):
        return [{str(k): jsonable(v) for k, v in row.items()} for row in value.to_dict(orient="records")]
    if isinstance(value, (pd.Series, pd.Index)):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist()) if value.dtype.kind in "fcOMmSU" else value.tolist()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, (dt.datetime, dt.date, pd.Timestamp)):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if value is pd.NaT or value is None:
        return None
    if isinstance(value, (str, int, bool)):
        return value
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def dumps(value: Any) -> bytes:
    if orjson is not None:
        return orjson.dumps(value)
    return json.dumps(value, separators=(",", ":")).encode()


# --- the model -----------------------------------------------------------------------------
class Scorer:
    """The loaded model and everything about it worked out once, at start-up."""

    def __init__(self, model_dir: str, batching: str = "auto", max_batch_rows: int = 1000,
                 batch_window: float = 0.002, direct: bool = True) -> None:
        import mlflow
        import mlflow.pyfunc

        self.mlflow_version = mlflow.__version__
        self.model = mlflow.pyfunc.load_model(model_dir)
        self.flavor = loader_module(self.model)
        self.columns: list[str] | None = None
        try:
            schema = self.model.metadata.get_input_schema()
            if schema is not None and schema.has_input_names():
                self.columns = list(schema.input_names())
        except Exception:
            self.columns = None
        try:
            self.takes_params = "params" in inspect.signature(self.model.predict).parameters
        except (TypeError, ValueError):
            self.takes_params = False
        self.column_idx = column_index(self.columns) if self.columns else None
        self.direct = DirectPredict.build(self.model) if direct else None
        if batching not in ("auto", "on", "off"):
            raise ValueError(f"batching must be auto, on or off, not {batching!r}")
        self.batching = batching == "on" or (batching == "auto" and self.flavor in ROW_INDEPENDENT)
        self.batcher = Batcher(self._call, max_batch_rows, batch_window) if self.batching else None

    def describe(self) -> str:
        return (f"flavor {self.flavor or '?'}, micro-batching {'on' if self.batcher else 'off'}, "
                f"schema enforcement {'precomputed' if self.direct else 'by MLflow per request'}")

    def _call(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        if self.direct is not None and not params and self.direct.accepts(data):
            return self.direct.predict(data)
        if params and self.takes_params:
            return self.model.predict(data, params=params)
        if params:
            print("modelserve: this model's predict takes no params; ignoring them", file=sys.stderr)
        return self.model.predict(data)

    def predict(self, data: Any, params: dict[str, Any] | None, announced: bool = False) -> Any:
        if (isinstance(data, pd.DataFrame) and self.columns and data.columns is not self.column_idx
                and list(data.columns) != self.columns and set(self.columns) <= set(data.columns)):
            data = data[self.columns + [c for c in data.columns if c not in self.columns]]
        batcher = self.batcher
        try:
            if (batcher is not None and not params and isinstance(data, pd.DataFrame)
                    and 0 < len(data) < batcher.max_rows):
                handed, announced = announced, False  # submit() takes the announcement over
                return batcher.submit(data, announced=handed)
            return self._call(data, params)
        except ClientError:
            raise
        except Exception as exc:
            code = getattr(exc, "error_code", None)
            text = str(getattr(exc, "message", None) or exc)
            if code and code != "INTERNAL_ERROR":
                raise ClientError(400, text, code)
            raise ClientError(400, f"{PREDICT_ERROR} Error: {type(exc).__name__}: {text}")
        finally:
            if announced and batcher is not None:
                batcher.withdraw()

    def score(self, body: bytes, content_type: str | None) -> bytes:
        # Announced before parsing, so the batch collector knows company is on its way.
        if self.batcher is not None:
            self.batcher.announce()
        try:
            data, params, legacy, key = parse_request(body, content_type, self.columns)
        except BaseException:
            if self.batcher is not None:
                self.batcher.withdraw()
            raise
        predictions = jsonable(self.predict(data, params, announced=self.batcher is not None))
        return dumps(predictions if legacy or key is None else {key: predictions})

    def score_v2(self, body: bytes, model: str, version: str) -> bytes:
        """An Open Inference Protocol ``infer`` request (``v2.py``), through the same predict."""
        if self.batcher is not None:
            self.batcher.announce()
        try:
            if not body:
                raise ClientError(400, "Invalid input. The request body is empty.")
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise ClientError(400, "Invalid input. The request body is not valid UTF-8.")
            try:
                data, rid = v2.decode(_load_json(text), self.columns)
            except v2.V2Error as exc:
                raise ClientError(400, str(exc))
        except BaseException:
            if self.batcher is not None:
                self.batcher.withdraw()
            raise
        predictions = self.predict(data, None, announced=self.batcher is not None)
        return dumps(v2.encode(predictions, model, version, rid))


# --- HTTP ----------------------------------------------------------------------------------
_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The Date header, formatted once per second rather than once per answer."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        from email.utils import formatdate

        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "modelserve-scoring"
    sys_version = ""
    timeout = 120  # longer than Nginx's upstream keep-alive, shorter than forever for a stalled client
    # Headers and body leave in separate writes; with Nagle's algorithm on, the body then waits
    # for the peer's delayed ACK (~40 ms per request on a kept-alive connection).
    disable_nagle_algorithm = True
    scorer: Scorer
    # The version's capture spool (--capture-spool): the response of a request the gateway sampled
    # for its endpoint's inference table is appended there before it is sent (spool.py).
    capture: spool.SpoolWriter | None = None

    def setup(self) -> None:
        if self.request.family == socket.AF_UNIX:
            self.disable_nagle_algorithm = False  # a TCP option; a Unix socket has no delayed ACK
        super().setup()

    def address_string(self) -> str:
        return self.client_address[0] if isinstance(self.client_address, tuple) else "gateway"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # no access log: one line per request would cost more than the request

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The stdlib answers malformed requests with HTML; clients of a JSON API get JSON, with a
        # status line even when the request line was too broken to name an HTTP version.
        self.close_connection = True
        if not str(getattr(self, "request_version", "")).startswith("HTTP/1."):
            self.request_version = "HTTP/1.1"
        self._reply(code, {"error_code": "BAD_REQUEST", "message": message or explain or "Bad request"})

    def _reply(self, status: int, payload: Any, raw: bytes | None = None, content_type: str = "application/json"
               ) -> None:
        body = raw if raw is not None else dumps(payload)
        # Status line, headers and body leave in one write: one system call per answer, and the
        # thread takes the GIL back once instead of twice.
        if getattr(self.server, "retiring", False):
            # This generation is leaving: the gateway closes the connection after this answer,
            # so nothing is ever sent on a connection that is about to close.
            self.close_connection = True
        carried = ""
        if self.capture is not None and self.command != "HEAD":
            sampled = self.headers.get(spool.HEADER, "") if getattr(self, "headers", None) else ""
            if len(sampled) == 32:
                value = spool.inline(body)
                if value is None:
                    self.capture.append(sampled, body)
                else:
                    carried = f"{spool.INLINE_HEADER}: {value}\r\n"
        phrase = self.responses.get(status, ("",))[0]
        head = (f"{self.protocol_version} {status} {phrase}\r\nServer: {self.server_version}\r\nDate: {_http_date()}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{carried}"
                + ("Connection: close\r\n" if self.close_connection else "") + "\r\n")
        try:
            self.wfile.write(head.encode("latin-1") + (body if self.command != "HEAD" else b""))
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _error(self, exc: ClientError) -> None:
        if self.path.startswith("/v2/"):  # V2 clients read "error"
            self._reply(exc.status, v2.error_body(exc.message, exc.error_code))
            return
        self._reply(exc.status, {"error_code": exc.error_code, "message": exc.message})

    def _v2_route(self, path: str) -> tuple[str, str, str] | None:
        """(operation, model, version) of a V2 path: the gateway's ``/v2/<op>`` with the route's
        model and version in headers it sets itself, or the protocol's own path when called directly."""
        if path in ("/v2/infer", "/v2/meta", "/v2/ready"):
            return (path[4:], urllib.parse.unquote(self.headers.get("X-Modelserve-Model", "")),
                    self.headers.get("X-Modelserve-Version", ""))
        if not path.startswith("/v2/models/"):
            return None
        name, sep, rest = path[len("/v2/models/"):].rpartition("/versions/")
        version, _, op = rest.partition("/")
        if not sep or not name or not version or op not in ("infer", "ready", ""):
            return None
        return op or "meta", urllib.parse.unquote(name), urllib.parse.unquote(version)

    def _v2_get(self, route: tuple[str, str, str]) -> None:
        op, model, version = route
        if op == "ready":
            self._reply(200, {"name": model, "ready": True})
        elif op == "meta":
            self._reply(200, v2.metadata(self.scorer.model, model, version))
        else:
            self._error(ClientError(405, "Method Not Allowed: use POST", "BAD_REQUEST"))

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        path = self.path.split("?", 1)[0]
        if path in ("/ping", "/health"):
            self._reply(200, None, raw=b"\n")
        elif path == "/version":
            self._reply(200, None, raw=self.scorer.mlflow_version.encode())
        elif path == "/invocations":
            self._error(ClientError(405, "Method Not Allowed: use POST", "BAD_REQUEST"))
        elif (route := self._v2_route(path)) is not None:
            self._v2_get(route)
        else:
            self._error(ClientError(404, f"Not found: {path}", "ENDPOINT_NOT_FOUND"))

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise ClientError(411, "Chunked request bodies are not supported; send Content-Length", "BAD_REQUEST")
        raw = self.headers.get("Content-Length")
        if raw is None:
            self.close_connection = True
            raise ClientError(411, "A Content-Length header is required", "BAD_REQUEST")
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise ClientError(400, f"Invalid Content-Length: {raw!r}")
        if length > MAX_BODY:
            self.close_connection = True
            raise ClientError(413, f"Request body larger than {MAX_BODY} bytes", "REQUEST_LIMIT_EXCEEDED")
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            raise ClientError(400, "The request body is shorter than its Content-Length")
        return body

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        path = self.path.split("?", 1)[0]
        try:
            body = self._read_body()
        except ClientError as exc:
            self._error(exc)
            return
        except (TimeoutError, ConnectionError):
            self.close_connection = True
            return
        route = self._v2_route(path) if path != "/invocations" else None
        if path != "/invocations" and (route is None or route[0] != "infer"):
            self._error(ClientError(404 if path not in ("/ping", "/health", "/version") and route is None else 405,
                                    f"Not found: POST {path}", "ENDPOINT_NOT_FOUND"))
            return
        try:
            if route is not None:
                out = self.scorer.score_v2(body, route[1], route[2])
            else:
                out = self.scorer.score(body, self.headers.get("Content-Type"))
        except ClientError as exc:
            self._error(exc)
            return
        except Exception as exc:  # a bug of ours, not the client's: say so, keep serving
            traceback.print_exc()
            self._error(ClientError(500, f"{type(exc).__name__}: {exc}", "INTERNAL_ERROR"))
            return
        self._reply(200, None, raw=out)

    def do_PUT(self) -> None:  # noqa: N802
        self._error(ClientError(405, "Method Not Allowed", "BAD_REQUEST"))

    do_DELETE = do_PATCH = do_PUT


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    # On TCP (the swarm runtime), the addresses a connection may come from: the gateway's, and
    # loopback (Swarm's health check runs in the task). Empty: any (a port opened by hand).
    allowed_peers: frozenset[str] = frozenset()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retiring = False
        self.open_connections = 0
        self._open_lock = threading.Lock()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """A host-mode port is open to every task on the swarm, other models' among them: a
        connection from anywhere but the gateway is closed before a byte is read."""
        if not self.allowed_peers or not isinstance(client_address, tuple):
            return True
        peer = str(client_address[0])
        peer = peer[7:] if peer.startswith("::ffff:") else peer  # an IPv4 peer on a dual-stack socket
        return peer in self.allowed_peers or peer.startswith("127.") or peer == "::1"

    def process_request(self, request: Any, client_address: Any) -> None:
        # Counted in the accepting thread, before the handler's thread exists, so a drain that
        # looks right after the last accept cannot miss it.
        with self._open_lock:
            self.open_connections += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._closed()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._closed()

    def _closed(self) -> None:
        with self._open_lock:
            self.open_connections -= 1

    def drain(self, bound: float) -> None:
        """Waits (at most ``bound`` s) until the gateway has closed every connection to this
        process: each answer given meanwhile says ``Connection: close``, and idle kept-alive
        connections are closed by the gateway's own upstream keep-alive timeout (nginx/)."""
        deadline = time.monotonic() + bound
        while self.open_connections > 0 and time.monotonic() < deadline:
            time.sleep(0.05)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (load generators do, Nginx on reload) is not an error worth a
        # traceback in the version's log; anything else still is.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class UnixServer(Server):
    """The same server on a Unix socket: the model's host and the gateway reach it by a path in a
    directory no one else can enter, so no local process can score it around the gateway's access
    check (as it could on a loopback TCP port)."""

    address_family = socket.AF_UNIX
    allow_reuse_address = False

    def server_bind(self) -> None:
        # Bound under a temporary name and renamed into place once listening (server_activate):
        # the version's path never names a socket that refuses connections, even during a rebind.
        path = str(self.server_address)
        head, name = os.path.split(path)
        self._pending = os.path.join(head, f".{os.getpid()}.{name}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._pending)
        mask = os.umask(0o177)  # 0600: the directory's owner (the host's user) and the gateway (root)
        try:
            self.socket.bind(self._pending)
        finally:
            os.umask(mask)
        self.server_name, self.server_port = "localhost", 0

    def server_activate(self) -> None:
        super().server_activate()
        os.replace(self._pending, str(self.server_address))


# A retiring generation outlives the gateway's upstream keep-alive timeout (10 s), so every idle
# connection to it is closed from the gateway's side; one stopped by SIGTERM has no routes left.
RETIRE_DRAIN = 15.0
STOP_DRAIN = 5.0


def _stop_on_signals(server: Server) -> None:
    """SIGTERM/SIGINT stop ``server``: serve_forever() returns (at once, if it has not started
    yet) and the requests in flight are finished."""
    def _stop(*_: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop)


def serve(server: Server) -> None:
    """Serve until SIGTERM/SIGINT (or, in a worker, until a new generation retires it), then
    finish the requests in flight."""
    _stop_on_signals(server)
    server.serve_forever(poll_interval=0.5)
    server.drain(RETIRE_DRAIN if server.retiring else STOP_DRAIN)
    server.server_close()


def _retire(server: Server) -> None:
    server.retiring = True
    threading.Thread(target=server.shutdown, daemon=True).start()


REFORK_BACKOFF_MAX = 5.0
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
RETIRED = 75  # a worker's exit code when a newer generation took the socket over


def _work(server: Server, handoff_dir: Path | None) -> None:
    """A forked worker's whole life: offer the listening socket to a next generation, serve, leave."""
    offer = None
    try:
        if handoff_dir is not None:
            try:
                offer = handoff.Offer(handoff_dir, server.socket, lambda: _retire(server))
            except OSError as exc:
                # Serving comes first: without an offer, a replacement binds afresh.
                print(f"modelserve scoring server: worker {os.getpid()} cannot offer its socket at "
                      f"{handoff_dir}: {exc}", flush=True)
        serve(server)
    finally:
        if offer is not None:
            offer.close()
        os._exit(RETIRED if server.retiring else 0)


def prefork(server: Server, workers: int, handoff_dir: Path | None = None,
            previous: list[Any] | None = None) -> int:
    """Serve one listening socket from ``workers`` processes forked after the model is loaded.

    Predictions hold the GIL, so one process uses one core; forking after loading shares the
    model's memory copy-on-write. The parent only supervises and keeps the socket open: a worker
    that dies is forked again from the model already loaded (milliseconds), and connections
    arriving meanwhile wait in the socket's queue for the others. Workers outlive a parent that is
    killed and go on serving until the host's replacement takes the socket over from them
    (``handoff.py``), so losing any one process costs only the requests inside it.

    ``previous``: connections to an older generation's workers, told to retire once this one's
    workers are forked."""
    # Every worker is woken for each new connection and only one wins the accept(); with a
    # blocking socket the others would sit in accept() and never see a shutdown request.
    server.socket.setblocking(False)
    children: dict[int, float] = {}
    stopping = False

    def spawn() -> None:
        # A stop is held back across the fork. CPython drops, in a new child, any signal that
        # reached it before the interpreter's after-fork step ran, so a SIGTERM sent to the
        # group (or by this parent) to a worker that had not run yet was lost, and that worker
        # served on with no stop to come while its parent waited for it forever. Blocked, the
        # signal stays pending in the kernel: the child meets it with the default action once
        # it unblocks, the parent runs its handler once the child's pid is known.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                # The parent's handler is not the worker's: the worker's own stop (serve()'s) from
                # the start, so a stop that meets a worker still making its handoff offer ends
                # it the way serve() does, and the offer is withdrawn (the default action killed
                # it on the spot and left its <pid>.sock behind).
                _stop_on_signals(server)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                _work(server, handoff_dir)
            children[pid] = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if stopping:  # the stop came while forking, before this pid was known to the handler
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in list(children):
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    # Before the first fork: a stop that comes as soon as a worker answers must find the handler.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    for _ in range(workers):
        if not stopping:
            spawn()
    handoff.retire(previous or [])
    backoff = 0.0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        started = children.pop(pid, None)
        if started is None or stopping:
            continue
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == RETIRED:
            # A newer generation serves this version now (a parent that was alive when it took
            # over, e.g. adopted twice): this one leaves with its workers.
            print("modelserve scoring server: a newer generation took over; stopping", flush=True)
            _stop()
            continue
        lived = time.monotonic() - started
        print(f"modelserve scoring server: worker {pid} ended ({_ended(status)}) after {lived:.1f} s; "
              "forking a new one", flush=True)
        # A worker that dies at once every time (a model that crashes on every request) is
        # forked again ever more slowly, not in a loop.
        backoff = 0.0 if lived >= 10 else min(REFORK_BACKOFF_MAX, max(0.1, backoff * 2))
        if backoff:
            time.sleep(backoff)
        if not stopping:
            spawn()
    return 0


def _ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit code {os.WEXITSTATUS(status)}"


def worker_count(value: str) -> int:
    """``auto``: one process per core, at most two (each process keeps its own copy of what the
    model touches after the fork, so more processes than cores only costs memory)."""
    if value == "auto":
        return max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
    n = int(value)
    if n < 1:
        raise ValueError("workers must be at least 1")
    return n


# Collections of the youngest generation, in allocations: one 1,000-row request makes over a
# thousand lists, so the stdlib's 700 ran a collection inside nearly every such request; most of
# them are freed by reference counting long before a larger threshold is reached.
GC_YOUNG_THRESHOLD = 20000


def settle_heap() -> None:
    """Everything loaded so far (MLflow, pandas, the model: some 200,000 objects) is moved out of
    the collector's sight. A full collection walks every tracked object with the GIL held: about
    150 ms here on a quiet machine, over 600 ms on a busy one, a stall of every request in the
    process that set the 1,000-row p99 (issue 16). Frozen before the fork, the workers also stop
    writing to those objects' pages, so they stay shared copy-on-write."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="modelserve scoring server")
    parser.add_argument("--model-dir", required=True)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", help="the Unix socket to listen on (how a model host runs it)")
    where.add_argument("--port", type=int, help="a TCP port to listen on instead (by hand, benchmarks)")
    parser.add_argument("--host", default="127.0.0.1", help="with --port: the address to bind")
    parser.add_argument("--workers", default="1", help="processes serving the port (forked after load), or auto")
    parser.add_argument("--batching", default="auto", choices=("auto", "on", "off"),
                        help="micro-batching of concurrent requests; auto: on for row-independent flavors")
    parser.add_argument("--handoff-dir", help="where workers offer the listening socket to the next generation "
                        "(set by the model host)")
    parser.add_argument("--capture-spool", help="the version's inference-table spool (set by the model host)")
    parser.add_argument("--allow-from", default="",
                        help="with --port: the only addresses (comma-separated) a connection is taken from, "
                             "besides loopback (the swarm runtime: the gateway's)")
    parser.add_argument("--max-batch-rows", type=int, default=1000)
    parser.add_argument("--batch-window-ms", type=float, default=2.0,
                        help="longest wait for requests still being parsed before a batch is predicted")
    args = parser.parse_args(argv)
    try:
        workers = worker_count(args.workers)
    except ValueError as exc:
        parser.error(f"--workers: {exc}")
    t0 = time.monotonic()
    try:
        scorer = Scorer(args.model_dir, batching=args.batching, max_batch_rows=args.max_batch_rows,
                        batch_window=args.batch_window_ms / 1000)
    except Exception:
        traceback.print_exc()
        print(f"modelserve scoring server: cannot load the model from {args.model_dir}", flush=True)
        return 3
    Handler.scorer = scorer
    if args.capture_spool:
        Handler.capture = spool.SpoolWriter(args.capture_spool)
    settle_heap()
    handoff_dir = Path(args.handoff_dir) if args.handoff_dir else None
    address: Any = args.socket if args.socket else (args.host, args.port)
    server = (UnixServer if args.socket else Server)(address, Handler, bind_and_activate=False)
    server.allowed_peers = frozenset(a.strip() for a in args.allow_from.split(",") if a.strip())
    listener, previous = handoff.take(handoff_dir, address) if handoff_dir else (None, [])
    if listener is not None:
        server.socket.close()
        server.socket = listener
        # What server_bind() would have set, for anything that reads it.
        server.server_address = address
        server.server_name, server.server_port = ("localhost", 0) if args.socket else (str(args.host), int(args.port))
        how = f"took over the listening socket from {len(previous)} worker(s) of the previous generation"
    else:
        try:
            server.server_bind()
            server.server_activate()
        except OSError:
            server.server_close()
            raise
        how = "bound a new listening socket"
    print(f"modelserve scoring server: model loaded from {args.model_dir} in {time.monotonic() - t0:.1f}s, "
          f"listening on {args.socket or f'{args.host}:{args.port}'} with {workers} worker(s), {how} (mlflow {scorer.mlflow_version}; "
          f"{scorer.describe()})", flush=True)
    # Under a model host (which passes --handoff-dir) the parent always forks, so that no single
    # process is the whole version; run by hand with one worker it serves in-process.
    if workers > 1 or handoff_dir is not None:
        return prefork(server, workers, handoff_dir, previous)
    serve(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
