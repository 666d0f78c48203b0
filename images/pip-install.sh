#!/bin/sh
# Installs into /opt/venv with uv: python3 -m venv works on python:3.11-slim and on Debian's
# python3 + python3-venv (modelserve-base:bookworm has no pip of its own, the venv brings one).
set -eu
# An index variable passed on empty (compose's ${PIP_INDEX_URL:-}) would mean "no index".
for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL UV_INDEX_URL UV_DEFAULT_INDEX UV_EXTRA_INDEX_URL \
            HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  eval "value=\${$name:-}"
  [ -n "$value" ] || unset "$name"
done
# uv takes pip's index settings when it has none of its own, as the docker runtime's builds do.
if [ -n "${PIP_INDEX_URL:-}" ] && [ -z "${UV_INDEX_URL:-}${UV_DEFAULT_INDEX:-}" ]; then
  export UV_INDEX_URL="$PIP_INDEX_URL"
fi
if [ -n "${PIP_EXTRA_INDEX_URL:-}" ] && [ -z "${UV_EXTRA_INDEX_URL:-}" ]; then
  export UV_EXTRA_INDEX_URL="$PIP_EXTRA_INDEX_URL"
fi
[ -x /opt/venv/bin/python ] || python3 -m venv /opt/venv
/opt/venv/bin/pip install -q --no-cache-dir --disable-pip-version-check uv
UV_NO_CACHE=1 /opt/venv/bin/uv pip install -q --python /opt/venv/bin/python "$@"
