"""artclf's Airflow side: the event trigger that watches the landing zone, the asset it
drives, and the mapping from Airflow connections to :class:`artclf_core.config.Settings`.

Airflow puts ``plugins/`` on ``sys.path``, so DAGs import ``artclf_airflow.assets`` and the
triggerer finds ``artclf_airflow.triggers.IncomingObjectsTrigger`` by that classpath. Nothing
is imported here: the plugin manager imports every module under ``plugins/`` at start-up,
and the core (with TensorFlow behind the pipeline) must load only where it is used.
"""
