-- mod_pidlock, PidLockCluster postgres: what the shared database needs.
-- Run once per database, by its owner (psql -f conf/pidlock-cluster.sql);
-- running it again changes nothing. Every host's CONNINFO names this database.

-- Fence numbers (the PidLock-Fence header) that grow across every host: one
-- nextval per write lock granted.
CREATE SEQUENCE IF NOT EXISTS pidlock_fence;

-- The advisory-lock key of a PID: the first 8 bytes of the SHA-256 of its
-- bytes, big-endian, as a signed bigint -- the number mod_pidlock locks.
-- The application's own jobs take the same lock with one statement:
--   SELECT pg_advisory_xact_lock(pidlock_key('urn:uuid:...'));         -- write, till COMMIT
--   SELECT pg_advisory_xact_lock_shared(pidlock_key('urn:uuid:...'));  -- read
-- (or the session forms pg_advisory_lock / pg_advisory_unlock).
-- Keys are the decoded, canonical PID bytes; text is taken as UTF-8.
CREATE OR REPLACE FUNCTION pidlock_key(bytea) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT ('x' || encode(substr(sha256($1), 1, 8), 'hex'))::bit(64)::bigint $$;

CREATE OR REPLACE FUNCTION pidlock_key(text) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT pidlock_key(convert_to($1, 'UTF8')) $$;

-- The role in CONNINFO needs nextval on the sequence, e.g.:
--   GRANT USAGE ON SEQUENCE pidlock_fence TO gmn_httpd;
