SET LOCAL lock_timeout = '2s';
-- A right API key is let in without reading `admin_login_attempts` when its client has no record
-- there, which is nearly every request: each replica keeps the set of clients with a record,
-- loaded once and then kept by these announcements ('+client' a record made, '-client' one
-- forgotten). Postgres sends them at commit, in commit order, to every listening replica.
CREATE FUNCTION announce_wrong_key_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('agentpool_wrong_keys', '+' || NEW.client);
    ELSE
        PERFORM pg_notify('agentpool_wrong_keys', '-' || OLD.client);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER announce_wrong_key_record
    AFTER INSERT OR DELETE ON admin_login_attempts
    FOR EACH ROW EXECUTE FUNCTION announce_wrong_key_record();
