# The modelserve supervisor for compose.yaml: API (gunicorn), the reconciler and the Nginx gateway
# it renders and reloads, started by `modelserve up` against the stack's MLflow server. Model
# containers are started beside it through the mounted Docker socket. Build context: the repo root.
FROM python:3.11-slim
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/modelserve
COPY pyproject.toml README.md ./
COPY supervisor/ supervisor/
COPY nginx/ nginx/
COPY images/ images/
# uv is installed beside Python: environment images copy it in (supervisor/runtime/images.py).
# Editable: the templates in nginx/ and images/ are read from the source tree.
RUN pip install --no-cache-dir uv && pip install --no-cache-dir -e .
ENV PATH=/usr/sbin:$PATH
ENTRYPOINT ["modelserve"]
CMD ["up"]
