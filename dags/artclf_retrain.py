"""``artclf_retrain``: nightly retraining on the lake's labelled images, behind a gate.

Thin: building the dataset, training, the gate and publishing are
:func:`artclf_core.lifecycle.retrain.retrain` (also ``artclf retrain``); this file schedules it,
shows
the decision, and announces a promotion on the ``artclf_models`` asset, which schedules
``artclf_reembed``.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task
from artclf_airflow.assets import models_asset
from artclf_airflow.connections import settings_from_connections
from artclf_airflow.defaults import DEFAULT_ARGS
from artclf_airflow.preload import quiet_libraries, yield_cpu

from artclf_core.model.archs import ARCHS

log = logging.getLogger("artclf.dag")

DAG_ID = "artclf_retrain"

DOC_MD = """
### artclf_retrain: retrain the model nightly, promote it only if it is better

**When it runs.** Daily (no catch-up: a missed night is not worth re-running; one run at a
time). It trains nothing if the labelled data is unchanged since the active model was trained.

**What a run does.** `train_and_gate`:
1. exports every catalogued artwork with a known label (`training/<label>/` drops and labels
   confirmed by curators with `artclf label` / `artclf.confirm_label`) from the lake;
2. splits it by source, keeping exact and near copies on one side;
3. trains the `arch` model (the default `efficientnet_lite1_gram`: one backbone pass, a
   source-family cross-validation that calibrates it, a closed-form head; the others by
   epochs with augmentation, class weights, early stopping);
4. scores the candidate **and the active model on the same validation images**, from source
   families neither trained on, and applies
   the gate: promote only if balanced accuracy improves by at least `min_gain` and no class's
   F1 drops by more than `max_f1_drop`;
5. publishes `model.keras`, `report.json` and PNG plots (training curves, confusion
   matrices) to `s3://<bucket>/models/<version>/` and registers the version as `promoted` or
   `rejected`, with the reasons.

If promoted, `announce_promotion` updates the `artclf_models` asset, which starts
`artclf_reembed`: the new model embeds the whole catalogue beside the old one, then the
active version switches in one transaction.

**Why was a model (not) promoted, or nothing trained?** Browse > Artworks > *Models* shows
every retraining run (skipped ones too) with its verdict, reasons and what it trained on
(images per class and per source, what was new since the active model). The same report is
the end of the `train_and_gate` log and `report_md` in its XCom `return_value`; in SQL:
`SELECT started_at, status, reason, report_md FROM artclf.retrain_runs ORDER BY id DESC;`
or `artclf models show <version>`. Plots are next to the model in the lake. The log shows
progress while it trains (download, backbone features or epochs, the evaluation).

**Where the labelled images come from.** Objects dropped under `training/<label>/` are
catalogued by `artclf_ingest` like any drop (its trigger sweeps `training/` every
`ARTCLF_TRAINING_SWEEP_INTERVAL` seconds, or MinIO notifies at once); a folder that is not
one of the five classes is quarantined (`unknown_label`).

**Operating it.** Trigger with `force` to train on unchanged data, or change the gate's
thresholds for one run. Roll back a promotion with `artclf models rollback`.
"""


@task(retries=1, retry_delay=timedelta(minutes=5), execution_timeout=timedelta(hours=2))
def train_and_gate() -> dict:
    """Build the dataset from the lake, train, compare with the active model, publish."""
    import tempfile

    from artclf_core.lifecycle import promotion, retrain

    quiet_libraries()
    yield_cpu()  # below the triggerer and the scheduler
    context = get_current_context()
    params = context["params"]
    policy = promotion.GatePolicy.from_env(
        min_gain=params["min_gain"], max_f1_drop=params["max_f1_drop"]
    )
    with tempfile.TemporaryDirectory(prefix="artclf-retrain-") as work:
        summary = retrain.retrain(
            settings_from_connections(),
            work_dir=work,
            arch=params["arch"],
            epochs=params["epochs"],
            policy=policy,
            force=bool(params["force"]),
            run_by=f"airflow:{context['dag'].dag_id}/{context['run_id']}",
        )
    for line in summary["report_md"].splitlines():
        log.info("%s", line)
    return summary


@task.short_circuit
def promoted(summary: dict) -> bool:
    """Go on to announce only when the gate promoted the candidate."""
    return summary.get("status") == "promoted"


@task(outlets=[models_asset()])
def announce_promotion(summary: dict, *, outlet_events=None) -> str:
    """Update the ``artclf_models`` asset with the promoted version (starts re-embedding)."""
    outlet_events[models_asset()].extra = {"version": summary["version"]}
    return summary["version"]


@dag(
    dag_id=DAG_ID,
    schedule="@daily",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=3),
    tags=["artclf", "ml", "retraining"],
    doc_md=DOC_MD,
    default_args=DEFAULT_ARGS,
    params={
        "arch": Param(
            os.environ.get("ARTCLF_TRAIN_ARCH") or None,
            type=["null", "string"],
            enum=[None, *ARCHS],
            title="Architecture (empty: the active model's)",
        ),
        "epochs": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Max epochs (empty: default; not used by the *_texture archs)",
        ),
        "min_gain": Param(
            float(os.environ.get("ARTCLF_GATE_MIN_GAIN") or 0.01),
            type="number",
            title="Gate: least balanced-accuracy gain",
        ),
        "max_f1_drop": Param(
            float(os.environ.get("ARTCLF_GATE_MAX_F1_DROP") or 0.05),
            type="number",
            title="Gate: largest per-class F1 drop",
        ),
        "force": Param(False, type="boolean", title="Train even if the data is unchanged"),
    },
)
def artclf_retrain() -> None:
    summary = train_and_gate()
    promoted(summary) >> announce_promotion(summary)


artclf_retrain()
