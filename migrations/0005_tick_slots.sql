-- Scheduled ticks, one row per slot: the time a schedule (a scheduler's TICK_CRON or
-- TICK_INTERVAL_MS, an EventBridge rule) meant a tick to run. Every scheduler fires for every
-- slot; the one whose INSERT creates the row runs that slot's tick, the others see the row and
-- skip. The advisory lock alone cannot do this: a scheduler that loses the lock race by a moment
-- would find it free once the winner is done, and tick the same slot a second time.
CREATE TABLE tick_runs (
    slot         TIMESTAMPTZ PRIMARY KEY,
    -- Who ran it: `agentpool-scheduler <pid>@<host>`, `api <pid>@<host>`, `lambda <request id>`.
    runner       TEXT NOT NULL,
    claimed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- NULL while the tick runs, or for ever if its runner died (the next slot covers it).
    finished_at  TIMESTAMPTZ,
    -- `ran`; `locked` when another tick (a `serve` timer, a slow earlier slot) held the advisory
    -- lock, so this slot did nothing; `failed` when the tick ended in an error.
    outcome      TEXT CHECK (outcome IN ('ran', 'locked', 'failed')),
    created      INTEGER NOT NULL DEFAULT 0,
    destroyed    INTEGER NOT NULL DEFAULT 0,
    transitions  INTEGER NOT NULL DEFAULT 0,
    errors       INTEGER NOT NULL DEFAULT 0,
    CHECK ((outcome IS NULL) = (finished_at IS NULL))
);
-- Old rows are deleted by when they were written (see tick::slots::finish).
CREATE INDEX tick_runs_claimed_at ON tick_runs (claimed_at);
