-- artclf catalogue: models, artworks and the per-object ingest log.
-- Applied once, in order, by `artclf db migrate` (artclf_core/db.py); never edit an applied
-- migration: add a new numbered file instead.

CREATE EXTENSION IF NOT EXISTS vector;
CREATE SCHEMA IF NOT EXISTS artclf;

-- Every model that produced labels or embeddings in the catalogue.
CREATE TABLE artclf.model_versions (
    version      text PRIMARY KEY,
    arch         text NOT NULL,
    classes      text[] NOT NULL,
    artifact     text,                       -- where the .keras file lives (path or s3:// URI)
    metrics      jsonb,
    params       jsonb,
    is_active    boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz
);
-- At most one active model.
CREATE UNIQUE INDEX model_versions_one_active ON artclf.model_versions (is_active) WHERE is_active;

-- One row per distinct artwork (exact and near copies are not artworks of their own).
CREATE TABLE artclf.artworks (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    location       text NOT NULL UNIQUE,     -- s3://bucket/key of the curated object
    bucket         text NOT NULL,
    key            text NOT NULL,
    label          text NOT NULL
                   CHECK (label IN ('drawings', 'engraving', 'iconography', 'painting', 'sculpture')),
    probability    real NOT NULL CHECK (probability >= 0 AND probability <= 1),
    probabilities  jsonb NOT NULL,           -- {"drawings": 0.01, ..., "sculpture": 0.9}
    embedding      vector(128) NOT NULL,
    model_version  text NOT NULL REFERENCES artclf.model_versions (version),
    sha256         char(64) NOT NULL UNIQUE, -- exact duplicates
    phash          bigint NOT NULL,          -- 64-bit perceptual hash (near duplicates)
    dhash          bigint NOT NULL,          -- 64-bit difference hash (confirms a pHash match)
    phash_bands    integer[] NOT NULL,       -- exact 16-bit pHash band keys, see docs/dedup.md
    width          integer NOT NULL CHECK (width > 0),
    height         integer NOT NULL CHECK (height > 0),
    format         text NOT NULL,
    byte_size      bigint NOT NULL CHECK (byte_size > 0),
    source_key     text NOT NULL,            -- the key it was dropped under
    source_etag    text,
    curated_label  text                      -- known label: training/<label>/ or a curator
                   CHECK (curated_label IN ('drawings', 'engraving', 'iconography', 'painting', 'sculpture')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX artworks_label ON artclf.artworks (label);
-- fastupdate off: with the pending list on, every lookup scans the not-yet-merged entries
-- of recent bulk inserts linearly (measured: 1.9 ms instead of 0.05 ms at 20k rows).
CREATE INDEX artworks_phash_bands ON artclf.artworks USING gin (phash_bands)
    WITH (fastupdate = off);
-- ef_construction 128, not pgvector's default 64: at 1M clustered rows the default graph
-- strands ~10 % of queries in the wrong region (recall@5 0.87 at ef_search 100, 0.96 only
-- at ef_search 400); 128 gives 0.99 at ef_search 100, same latency, ~1.8x the build time
-- (bench/similarity.py, docs/bench-similarity.md).
CREATE INDEX artworks_embedding_cosine ON artclf.artworks
    USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 128);

-- Every object version the pipeline has seen, and where it ended.
--   pending      seen, not processed yet
--   processing   claimed by a worker (claimed_at tells since when; stale claims are retaken)
--   catalogued   an artwork row exists (artwork_id); object moved to catalog/<label>/
--   duplicate    exact or near copy of artwork duplicate_of; object moved to duplicates/
--   quarantined  bad input (reason, message); object moved to quarantine/
--   failed       transient error (reason, message); object left in place and retried until
--                attempts reaches the configured maximum
CREATE TABLE artclf.ingest_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bucket         text NOT NULL,
    key            text NOT NULL,
    etag           text NOT NULL,
    last_modified  timestamptz,              -- as listed or announced (informational)
    size           bigint NOT NULL,
    -- An object version is (bucket, key, etag). The same bytes dropped again under the same
    -- key after the first drop was moved away is a new drop: generation n+1. (LastModified
    -- is no part of the identity: S3 lists it to the second and notifications carry an
    -- event time instead, so the two sources would disagree.)
    generation     integer NOT NULL DEFAULT 0,
    state          text NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'processing', 'catalogued', 'duplicate',
                                    'quarantined', 'failed')),
    reason         text,                     -- machine-readable (quarantine/failure)
    message        text,                     -- for people
    artwork_id     bigint REFERENCES artclf.artworks (id),
    duplicate_of   bigint REFERENCES artclf.artworks (id),
    duplicate_kind text CHECK (duplicate_kind IN ('exact', 'near')),
    distance       integer,                  -- pHash Hamming distance of a near duplicate
    final_key      text,                     -- where the object ends
    finalized      boolean NOT NULL DEFAULT false, -- object is at final_key, source removed
    attempts       integer NOT NULL DEFAULT 0,
    claimed_at     timestamptz,
    claimed_by     text,
    first_seen     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (bucket, key, etag, generation),
    CHECK (state <> 'catalogued' OR artwork_id IS NOT NULL),
    CHECK (state <> 'duplicate' OR duplicate_of IS NOT NULL),
    CHECK (state NOT IN ('quarantined', 'failed') OR reason IS NOT NULL)
);
CREATE INDEX ingest_log_open ON artclf.ingest_log (state)
    WHERE state IN ('pending', 'processing', 'failed') OR NOT finalized;
CREATE INDEX ingest_log_key ON artclf.ingest_log (bucket, key);
CREATE INDEX ingest_log_artwork ON artclf.ingest_log (artwork_id);
