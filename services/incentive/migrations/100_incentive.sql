-- Incentive's tables. Inputs (credits, kpis, org) are projections rebuilt from the topics;
-- the ledger is the system of record: append-only, enforced below.

-- Deal credits, payment credits and reversal credits of reps (base-currency amounts).
CREATE TABLE credits (
    tenant_id       text        NOT NULL,
    rep_id          text        NOT NULL,
    event_id        uuid        NOT NULL,
    source_event_id text        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('deal', 'payment', 'reversal')),
    deal_id         text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    local_date      date        NOT NULL,
    month_key       text        NOT NULL,
    quarter_key     text        NOT NULL,
    amount          numeric     NOT NULL,
    lines           jsonb       NOT NULL DEFAULT '[]',
    full_reversal   boolean     NOT NULL DEFAULT false,
    currency        text        NOT NULL,
    PRIMARY KEY (tenant_id, rep_id, event_id)
);
CREATE INDEX credits_deal ON credits (tenant_id, rep_id, deal_id);
CREATE INDEX credits_month ON credits (tenant_id, month_key) WHERE kind = 'deal';
CREATE INDEX credits_quarter ON credits (tenant_id, quarter_key) WHERE kind = 'deal';

-- The latest scoring snapshot of each rep and period (metrics for gates, score for bonuses).
CREATE TABLE kpis (
    tenant_id   text        NOT NULL,
    rep_id      text        NOT NULL,
    period_kind text        NOT NULL,
    period_key  text        NOT NULL,
    metrics     jsonb       NOT NULL,
    score       numeric,
    occurred_at timestamptz NOT NULL,
    event_id    uuid        NOT NULL,
    PRIMARY KEY (tenant_id, rep_id, period_kind, period_key)
);

CREATE TABLE plans (
    tenant_id  text        NOT NULL,
    plan_id    text        NOT NULL,
    version    integer     NOT NULL,
    definition jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, plan_id, version)
);

CREATE TABLE periods (
    tenant_id   text        NOT NULL,
    period_kind text        NOT NULL,
    period_key  text        NOT NULL,
    closed_at   timestamptz,
    paid_at     timestamptz,
    PRIMARY KEY (tenant_id, period_kind, period_key)
);

-- The earnings ledger. `period_key` is the statement period a posting belongs to;
-- `source_period_key` the period whose events it pays (later than it for adjustments to
-- a closed period). `line_id` names the line (rep, source period, key) across postings.
CREATE TABLE ledger (
    posting_id        uuid        PRIMARY KEY,
    seq               bigserial   NOT NULL,
    tenant_id         text        NOT NULL,
    rep_id            text        NOT NULL,
    period_kind       text        NOT NULL,
    period_key        text        NOT NULL,
    source_period_key text        NOT NULL,
    line_key          text        NOT NULL,
    line_id           uuid        NOT NULL,
    kind              text        NOT NULL,
    status            text        NOT NULL,
    amount            numeric     NOT NULL,
    currency          text        NOT NULL,
    plan_id           text        NOT NULL DEFAULT '',
    plan_version      integer     NOT NULL DEFAULT 0,
    deal_id           text        NOT NULL DEFAULT '',
    summary           text        NOT NULL,
    explanation       jsonb       NOT NULL,
    caused_by         text[]      NOT NULL DEFAULT '{}',
    posted_at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ledger_statement ON ledger (tenant_id, rep_id, period_kind, period_key);
CREATE INDEX ledger_source ON ledger (tenant_id, rep_id, period_kind, source_period_key);
CREATE INDEX ledger_line ON ledger (tenant_id, line_id);

CREATE FUNCTION ledger_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the earnings ledger is append-only: post an adjustment instead';
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER ledger_no_update BEFORE UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

-- Per rep and period: the plan applied and the results (for streaks and promotions).
CREATE TABLE period_results (
    tenant_id    text    NOT NULL,
    rep_id       text    NOT NULL,
    period_kind  text    NOT NULL,
    period_key   text    NOT NULL,
    plan_id      text    NOT NULL,
    plan_version integer NOT NULL,
    revenue      numeric NOT NULL,
    attainment   numeric,
    score        numeric,
    PRIMARY KEY (tenant_id, rep_id, period_kind, period_key)
);

CREATE TABLE awards (
    tenant_id  text        NOT NULL,
    award_id   uuid        NOT NULL,
    rep_id     text        NOT NULL,
    code       text        NOT NULL,
    period_key text        NOT NULL DEFAULT '',
    payload    bytea       NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, award_id),
    UNIQUE (tenant_id, rep_id, code, period_key)
);

CREATE TABLE disputes (
    tenant_id          text        NOT NULL,
    dispute_id         uuid        NOT NULL,
    line_id            uuid        NOT NULL,
    rep_id             text        NOT NULL,
    reason             text        NOT NULL,
    opened_by          text        NOT NULL,
    status             text        NOT NULL,
    note               text        NOT NULL DEFAULT '',
    resolved_by        text        NOT NULL DEFAULT '',
    adjustment         numeric,
    adjustment_posting uuid,
    opened_at          timestamptz NOT NULL DEFAULT now(),
    resolved_at        timestamptz,
    PRIMARY KEY (tenant_id, dispute_id)
);
