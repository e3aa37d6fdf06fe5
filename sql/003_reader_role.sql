-- A read-only role for analysts and downstream tools: it can read the catalogue and call the
-- similarity functions, and write nothing. It cannot log in; grant it to login roles:
--   CREATE ROLE analyst LOGIN PASSWORD '...' IN ROLE artclf_reader;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'artclf_reader') THEN
        CREATE ROLE artclf_reader NOLOGIN;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA artclf TO artclf_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA artclf TO artclf_reader;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA artclf TO artclf_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA artclf GRANT SELECT ON TABLES TO artclf_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA artclf GRANT EXECUTE ON FUNCTIONS TO artclf_reader;
