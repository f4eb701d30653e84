-- Plan lifecycle (services/incentive/README.md, "Plan lifecycle"). A version is DRAFT,
-- SHADOW, PENDING_APPROVAL, LIVE or RETIRED; only LIVE versions pay. Versions made before
-- the lifecycle existed were live.
ALTER TABLE plans
    ADD COLUMN state        text        NOT NULL DEFAULT 'LIVE'
        CHECK (state IN ('DRAFT', 'SHADOW', 'PENDING_APPROVAL', 'LIVE', 'RETIRED')),
    ADD COLUMN created_by   text        NOT NULL DEFAULT '',
    -- Who proposed it for approval (this proposal), and how many proposals it has had:
    -- approvals count for the current proposal only.
    ADD COLUMN proposed_by  text        NOT NULL DEFAULT '',
    ADD COLUMN proposal_no  integer     NOT NULL DEFAULT 0,
    -- Since when its shadow ledger follows the stream (SHADOW or PENDING_APPROVAL).
    ADD COLUMN shadow_since timestamptz,
    ADD COLUMN state_at     timestamptz NOT NULL DEFAULT now();

-- Every transition of every version: who, when, why. Append-only.
CREATE TABLE plan_transitions (
    tenant_id  text        NOT NULL,
    plan_id    text        NOT NULL,
    version    integer     NOT NULL,
    seq        bigserial   NOT NULL,
    from_state text        NOT NULL,
    to_state   text        NOT NULL,
    actor      text        NOT NULL,
    role       text        NOT NULL,
    reason     text        NOT NULL DEFAULT '',
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, plan_id, version, seq)
);

-- Approvals of a proposal; one per person per proposal. Append-only.
CREATE TABLE plan_approvals (
    tenant_id   text        NOT NULL,
    plan_id     text        NOT NULL,
    version     integer     NOT NULL,
    proposal_no integer     NOT NULL,
    approver    text        NOT NULL,
    role        text        NOT NULL,
    reason      text        NOT NULL DEFAULT '',
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, plan_id, version, proposal_no, approver)
);

-- How many people other than the proposer must approve a version before it goes live.
-- No row: 0 (a put plan goes live at once, as before the lifecycle existed).
CREATE TABLE plan_policies (
    tenant_id          text        PRIMARY KEY,
    approvals_required integer     NOT NULL CHECK (approvals_required BETWEEN 0 AND 5),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- What a version in shadow would post, computed by the same engine from the same events
-- as they arrive: never on a statement, never notified, never payable. `plan_id` and
-- `plan_version` name the shadow version; `line_plan_id` and `line_plan_version` the plan
-- that produced the line when the version is live (another plan for a rep it would leave).
-- Postings go to the period they are about (a shadow has no next period to adjust in).
CREATE TABLE shadow_ledger (
    posting_id        uuid        PRIMARY KEY,
    seq               bigserial   NOT NULL,
    tenant_id         text        NOT NULL,
    plan_id           text        NOT NULL,
    plan_version      integer     NOT NULL,
    rep_id            text        NOT NULL,
    period_kind       text        NOT NULL,
    period_key        text        NOT NULL,
    line_key          text        NOT NULL,
    line_id           uuid        NOT NULL,
    kind              text        NOT NULL,
    status            text        NOT NULL,
    amount            numeric     NOT NULL,
    currency          text        NOT NULL,
    line_plan_id      text        NOT NULL DEFAULT '',
    line_plan_version integer     NOT NULL DEFAULT 0,
    deal_id           text        NOT NULL DEFAULT '',
    summary           text        NOT NULL,
    explanation       jsonb       NOT NULL,
    caused_by         text[]      NOT NULL DEFAULT '{}',
    posted_at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX shadow_ledger_period ON shadow_ledger (tenant_id, plan_id, plan_version, period_kind, period_key, rep_id);

CREATE FUNCTION plan_history_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER plan_transitions_append_only BEFORE UPDATE OR DELETE ON plan_transitions
    FOR EACH ROW EXECUTE FUNCTION plan_history_append_only();
CREATE TRIGGER plan_approvals_append_only BEFORE UPDATE OR DELETE ON plan_approvals
    FOR EACH ROW EXECUTE FUNCTION plan_history_append_only();
CREATE TRIGGER shadow_ledger_append_only BEFORE UPDATE OR DELETE ON shadow_ledger
    FOR EACH ROW EXECUTE FUNCTION plan_history_append_only();
