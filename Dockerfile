# The Airflow image for docker-compose.yml: Airflow 3.3.2 (Python 3.11) + artclf with its
# `airflow` extra, the DAG and the plugin. Build: `docker compose build`.
FROM apache/airflow:3.3.2-python3.11

# The library, its migrations and its quality suite. sql/ and expectations/ are not part of
# the installed package: ARTCLF_SQL_DIR / ARTCLF_EXPECTATIONS_DIR point at them.
COPY --chown=airflow:0 pyproject.toml README.md /opt/artclf/
COPY --chown=airflow:0 artclf_core /opt/artclf/artclf_core
COPY --chown=airflow:0 sql /opt/artclf/sql
COPY --chown=airflow:0 expectations /opt/artclf/expectations
# The model cache (ARTCLF_CACHE_DIR; docker-compose mounts a volume here). Made in the image
# so that a new volume starts owned by the airflow user, who writes to it.
USER root
RUN mkdir -p /opt/artclf/cache && chown airflow:0 /opt/artclf/cache
USER airflow

# Pin Airflow itself in the same resolve so that installing the extra can never move it.
RUN pip install --no-cache-dir "apache-airflow==3.3.2" "/opt/artclf[airflow]" \
    && rm -rf /opt/artclf/build /opt/artclf/*.egg-info

ENV ARTCLF_SQL_DIR=/opt/artclf/sql \
    ARTCLF_EXPECTATIONS_DIR=/opt/artclf/expectations \
    TF_CPP_MIN_LOG_LEVEL=2 \
    GX_ANALYTICS_ENABLED=False

# DAGs and the Airflow glue (plugins/ is on sys.path for every Airflow process).
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins

# Processes that fork task processes (the Celery worker, the scheduler) import TensorFlow and
# Great Expectations once, so each task starts in a fraction of a second
# (plugins/artclf_airflow/preload.py; off with ARTCLF_AIRFLOW_PRELOAD=0).
COPY --chown=airflow:0 plugins/artclf_airflow/airflow_local_settings.py /opt/airflow/config/airflow_local_settings.py
