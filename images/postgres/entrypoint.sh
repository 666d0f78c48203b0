#!/bin/sh
# First start on an empty data dir: initdb with the given superuser and password, create
# POSTGRES_DB, run /docker-entrypoint-initdb.d once, as the official image does. Then Postgres in
# the foreground, listening on the container's network with scram-sha-256 passwords.
set -eu
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  # The stack's secrets service may not have written it yet: `docker stack deploy` starts every
  # service at once. Bounded: after 10 minutes the engine's restart policy takes over.
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    waited=0
    while [ ! -s "$POSTGRES_PASSWORD_FILE" ] && [ "$waited" -lt 600 ]; do
      [ "$waited" -eq 0 ] && echo "postgres: waiting for $POSTGRES_PASSWORD_FILE (the secrets service makes it)"
      sleep 1
      waited=$((waited + 1))
    done
  fi
  password="${POSTGRES_PASSWORD:-}"
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    password="$(cat "$POSTGRES_PASSWORD_FILE")"
  fi
  if [ -z "$password" ]; then
    echo "postgres: no password: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE (compose.yaml's secrets service writes one)" >&2
    exit 1
  fi
  pwfile="$(mktemp)"
  printf '%s\n' "$password" > "$pwfile"
  initdb -D "$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  # Set-up on the Unix socket only: nobody can connect over the network before it is done.
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  if [ "$POSTGRES_DB" != postgres ]; then
    psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres -q -c "CREATE DATABASE \"$POSTGRES_DB\""
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) echo "postgres: running $f"; sh "$f" ;;
      *.sql) echo "postgres: running $f"; psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -q -f "$f" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "postgres: initialised $PGDATA"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
