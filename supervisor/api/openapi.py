"""The API's OpenAPI document, served at ``GET /api/2.0/modelserve/openapi.json``.

The document is a hand-written file beside this module (``openapi.yaml``), not generated from
the handlers: the handlers parse their parameters by hand to keep the Databricks shapes, so
there is nothing to generate from. What keeps it true is the unit test that compares it with the
Flask app's routes, and schemathesis runs against a real system. Two small conveniences are
expanded here, once, at load: ``x-aliases`` (the same handler under another prefix) becomes a
copy of the path item per alias, and a ``$ref`` into ``components/x-*`` (blocks OpenAPI cannot
reference, such as a whole ``responses`` map) is replaced by the block itself.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import yaml
from flask import Blueprint, Response

SOURCE = Path(__file__).with_name("openapi.yaml")
PATH = "/api/2.0/modelserve/openapi.json"
ALIAS_OF = "x-alias-of"


def _inline(node: Any, components: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/x-"):
            target: Any = components
            for part in ref.removeprefix("#/components/").split("/"):
                target = target[part]
            return _inline(copy.deepcopy(target), components)
        return {k: _inline(v, components) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, components) for v in node]
    return node


def _expand_aliases(paths: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, item in paths.items():
        aliases = item.pop("x-aliases", [])
        out[path] = item
        for alias in aliases:
            twin = copy.deepcopy(item)
            twin[ALIAS_OF] = path
            for op in twin.values():
                if isinstance(op, dict) and "operationId" in op:
                    op["operationId"] += "_" + alias.strip("/").split("/")[0].replace("-", "_")
            out[alias] = twin
    return out


@functools.lru_cache(maxsize=1)
def document_text() -> str:
    doc = yaml.safe_load(SOURCE.read_text())
    components = doc["components"]
    doc = _inline(doc, components)
    doc["components"] = {k: v for k, v in doc["components"].items() if not k.startswith("x-")}
    doc["paths"] = _expand_aliases(doc["paths"])
    return json.dumps(doc, indent=1, sort_keys=False)


def document() -> dict[str, Any]:
    """A fresh copy of the expanded document."""
    return json.loads(document_text())  # type: ignore[no-any-return]


bp = Blueprint("openapi", __name__)


@bp.get(PATH)
def openapi() -> Response:
    # Public, like the health check: it describes the API, it reveals nothing served.
    return Response(document_text(), mimetype="application/json")
