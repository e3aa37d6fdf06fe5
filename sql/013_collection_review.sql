-- A curator works on one collection at a time: the museum's drop they are responsible for,
-- and the ten or so labels per class that teach the model that collection (docs/model-card.md,
-- "Curator labels and self-training together"). The review queue, the catalogue grid and the
-- review progress can now be narrowed to one collection (artworks.collection, 011).
--
-- * artclf.review_queue(threshold, p_collection): the same queue, of one collection when
--   p_collection is given, and each row says its collection. The function is re-created
--   (its result gains a column); review_queue() and review_queue(t) mean what they meant.
-- * artclf.collections: each collection's artworks, how many a curator has labelled, and
--   how many of the active model's predictions await review, largest first.
-- * (collection, id): the grid of one collection is read newest first from the index,
--   whatever the collection's size (the index of 011 could only filter, then sort), and
--   the page's collection menus count each collection's artworks from it.
-- * The review page's progress ("12 of 57 reviewed") counted the curated artworks with a
--   scan of all artworks (68 ms at 100,000, bench/browse.py); curated ones are few, and a
--   partial index finds them, of one collection or of all.

DROP FUNCTION artclf.review_queue(real);

CREATE FUNCTION artclf.review_queue(threshold real DEFAULT NULL, p_collection text DEFAULT NULL)
RETURNS TABLE (artwork_id bigint, location text, label text, probability real,
               probabilities jsonb, model_version text, collection text)
LANGUAGE sql STABLE AS $$
    SELECT e.artwork_id, a.location, e.label, e.probability, e.probabilities, e.model_version,
           a.collection
    FROM artclf.embeddings AS e
    JOIN artclf.artworks AS a ON a.id = e.artwork_id
    WHERE e.model_version = artclf.active_version()
      AND a.curated_label IS NULL
      AND e.probability < (SELECT coalesce(threshold, artclf.review_threshold()))
      AND (p_collection IS NULL OR a.collection = p_collection)
    ORDER BY e.probability, e.artwork_id
$$;

CREATE VIEW artclf.collections AS
SELECT a.collection,
       count(*) AS artworks,
       count(a.curated_label) AS curated,
       count(*) FILTER (WHERE a.curated_label IS NULL
                          AND e.probability < (SELECT artclf.review_threshold())) AS to_review
FROM artclf.artworks AS a
LEFT JOIN artclf.embeddings AS e
       ON e.artwork_id = a.id AND e.model_version = artclf.active_version()
GROUP BY a.collection
ORDER BY count(*) DESC, a.collection;

CREATE INDEX artworks_collection_id ON artclf.artworks (collection, id);
DROP INDEX artclf.artworks_collection;
CREATE INDEX artworks_curated ON artclf.artworks (collection, id) WHERE curated_by IS NOT NULL;
