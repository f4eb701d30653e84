-- Notification's tables: settings, channels, preferences, the feed and the delivery log.

CREATE TABLE settings (
    tenant_id           text    PRIMARY KEY,
    quiet_start         text    NOT NULL DEFAULT '',
    quiet_end           text    NOT NULL DEFAULT '',
    rate_limit_per_hour integer NOT NULL DEFAULT 0,
    digest              text    NOT NULL DEFAULT 'off',
    digest_hour         integer NOT NULL DEFAULT 18,
    top_n               integer NOT NULL DEFAULT 5,
    disabled_rules      text[]  NOT NULL DEFAULT '{}'
);

CREATE TABLE webhooks (
    tenant_id  text        NOT NULL,
    webhook_id uuid        NOT NULL,
    url        text        NOT NULL,
    secret     text        NOT NULL,
    rules      text[]      NOT NULL DEFAULT '{}',
    enabled    boolean     NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, webhook_id)
);

CREATE TABLE preferences (
    tenant_id text    NOT NULL,
    user_id   text    NOT NULL,
    rule      text    NOT NULL,
    channel   text    NOT NULL,
    enabled   boolean NOT NULL,
    PRIMARY KEY (tenant_id, user_id, rule, channel)
);

-- The in-app feed; one row per fact and recipient (dedupe_key), whatever redelivery.
CREATE TABLE notifications (
    tenant_id       text        NOT NULL,
    notification_id uuid        NOT NULL,
    recipient       text        NOT NULL,
    rule            text        NOT NULL,
    title           text        NOT NULL,
    body            text        NOT NULL,
    data            jsonb       NOT NULL DEFAULT '{}',
    source_event_id text        NOT NULL DEFAULT '',
    dedupe_key      text        NOT NULL,
    trace           jsonb       NOT NULL DEFAULT '[]',
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    read_at         timestamptz,
    PRIMARY KEY (tenant_id, notification_id),
    UNIQUE (tenant_id, dedupe_key)
);
CREATE INDEX notifications_feed ON notifications (tenant_id, recipient, created_at DESC);

-- Every delivery of a notification on a channel, with its state.
CREATE TABLE deliveries (
    delivery_id     uuid        PRIMARY KEY,
    tenant_id       text        NOT NULL,
    notification_id uuid        NOT NULL,
    recipient       text        NOT NULL,
    channel         text        NOT NULL,
    target          text        NOT NULL,
    webhook_id      uuid,
    status          text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    lease_until     timestamptz,
    last_error      text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    delivered_at    timestamptz,
    -- Folded deliveries and the summary they fold into share this key.
    summary_key     text,
    is_summary      boolean     NOT NULL DEFAULT false
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status IN ('pending', 'deferred');
CREATE INDEX deliveries_recipient ON deliveries (tenant_id, recipient, channel, created_at);
CREATE UNIQUE INDEX deliveries_summary ON deliveries (tenant_id, summary_key) WHERE is_summary;

CREATE TABLE attempts (
    delivery_id uuid        NOT NULL,
    attempt     integer     NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    code        integer     NOT NULL DEFAULT 0,
    error       text        NOT NULL DEFAULT '',
    duration_ms integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (delivery_id, attempt)
);

-- Scores per rep and month, for leaderboard entering/leaving.
CREATE TABLE standings (
    tenant_id  text    NOT NULL,
    period_key text    NOT NULL,
    rep_id     text    NOT NULL,
    score      numeric NOT NULL,
    PRIMARY KEY (tenant_id, period_key, rep_id)
);

CREATE TABLE top_sets (
    tenant_id  text   NOT NULL,
    period_key text   NOT NULL,
    reps       text[] NOT NULL,
    PRIMARY KEY (tenant_id, period_key)
);
