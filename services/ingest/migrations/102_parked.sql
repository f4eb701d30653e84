-- Events accepted while a rep or deal they refer to was unknown (CRMs deliver out of
-- order). They are applied, in business order, in the transaction that makes their last
-- referent known. Rows are kept after release or discard: the history of what waited.
CREATE TABLE parked (
    tenant_id      text        NOT NULL,
    event_id       uuid        NOT NULL,
    kind           text        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    -- The CrmEvent as received (protobuf), validated again on release.
    event          bytea       NOT NULL,
    -- What it still waits for: 'rep:<id>' / 'deal:<id>'.
    waits          text[]      NOT NULL,
    parked_at      timestamptz NOT NULL,
    state          text        NOT NULL DEFAULT 'waiting'
                   CHECK (state IN ('waiting', 'failed', 'released', 'discarded')),
    error          text,
    resolved_at    timestamptz,
    discarded_by   text,
    discard_reason text,
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX parked_waiting ON parked USING gin (waits) WHERE state = 'waiting';
CREATE INDEX parked_open ON parked (tenant_id, parked_at) WHERE state IN ('waiting', 'failed');
