-- Seed 004's agent templates, with seed 000's slug for the public catalog, and seed 000's
-- Notion prompts cached for every replica.
SET LOCAL lock_timeout = '2s';

-- `instances.template_id` (0001) names a template without a foreign key on purpose: deleting a
-- template leaves its instances (and their record of where they came from) alone.
CREATE TABLE agent_templates (
    id                    TEXT PRIMARY KEY,
    slug                  TEXT NOT NULL UNIQUE,
    creator_id            TEXT,
    agent_name            TEXT NOT NULL,
    -- Literal instructions, or a Notion page read at claim time; exactly one of the two.
    instructions          TEXT,
    instructions_page_id  TEXT,
    -- {"default": "<model>" | null, "allow_override": bool}
    model                 JSONB NOT NULL DEFAULT '{"default": null, "allow_override": false}'::jsonb,
    -- [{"id": "email", "provisioning": "pool" | "user"}]: no credential is ever stored here.
    tools                 JSONB NOT NULL DEFAULT '[]'::jsonb,
    visibility            TEXT NOT NULL DEFAULT 'private' CHECK (visibility IN ('private', 'public')),
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((instructions IS NULL) <> (instructions_page_id IS NULL))
);

CREATE INDEX agent_templates_public ON agent_templates (created_at, id) WHERE visibility = 'public';

-- One copy of each Notion page for every replica. `fetching_since` marks the replica fetching it
-- now (under the row's lock), so that the others wait for its answer rather than ask Notion too.
CREATE TABLE notion_prompts (
    page_id      TEXT PRIMARY KEY,
    title        TEXT NOT NULL,
    text         TEXT NOT NULL,
    fetched_at   TIMESTAMPTZ NOT NULL
);
