"""Airflow imports ``airflow_local_settings`` in every process: copy this file into
``$AIRFLOW_HOME/config/`` (the embedded stack and the compose image do) so the processes
that fork task processes import TensorFlow and Great Expectations once (see preload.py)."""

from artclf_airflow.preload import maybe_preload

maybe_preload()
