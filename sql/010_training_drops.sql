-- Labelled drops reach the retraining without a hand-run command (docs/lifecycle.md).
--
-- 1. MinIO notifications queue objects under training/<label>/ as well as incoming/: the
--    same function as in 004, with the one prefix test widened (the landing-zone sweep and
--    the Airflow trigger cover training/ too, see artclf_core/events.py).
-- 2. artclf.retrain_runs: every retraining attempt, including those that trained nothing,
--    with what it trained on, so that "why was nothing trained last night?" has an answer
--    in SQL and on the Models page (not only in a task log).

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
                       OR NOT (starts_with(obj_key, 'incoming/')
                               OR starts_with(obj_key, 'training/'))
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

CREATE TABLE IF NOT EXISTS artclf.retrain_runs (
    id           bigserial PRIMARY KEY,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    -- Who ran it: "airflow:<dag_id>/<run_id>" or "cli:<user>@<host>".
    run_by       text NOT NULL,
    status       text NOT NULL CHECK (status IN ('skipped', 'promoted', 'rejected')),
    reason       text,                 -- why nothing was trained (status skipped)
    version      text REFERENCES artclf.model_versions (version) ON DELETE SET NULL,
    compared_with text,                -- the active version when it ran
    -- {"n", "per_class", "per_source", "new_since_active": {"n", "per_class"}, "fingerprint"}
    dataset      jsonb NOT NULL,
    report_md    text NOT NULL,        -- the summary the DAG and the Models page show
    seconds      double precision
);
CREATE INDEX IF NOT EXISTS retrain_runs_started ON artclf.retrain_runs (started_at DESC);

GRANT SELECT ON artclf.retrain_runs TO artclf_reader;  -- the role 003 creates
