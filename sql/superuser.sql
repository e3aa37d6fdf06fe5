-- Rights only a superuser can take away, run by the superuser in the catalogue database
-- (the embedded stack does it on every start; compose's first start runs it from
-- docker/postgres/10-artclf-databases.sh; an existing deployment: see docs/operating.md).
-- Idempotent. It is not an ordered migration because the catalogue's owner, who applies
-- those, cannot change rights on pg_catalog functions.
--
-- PostgreSQL grants these functions to PUBLIC, so every role that can connect, the
-- read-only artclf_reader included, could otherwise
--   * take the advisory locks the pipeline serialises on (the catalogue commit lock, the
--     migration lock) and hold them forever, stalling every ingest;
--   * create large objects (lo_from_bytea, lo_create, ...) and fill the disk.
-- After this, advisory locks in this database belong to its owner (the pipeline's role)
-- only, and nobody but superusers creates or writes large objects (artclf uses none).
--
-- NOTIFY cannot be restricted: PostgreSQL has no privilege for it. A NOTIFY on
-- artclf_ingest from another role is only a wake-up: listeners re-read the queue and find
-- nothing new (docs/reliability.md).
DO $$
DECLARE
    owner text := (SELECT pg_get_userbyid(datdba) FROM pg_database
                   WHERE datname = current_database());
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname LIKE 'pg\_%advisory\_%'
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', fn, owner);
    END LOOP;
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = 'pg_catalog'::regnamespace
          AND p.proname IN ('lo_creat', 'lo_create', 'lo_from_bytea', 'lo_import', 'lo_put',
                            'lowrite', 'lo_truncate', 'lo_truncate64')
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;
END
$$;
