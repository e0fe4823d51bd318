-- What /metrics reports, kept so that a scrape reads a few small tables whatever the history's
-- length, and every replica reports the same numbers.
--
-- Counters are spread over shards (a random one per event) so that concurrent claims do not
-- queue on one hot row; a scrape sums the shards.

-- Transitions by (from, to), maintained by a trigger on instance_events: every writer of history
-- counts, in the same transaction, with no extra round trip.
CREATE TABLE event_totals (
    from_status TEXT   NOT NULL,  -- '' for a creation (no status before)
    to_status   TEXT   NOT NULL,
    shard       INT    NOT NULL,
    n           BIGINT NOT NULL,
    PRIMARY KEY (from_status, to_status, shard)
);

-- Claim durations (from `claiming` to `claimed`, as the two events' times say), per bucket: `le`
-- is the bucket's upper bound in seconds; counts are per bucket, not cumulative.
CREATE TABLE claim_durations (
    le          DOUBLE PRECISION NOT NULL,
    shard       INT              NOT NULL,
    n           BIGINT           NOT NULL,
    sum_seconds DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (le, shard)
);

-- Counts with no event to derive them from: claim misses, outside call errors by service and kind.
CREATE TABLE pool_counters (
    name   TEXT   NOT NULL,
    labels TEXT   NOT NULL DEFAULT '',  -- `service/kind` for call errors
    shard  INT    NOT NULL,
    n      BIGINT NOT NULL,
    PRIMARY KEY (name, labels, shard)
);

-- The last tick that ran to the end (one row; ticks are serialised by their lock).
CREATE TABLE tick_stats (
    id               INT PRIMARY KEY CHECK (id = 1),
    ticks            BIGINT           NOT NULL,
    last_success_at  TIMESTAMPTZ      NOT NULL,
    last_duration_s  DOUBLE PRECISION NOT NULL
);

-- A row trigger, not a statement trigger over a transition table: a claim writes one event per
-- statement, and a row trigger's plans are cached where a transition table's queries are planned
-- again on every statement. pgbench, a claim's two events one after the other: 0.099 ms without a
-- trigger, 0.195 ms with the statement trigger, 0.176 ms with this one.
CREATE FUNCTION instance_events_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    pick    INT := floor(random() * 32);
    started TIMESTAMPTZ;
    seconds FLOAT8;
BEGIN
    INSERT INTO event_totals (from_status, to_status, shard, n)
    VALUES (coalesce(NEW.from_status, ''), NEW.to_status, pick, 1)
    ON CONFLICT (from_status, to_status, shard) DO UPDATE SET n = event_totals.n + 1;

    IF NEW.from_status = 'claiming' AND NEW.to_status = 'claimed' THEN
        SELECT e.at INTO started FROM instance_events e
         WHERE e.instance_id = NEW.instance_id AND e.id < NEW.id AND e.to_status = 'claiming'
         ORDER BY e.id DESC LIMIT 1;
        IF FOUND THEN
            seconds := extract(epoch FROM NEW.at - started);
            INSERT INTO claim_durations (le, shard, n, sum_seconds)
            SELECT min(le), pick, 1, seconds
              FROM unnest('{0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5,10,30,Infinity}'::float8[]) le
             WHERE seconds <= le
            ON CONFLICT (le, shard) DO UPDATE
               SET n = claim_durations.n + 1,
                   sum_seconds = claim_durations.sum_seconds + EXCLUDED.sum_seconds;
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER instance_events_count
    AFTER INSERT ON instance_events
    FOR EACH ROW EXECUTE FUNCTION instance_events_count();

-- The history written before this migration counts too.
INSERT INTO event_totals (from_status, to_status, shard, n)
SELECT coalesce(from_status, ''), to_status, 0, count(*) FROM instance_events GROUP BY 1, 2;
