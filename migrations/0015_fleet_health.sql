SET LOCAL lock_timeout = '2s';
-- A tick for 100,000 agents: each runtime is asked only when due (HEALTH_INTERVAL_MS), and a
-- runtime may push its own heartbeat instead of being asked. `last_ok_at` is the last good sign
-- of life, pulled or pushed: the due-selection orders by it, and death is judged by time since it.
-- Nullable and without a default, so adding it rewrites nothing and holds its lock for no time.
ALTER TABLE instances ADD COLUMN last_ok_at timestamptz;
