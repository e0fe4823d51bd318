-- Metrics off the claim's path. The trigger of 0006 made every event also upsert two counters,
-- look up its claim's start and upsert a duration bucket, inside the writer's transaction: a claim
-- ran at about half the speed of its own two statements. Now a claim writes its events and nothing
-- more, and the totals are folded in later (`metrics::fold`, by the tick and by each scrape).
--
-- What has been folded is marked by transaction, not by event id: ids are handed out before their
-- transactions commit, in any order, so a watermark on ids would pass over an event whose
-- transaction committed after a later one. Every event carries the id of the transaction that wrote
-- it; a fold counts the events of transactions below the oldest one still running
-- (`pg_snapshot_xmin`), all of which have ended and are visible to it, and moves the watermark
-- there. Folds hold the watermark's row lock, so two never count the same events.
SET LOCAL lock_timeout = '2s';
DROP TRIGGER instance_events_count ON instance_events;
DROP FUNCTION instance_events_count();

-- Events written before this migration have no transaction id and were counted by the trigger.
-- Added without a default first, then given one, so that the existing rows are not rewritten.
ALTER TABLE instance_events ADD COLUMN xid xid8;
ALTER TABLE instance_events ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
CREATE INDEX instance_events_xid ON instance_events (xid) WHERE xid IS NOT NULL;

CREATE TABLE metrics_folded (
    id   INT  PRIMARY KEY CHECK (id = 1),
    -- Every event written by a transaction whose id is below this is in the totals.
    upto xid8 NOT NULL
);
-- From zero: the events with a transaction id were all written after the trigger was dropped
-- (this migration holds the table's lock until it commits), whatever their transaction's id.
INSERT INTO metrics_folded (id, upto) VALUES (1, '0');

-- Nothing reads instances by status through this index (the claim has `instances_idle`, counts
-- read the whole table), and every change of status wrote an entry into it: two per claim.
DROP INDEX instances_status;
