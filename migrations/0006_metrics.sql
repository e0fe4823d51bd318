-- What /metrics reports, kept so that a scrape reads a few small tables whatever the history's
-- length, and every replica reports the same numbers.
--
-- Counters are spread over shards (a random one per statement) so that concurrent claims do not
-- queue on one hot row; a scrape sums the shards.

-- Transitions by (from, to), maintained by a statement trigger on instance_events: every writer
-- of history counts, in the same transaction, with no extra round trip.
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

CREATE FUNCTION instance_events_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    pick INT := floor(random() * 32);
BEGIN
    INSERT INTO event_totals (from_status, to_status, shard, n)
    SELECT coalesce(from_status, ''), to_status, pick, count(*)
      FROM new_rows GROUP BY 1, 2
    ON CONFLICT (from_status, to_status, shard) DO UPDATE SET n = event_totals.n + EXCLUDED.n;

    INSERT INTO claim_durations (le, shard, n, sum_seconds)
    SELECT b.le, pick, count(*), sum(d.seconds)
      -- Only claims look up their start: a tick's thousands of other events cost nothing here.
      FROM (SELECT extract(epoch FROM c.at - s.at)::float8 AS seconds
              FROM (SELECT * FROM new_rows
                     WHERE from_status = 'claiming' AND to_status = 'claimed') c
              CROSS JOIN LATERAL (
                SELECT e.at FROM instance_events e
                 WHERE e.instance_id = c.instance_id AND e.id < c.id AND e.to_status = 'claiming'
                 ORDER BY e.id DESC LIMIT 1) s) d
      CROSS JOIN LATERAL (
        SELECT min(le) AS le
          FROM unnest('{0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5,10,30,Infinity}'::float8[]) le
         WHERE d.seconds <= le) b
     GROUP BY b.le
    ON CONFLICT (le, shard) DO UPDATE
       SET n = claim_durations.n + EXCLUDED.n,
           sum_seconds = claim_durations.sum_seconds + EXCLUDED.sum_seconds;
    RETURN NULL;
END;
$$;

CREATE TRIGGER instance_events_count
    AFTER INSERT ON instance_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION instance_events_count();

-- The history written before this migration counts too.
INSERT INTO event_totals (from_status, to_status, shard, n)
SELECT coalesce(from_status, ''), to_status, 0, count(*) FROM instance_events GROUP BY 1, 2;
