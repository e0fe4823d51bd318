-- The API's listings page through every instance in this order (keyset pagination), whatever
-- the status; `instances_idle` covers idle rows only.
CREATE INDEX instances_listing ON instances (created_at, id);
