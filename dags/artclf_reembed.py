"""``artclf_reembed``: move the catalogue to a promoted model version, then switch.

Thin: ``artclf_core.lifecycle.reembed`` does the work (also ``artclf models activate``); this file
maps it over batches and says when it runs: on the ``artclf_models`` asset, i.e. right after
``artclf_retrain`` promoted a model.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException
from artclf_airflow.assets import models_asset
from artclf_airflow.connections import settings_from_connections
from artclf_airflow.defaults import DEFAULT_ARGS
from artclf_airflow.preload import quiet_libraries, yield_cpu

log = logging.getLogger("artclf.dag")

DAG_ID = "artclf_reembed"
#: Concurrent embed_batch tasks (CPU-bound, like ingestion): ARTCLF_REEMBED_CONCURRENCY.
REEMBED_CONCURRENCY = int(os.environ.get("ARTCLF_REEMBED_CONCURRENCY", "2"))

DOC_MD = """
### artclf_reembed: embed the whole catalogue with a promoted model, then switch to it

**When it runs.** When `artclf_retrain` promotes a model (asset `artclf_models`), or by hand
with the `version` param (any registered version, e.g. to re-activate an old one).

**What a run does.**
1. `choose_version`: the `version` param, else the version named by the asset event, else
   the newest `promoted` version that is not active. Skips the run if there is none.
2. `plan`: the artworks that have no embedding of that version yet, in batches.
3. `embed_batch` (mapped, 2 at a time): downloads, embeds and writes each batch beside the
   old version's rows. Similarity search keeps answering from the active version meanwhile.
   A batch that fails or is killed is retried and writes only what is still missing.
4. `switch`: builds the version's HNSW index, then in one transaction embeds the artworks
   catalogued since the plan and makes the version active. Search answers from the old
   version until the commit and from the new one after it.
5. `atlas`: writes the embedding atlas (`models/<version>/atlas.html` in the lake).

**Operating it.** Roll back with `artclf models rollback` (switches back, no recompute);
list versions with `artclf models list`; drop an old version's embeddings with
`artclf models drop <version>`.
"""


@task
def choose_version() -> str:
    """The version to move to: param, else the asset event's, else the newest promoted."""
    from artclf_core.lifecycle import reembed

    context = get_current_context()
    version = context["params"].get("version")
    if not version:
        for events in (context.get("triggering_asset_events") or {}).values():
            for event in events:
                version = (event.extra or {}).get("version") or version
    version, active = reembed.version_to_activate(settings_from_connections(), version)
    if not version:
        raise AirflowSkipException("no promoted version waits to be activated")
    if version == active:
        raise AirflowSkipException(f"{version} is already the active version")
    log.info("moving the catalogue from %s to %s", active, version)
    return version


@task
def plan(version: str) -> list[list[int]]:
    """Batches of the artworks that have no embedding of ``version`` yet."""
    from artclf_core.lifecycle import reembed

    batches = reembed.plan(settings_from_connections(), version, reembed.BATCH_SIZE)
    log.info("%d artwork(s) to embed in %d batch(es)", sum(map(len, batches)), len(batches))
    return batches


@task(
    retries=3,
    retry_delay=timedelta(seconds=30),
    retry_exponential_backoff=2.0,
    max_retry_delay=timedelta(minutes=10),
    max_active_tis_per_dag=REEMBED_CONCURRENCY,
    map_index_template="{{ task.op_kwargs['ids'][0] if task.op_kwargs['ids'] else '' }}",
)
def embed_batch(version: str, ids: list[int]) -> int:
    """Embed one batch with ``version`` (only the rows still missing)."""
    from artclf_core.lifecycle import reembed

    quiet_libraries()
    yield_cpu()  # below the triggerer and the scheduler
    settings = settings_from_connections()
    return reembed.embed_ids(settings, reembed.load_version(settings, version), ids)


# Runs when every batch succeeded, also when there was nothing to embed (no batches).
@task(retries=2, retry_delay=timedelta(seconds=30), trigger_rule="none_failed_min_one_success")
def switch(version: str, written: list[int]) -> dict:
    """Build the index, embed late arrivals and activate ``version`` in one transaction."""
    from artclf_core.lifecycle import reembed

    result = reembed.switch(settings_from_connections(), version, reason="artclf_reembed")
    log.info(
        "active version is now %s (was %s); %d embedded at the switch (%d before)",
        version,
        result["previous"],
        result["stragglers"],
        sum(written or []),
    )
    return result


@task(retries=1)
def atlas(version: str) -> dict:
    """Write the embedding atlas of ``version`` next to its model in the lake."""
    import tempfile
    from pathlib import Path

    from artclf_core.lifecycle import reembed

    with tempfile.TemporaryDirectory() as tmp:
        summary = reembed.write_version_atlas(
            settings_from_connections(), version, Path(tmp) / "atlas.html"
        )
    log.info("atlas: %s (%d points)", summary.get("uri"), summary["n_points"])
    return {k: v for k, v in summary.items() if k != "path"}


@dag(
    dag_id=DAG_ID,
    schedule=[models_asset()],
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=12),
    tags=["artclf", "ml", "embeddings"],
    doc_md=DOC_MD,
    default_args=DEFAULT_ARGS,
    params={
        "version": Param(
            None,
            type=["null", "string"],
            title="Model version",
            description="Empty: the version the retraining DAG just promoted.",
        ),
    },
)
def artclf_reembed() -> None:
    version = choose_version()
    batches = plan(version)
    written = embed_batch.partial(version=version).expand(ids=batches)
    switched = switch(version, written)
    switched >> atlas(version)


artclf_reembed()
