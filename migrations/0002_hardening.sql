-- Health judged over time, absence believed slowly, claims made idempotent.

-- When a tick cut short by its budget last asked this runtime: the oldest (and never asked) are
-- asked first, so the tail of the fleet is not starved. Written only by ticks cut short: a tick
-- that asks everyone has no order to keep.
ALTER TABLE instances ADD COLUMN last_checked_at TIMESTAMPTZ;
-- When the current run of failed checks began (NULL while the runtime answers well). The run
-- condemns an instance only once it has lasted HEALTH_GRACE_MS: ticks kicked by claims come fast,
-- time does not. A healthy fleet writes nothing here, tick after tick.
ALTER TABLE instances ADD COLUMN failing_since TIMESTAMPTZ;
-- When a provider listing first lacked this instance's resource. Only a second listing at least
-- HEALTH_GRACE_MS later makes the resource gone; a failed listing says nothing either way.
ALTER TABLE instances ADD COLUMN absent_since TIMESTAMPTZ;

-- One agent per conversation: a second claim with the same joinUrl finds the first one.
CREATE UNIQUE INDEX instances_one_agent_per_conversation ON instances (join_url)
    WHERE join_url IS NOT NULL AND status IN ('claiming', 'claimed', 'crashed');

-- `Idempotency-Key` of a claim: the same key gets the same reply for 24 hours.
CREATE TABLE claim_requests (
    key          TEXT PRIMARY KEY,
    -- sha-256 of the request: the same key with another request is refused, not replayed.
    fingerprint  TEXT NOT NULL,
    -- Fences the finishing write: a claimer that stalled and was taken over cannot overwrite.
    attempt      UUID NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'done')),
    instance_id  TEXT,
    reply        JSONB,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((status = 'done') = (reply IS NOT NULL))
);

CREATE INDEX claim_requests_created ON claim_requests (created_at);
