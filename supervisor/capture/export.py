"""An inference table as a file pandas and DuckDB read directly: JSON Lines or Parquet.

JSON Lines streams (one row a line, in the store's pages), so an export of any size never sits
in memory; Parquet is written in row groups of ``GROUP_ROWS`` with a fixed schema (the schema is in
the file's footer, so an empty table still has its columns and types), through pyarrow, which MLflow already depends on.
Column names and meanings follow Databricks' ``_payload`` table where it has one
(``docs/DESIGN.md``, "Inference tables").
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterable, Iterator
from typing import Any

from supervisor.store import INFERENCE_COLUMNS

FORMATS = {"jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet"}
GROUP_ROWS = 5000


# Valid raw inside a JSON string, but line breaks to str.splitlines() and to JavaScript: escaped,
# so that a reader splitting the file into lines by any rule gets one row per line.
LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"})


def jsonl(rows: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    for r in rows:
        line = json.dumps({c: r[c] for c in INFERENCE_COLUMNS}, ensure_ascii=False).translate(LINE_BREAKS)
        yield line.encode("utf-8") + b"\n"


def _schema() -> Any:
    import pyarrow as pa

    types = {"date": pa.date32(), "timestamp_ms": pa.int64(), "status_code": pa.int32(),
             "execution_time_ms": pa.int64(), "sampling_fraction": pa.float64(), "request_size": pa.int64(),
             "response_size": pa.int64(), "request_truncated": pa.bool_(), "response_truncated": pa.bool_()}
    return pa.schema([(c, types.get(c, pa.string())) for c in INFERENCE_COLUMNS])


def parquet(rows: Iterable[dict[str, Any]]) -> bytes:
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema()
    out = io.BytesIO()
    it = iter(rows)
    with pq.ParquetWriter(out, schema) as writer:
        while True:
            group = list(itertools.islice(it, GROUP_ROWS))
            if not group:
                break
            columns = {c: [r[c] for r in group] for c in INFERENCE_COLUMNS}
            columns["date"] = [dt.date.fromisoformat(d) for d in columns["date"]]
            writer.write_table(pa.table(columns, schema=schema))
    return out.getvalue()
