//! The audit trail every service keeps of the admin actions made through it: who (key or
//! person, and role), when, what, to what, the thing before and after, and the trace;
//! append-only (a trigger refuses updates and deletes) and hash-chained per tenant like
//! the ledger (`spm_core::chain`, `docs/audit.md`). Recorded in the transaction of the
//! change, so an action is in the trail exactly when it took effect.
//!
//! Served by every service as `spm.audit.v1.AuditService` (added by [`crate::App::serve`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use serde_json::Value;
use spm_core::chain::{ChainCheck, GENESIS, Record, canonical_json, hash_of, hex, micros};
use spm_proto::audit::v1 as pb;
use sqlx::{PgConnection, PgPool};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::auth::{Caller, Role, caller};
use crate::error::ApiError;

/// `(version, description, sql)` of the audit tables, run by [`crate::db::migrate`].
pub const MIGRATIONS: &[(i64, &str, &str)] = &[(
    6,
    "audit trail",
    r#"
CREATE TABLE audit_log (
    tenant_id   text        NOT NULL,
    seq         bigint      NOT NULL,
    event_id    uuid        NOT NULL,
    at          timestamptz NOT NULL,
    service     text        NOT NULL,
    actor       text        NOT NULL,
    role        text        NOT NULL,
    action      text        NOT NULL,
    target      text        NOT NULL,
    before_json text        NOT NULL,
    after_json  text        NOT NULL,
    trace_id    text        NOT NULL,
    prev_hash   bytea       NOT NULL,
    hash        bytea       NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX audit_log_action ON audit_log (tenant_id, action, seq);

CREATE TABLE audit_heads (
    tenant_id text   PRIMARY KEY,
    length    bigint NOT NULL,
    head      bytea  NOT NULL
);

CREATE FUNCTION audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only';
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
"#,
)];

pub const RECORD: &str = "spm.audit.event.v1";

/// The hashed fields of an audit event, in their order.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    pub tenant_id: &'a str,
    pub seq: i64,
    pub event_id: Uuid,
    pub at: DateTime<Utc>,
    pub service: &'a str,
    pub actor: &'a str,
    pub role: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub before_json: &'a str,
    pub after_json: &'a str,
    pub trace_id: &'a str,
}

pub fn record_of(f: &Fields<'_>) -> Record {
    let mut r = Record::new(RECORD);
    r.text(f.tenant_id)
        .int(f.seq)
        .text(&f.event_id.to_string())
        .instant(f.at)
        .text(f.service)
        .text(f.actor)
        .text(f.role)
        .text(f.action)
        .text(f.target)
        .text(f.before_json)
        .text(f.after_json)
        .text(f.trace_id);
    r
}

/// Who acted, as the trail names them: `person:<login>` or `key:<key id>`.
pub fn actor_of(c: &Caller) -> String {
    match &c.person {
        Some(p) => format!("person:{}", p.login),
        None => format!("key:{}", c.key_id),
    }
}

/// One action to record.
#[derive(Debug, Clone)]
pub struct Action<'a> {
    pub service: &'a str,
    pub action: &'a str,
    pub target: String,
    pub before: Value,
    pub after: Value,
}

impl<'a> Action<'a> {
    pub fn new(service: &'a str, action: &'a str, target: impl Into<String>) -> Self {
        Self {
            service,
            action,
            target: target.into(),
            before: Value::Null,
            after: Value::Null,
        }
    }

    pub fn before(mut self, v: impl serde::Serialize) -> Self {
        self.before = serde_json::to_value(v).unwrap_or(Value::Null);
        self
    }

    pub fn after(mut self, v: impl serde::Serialize) -> Self {
        self.after = serde_json::to_value(v).unwrap_or(Value::Null);
        self
    }
}

/// Records an action of `by` in the caller's transaction (the tenant's chain head is
/// locked until it commits: actions of a tenant are chained in commit order).
pub async fn record(
    conn: &mut PgConnection,
    by: &Caller,
    a: Action<'_>,
) -> Result<(), sqlx::Error> {
    record_as(conn, &by.tenant_id, &actor_of(by), by.role.as_str(), a).await
}

/// As [`record`], for an actor that is not a caller (the operator of `spm-ingest`).
pub async fn record_as(
    conn: &mut PgConnection,
    tenant: &str,
    actor: &str,
    role: &str,
    a: Action<'_>,
) -> Result<(), sqlx::Error> {
    let (length, head, now): (i64, Vec<u8>, DateTime<Utc>) = sqlx::query_as(
        "INSERT INTO audit_heads (tenant_id, length, head) VALUES ($1, 0, $2)
         ON CONFLICT (tenant_id) DO UPDATE SET length = audit_heads.length
         RETURNING length, head, clock_timestamp()",
    )
    .bind(tenant)
    .bind(GENESIS.to_vec())
    .fetch_one(&mut *conn)
    .await?;
    let prev = hash_of(&head).unwrap_or(GENESIS);
    let seq = length + 1;
    let event_id = Uuid::new_v4();
    let at = micros(now);
    let before = canonical_json(&a.before);
    let after = canonical_json(&a.after);
    let trace = spm_telemetry::propagation::trace_id(&tracing::Span::current()).unwrap_or_default();
    let f = Fields {
        tenant_id: tenant,
        seq,
        event_id,
        at,
        service: a.service,
        actor,
        role,
        action: a.action,
        target: &a.target,
        before_json: &before,
        after_json: &after,
        trace_id: &trace,
    };
    let hash = record_of(&f).link(&prev);
    sqlx::query(
        "WITH e AS (
           INSERT INTO audit_log (tenant_id, seq, event_id, at, service, actor, role, action, target, before_json, after_json, trace_id, prev_hash, hash)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14))
         UPDATE audit_heads SET length = $2, head = $14 WHERE tenant_id = $1",
    )
    .bind(tenant)
    .bind(seq)
    .bind(event_id)
    .bind(at)
    .bind(a.service)
    .bind(actor)
    .bind(role)
    .bind(a.action)
    .bind(&a.target)
    .bind(&before)
    .bind(&after)
    .bind(&trace)
    .bind(prev.to_vec())
    .bind(hash.to_vec())
    .execute(&mut *conn)
    .await?;
    tracing::info!(tenant, actor, action = a.action, target = %a.target, seq, "audited");
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Row {
    seq: i64,
    event_id: Uuid,
    at: DateTime<Utc>,
    service: String,
    actor: String,
    role: String,
    action: String,
    target: String,
    before_json: String,
    after_json: String,
    trace_id: String,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

const COLUMNS: &str = "seq, event_id, at, service, actor, role, action, target, before_json, after_json, trace_id, prev_hash, hash";

impl Row {
    fn fields<'a>(&'a self, tenant: &'a str) -> Fields<'a> {
        Fields {
            tenant_id: tenant,
            seq: self.seq,
            event_id: self.event_id,
            at: self.at,
            service: &self.service,
            actor: &self.actor,
            role: &self.role,
            action: &self.action,
            target: &self.target,
            before_json: &self.before_json,
            after_json: &self.after_json,
            trace_id: &self.trace_id,
        }
    }
}

/// Recomputes a tenant's audit chain: `(events, breaks)`.
pub async fn verify(
    conn: &mut PgConnection,
    tenant: &str,
) -> Result<(u64, Vec<spm_core::chain::Break>), sqlx::Error> {
    let head: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT length, head FROM audit_heads WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(&mut *conn)
            .await?;
    let mut heads = HashMap::new();
    if let Some(h) = head.filter(|h| h.0 > 0) {
        heads.insert(tenant.to_owned(), h);
    }
    let mut check = ChainCheck::new();
    {
        let sql = format!("SELECT {COLUMNS} FROM audit_log WHERE tenant_id = $1 ORDER BY seq");
        let mut rows = sqlx::query_as::<_, Row>(&sql)
            .bind(tenant)
            .fetch(&mut *conn);
        while let Some(r) = rows.try_next().await? {
            check.record(
                tenant,
                r.seq,
                &r.event_id.to_string(),
                Some(&r.prev_hash),
                Some(&r.hash),
                &record_of(&r.fields(tenant)),
            );
        }
    }
    check.finish(&heads);
    Ok((check.records, check.breaks))
}

/// Admin keys, comp admins and auditors read the trail.
pub fn require_audit_reader(c: &Caller) -> Result<(), ApiError> {
    match c.role {
        Role::Admin | Role::CompAdmin | Role::Auditor => Ok(()),
        r => Err(ApiError::PermissionDenied(format!(
            "the audit trail is for ADMIN keys, comp admins and auditors; {} may not read it",
            r.as_str()
        ))),
    }
}

/// `spm.audit.v1.AuditService` over a service's pool.
#[derive(Clone)]
pub struct AuditApi {
    pub pool: PgPool,
}

/// What people may call of it (each call checks the role).
pub const PEOPLE_METHODS: &[&str] = &[
    "/spm.audit.v1.AuditService/ListAuditEvents",
    "/spm.audit.v1.AuditService/VerifyAuditLog",
];

fn to_pb(r: Row) -> pb::AuditEvent {
    pb::AuditEvent {
        event_id: r.event_id.to_string(),
        seq: r.seq,
        at: Some(spm_proto::ext::timestamp(r.at)),
        service: r.service,
        actor: r.actor,
        role: r.role,
        action: r.action,
        target: r.target,
        before_json: r.before_json,
        after_json: r.after_json,
        trace_id: r.trace_id,
        hash: hex(&r.hash),
    }
}

/// The filter of an action or target: exact, or a prefix when it ends in `sep`.
fn pattern(s: &str, sep: char) -> (Option<String>, Option<String>) {
    if s.is_empty() {
        (None, None)
    } else if s.ends_with(sep) {
        let escaped = s
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        (None, Some(format!("{escaped}%")))
    } else {
        (Some(s.to_owned()), None)
    }
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let c = caller(&req)?;
        require_audit_reader(&c)?;
        let r = req.into_inner();
        let mut v = spm_core::validation::Violations::new();
        if r.limit > 500 {
            v.add("limit", "must be at most 500");
        }
        let since = r.since.as_ref().and_then(spm_proto::ext::datetime);
        let until = r.until.as_ref().and_then(spm_proto::ext::datetime);
        if let (Some(s), Some(u)) = (since, until)
            && s > u
        {
            v.add("until", "must not be before since");
        }
        let () = v.finish(()).map_err(ApiError::InvalidArgument)?;
        let (action, action_like) = pattern(&r.action, '.');
        let (target, target_like) = pattern(&r.target, ':');
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM audit_log
              WHERE tenant_id = $1
                AND ($2::text IS NULL OR actor = $2)
                AND ($3::text IS NULL OR action = $3) AND ($4::text IS NULL OR action LIKE $4)
                AND ($5::text IS NULL OR target = $5) AND ($6::text IS NULL OR target LIKE $6)
                AND ($7::timestamptz IS NULL OR at >= $7) AND ($8::timestamptz IS NULL OR at <= $8)
                AND ($9::bigint = 0 OR seq < $9)
              ORDER BY seq DESC LIMIT $10"
        ))
        .bind(&c.tenant_id)
        .bind((!r.actor.is_empty()).then_some(&r.actor))
        .bind(action)
        .bind(action_like)
        .bind(target)
        .bind(target_like)
        .bind(since)
        .bind(until)
        .bind(r.before_seq)
        .bind(i64::from(if r.limit == 0 { 100 } else { r.limit }))
        .fetch_all(&self.pool)
        .await
        .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: rows.into_iter().map(to_pb).collect(),
        }))
    }

    async fn verify_audit_log(
        &self,
        req: Request<pb::VerifyAuditLogRequest>,
    ) -> Result<Response<pb::VerifyAuditLogResponse>, Status> {
        let c = caller(&req)?;
        require_audit_reader(&c)?;
        let mut conn = self.pool.acquire().await.map_err(ApiError::from)?;
        let (events, breaks) = verify(&mut conn, &c.tenant_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::VerifyAuditLogResponse {
            ok: breaks.is_empty(),
            events,
            breaks: breaks
                .into_iter()
                .map(|b| pb::verify_audit_log_response::Break {
                    seq: b.seq,
                    event_id: b.id,
                    problem: b.problem,
                })
                .collect(),
        }))
    }
}
