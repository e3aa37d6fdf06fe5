-- The pipeline's locks must not be takeable by the read-only role (sql/superuser.sql takes
-- the right away; only a superuser can). Warn the operator who migrates a database where
-- that has not been run yet, rather than fail: the catalogue works, it is only exposed.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'artclf_reader')
       AND has_function_privilege('artclf_reader', 'pg_catalog.pg_advisory_xact_lock(bigint)',
                                  'EXECUTE') THEN
        RAISE WARNING 'artclf_reader can take advisory locks and so stall ingestion; run '
            'sql/superuser.sql as a superuser in this database (docs/operating.md)';
    END IF;
END
$$;
