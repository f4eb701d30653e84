-- The connector's own state: where each CRM stream stands, what it has submitted for each
-- deal, the CRM records it merges change events into, HubSpot webhooks acknowledged and not
-- yet submitted, and the records it could not map.

-- One row per (tenant, source, stream). The replay id moves only in the transaction that
-- follows ingest's acknowledgement of every event up to it.
CREATE TABLE checkpoints (
    tenant_id       text        NOT NULL,
    source          text        NOT NULL,
    stream          text        NOT NULL,
    replay_id       bytea,
    checkpointed_at timestamptz,
    -- running | stale_checkpoint | resync | skip | retrying
    state           text        NOT NULL DEFAULT 'running',
    events_in       bigint      NOT NULL DEFAULT 0,
    submitted       bigint      NOT NULL DEFAULT 0,
    rejected        bigint      NOT NULL DEFAULT 0,
    last_error      text        NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, source, stream)
);

-- The latest known fields of CRM records that change events update piecemeal (a CDC update
-- carries only the changed fields): deals, their splits and line items.
CREATE TABLE records (
    tenant_id  text        NOT NULL,
    source     text        NOT NULL,
    object     text        NOT NULL,
    record_id  text        NOT NULL,
    parent_id  text,
    fields     jsonb       NOT NULL,
    deleted    boolean     NOT NULL DEFAULT false,
    -- The position of the last change merged (Salesforce: the header's commitNumber and
    -- sequenceNumber): a replayed older change (a re-sync) is not merged again.
    commit_number   bigint,
    sequence_number integer,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, source, object, record_id)
);
-- Partial, so that the planner never takes it for a lookup by record id (with the same
-- leading columns as the primary key it did, on stale statistics, and filtered every record
-- of the object: a lookup grew with the table).
CREATE INDEX records_parent ON records (tenant_id, source, parent_id, object) WHERE parent_id IS NOT NULL;

-- What was submitted for each deal: the amount it closed at, and whether it was reversed.
CREATE TABLE deals (
    tenant_id       text    NOT NULL,
    source          text    NOT NULL,
    deal_id         text    NOT NULL,
    closed_amount   numeric,
    closed_currency text,
    reversed        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, source, deal_id)
);

-- HubSpot webhooks: stored before HubSpot gets its 200, done once ingest acknowledged what
-- they became.
CREATE TABLE hubspot_inbox (
    tenant_id   text        NOT NULL,
    event_id    bigint      NOT NULL,
    event       jsonb       NOT NULL,
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    attempts    integer     NOT NULL DEFAULT 0,
    next_at     timestamptz NOT NULL DEFAULT now(),
    last_error  text        NOT NULL DEFAULT '',
    done_at     timestamptz,
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX hubspot_inbox_pending ON hubspot_inbox (tenant_id, next_at) WHERE done_at IS NULL;

CREATE TABLE record_errors (
    id           bigserial   PRIMARY KEY,
    tenant_id    text        NOT NULL,
    source       text        NOT NULL,
    stream       text        NOT NULL,
    crm_event_id text        NOT NULL,
    record_id    text        NOT NULL,
    field        text        NOT NULL,
    reason       text        NOT NULL,
    message      text        NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX record_errors_tenant ON record_errors (tenant_id, id DESC);
