# Postgres for compose.yaml without a registry: Debian's postgresql package on the stack's base
# image, laid out as the official image is (data in /var/lib/postgresql/data, POSTGRES_USER,
# POSTGRES_DB, POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE, scripts in
# /docker-entrypoint-initdb.d run once on an empty data dir), so compose.yaml can use either.
# Data dirs of different major versions do not mix: bookworm ships 15, so the official
# counterpart is postgres:15.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG HTTP_PROXY
ARG HTTPS_PROXY
# uid/gid 999 as in the official image, so a data volume or a password file owned by it works
# with both; Debian's packaging must not make a cluster of its own.
RUN groupadd -r -g 999 postgres \
 && useradd -r -u 999 -g postgres -d /var/lib/postgresql -s /bin/sh postgres \
 && mkdir -p /etc/postgresql-common/createcluster.d \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/modelserve.conf \
 && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"/* /usr/local/bin/ \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql /docker-entrypoint-initdb.d \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
 && chmod 700 /var/lib/postgresql/data
COPY images/postgres/entrypoint.sh /usr/local/bin/modelserve-postgres
ENV PGDATA=/var/lib/postgresql/data
# Never root: a new named volume takes this directory's owner (postgres) and mode from the image.
USER postgres
VOLUME /var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["sh", "/usr/local/bin/modelserve-postgres"]
