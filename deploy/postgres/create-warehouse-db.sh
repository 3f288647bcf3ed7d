#!/bin/sh
# Run by the postgres image on first start only (empty data volume): the warehouse gets a
# database of its own next to Dagster's, owned by the same user, so ETL tables and Dagster's
# run/event tables never share a schema. On an existing volume create it by hand:
#   docker compose exec postgres createdb -U "$POSTGRES_USER" "$ETL_WAREHOUSE_DB"
set -eu
createdb --username "$POSTGRES_USER" --owner "$POSTGRES_USER" "${ETL_WAREHOUSE_DB:?set ETL_WAREHOUSE_DB}"
