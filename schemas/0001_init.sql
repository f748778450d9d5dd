-- notifier: organisation, principals, notices, recipients, deliveries.

-- The organisation tree: committee -> branch -> group. Ids are chosen by the caller.
CREATE TABLE units (
    id          text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
    name        text NOT NULL,
    parent_id   text REFERENCES units (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (parent_id IS DISTINCT FROM id)
);
CREATE INDEX units_parent_idx ON units (parent_id);

CREATE TABLE members (
    id          text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
    name        text NOT NULL,
    phone       text,
    email       text,
    timezone    text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE member_units (
    member_id   text NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    unit_id     text NOT NULL REFERENCES units (id),
    PRIMARY KEY (member_id, unit_id)
);
CREATE INDEX member_units_unit_idx ON member_units (unit_id, member_id);

-- Where a member can be reached on a channel (webhook URL, device token, phone ...).
CREATE TABLE contacts (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    member_id       text NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    channel         text NOT NULL,
    target          jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    disabled_at     timestamptz,
    disabled_reason text,
    UNIQUE (member_id, channel, target)
);
CREATE INDEX contacts_active_idx ON contacts (member_id, channel, created_at DESC) WHERE disabled_at IS NULL;

-- API keys: only a SHA-256 of the token is stored.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('admin', 'service', 'secretary', 'member')),
    unit_id     text REFERENCES units (id),
    member_id   text REFERENCES members (id) ON DELETE CASCADE,
    token_hash  bytea NOT NULL UNIQUE,
    created_by  uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK (role <> 'member' OR member_id IS NOT NULL),
    CHECK (role NOT IN ('service', 'secretary') OR unit_id IS NOT NULL)
);

-- A notice and its fan-out marker (state 'queued' / 'fanning_out') commit together.
CREATE TABLE notices (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind            text NOT NULL CHECK (kind IN ('ding', 'notice', 'lesson', 'meeting')),
    title           text NOT NULL,
    body            text NOT NULL,
    audience        jsonb NOT NULL,
    channels        text[] NOT NULL,
    scope_unit_id   text REFERENCES units (id),   -- NULL: created by an admin, visible to admins only
    created_by      uuid,
    state           text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'fanning_out', 'active', 'failed')),
    fanout_cursor   text,                          -- last member id fanned out (chunks commit one by one)
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    fanned_out_at   timestamptz
);
CREATE INDEX notices_pending_idx ON notices (updated_at) WHERE state IN ('queued', 'fanning_out');
CREATE INDEX notices_scope_idx ON notices (scope_unit_id, created_at DESC);

-- Idempotency-Key bookkeeping, scoped per API key (admin token: key_owner = 'admin').
CREATE TABLE idempotency_keys (
    key_owner       text NOT NULL,
    key             text NOT NULL,
    request_hash    bytea NOT NULL,
    notice_id       uuid NOT NULL REFERENCES notices (id) ON DELETE CASCADE,
    response_status int NOT NULL,
    response_body   jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_owner, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- One row per (notice, member): the per-recipient roll-up the status API reads.
-- dstatus is the best delivery state so far; read_at is the first read.
-- recipients and deliveries carry no foreign keys on purpose: they are written only by the
-- set-based fan-out, which joins existing notices, members and contacts, and per-row FK
-- triggers were half the cost of fanning out 100,000 recipients.
CREATE TABLE recipients (
    notice_id       uuid NOT NULL,
    member_id       text NOT NULL,
    dstatus         text NOT NULL CHECK (dstatus IN ('queued', 'sent', 'delivered', 'failed')),
    delivered_at    timestamptz,
    read_at         timestamptz,
    read_via        text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (notice_id, member_id)
);
CREATE INDEX recipients_member_idx ON recipients (member_id, created_at DESC);

-- Counters per notice, sharded so concurrent batches do not queue on one row.
-- Summing at most 16 rows answers "how many read" for a notice of any size.
CREATE TABLE notice_counts (
    notice_id   uuid NOT NULL REFERENCES notices (id) ON DELETE CASCADE,
    shard       smallint NOT NULL,
    recipients  bigint NOT NULL DEFAULT 0,
    queued      bigint NOT NULL DEFAULT 0,
    sent        bigint NOT NULL DEFAULT 0,
    delivered   bigint NOT NULL DEFAULT 0,
    failed      bigint NOT NULL DEFAULT 0,
    read        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (notice_id, shard)
);

-- One attempt-series to put one notice in front of one member on one channel.
-- state moves one way: queued -> sending -> sent -> delivered, or failed.
CREATE TABLE deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notice_id       uuid NOT NULL,
    member_id       text NOT NULL,
    channel         text NOT NULL,
    step            int NOT NULL DEFAULT 0,
    contact_id      uuid,
    state           text NOT NULL CHECK (state IN ('queued', 'sending', 'sent', 'delivered', 'failed')),
    attempts        int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    error           text,
    provider_ref    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (notice_id, member_id, channel, step)
);
CREATE INDEX deliveries_due_idx ON deliveries (notice_id, channel, id) WHERE state = 'queued';
CREATE INDEX deliveries_leased_idx ON deliveries (lease_until) WHERE state = 'sending';
CREATE INDEX deliveries_inbox_idx ON deliveries (member_id, created_at DESC) WHERE channel = 'inapp';
