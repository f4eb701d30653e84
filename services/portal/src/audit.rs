//! The audit page, for admins, comp admins and auditors: who changed what in every service
//! (merged, newest first, with filters), and a check of the ledger's hash chains and seals
//! and of every service's audit chain on demand. The services decide who may read it.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use spm_proto::audit::v1 as apb;
use spm_proto::audit::v1::audit_service_client::AuditServiceClient;
use spm_proto::incentive::v1 as ipb;
use spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient;

use crate::pages::{Chrome, bearer, failed, html, lang, posted, session_of};
use crate::session::Session;
use crate::{Lang, Portal};

pub struct EventRow {
    pub at: String,
    pub service: &'static str,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub before: String,
    pub after: String,
    pub trace_id: String,
}

/// One verified chain family: (what, checked count, ok, problems).
pub struct Check {
    pub what: String,
    pub count: u64,
    pub ok: bool,
    pub problems: Vec<String>,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    c: Chrome,
    q: AuditQ,
    events: Vec<EventRow>,
    checks: Vec<Check>,
    error: String,
}

#[derive(serde::Deserialize, Default, Clone)]
pub struct AuditQ {
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub actor: String,
    #[serde(default)]
    pub since: String,
}

fn services(p: &Portal) -> [(&'static str, tonic::transport::Channel); 4] {
    [
        ("ingest", p.ingest.clone()),
        ("scoring", p.scoring.clone()),
        ("incentive", p.incentive.clone()),
        ("notification", p.notification.clone()),
    ]
}

/// A date (YYYY-MM-DD) or an RFC 3339 instant; None when empty; Err when neither.
fn since_of(s: &str) -> Result<Option<prost_types::Timestamp>, ()> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(Some(spm_proto::ext::timestamp(
            t.with_timezone(&chrono::Utc),
        )));
    }
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| ())?;
    Ok(Some(spm_proto::ext::timestamp(
        d.and_hms_opt(0, 0, 0).ok_or(())?.and_utc(),
    )))
}

fn pretty(json: &str) -> String {
    if json == "null" {
        return String::new();
    }
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| json.to_owned())
}

async fn events(
    p: &Portal,
    s: &Session,
    q: &AuditQ,
    l: Lang,
) -> Result<Vec<EventRow>, tonic::Status> {
    let since = since_of(&q.since).map_err(|()| tonic::Status::invalid_argument("since"))?;
    let mut all: Vec<(&'static str, apb::AuditEvent)> = Vec::new();
    for (name, ch) in services(p) {
        let r = AuditServiceClient::new(ch)
            .list_audit_events(bearer(
                apb::ListAuditEventsRequest {
                    actor: q.actor.trim().to_owned(),
                    action: q.action.trim().to_owned(),
                    target: String::new(),
                    since,
                    until: None,
                    limit: 100,
                    before_seq: 0,
                },
                &s.token,
            ))
            .await?
            .into_inner();
        all.extend(r.events.into_iter().map(|e| (name, e)));
    }
    let at = |e: &apb::AuditEvent| e.at.as_ref().and_then(spm_proto::ext::datetime);
    all.sort_by_key(|(_, e)| std::cmp::Reverse(at(e)));
    all.truncate(100);
    Ok(all
        .into_iter()
        .map(|(service, e)| EventRow {
            at: at(&e)
                .map(|t| format!("{} {}", l.date(t), t.format("%H:%M:%S UTC")))
                .unwrap_or_default(),
            service,
            actor: e.actor,
            role: e.role,
            action: e.action,
            target: e.target,
            before: pretty(&e.before_json),
            after: pretty(&e.after_json),
            trace_id: e.trace_id,
        })
        .collect())
}

async fn render(
    p: &Portal,
    s: &Session,
    l: Lang,
    q: AuditQ,
    checks: Vec<Check>,
    path: &str,
) -> Response {
    let mut page = AuditPage {
        c: Chrome::new(l, Some(s), path),
        q: q.clone(),
        events: Vec::new(),
        checks,
        error: String::new(),
    };
    match events(p, s, &q, l).await {
        Ok(e) => page.events = e,
        Err(e) if e.code() == tonic::Code::InvalidArgument && e.message() == "since" => {
            page.error = l.t("audit_bad_since").to_owned();
            return html(StatusCode::BAD_REQUEST, &page);
        }
        Err(e) => return failed(&e, l, Some(s), path),
    }
    html(StatusCode::OK, &page)
}

pub async fn audit(
    State(p): State<Portal>,
    h: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<AuditQ>,
) -> Response {
    let s = match session_of(&p, &h, &tenant) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let l = lang(&h);
    render(&p, &s, l, q, Vec::new(), &format!("/t/{tenant}/audit")).await
}

/// Verifies the ledger and the four audit chains, then shows the page with the results.
pub async fn verify(
    State(p): State<Portal>,
    h: HeaderMap,
    Path(tenant): Path<String>,
    body: String,
) -> Response {
    let (s, l, _) = match posted(&p, &h, &tenant, &body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let path = format!("/t/{tenant}/audit");
    let mut checks = Vec::new();
    match IncentiveAdminServiceClient::new(p.incentive.clone())
        .verify_ledger(bearer(ipb::VerifyLedgerRequest { period: None }, &s.token))
        .await
    {
        Ok(v) => {
            let v = v.into_inner();
            checks.push(Check {
                what: l
                    .t("audit_ledger")
                    .replace("{chains}", &v.chains.to_string())
                    .replace("{seals}", &v.seals.to_string()),
                count: v.postings,
                ok: v.ok,
                problems: v
                    .breaks
                    .iter()
                    .take(20)
                    .map(|b| format!("{} #{} {}: {}", b.chain, b.seq, b.id, b.problem))
                    .collect(),
            });
        }
        Err(e) => return failed(&e, l, Some(&s), &path),
    }
    for (name, ch) in services(&p) {
        match AuditServiceClient::new(ch)
            .verify_audit_log(bearer(apb::VerifyAuditLogRequest {}, &s.token))
            .await
        {
            Ok(v) => {
                let v = v.into_inner();
                checks.push(Check {
                    what: l.t("audit_trail_of").replace("{service}", name),
                    count: v.events,
                    ok: v.ok,
                    problems: v
                        .breaks
                        .iter()
                        .take(20)
                        .map(|b| format!("#{} {}: {}", b.seq, b.event_id, b.problem))
                        .collect(),
                });
            }
            Err(e) => return failed(&e, l, Some(&s), &path),
        }
    }
    render(&p, &s, l, AuditQ::default(), checks, &path).await
}
