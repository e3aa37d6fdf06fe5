-- What the catalogue API and the Artworks page read (artclf_core/browse.py).
--
-- * ingest_log.handled_by: the worker that recorded an object's final state (its claim
--   signature, e.g. "airflow:artclf_ingest/<run_id>/<map index>" or "host:pid"). The claim
--   columns are cleared when the outcome is recorded, so without this the lake page could
--   not link a quarantined or failed object to the DAG run that decided it.
-- * The artwork page lists the drops that duplicate an artwork, and the lake page the
--   latest quarantined objects: both were sequential scans of ingest_log.
ALTER TABLE artclf.ingest_log ADD COLUMN handled_by text;

CREATE INDEX ingest_log_duplicate_of ON artclf.ingest_log (duplicate_of)
    WHERE duplicate_of IS NOT NULL;
CREATE INDEX ingest_log_problems ON artclf.ingest_log (state, id)
    WHERE state IN ('quarantined', 'failed');
