"""Baseline for ``bench/airflow_bench.py``: the classic, schedule-based way to ingest drops.

NOT part of the product (it lives in ``bench/dags/``, loaded only when the benchmark sets
``ARTCLF_AIRFLOW_EXTRA_DAGS``). A continuously scheduled DAG whose ``S3KeySensor`` polls
``incoming/*`` with the provider's default ``poke_interval`` (60 s), then runs the same core
ingest as ``artclf_ingest`` (``Ingestor.ingest_prefix``: the same validation, de-duplication,
model and catalogue writes). ``@continuous`` + ``max_active_runs=1`` is the most favourable
polling setup: a new run (and its first poke) starts as soon as the previous one ends.
Created paused; the benchmark unpauses it only while it measures it.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.sdk import dag, task

BUCKET = os.environ.get("ARTCLF_BUCKET") or "artclf"


@task
def ingest() -> dict:
    """Everything under ``incoming/``, as ``artclf ingest`` does it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from artclf_airflow.connections import settings_from_connections

    from artclf_core.ingest.ingestor import Ingestor

    with Ingestor(settings_from_connections(), worker_id="airflow:s3_sensor_baseline") as ing:
        return ing.ingest_prefix("incoming/").as_dict()


@dag(
    dag_id="s3_sensor_baseline",
    schedule="@continuous",
    max_active_runs=1,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    is_paused_upon_creation=True,
    tags=["artclf", "bench"],
)
def s3_sensor_baseline() -> None:
    wait = S3KeySensor(
        task_id="wait_for_incoming",
        bucket_name=BUCKET,
        bucket_key="incoming/*",
        wildcard_match=True,
        aws_conn_id="artclf_s3",
        timeout=6 * 3600,
    )
    wait >> ingest()


s3_sensor_baseline()
