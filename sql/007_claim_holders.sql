-- A claim names the database session that holds it, so a claim of a dead process is taken
-- over at once instead of after the 15-minute lease.
--
-- The worker claims rows on a connection it keeps for its whole life; when the process dies
-- (SIGKILL, OOM, a lost container) the kernel closes that connection and PostgreSQL ends the
-- session at once. A claim whose session (pid + backend start, which together never repeat)
-- is no longer in pg_stat_activity is therefore dead and claimable now. The lease stays as
-- the fallback for claims made before this migration and for a holder the server cannot see
-- die (a network partition: TCP keepalive ends that session later).
--
-- Visibility: pg_stat_activity shows pid and backend_start of the sessions of one's own role,
-- and every ingest worker uses the catalogue's role; a session of another role is not
-- visible, so its claims would look dead: workers of one catalogue must share a role.

ALTER TABLE artclf.ingest_log
    ADD COLUMN claim_pid integer,           -- pg_backend_pid() of the claiming session
    ADD COLUMN claim_session_start timestamptz,  -- its backend_start
    -- A copy of the object that may exist at this key without being the row's final place:
    -- written (and committed) before the pipeline copies to it, kept on a late duplicate's
    -- abandoned catalog/ copy until that is removed, cleared when the row is finalized. A
    -- run that takes the row over, or finishes its move, removes that copy unless an
    -- artwork or another row's copy owns the key: no orphan under catalog/ or duplicates/.
    ADD COLUMN intended_key text;
CREATE INDEX ingest_log_intended_key ON artclf.ingest_log (bucket, intended_key)
    WHERE intended_key IS NOT NULL;

CREATE FUNCTION artclf.claim_is_dead(
    p_claimed_at timestamptz, p_pid integer, p_started timestamptz, p_lease_seconds integer
) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT p_claimed_at < now() - make_interval(secs => p_lease_seconds)
        OR (p_pid IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM pg_catalog.pg_stat_activity AS a
                 WHERE a.pid = p_pid AND a.backend_start = p_started))
$$;

-- Who holds what: operators read this (artclf report --state processing shows it too).
CREATE VIEW artclf.claims AS
SELECT l.id, l.bucket, l.key, l.claimed_by, l.claimed_at, l.claim_pid, l.attempts,
       NOT artclf.claim_is_dead(l.claimed_at, l.claim_pid, l.claim_session_start, 2147483647)
           AS holder_alive
FROM artclf.ingest_log AS l
WHERE l.state = 'processing';
