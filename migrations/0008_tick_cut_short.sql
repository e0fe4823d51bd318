-- Old replicas keep serving while this runs: wait at most this long for a lock, so that claims
-- never queue for longer behind a migration's lock; a migration that times out is tried again.
SET LOCAL lock_timeout = '2s';

-- A slot whose tick was cut short (budget, lost lock, shutdown) did not run to its end: it is
-- recorded as such, not as `ran`.
ALTER TABLE tick_runs DROP CONSTRAINT tick_runs_outcome_check;
ALTER TABLE tick_runs ADD CONSTRAINT tick_runs_outcome_check
    CHECK (outcome IN ('ran', 'cut_short', 'locked', 'failed'));
