-- A recompute reads one rep-period's deals: by (tenant, rep, month) or (tenant, rep,
-- quarter), not the whole tenant-month filtered by rep (or every credit of the rep).
-- credits_month and credits_quarter stay for reads of a whole period (close, simulation).
CREATE INDEX credits_rep_month ON credits (tenant_id, rep_id, month_key) WHERE kind = 'deal';
CREATE INDEX credits_rep_quarter ON credits (tenant_id, rep_id, quarter_key) WHERE kind = 'deal';

-- Moved by one by every transaction that stores a credit of a rep-period (its deals, or a
-- payment or reversal of one of them): what a process keeps in memory of the rep-period's
-- deals is current when it was read at the mark (see src/warm.rs). Never reset, so that a
-- mark is never seen twice with different credits.
CREATE TABLE credit_marks (
    tenant_id   text   NOT NULL,
    rep_id      text   NOT NULL,
    period_kind text   NOT NULL,
    period_key  text   NOT NULL,
    n           bigint NOT NULL,
    PRIMARY KEY (tenant_id, rep_id, period_kind, period_key)
);
