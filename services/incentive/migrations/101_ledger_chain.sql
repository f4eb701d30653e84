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

-- Takes a writer's advisory locks (period locks first, each class in key order, so two
-- writers never wait for each other in a circle) and then reads the heads of the chains it
-- will write, in one round trip: a VOLATILE function's later statement sees what was
-- committed while it waited for the locks. The first row carries only the clock after the
-- locks (the posting time).
CREATE FUNCTION ledger_lock(p_tenant text, p_keys bigint[], p_shared bool[], p_classes int[],
                            p_reps text[], p_kinds text[], p_periods text[])
RETURNS TABLE (rep_id text, period_kind text, period_key text, length bigint, head bytea, at timestamptz)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM count(CASE WHEN u.s THEN pg_advisory_xact_lock_shared(u.k) ELSE pg_advisory_xact_lock(u.k) END)
       FROM (SELECT x.k, x.s FROM unnest(p_keys, p_shared, p_classes) AS x(k, s, o) ORDER BY x.o, x.k) AS u;
    RETURN QUERY SELECT NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::bytea, clock_timestamp();
    RETURN QUERY
        SELECT c.rep_id, c.period_kind, c.period_key, c.length, c.head, NULL::timestamptz
          FROM ledger_chains c JOIN unnest(p_reps, p_kinds, p_periods) AS w(rep, kind, key)
            ON c.rep_id = w.rep AND c.period_kind = w.kind AND c.period_key = w.key
         WHERE c.tenant_id = p_tenant;
END
$$;

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
