-- The audit log: who (key, role, unit) did what (action on a target) when, from which address.
-- Written by notifier/api/audit.py in the same transaction as the change it records; read by
-- GET /v1/audit. Never holds tokens, message bodies or full phone numbers (the writer masks them).
CREATE TABLE audit_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT notifier_now(),
    actor_key_id    uuid,            -- NULL: the bootstrap admin token
    actor_role      text NOT NULL,
    actor_unit_id   text,            -- the key's unit (service and secretary keys)
    actor_member_id text,            -- the key's member (member keys)
    action          text NOT NULL,   -- e.g. 'notice.create', 'unit.put', 'api_key.revoke'
    target_type     text NOT NULL,
    target_id       text NOT NULL,
    unit_ids        text[] NOT NULL, -- the units the entry is about: who may read it (their subtrees' keys)
    address         inet,            -- the caller's address as the server saw it
    details         jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_units ON audit_log USING gin (unit_ids);
CREATE INDEX audit_log_actor ON audit_log (actor_key_id, id);
CREATE INDEX audit_log_at ON audit_log (at);

-- Append-only: no row is ever changed or removed through SQL the service (or anyone) runs.
CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP;
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
