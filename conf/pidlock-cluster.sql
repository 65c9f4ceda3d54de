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

-- Edit leases across hosts (PidLockLease On with PidLockCluster): one row per
-- leased key, keyed by pidlock_key() of the key and its bytes; the token is
-- kept only as its SHA-256; deadlines are wall-clock microseconds since the
-- epoch. mod_pidlock creates this table itself if it is missing (the role in
-- CONNINFO then needs CREATE on the schema); else create it here and grant
--   GRANT SELECT, INSERT, UPDATE, DELETE ON pidlock_leases TO gmn_httpd;
CREATE TABLE IF NOT EXISTS pidlock_leases (
    key_hash bigint NOT NULL, key bytea NOT NULL, token_hash bytea NOT NULL, id text NOT NULL,
    owner text NOT NULL, usr text NOT NULL, client text NOT NULL, timeout_s integer NOT NULL,
    granted_us bigint NOT NULL, idle_us bigint NOT NULL, expires_us bigint NOT NULL,
    PRIMARY KEY (key_hash, key));
