#!/bin/sh
# The stack's databases beside POSTGRES_DB (MLflow's tracking store): MLflow's user database and
# the supervisor's store. Separate databases: MLflow's two apps each keep their own migrations.
# Run once, on an empty data dir, by this image's entrypoint or the official image's.
set -eu
for db in mlflow_auth modelserve; do
  psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres -q -c "CREATE DATABASE $db"
done
