-- Tool resources a teardown could not destroy because their tool is no longer configured (an
-- operator removed TELNYX_API_KEY, say). Teardown does not wait for them: the instance's compute
-- is destroyed and its row goes, and the resource is moved here, where /metrics, the dashboard and
-- the tick report show it until an operator cleans it by hand, or until the tool is configured
-- again and the tick destroys it. A table of its own rather than a status in instance_services:
-- the record must outlive the instance's row, which instance_services rows do not
-- (ON DELETE CASCADE).
SET LOCAL lock_timeout = '2s';

CREATE TABLE abandoned_resources (
    id             BIGSERIAL PRIMARY KEY,
    instance_id    TEXT NOT NULL,
    instance_name  TEXT NOT NULL,
    tool_id        TEXT NOT NULL,
    resource_id    TEXT NOT NULL,
    config         JSONB NOT NULL DEFAULT '{}'::jsonb,
    abandoned_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tool_id, resource_id)
);
