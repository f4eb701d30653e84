-- Ingest's own tables (tenants and API keys are the shared auth_tenants / auth_keys).

-- HMAC secrets of the HTTP webhook, per tenant. The previous secret stays valid until the
-- next rotation so senders can switch without downtime.
CREATE TABLE tenant_secrets (
    tenant_id       text        PRIMARY KEY,
    webhook_secret  text        NOT NULL,
    previous_secret text,
    rotated_at      timestamptz NOT NULL DEFAULT now()
);

-- Effective-dated FX rates: units of the tenant's base currency per unit of `currency`.
CREATE TABLE fx_rates (
    tenant_id      text        NOT NULL,
    currency       text        NOT NULL,
    effective_from date        NOT NULL,
    rate           numeric     NOT NULL CHECK (rate > 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, currency, effective_from)
);

-- Reps ingest has seen (events for unknown reps are rejected).
CREATE TABLE reps (
    tenant_id  text        NOT NULL,
    rep_id     text        NOT NULL,
    active     boolean     NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, rep_id)
);

-- Closed deals: splits, payments and reversals so far (payments and reversals fan out
-- along the deal's split).
CREATE TABLE deals (
    tenant_id  text        NOT NULL,
    deal_id    text        NOT NULL,
    state      jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, deal_id)
);

-- One row per accepted client event id: the idempotency record. Written in the same
-- transaction that is committed only after the broker acknowledged the records.
CREATE TABLE idempotency (
    tenant_id      text        NOT NULL,
    event_id       uuid        NOT NULL,
    content_sha256 bytea       NOT NULL,
    accepted_at    timestamptz NOT NULL,
    published      integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, event_id)
);
