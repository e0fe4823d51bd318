-- Since when the listings of its tool lack a recorded tool resource (a key revoked, an inbox
-- deleted outside the pool). Like `instances.absent_since`: an absence is believed only once two
-- listings at least HEALTH_GRACE_MS apart both lack the resource.
ALTER TABLE instance_services ADD COLUMN absent_since TIMESTAMPTZ;
