-- The pool's whole state. Every replica reads and writes only this; nothing that matters for
-- correctness lives in a process.

CREATE TABLE instances (
    id               TEXT PRIMARY KEY,
    -- Name of the provider resource: `<POOL_NAME_PREFIX><id>`. The prefix is how orphans are found.
    name             TEXT NOT NULL UNIQUE,
    url              TEXT,
    status           TEXT NOT NULL CHECK (status IN
                       ('starting', 'idle', 'claiming', 'claimed', 'crashed', 'destroying', 'recycling')),
    status_since     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- 64 hex chars, injected into the runtime at creation, handed once to the claimer.
    gateway_token    TEXT NOT NULL,
    -- Fences the final claim update: a claimer that stalled past CLAIM_TIMEOUT_MS cannot
    -- overwrite what the tick decided meanwhile.
    claim_token      UUID,
    agent_name       TEXT,
    instructions     TEXT,
    join_url         TEXT,
    conversation_id  TEXT,
    invite_url       TEXT,
    template_id      TEXT,
    health_failures  INTEGER NOT NULL DEFAULT 0,
    destroy_attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_at       TIMESTAMPTZ,
    CHECK ((status = 'claiming') = (claim_token IS NOT NULL))
);

-- The claim's inner SELECT: oldest idle first.
CREATE INDEX instances_idle ON instances (created_at, id) WHERE status = 'idle';
CREATE INDEX instances_status ON instances (status);

-- Where an instance lives at the compute provider. Written as soon as the resource exists, so a
-- resource always has a row that knows how to destroy it.
CREATE TABLE instance_infra (
    instance_id  TEXT PRIMARY KEY REFERENCES instances (id) ON DELETE CASCADE,
    provider     TEXT NOT NULL,
    resource_id  TEXT NOT NULL,
    details      JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Tools provisioned for an instance (OpenRouter key, inbox, phone number, wallet, ...).
CREATE TABLE instance_services (
    id              BIGSERIAL PRIMARY KEY,
    instance_id     TEXT NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    tool_id         TEXT NOT NULL,
    resource_id     TEXT NOT NULL,
    config          JSONB NOT NULL DEFAULT '{}'::jsonb,
    status          TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'user_provided', 'destroyed')),
    provisioned_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (instance_id, tool_id, resource_id)
);

-- Append-only history of every transition. No foreign key: the history outlives the instance.
CREATE TABLE instance_events (
    id           BIGSERIAL PRIMARY KEY,
    instance_id  TEXT NOT NULL,
    from_status  TEXT,
    to_status    TEXT NOT NULL,
    reason       TEXT NOT NULL,
    actor        TEXT NOT NULL,
    at           TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX instance_events_instance ON instance_events (instance_id, id);

CREATE FUNCTION instance_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'instance_events is append-only';
END;
$$;

CREATE TRIGGER instance_events_no_update
    BEFORE UPDATE OR DELETE ON instance_events
    FOR EACH ROW EXECUTE FUNCTION instance_events_append_only();
