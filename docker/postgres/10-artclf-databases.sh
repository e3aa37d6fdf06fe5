#!/usr/bin/env bash
# First start of the PostgreSQL container only (docker-entrypoint-initdb.d): separate roles
# and databases for Airflow's metadata and the artclf catalogue, pgvector in the catalogue
# (CREATE EXTENSION needs the superuser; `artclf db migrate`'s own CREATE EXTENSION IF NOT
# EXISTS is then a no-op), the NOLOGIN roles the migrations grant to (creating them there
# would need CREATEROLE), MinIO's notification login (docs/events.md) and sql/superuser.sql
# (advisory-lock and large-object rights taken from PUBLIC, docs/operating.md).
# Passwords come from the environment (see docker-compose.yml / .env.example) and are passed
# to psql as variables (:'name' quoting), never spliced into SQL text.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v airflow_user="$AIRFLOW_DB_USER" -v airflow_password="$AIRFLOW_DB_PASSWORD" \
    -v airflow_db="$AIRFLOW_DB_NAME" \
    -v artclf_user="$ARTCLF_DB_USER" -v artclf_password="$ARTCLF_DB_PASSWORD" \
    -v artclf_db="$ARTCLF_DB_NAME" \
    -v notify_user="$MINIO_NOTIFY_DB_USER" -v notify_password="$MINIO_NOTIFY_DB_PASSWORD" \
    -v superuser_sql="${ARTCLF_SUPERUSER_SQL:-/artclf-sql/superuser.sql}" <<'SQL'
CREATE ROLE :"airflow_user" LOGIN PASSWORD :'airflow_password';
CREATE DATABASE :"airflow_db" OWNER :"airflow_user";

CREATE ROLE :"artclf_user" LOGIN PASSWORD :'artclf_password';
CREATE DATABASE :"artclf_db" OWNER :"artclf_user";

-- Created by sql/003, 004 and 005 when missing; made here so the catalogue owner needs no
-- CREATEROLE.
CREATE ROLE artclf_reader NOLOGIN;
CREATE ROLE artclf_curator NOLOGIN IN ROLE artclf_reader;
CREATE ROLE artclf_minio NOLOGIN;
CREATE ROLE :"notify_user" LOGIN PASSWORD :'notify_password' IN ROLE artclf_minio;
-- MinIO refuses a schema-qualified table name: it inserts into `minio_events`.
ALTER ROLE :"notify_user" SET search_path = artclf;

\connect :"artclf_db"
CREATE EXTENSION IF NOT EXISTS vector;
-- Advisory-lock and large-object rights away from PUBLIC (only a superuser can).
\i :superuser_sql
SQL
