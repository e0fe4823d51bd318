-- Full ticks (health of the whole fleet, listings, orphans, clean-up) apart from kicked ones
-- (replenish after a claim), so that an operator can see the full tick keeps its interval under
-- load: agentpool_full_ticks_total and agentpool_full_tick_last_success_timestamp_seconds.
SET LOCAL lock_timeout = '2s';

ALTER TABLE tick_stats
    ADD COLUMN full_ticks    BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN last_full_at  TIMESTAMPTZ;
