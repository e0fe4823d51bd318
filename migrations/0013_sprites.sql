SET LOCAL lock_timeout = '2s';

-- Fly.io Sprites (seed 002). A provider that refuses creations for capacity
-- (`concurrent_sprite_limit_exceeded`, a creation rate limit) pauses creation until its
-- `Retry-After`: the pause is here, so that every replica honours it, and a retry storm from
-- several replicas cannot happen. One row per provider; `until` only ever moves later while a
-- pause lasts.
CREATE TABLE creation_pauses (
    provider  TEXT PRIMARY KEY,
    until     TIMESTAMPTZ NOT NULL,
    code      TEXT NOT NULL,
    since     TIMESTAMPTZ NOT NULL DEFAULT now(),
    refusals  BIGINT NOT NULL DEFAULT 1
);

-- Keep-alive (seed 002: a sleeping sprite drops its agent's XMTP connection). One row per
-- interval: the replica whose insert wins pings the fleet for it, so any number of replicas
-- send one round of beats per interval.
CREATE TABLE heartbeat_rounds (
    slot  BIGINT PRIMARY KEY,
    at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Consecutive failed keep-alive pings of an instance.
ALTER TABLE instances ADD COLUMN ping_failures INTEGER NOT NULL DEFAULT 0;
