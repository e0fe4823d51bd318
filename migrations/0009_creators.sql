-- Who is creating a `starting` row, and whether they still live. A creator (one batch of
-- creations in one process: a tick's replenish, `POST /api/pool/replenish {count}`, the SSE stream)
-- bumps `alive_at` while it works; a `starting` row without a resource is reaped only once its
-- creator has been silent for CREATE_TIMEOUT_MS. A queued or merely slow creation is therefore
-- never reaped, whatever the length of the queue; a creator killed or cut off from the database
-- stops bumping, and its rows are reaped as before. One write per creator per beat, whatever the
-- number of its rows.
SET LOCAL lock_timeout = '2s';

CREATE TABLE creators (
    id        UUID PRIMARY KEY,
    alive_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- No foreign key: a creator that finished deletes its row; its instances keep the id.
ALTER TABLE instances ADD COLUMN creator_id UUID;
