"""Airflow connections -> :class:`artclf_core.config.Settings`, for the trigger and the DAGs.

The catalogue and the lake are two ordinary Airflow connections, so credentials stay in
Airflow's secrets (environment ``AIRFLOW_CONN_*``, a secrets backend, or the metadata
database) and never in code:

* ``artclf_db``, type ``postgres``: host, port, login, password, database in ``schema``;
  extra keys that are libpq parameters (``sslmode``, ``sslrootcert``, ...) are kept;
* ``artclf_s3``, type ``aws``: access key in ``login``, secret in ``password``, extra
  ``endpoint_url`` (MinIO/SeaweedFS; absent for AWS), ``region_name`` and ``bucket``.

The providers' hooks read them, so every form Airflow accepts for these connection types
(URI or JSON, extras nested or not, IAM tokens for PostgreSQL) works here too.
"""

from __future__ import annotations

import os
import urllib.parse

from artclf_core.config import Settings

DEFAULT_POSTGRES_CONN_ID = "artclf_db"
DEFAULT_AWS_CONN_ID = "artclf_s3"
DEFAULT_BUCKET = "artclf"


def postgres_url(postgres_conn_id: str = DEFAULT_POSTGRES_CONN_ID) -> str:
    """A libpq URL (``postgresql://...``) for the connection, as psycopg 3 takes it.

    ``PostgresHook.get_uri`` builds the URL (quoting, database from ``schema``, IAM tokens)
    but names the SQLAlchemy driver in the scheme and drops libpq options from the extra, so
    the scheme is normalised and those options are appended as query parameters, the same
    set ``PostgresHook.get_conn`` would pass to the driver.
    """
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id=postgres_conn_id)
    _scheme, _, rest = hook.get_uri().partition("://")
    url = "postgresql://" + rest
    options = {
        key: value
        for key, value in hook.connection.extra_dejson.items()
        if key not in PostgresHook.ignored_extra_options
        and isinstance(value, str | int | float)
        and not isinstance(value, bool)
    }
    if options:
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode(options)
    return url


def settings_from_connections(
    postgres_conn_id: str = DEFAULT_POSTGRES_CONN_ID,
    aws_conn_id: str = DEFAULT_AWS_CONN_ID,
    bucket: str | None = None,
) -> Settings:
    """The core's settings from the two Airflow connections.

    ``bucket``: this argument, else the aws connection's extra ``bucket``, else the
    environment's ``ARTCLF_BUCKET``, else ``"artclf"``. ``ARTCLF_MODEL`` and
    ``ARTCLF_MAX_ATTEMPTS`` come from the environment, as for the CLI.

    Blocking (connection lookups may ask the secrets backend or the API server): from async
    code, call it with ``asyncio.to_thread``.
    """
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from airflow.providers.amazon.aws.utils.connection_wrapper import AwsConnectionWrapper

    # get_connection raises for a missing id; AwsBaseHook.conn_config would fall back to
    # anonymous AWS defaults, and the trigger would then watch the wrong store.
    aws = AwsConnectionWrapper(conn=AwsBaseHook.get_connection(aws_conn_id))
    extra = aws.extra_config or {}
    return Settings(
        db_url=postgres_url(postgres_conn_id),
        s3_endpoint=aws.get_service_endpoint_url("s3") or None,
        bucket=bucket or extra.get("bucket") or os.environ.get("ARTCLF_BUCKET") or DEFAULT_BUCKET,
        aws_access_key_id=aws.aws_access_key_id,
        aws_secret_access_key=aws.aws_secret_access_key,
        s3_region=aws.region_name or "us-east-1",
        model_path=os.environ.get("ARTCLF_MODEL") or None,
        max_attempts=int(os.environ.get("ARTCLF_MAX_ATTEMPTS") or 3),
    )
