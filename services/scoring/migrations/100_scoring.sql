-- Scoring's projections (rebuilt from the topics by `spm-scoring rebuild`) and admin data.

-- Org (reps, teams) is the shared org_reps / org_teams projection.

-- One row per input event of a rep.
CREATE TABLE facts (
    tenant_id       text        NOT NULL,
    rep_id          text        NOT NULL,
    event_id        uuid        NOT NULL,
    source_event_id text        NOT NULL,
    kind            text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    week_key        text        NOT NULL,
    month_key       text        NOT NULL,
    deal_id         text        NOT NULL DEFAULT '',
    amount          numeric     NOT NULL DEFAULT 0,
    score           integer     NOT NULL DEFAULT 0,
    due_month_key   text        NOT NULL DEFAULT '',
    full_reversal   boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, rep_id, event_id)
);
CREATE INDEX facts_deal ON facts (tenant_id, rep_id, deal_id) WHERE deal_id <> '';
CREATE INDEX facts_month ON facts (tenant_id, rep_id, month_key);

-- Sums and counts per rep, period (month, or week for activities) and cell.
CREATE TABLE cells (
    tenant_id   text    NOT NULL,
    rep_id      text    NOT NULL,
    period_kind text    NOT NULL,
    period_key  text    NOT NULL,
    cell        text    NOT NULL,
    sum         numeric NOT NULL,
    n           bigint  NOT NULL,
    PRIMARY KEY (tenant_id, rep_id, period_kind, period_key, cell)
);
CREATE INDEX cells_period ON cells (tenant_id, period_kind, period_key);

-- Goal versions: the target of (subject, metric, period) as set over time.
CREATE TABLE goals (
    tenant_id      text        NOT NULL,
    goal_id        uuid        NOT NULL,
    version        integer     NOT NULL,
    subject_kind   text        NOT NULL,
    subject_id     text        NOT NULL,
    metric         text        NOT NULL,
    period_kind    text        NOT NULL,
    period_key     text        NOT NULL,
    target         numeric     NOT NULL CHECK (target >= 0),
    effective_from timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    superseded_at  timestamptz,
    PRIMARY KEY (tenant_id, goal_id, version)
);
CREATE INDEX goals_period ON goals (tenant_id, period_kind, period_key);

CREATE TABLE scorecards (
    tenant_id    text        NOT NULL,
    scorecard_id text        NOT NULL,
    version      integer     NOT NULL,
    definition   jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, scorecard_id, version)
);

-- The current score snapshot of each rep and period (month, quarter, year): the encoded
-- ScoreChanged event (KPIs, pillars, metrics) without its previous_score.
CREATE TABLE scores (
    tenant_id   text    NOT NULL,
    rep_id      text    NOT NULL,
    period_kind text    NOT NULL,
    period_key  text    NOT NULL,
    team_id     text    NOT NULL DEFAULT '',
    score       numeric,
    snapshot    bytea   NOT NULL,
    PRIMARY KEY (tenant_id, rep_id, period_kind, period_key)
);
CREATE INDEX scores_period ON scores (tenant_id, period_kind, period_key, score DESC);

-- Goal milestones announced (each once).
CREATE TABLE milestones (
    tenant_id  text        NOT NULL,
    goal_id    uuid        NOT NULL,
    milestone  integer     NOT NULL,
    reached_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, goal_id, milestone)
);

CREATE TABLE alert_settings (
    tenant_id       text    PRIMARY KEY,
    threshold_share numeric NOT NULL,
    min_elapsed     numeric NOT NULL
);

-- Process alerts raised (one per rep, metric and week).
CREATE TABLE process_alerts (
    tenant_id  text        NOT NULL,
    alert_id   uuid        NOT NULL,
    rep_id     text        NOT NULL,
    metric     text        NOT NULL,
    window_key text        NOT NULL,
    raised_at  timestamptz NOT NULL DEFAULT now(),
    payload    bytea       NOT NULL,
    PRIMARY KEY (tenant_id, alert_id),
    UNIQUE (tenant_id, rep_id, metric, window_key)
);
