# The one Python image of compose.yaml: the supervisor (API, reconciler), the MLflow tracking server
# (it runs our token plugin, so it needs this package anyway), the gateway's Nginx and the
# one-shot that makes the stack's secrets. One image: one build, one layer cache.
#
# Builds on any Debian-based image with python3 and python3-venv: python:3.11-slim where Docker
# Hub is reachable, modelserve-base:bookworm (images/build-base-image.sh) where no registry is.
# Build context: the repo root.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
# The host's package index settings, used by this build only (never kept in the image). An empty
# one is unset by pip-install.sh: pip and uv read an empty variable as an empty index.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG UV_INDEX_URL
ARG UV_DEFAULT_INDEX
ARG UV_EXTRA_INDEX_URL
ARG HTTP_PROXY
ARG HTTPS_PROXY
ARG NO_PROXY
# Extra CA certificates (PEM text) for a proxy or a private index, added to the system's bundle.
ARG CA_CERT=""
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /etc/modelserve \
 && { cat /etc/ssl/certs/ca-certificates.crt; printf '%s\n' "$CA_CERT"; } > /etc/modelserve/ca-bundle.crt
# Every TLS client here (pip, uv, requests, the environment builds the docker runtime starts,
# which copy this bundle in) trusts the same bundle.
ENV SSL_CERT_FILE=/etc/modelserve/ca-bundle.crt \
    REQUESTS_CA_BUNDLE=/etc/modelserve/ca-bundle.crt \
    PIP_CERT=/etc/modelserve/ca-bundle.crt \
    PATH=/opt/venv/bin:/usr/sbin:$PATH \
    PYTHONUNBUFFERED=1
WORKDIR /opt/modelserve
COPY images/pip-install.sh /usr/local/bin/modelserve-pip-install
# Dependencies first, from pyproject.toml alone (a stub package and readme), so that a change of
# the code or the docs reuses this layer. Editable: the templates in nginx/ and images/ are read
# from the source tree.
COPY pyproject.toml ./
RUN mkdir supervisor && touch supervisor/__init__.py README.md \
 && sh /usr/local/bin/modelserve-pip-install -e '.[postgres]'
COPY supervisor/ supervisor/
COPY nginx/ nginx/
COPY images/ images/
ENTRYPOINT ["modelserve"]
CMD ["up"]
