-- Pool economics: the sizing policy beside the pool's size, the claims of the last hour read by
-- time, and what each tick aimed at.

-- Schedules and demand reaction on top of min_idle (pool_size::policy::SizingPolicy as JSON);
-- NULL: none, the base alone.
ALTER TABLE pool_settings ADD COLUMN sizing JSONB;

-- The tick counts claims started in the last 5, 15 and 60 minutes, and the dashboard claims per
-- hour over a day: a range scan of this small index, whatever the history's length. Partial, so a
-- claim pays for one extra index entry and every other transition for none.
CREATE INDEX instance_events_claims ON instance_events (at) WHERE to_status = 'claiming';

-- Claims that found nothing idle, by time: demand the pool did not meet is demand all the same,
-- for the claim rate the sizing policy reads and for a trace exported for `agentpool simulate`.
-- Written with the miss counter, in the same statement; kept eight days (the tick deletes older).
CREATE TABLE claim_misses (
    at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX claim_misses_at ON claim_misses (at);

-- What each full tick found and aimed at: the dashboard's chart and /metrics' target gauge. Kept
-- for eight days (the tick deletes older rows as it writes).
CREATE TABLE pool_samples (
    at        TIMESTAMPTZ PRIMARY KEY,
    idle      INTEGER NOT NULL,
    starting  INTEGER NOT NULL,
    target    INTEGER NOT NULL,
    reason    TEXT    NOT NULL
);
