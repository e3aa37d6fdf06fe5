-- The SQL contract downstream tools call: top-k similar artworks by cosine distance.
--
-- Both public functions go through the HNSW index (artworks_embedding_cosine). A filtered
-- HNSW scan stops after ef_search candidates and can silently return fewer than k rows when a
-- label filter removes most of them, so the scan runs with pgvector's iterative index scan
-- (hnsw.iterative_scan = relaxed_order): it continues until k rows pass the filter.
-- Relaxed order may yield rows slightly out of order, hence the MATERIALIZED CTE re-sort.

-- Internal: k nearest artworks to q, optionally of one label, never exclude_id.
CREATE OR REPLACE FUNCTION artclf._nearest(
    q vector,
    k integer,
    only_label text,
    exclude_id bigint
)
RETURNS TABLE (rank integer, artwork_id bigint, location text, label text,
               distance double precision)
LANGUAGE sql STABLE PARALLEL SAFE
SET hnsw.iterative_scan = 'relaxed_order'
SET hnsw.ef_search = 100
AS $$
    WITH candidates AS MATERIALIZED (
        SELECT a.id, a.location, a.label, a.embedding <=> q AS distance
        FROM artclf.artworks AS a
        WHERE (only_label IS NULL OR a.label = only_label)
          AND (exclude_id IS NULL OR a.id <> exclude_id)
        ORDER BY a.embedding <=> q
        LIMIT greatest(k, 0)
    )
    SELECT (row_number() OVER (ORDER BY c.distance, c.id))::integer,
           c.id, c.location, c.label, c.distance
    FROM candidates AS c
    ORDER BY c.distance, c.id
$$;

-- The k artworks most similar to artwork `artwork_id` (never itself). With same_label (the
-- prototype's behaviour) only artworks the model gave the same label.
CREATE OR REPLACE FUNCTION artclf.similar_artworks(
    artwork_id bigint,
    k integer DEFAULT 5,
    same_label boolean DEFAULT true
)
RETURNS TABLE (rank integer, artwork_id bigint, location text, label text,
               distance double precision)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT n.*
    FROM artclf.artworks AS a
    CROSS JOIN LATERAL artclf._nearest(
        a.embedding, similar_artworks.k,
        CASE WHEN similar_artworks.same_label THEN a.label END, a.id) AS n
    WHERE a.id = similar_artworks.artwork_id
    ORDER BY n.rank
$$;

-- The k artworks nearest to an embedding, e.g. one computed by `artclf` for a new picture.
CREATE OR REPLACE FUNCTION artclf.similar_to_embedding(
    embedding vector,
    k integer DEFAULT 5,
    label text DEFAULT NULL
)
RETURNS TABLE (rank integer, artwork_id bigint, location text, label text,
               distance double precision)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT n.*
    FROM artclf._nearest(similar_to_embedding.embedding, similar_to_embedding.k,
                         similar_to_embedding.label, NULL) AS n
    ORDER BY n.rank
$$;
