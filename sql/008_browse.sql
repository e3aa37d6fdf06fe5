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

-- The review queue at 100,000 artworks took 0.5 s per call (bench/browse.py): the threshold,
-- coalesce(threshold, review_threshold()), was evaluated once per embedding row. As a scalar
-- subquery it is computed once (an InitPlan), and the (probability, artwork_id) index, made
-- on the parent so that every version's partition has it, lets the queue be read in order
-- and counted from the index instead of sorting the partition.
CREATE INDEX embeddings_probability ON artclf.embeddings (model_version, probability, artwork_id);

CREATE OR REPLACE FUNCTION artclf.review_queue(threshold real DEFAULT NULL)
RETURNS TABLE (artwork_id bigint, location text, label text, probability real,
               probabilities jsonb, model_version text)
LANGUAGE sql STABLE AS $$
    SELECT e.artwork_id, a.location, e.label, e.probability, e.probabilities, e.model_version
    FROM artclf.embeddings AS e
    JOIN artclf.artworks AS a ON a.id = e.artwork_id
    WHERE e.model_version = artclf.active_version()
      AND a.curated_label IS NULL
      AND e.probability < (SELECT coalesce(threshold, artclf.review_threshold()))
    ORDER BY e.probability, e.artwork_id
$$;
