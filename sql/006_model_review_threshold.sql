-- The review threshold belongs to the model that made the prediction.
--
-- A probability of 0.6 means something different for every model: the calibrated default
-- (efficientnet_lite0_texture) records, in its metadata, the lowest top probability whose
-- predictions reached 90 % precision on source families it never saw
-- (model_versions.metrics->>'review_threshold', fitted by source-family cross-validation).
-- review_queue() now uses, in this order: the argument, the active model's own threshold,
-- the review_threshold setting (for models that recorded none, such as the older ones).

CREATE FUNCTION artclf.review_threshold() RETURNS real
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT (m.metrics->>'review_threshold')::real
           FROM artclf.model_versions AS m WHERE m.is_active),
        (SELECT value::real FROM artclf.settings WHERE name = 'review_threshold'))
$$;

CREATE OR REPLACE FUNCTION artclf.review_queue(threshold real DEFAULT NULL)
RETURNS TABLE (artwork_id bigint, location text, label text, probability real,
               probabilities jsonb, model_version text)
LANGUAGE sql STABLE AS $$
    SELECT e.artwork_id, a.location, e.label, e.probability, e.probabilities, e.model_version
    FROM artclf.embeddings AS e
    JOIN artclf.artworks AS a ON a.id = e.artwork_id
    WHERE e.model_version = artclf.active_version()
      AND a.curated_label IS NULL
      AND e.probability < coalesce(threshold, artclf.review_threshold())
    ORDER BY e.probability, e.artwork_id
$$;

UPDATE artclf.settings
   SET note = 'predictions whose top probability is below this are flagged for curator review,'
              ' for active models that record no review_threshold of their own'
 WHERE name = 'review_threshold';
