SET LOCAL lock_timeout = '2s';
-- A recycled instance goes back to the pool as it was built, so a recycle must tell the tool
-- resources a claim made (a template's `pool` tools: the previous user's inbox, number, ...)
-- from the ones the instance was created with (they belong to the clean instance). A constant
-- default is stored in the catalog, so adding the column rewrites nothing. Rows from before
-- this column count as made at creation: a claim-time resource recorded earlier stays until
-- its instance is destroyed.
ALTER TABLE instance_services ADD COLUMN made_at_claim boolean NOT NULL DEFAULT false;
