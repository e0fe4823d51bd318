-- The browser dashboard: pool size changed at run time, operator sessions, login throttling.

-- The pool's size as an operator set it; no row means the environment's POOL_MIN_IDLE and
-- POOL_MAX_TOTAL. One row at most, read by every replica and by every tick.
CREATE TABLE pool_settings (
    singleton   BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    min_idle    INTEGER NOT NULL CHECK (min_idle >= 0),
    max_total   INTEGER NOT NULL CHECK (max_total >= min_idle),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_by  TEXT NOT NULL
);

-- Append-only history of what happened to the pool as a whole (instance_events is per instance).
CREATE TABLE pool_events (
    id      BIGSERIAL PRIMARY KEY,
    kind    TEXT NOT NULL,
    detail  JSONB NOT NULL,
    actor   TEXT NOT NULL,
    at      TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

CREATE TRIGGER pool_events_no_update
    BEFORE UPDATE OR DELETE ON pool_events
    FOR EACH ROW EXECUTE FUNCTION instance_events_append_only();

-- Dashboard sessions. The cookie carries the id and a MAC; the row is what makes it valid, so a
-- logout (the row deleted) ends the session on every replica at once. Only a hash of the id is
-- kept: the table alone cannot be turned into cookies.
CREATE TABLE admin_sessions (
    id_hash     TEXT PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL
);

CREATE INDEX admin_sessions_expires ON admin_sessions (expires_at);

-- Wrong keys per client: each attempt that is let through pushes `blocked_until` out by a delay
-- that grows with the attempts in a row; a right key deletes the row. Shared by all replicas.
CREATE TABLE admin_login_attempts (
    client         TEXT PRIMARY KEY,
    attempts       INTEGER NOT NULL,
    blocked_until  TIMESTAMPTZ NOT NULL
);
