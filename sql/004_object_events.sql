-- Object events: MinIO's PostgreSQL notifications feed the ingest queue, and the Airflow
-- trigger's watermark lives next to the queue it announces. See docs/events.md.
--
-- Idempotent (IF NOT EXISTS / OR REPLACE throughout) although the runner applies it once.

-- MinIO's PostgreSQL notification target with MINIO_NOTIFY_POSTGRES_FORMAT=access appends
-- one row per event: exactly the table MinIO would create itself
-- ("CREATE TABLE %s (event_time TIMESTAMP WITH TIME ZONE NOT NULL, event_data JSONB)").
-- MinIO refuses a schema-qualified table name, so it is configured with table `minio_events`
-- and `search_path=artclf` in its connection string; it only checks the table exists
-- ("SELECT 1 FROM minio_events") and inserts. The rows are an audit trail of what MinIO
-- announced; the queue itself is artclf.ingest_log, written by the trigger below.
CREATE TABLE IF NOT EXISTS artclf.minio_events (
    event_time timestamptz NOT NULL,
    event_data jsonb
);
-- Events arrive in time order: a BRIN index keeps time-range pruning cheap for no write cost.
CREATE INDEX IF NOT EXISTS minio_events_time ON artclf.minio_events USING brin (event_time);

-- Python's urllib.parse.unquote_plus in SQL: MinIO announces keys query-escaped
-- (url.QueryEscape: '/' as %2F, ' ' as '+'), the ingest log stores them as S3 lists them.
-- A '%' not followed by two hex digits stays as it is; bytes that are not UTF-8 raise.
CREATE OR REPLACE FUNCTION artclf.url_unquote_plus(s text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT coalesce(
        convert_from(
            string_agg(CASE WHEN t.m[1] IS NOT NULL THEN decode(t.m[1], 'hex')
                            ELSE convert_to(t.m[2], 'UTF8') END,
                       ''::bytea ORDER BY t.n),
            'UTF8'),
        '')
    FROM regexp_matches(replace(s, '+', ' '), '%([0-9A-Fa-f]{2})|([^%]+|%)', 'g')
         WITH ORDINALITY AS t(m, n)
$$;

-- Queue one object version, with the semantics of artclf_core.db.register_objects: an object
-- version is (bucket, key, etag); one whose latest row says it was moved away (finalised,
-- final key elsewhere) is a new drop of the same bytes and gets a row one generation up;
-- otherwise a version already in the log is left alone. Returns the new row's id, or NULL
-- when nothing was queued. Concurrent registrations of the same version (MinIO and a sweep)
-- meet on the UNIQUE (bucket, key, etag, generation) constraint: one row wins.
CREATE OR REPLACE FUNCTION artclf.register_object(
    p_bucket text,
    p_key text,
    p_etag text,
    p_last_modified timestamptz,
    p_size bigint
)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    latest_generation integer;
    latest_moved_away boolean;
    new_id bigint;
BEGIN
    SELECT l.generation, (l.finalized AND l.final_key IS DISTINCT FROM l.key)
      INTO latest_generation, latest_moved_away
      FROM artclf.ingest_log AS l
     WHERE l.bucket = p_bucket AND l.key = p_key AND l.etag = p_etag
     ORDER BY l.generation DESC
     LIMIT 1;
    IF latest_generation IS NOT NULL AND NOT latest_moved_away THEN
        RETURN NULL;
    END IF;
    INSERT INTO artclf.ingest_log (bucket, key, etag, last_modified, size, generation)
    VALUES (p_bucket, p_key, p_etag, p_last_modified, p_size,
            coalesce(latest_generation + 1, 0))
    ON CONFLICT DO NOTHING
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;

-- For every s3:ObjectCreated:* record of a MinIO event row whose key is under incoming/,
-- queue the object and wake the listeners (channel artclf_ingest). The queue is durable the
-- moment MinIO's INSERT commits: nothing between MinIO and the catalogue can lose the event.
--
-- A record that cannot be read (bad key encoding, bad number or time: SQLSTATE class 22) is
-- skipped with a WARNING, so one malformed record never makes MinIO retry forever; the
-- landing-zone sweep still finds its object. Any other error (lock timeout, disk full)
-- fails MinIO's INSERT, and MinIO retries it from its queue_dir.
--
-- SECURITY DEFINER: MinIO's database role needs INSERT on artclf.minio_events only.
CREATE OR REPLACE FUNCTION artclf.minio_event_to_ingest_log()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rec jsonb;
    obj_key text;
    bucket_name text;
    new_id bigint;
    last_new_id bigint;
    notify_bucket text;
BEGIN
    IF jsonb_typeof(NEW.event_data -> 'Records') IS DISTINCT FROM 'array' THEN
        RETURN NULL;
    END IF;
    FOR rec IN SELECT r FROM jsonb_array_elements(NEW.event_data -> 'Records') AS e(r) LOOP
        CONTINUE WHEN coalesce(rec ->> 'eventName', '') NOT LIKE 's3:ObjectCreated:%';
        BEGIN
            bucket_name := rec #>> '{s3,bucket,name}';
            obj_key := artclf.url_unquote_plus(rec #>> '{s3,object,key}');
            CONTINUE WHEN bucket_name IS NULL OR obj_key IS NULL
                       OR NOT starts_with(obj_key, 'incoming/')
                       OR right(obj_key, 1) = '/';          -- "folder" markers, as listings
            new_id := artclf.register_object(
                bucket_name,
                obj_key,
                btrim(coalesce(rec #>> '{s3,object,eTag}', ''), '"'),
                (rec ->> 'eventTime')::timestamptz,
                coalesce((rec #>> '{s3,object,size}')::bigint, 0));
            IF new_id IS NOT NULL THEN
                last_new_id := greatest(last_new_id, new_id);
                notify_bucket := bucket_name;
            END IF;
        EXCEPTION WHEN data_exception THEN
            RAISE WARNING 'artclf: skipped unreadable MinIO event record (%: %)',
                SQLSTATE, SQLERRM;
        END;
    END LOOP;
    IF last_new_id IS NOT NULL THEN  -- delivered when MinIO's INSERT commits
        PERFORM pg_notify('artclf_ingest', json_build_object(
            'source', 'minio', 'bucket', notify_bucket, 'last_id', last_new_id)::text);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS minio_events_queue ON artclf.minio_events;
CREATE TRIGGER minio_events_queue
    AFTER INSERT ON artclf.minio_events
    FOR EACH ROW EXECUTE FUNCTION artclf.minio_event_to_ingest_log();

-- One row per event trigger (IncomingObjectsTrigger `name`): the watermark.
--   last_id       highest artclf.ingest_log id announced so far; only pending rows above it
--                 are announced next, so a row is announced once per trigger name, across
--                 restarts and concurrent instances (the row is locked while announcing)
--   announced_at  when the trigger last announced new rows
--   reminded_at   when it last re-announced rows still pending long after their announcement
--                 (the repair for an announcement lost between commit and Airflow)
CREATE TABLE IF NOT EXISTS artclf.trigger_state (
    name          text PRIMARY KEY,
    last_id       bigint NOT NULL DEFAULT 0 CHECK (last_id >= 0),
    announced_at  timestamptz,
    reminded_at   timestamptz,
    announcements bigint NOT NULL DEFAULT 0,
    reminders     bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The role MinIO's notification target logs in with: it can append events, nothing else.
--   CREATE ROLE minio_notify LOGIN PASSWORD '...' IN ROLE artclf_minio;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'artclf_minio') THEN
        CREATE ROLE artclf_minio NOLOGIN;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA artclf TO artclf_minio;
GRANT SELECT, INSERT ON artclf.minio_events TO artclf_minio;
