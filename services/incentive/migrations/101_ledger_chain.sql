-- Tamper evidence (docs/audit.md). Every posting is the next link of its chain: one chain
-- per rep and statement period, numbered from 1 (`chain_seq`), each posting carrying the
-- hash of the chain's previous posting and its own. `ledger_chains` holds each chain's
-- head; closing and paying a period seal it (a Merkle root over its chains' heads).
ALTER TABLE ledger
    ADD COLUMN chain_seq bigint,
    ADD COLUMN prev_hash bytea,
    ADD COLUMN hash      bytea;

-- A statement is one chain, read in chain order (replaces ledger_statement).
CREATE UNIQUE INDEX ledger_chain ON ledger (tenant_id, rep_id, period_kind, period_key, chain_seq);
DROP INDEX ledger_statement;

-- Postings made before chaining existed are chained once, at start, in the order they
-- were made (spm_incentive::chain::adopt): the only update the ledger allows, and only of
-- the three chain columns of a posting that has none.
CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.hash IS NULL AND NEW.hash IS NOT NULL
       AND (to_jsonb(OLD) - ARRAY['chain_seq', 'prev_hash', 'hash'])
         = (to_jsonb(NEW) - ARRAY['chain_seq', 'prev_hash', 'hash']) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the earnings ledger is append-only: post an adjustment instead';
END
$$ LANGUAGE plpgsql;

CREATE TABLE ledger_chains (
    tenant_id   text   NOT NULL,
    period_kind text   NOT NULL,
    period_key  text   NOT NULL,
    rep_id      text   NOT NULL,
    length      bigint NOT NULL,
    head        bytea  NOT NULL,
    PRIMARY KEY (tenant_id, period_kind, period_key, rep_id)
);

-- Seals, one chain per tenant: closing a period and paying it each add one.
CREATE TABLE ledger_seals (
    tenant_id   text        NOT NULL,
    seal_no     bigint      NOT NULL,
    period_kind text        NOT NULL,
    period_key  text        NOT NULL,
    reason      text        NOT NULL,
    chains      bigint      NOT NULL,
    postings    bigint      NOT NULL,
    root        bytea       NOT NULL,
    sealed_at   timestamptz NOT NULL,
    prev_hash   bytea       NOT NULL,
    hash        bytea       NOT NULL,
    PRIMARY KEY (tenant_id, seal_no)
);

-- The chain heads a seal covers (its Merkle leaves).
CREATE TABLE ledger_seal_leaves (
    tenant_id text   NOT NULL,
    seal_no   bigint NOT NULL,
    rep_id    text   NOT NULL,
    length    bigint NOT NULL,
    head      bytea  NOT NULL,
    PRIMARY KEY (tenant_id, seal_no, rep_id)
);

CREATE FUNCTION seal_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'seals are append-only';
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER ledger_seals_no_update BEFORE UPDATE OR DELETE ON ledger_seals
    FOR EACH ROW EXECUTE FUNCTION seal_append_only();
CREATE TRIGGER ledger_seal_leaves_no_update BEFORE UPDATE OR DELETE ON ledger_seal_leaves
    FOR EACH ROW EXECUTE FUNCTION seal_append_only();

-- What period_results said when: statements as of a moment show the attainment and plan
-- of that moment. A row is added whenever a rep-period's results change.
CREATE TABLE period_results_history (
    tenant_id    text        NOT NULL,
    rep_id       text        NOT NULL,
    period_kind  text        NOT NULL,
    period_key   text        NOT NULL,
    recorded_at  timestamptz NOT NULL,
    plan_id      text        NOT NULL,
    plan_version integer     NOT NULL,
    revenue      numeric     NOT NULL,
    attainment   numeric,
    score        numeric,
    PRIMARY KEY (tenant_id, rep_id, period_kind, period_key, recorded_at)
);
INSERT INTO period_results_history
SELECT tenant_id, rep_id, period_kind, period_key, '-infinity', plan_id, plan_version, revenue, attainment, score
  FROM period_results;
