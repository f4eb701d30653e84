//! Tables the plumbing owns inside each service's schema.

/// `(version, description, sql)` of the inbox and outbox tables. Services prepend these to
/// their own migrations (see `spm_server::db`); service migrations start at version 100.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "bus inbox and outbox",
    r#"
CREATE TABLE inbox (
    event_id   uuid        PRIMARY KEY,
    topic      text        NOT NULL,
    partition  integer     NOT NULL,
    "offset"   bigint      NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE outbox (
    id         bigserial   PRIMARY KEY,
    topic      text        NOT NULL,
    key        text        NOT NULL,
    payload    bytea       NOT NULL,
    headers    jsonb       NOT NULL DEFAULT '[]',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"#,
)];
