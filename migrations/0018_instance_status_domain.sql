-- The list of statuses as a type instead of a table constraint. A profile of the Postgres backend
-- running a claim's two statements (issue 16) found a tenth of its time in `instances`' CHECK
-- constraints: Postgres reads a table constraint's stored expression from text and plans it again
-- for every statement that writes the table, and this one holds a constant array that is stored
-- byte by byte. A domain's constraint is read once per connection and kept. Clients still see
-- `text` (a domain's base type is what Postgres describes to them), and text compares and assigns
-- to it as before.
SET LOCAL lock_timeout = '2s';
CREATE DOMAIN instance_status AS TEXT
    CHECK (VALUE IN ('starting', 'idle', 'claiming', 'claimed', 'crashed', 'destroying', 'recycling'));
ALTER TABLE instances DROP CONSTRAINT instances_status_check;
-- Rewrites `instances` (one row a pool member) and checks every status on the way.
ALTER TABLE instances ALTER COLUMN status TYPE instance_status;
