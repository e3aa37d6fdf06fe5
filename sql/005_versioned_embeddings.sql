-- Versioned embeddings, the model registry's lifecycle, curation and low-confidence review.
--
-- Until now each artwork carried one embedding, written by the model that ingested it. A new
-- model must not overwrite those in place: while it re-embeds the catalogue, similarity
-- search would mix two models' vector spaces (meaningless distances). So:
--
-- * artclf.embeddings holds one row per (model version, artwork): label, probabilities and
--   embedding. It is LIST-partitioned by model_version: each version is its own partition with
--   its own HNSW index, built while the old version keeps serving, and dropped in O(1).
-- * The ACTIVE model version (model_versions.is_active, at most one) is the one that serves:
--   the similarity functions read only its partition (runtime partition pruning), and
--   ingestion embeds new images with it. artclf.activate_model() switches in one transaction,
--   and refuses a version whose partition is incomplete or unindexed.
-- * artworks keeps what was decided when the object was filed (label, probability,
--   model_version: the catalog/<label>/ folder it was moved to). artclf.catalogue shows the
--   active model's current view next to it.

-- ------------------------------------------------------------------ registry lifecycle
ALTER TABLE artclf.model_versions
    ADD COLUMN id integer GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- registered: known (shipped default, or trained by hand); candidate: trained by the
    -- retraining DAG, gate not decided yet; promoted: passed the gate, re-embedding pending;
    -- rejected: refused by the gate (decision says why); retired: its partition was dropped.
    ADD COLUMN status text NOT NULL DEFAULT 'registered'
        CHECK (status IN ('registered', 'candidate', 'promoted', 'rejected', 'retired')),
    ADD COLUMN data_fingerprint text,       -- sha256 over the training set's (sha256, label)
    ADD COLUMN decision jsonb,              -- the promotion gate's verdict and reasons
    ADD COLUMN plots jsonb,                 -- {"training_curves": "s3://...png", ...}
    ADD COLUMN index_built boolean NOT NULL DEFAULT false;

-- Every switch of the active version: who, when, why; rollback reads it.
CREATE TABLE artclf.model_activations (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version       text NOT NULL REFERENCES artclf.model_versions (version),
    previous      text REFERENCES artclf.model_versions (version),
    activated_by  text NOT NULL DEFAULT session_user,
    reason        text,
    activated_at  timestamptz NOT NULL DEFAULT now()
);

-- ------------------------------------------------------------------ embeddings
CREATE TABLE artclf.embeddings (
    model_version  text NOT NULL REFERENCES artclf.model_versions (version),
    artwork_id     bigint NOT NULL REFERENCES artclf.artworks (id) ON DELETE CASCADE,
    label          text NOT NULL
                   CHECK (label IN ('drawings', 'engraving', 'iconography', 'painting', 'sculpture')),
    probability    real NOT NULL CHECK (probability >= 0 AND probability <= 1),
    probabilities  jsonb NOT NULL,
    embedding      vector(128) NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- artwork_id first: a leading model_version would make the planner scan this key for
    -- "model_version = v" (every row of the partition) instead of using the HNSW index.
    PRIMARY KEY (artwork_id, model_version)
) PARTITION BY LIST (model_version);

-- The partition of one version (created on first use); returns its qualified name. Found by
-- its bound, not its name, so a partition outlives re-registration of the same version.
CREATE FUNCTION artclf._find_embedding_partition(v text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT c.oid::regclass::text
    FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'artclf.embeddings'::regclass
      AND pg_get_expr(c.relpartbound, c.oid) = format('FOR VALUES IN (%L)', v)
$$;

CREATE FUNCTION artclf.embedding_partition(v text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    mid integer;
    part text := artclf._find_embedding_partition(v);
BEGIN
    IF part IS NOT NULL THEN
        RETURN part;
    END IF;
    SELECT id INTO mid FROM artclf.model_versions WHERE version = v;
    IF mid IS NULL THEN
        RAISE EXCEPTION 'model version % is not registered', v USING ERRCODE = 'no_data_found';
    END IF;
    -- Serialise creators: two workers starting with a new model must not both CREATE it.
    PERFORM pg_advisory_xact_lock(hashtext('artclf.embedding_partition'));
    part := artclf._find_embedding_partition(v);
    IF part IS NULL THEN
        part := format('artclf.%I', format('embeddings_m%s', mid));
        EXECUTE format('CREATE TABLE %s PARTITION OF artclf.embeddings FOR VALUES IN (%L)',
                       part, v);
    END IF;
    RETURN part;
END
$$;

-- Drop one version's embeddings (never the active one's); its registry row stays, retired.
CREATE FUNCTION artclf.drop_embeddings(v text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    part text := artclf._find_embedding_partition(v);
BEGIN
    IF artclf.active_version() IS NOT DISTINCT FROM v THEN
        RAISE EXCEPTION 'model version % is active; activate another one first', v
            USING ERRCODE = 'object_in_use';
    END IF;
    UPDATE artclf.model_versions SET status = 'retired', index_built = false WHERE version = v;
    IF part IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP TABLE %s', part);
    RETURN true;
END
$$;

-- Build the HNSW index of one version's partition (no-op when built). Building once over a
-- filled partition is several times faster than growing the graph row by row, which is why
-- re-embedding loads first and indexes last. ef_construction 128: see 001_catalogue.sql.
CREATE FUNCTION artclf.build_embedding_index(v text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    part text := artclf.embedding_partition(v);
BEGIN
    IF (SELECT index_built FROM artclf.model_versions WHERE version = v) THEN
        RETURN;  -- every ingest worker registers its model at start: keep that cheap
    END IF;
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s USING hnsw (embedding vector_cosine_ops)'
                   ' WITH (m = 16, ef_construction = 128)',
                   replace(split_part(part, '.', 2), '"', '') || '_hnsw', part);
    -- Fresh statistics, so that the planner sees the rows a re-embedding just wrote.
    EXECUTE format('ANALYZE %s', part);
    UPDATE artclf.model_versions SET index_built = true WHERE version = v;
END
$$;

-- The version similarity search answers from (NULL before any model is active).
CREATE FUNCTION artclf.active_version() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT version FROM artclf.model_versions WHERE is_active
$$;

-- Artworks that have no row yet for version v (what re-embedding still has to do).
CREATE FUNCTION artclf.missing_embeddings(v text) RETURNS SETOF bigint
LANGUAGE sql STABLE AS $$
    SELECT a.id FROM artclf.artworks AS a
    WHERE NOT EXISTS (SELECT 1 FROM artclf.embeddings AS e
                      WHERE e.model_version = v AND e.artwork_id = a.id)
    ORDER BY a.id
$$;

-- Make v the active version, in one transaction with the caller's. Refuses (and changes
-- nothing) unless v's partition covers every artwork and its index is built, so search never
-- answers from a half-filled version. Callers hold the catalogue lock
-- (artclf_core.db.lock_catalogue) so no artwork is committed between the check and the switch.
CREATE FUNCTION artclf.activate_model(v text, why text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    prev text := artclf.active_version();
    missing bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM artclf.model_versions WHERE version = v) THEN
        RAISE EXCEPTION 'model version % is not registered', v USING ERRCODE = 'no_data_found';
    END IF;
    IF prev IS NOT DISTINCT FROM v THEN
        RETURN prev;
    END IF;
    SELECT count(*) INTO missing FROM artclf.missing_embeddings(v);
    IF missing > 0 THEN
        RAISE EXCEPTION 'model version % lacks embeddings for % artworks; re-embed first', v, missing
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF NOT (SELECT index_built FROM artclf.model_versions WHERE version = v) THEN
        PERFORM artclf.build_embedding_index(v);
    END IF;
    UPDATE artclf.model_versions SET is_active = false WHERE is_active;
    UPDATE artclf.model_versions
       SET is_active = true, activated_at = now(),
           status = CASE WHEN status IN ('candidate', 'promoted') THEN 'promoted' ELSE status END
     WHERE version = v;
    INSERT INTO artclf.model_activations (version, previous, reason) VALUES (v, prev, why);
    RETURN prev;
END
$$;

-- Existing catalogues: move each artwork's embedding into its model's partition.
DO $$
DECLARE
    v text;
BEGIN
    FOR v IN SELECT DISTINCT model_version FROM artclf.artworks LOOP
        PERFORM artclf.embedding_partition(v);
    END LOOP;
    INSERT INTO artclf.embeddings (model_version, artwork_id, label, probability, probabilities,
                                   embedding)
    SELECT model_version, id, label, probability, probabilities, embedding FROM artclf.artworks;
    FOR v IN SELECT version FROM artclf.model_versions
             WHERE is_active OR version IN (SELECT model_version FROM artclf.artworks) LOOP
        PERFORM artclf.build_embedding_index(v);
    END LOOP;
    INSERT INTO artclf.model_activations (version, reason)
    SELECT version, 'active before versioned embeddings (migration 005)'
    FROM artclf.model_versions WHERE is_active;
END
$$;
ALTER TABLE artclf.artworks DROP COLUMN embedding;  -- and its HNSW index

-- ------------------------------------------------------------------ similarity, now versioned
-- The search runs on the active version's partition, named in the query (dynamic SQL): with
-- a "model_version = v" filter on the parent, a partition whose statistics lag behind its
-- rows can be planned as a key scan plus an exact sort of the whole partition instead of the
-- HNSW index. Finding the partition and planning cost ~0.3 ms per call.
DROP FUNCTION artclf._nearest(vector, integer, text, bigint);
CREATE FUNCTION artclf._nearest(
    q vector,
    k integer,
    only_label text,
    exclude_id bigint
)
RETURNS TABLE (rank integer, artwork_id bigint, location text, label text,
               distance double precision)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET hnsw.iterative_scan = 'relaxed_order'
SET hnsw.ef_search = 100
AS $$
DECLARE
    part text := artclf._find_embedding_partition(artclf.active_version());
BEGIN
    IF part IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format($q$
        WITH candidates AS MATERIALIZED (
            SELECT e.artwork_id AS id, e.label, e.embedding <=> $1 AS distance
            FROM %s AS e
            WHERE ($2::text IS NULL OR e.label = $2)
              AND ($3::bigint IS NULL OR e.artwork_id <> $3)
            ORDER BY e.embedding <=> $1
            LIMIT greatest($4, 0)
        )
        SELECT (row_number() OVER (ORDER BY c.distance, c.id))::integer,
               c.id, a.location, c.label, c.distance
        FROM candidates AS c
        JOIN artclf.artworks AS a ON a.id = c.id
        ORDER BY c.distance, c.id
    $q$, part) USING q, only_label, exclude_id, k;
END
$$;

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
    FROM artclf.embeddings AS e
    CROSS JOIN LATERAL artclf._nearest(
        e.embedding, similar_artworks.k,
        CASE WHEN similar_artworks.same_label THEN e.label END, e.artwork_id) AS n
    WHERE e.model_version = artclf.active_version()
      AND e.artwork_id = similar_artworks.artwork_id
    ORDER BY n.rank
$$;

-- ------------------------------------------------------------------ curation and review
ALTER TABLE artclf.artworks
    ADD COLUMN curated_by text,
    ADD COLUMN curated_at timestamptz;

-- Every confirmation or correction of a label, newest last (artworks.curated_label holds the
-- current one). Labels from training/<label>/ are curated by the folder and not listed here.
CREATE TABLE artclf.label_reviews (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    artwork_id  bigint NOT NULL REFERENCES artclf.artworks (id) ON DELETE CASCADE,
    label       text NOT NULL
                CHECK (label IN ('drawings', 'engraving', 'iconography', 'painting', 'sculpture')),
    previous    text,
    predicted   text,                       -- what the active model said at the time
    curator     text NOT NULL,
    reviewed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX label_reviews_artwork ON artclf.label_reviews (artwork_id);

-- Settings that SQL and the pipeline share; values are text, read with a cast.
CREATE TABLE artclf.settings (
    name  text PRIMARY KEY,
    value text NOT NULL,
    note  text
);
INSERT INTO artclf.settings (name, value, note) VALUES
    ('review_threshold', '0.6',
     'predictions whose top probability is below this are flagged for curator review');

-- Confirm (label = the prediction) or correct a label; recorded with who and when.
-- SECURITY DEFINER so a curator role can do this one write and nothing else.
CREATE FUNCTION artclf.confirm_label(
    p_artwork_id bigint,
    p_label text,
    p_curator text DEFAULT session_user
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    prev text;
    pred text;
BEGIN
    SELECT curated_label INTO prev FROM artclf.artworks WHERE id = p_artwork_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'artwork % does not exist', p_artwork_id USING ERRCODE = 'no_data_found';
    END IF;
    IF p_label NOT IN ('drawings', 'engraving', 'iconography', 'painting', 'sculpture') THEN
        RAISE EXCEPTION 'unknown label %; expected drawings, engraving, iconography, painting or sculpture',
            p_label USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT e.label INTO pred FROM artclf.embeddings AS e
     WHERE e.model_version = artclf.active_version() AND e.artwork_id = p_artwork_id;
    UPDATE artclf.artworks
       SET curated_label = p_label, curated_by = p_curator, curated_at = now(), updated_at = now()
     WHERE id = p_artwork_id;
    INSERT INTO artclf.label_reviews (artwork_id, label, previous, predicted, curator)
    VALUES (p_artwork_id, p_label, prev, pred, p_curator);
END
$$;

-- The active model's view of the catalogue next to what was filed and what curators said.
CREATE VIEW artclf.catalogue AS
SELECT a.id, a.location, a.bucket, a.key,
       e.label, e.probability, e.probabilities, e.model_version,
       a.curated_label, a.curated_by, a.curated_at,
       coalesce(a.curated_label, e.label) AS best_label,
       a.label AS filed_label, a.model_version AS filed_by,
       a.width, a.height, a.format, a.byte_size, a.sha256, a.source_key, a.created_at
FROM artclf.artworks AS a
LEFT JOIN artclf.embeddings AS e
       ON e.artwork_id = a.id AND e.model_version = artclf.active_version();

-- Predictions of the active model below the threshold (default: the review_threshold
-- setting) that no curator has confirmed yet, least confident first.
CREATE FUNCTION artclf.review_queue(threshold real DEFAULT NULL)
RETURNS TABLE (artwork_id bigint, location text, label text, probability real,
               probabilities jsonb, model_version text)
LANGUAGE sql STABLE AS $$
    SELECT e.artwork_id, a.location, e.label, e.probability, e.probabilities, e.model_version
    FROM artclf.embeddings AS e
    JOIN artclf.artworks AS a ON a.id = e.artwork_id
    WHERE e.model_version = artclf.active_version()
      AND a.curated_label IS NULL
      AND e.probability < coalesce(threshold,
            (SELECT value::real FROM artclf.settings WHERE name = 'review_threshold'))
    ORDER BY e.probability, e.artwork_id
$$;

-- Curators: may read, confirm labels through the function above, nothing else. Created here
-- when missing and allowed (the docker-compose init script makes it, so that the catalogue
-- owner needs no CREATEROLE); without it, only the owner can confirm labels.
REVOKE EXECUTE ON FUNCTION artclf.confirm_label(bigint, text, text) FROM PUBLIC, artclf_reader;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'artclf_curator') THEN
        BEGIN
            CREATE ROLE artclf_curator NOLOGIN IN ROLE artclf_reader;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'role artclf_curator is missing and cannot be created here; '
                'a superuser can run: CREATE ROLE artclf_curator NOLOGIN IN ROLE artclf_reader; '
                'GRANT EXECUTE ON FUNCTION artclf.confirm_label(bigint, text, text) TO artclf_curator;';
            RETURN;
        END;
    END IF;
    GRANT EXECUTE ON FUNCTION artclf.confirm_label(bigint, text, text) TO artclf_curator;
END
$$;
GRANT SELECT ON ALL TABLES IN SCHEMA artclf TO artclf_reader;
