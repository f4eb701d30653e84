//! `IncentiveService` and `IncentiveAdminService`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use prost::Message as _;
use prost::bytes::Bytes;
use rust_decimal::Decimal;
use spm_bus::{KafkaConfig, Outbox};
use spm_core::money::{Money, parse_decimal};
use spm_core::period::PeriodKind;
use spm_core::topics;
use spm_core::validation::Violations;
use spm_proto::common::v1 as common;
use spm_proto::events::v1 as ev;
use spm_proto::events::v1::event_envelope::Payload;
use spm_proto::incentive::v1 as pb;
use spm_proto::incentive::v1::incentive_admin_service_server::IncentiveAdminService;
use spm_proto::incentive::v1::incentive_service_server::IncentiveService;
use spm_server::ApiError;
use spm_server::auth::caller;
use sqlx::PgPool;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::compute::{DealIn, Kind, Outcome, RepPeriod, Status as St, compute};
use crate::domain::plan::{self, Plan};
use crate::engine::{self, Ctx, Mode};
use crate::store;

#[derive(Clone)]
pub struct Api {
    pub pool: PgPool,
    pub kafka: KafkaConfig,
    pub relay: Arc<Notify>,
    /// Tenants' plans, teams and calendar for queries, kept [`CTX_TTL`]; a plan change
    /// through this instance forgets its tenant's entry at once.
    pub contexts: Contexts,
    /// Statements until their ledger changes (see [`crate::cache`]).
    pub statements: Arc<crate::cache::Statements>,
}

/// Loaded tenant contexts with their load time.
pub type Contexts = Arc<std::sync::Mutex<HashMap<String, (std::time::Instant, Arc<Ctx>)>>>;

/// How long queries may use a tenant's loaded context (plans, teams, calendar).
pub const CTX_TTL: std::time::Duration = std::time::Duration::from_secs(2);

pub(crate) fn kind_of(
    p: Option<&common::Period>,
    default: PeriodKind,
) -> Result<PeriodKind, ApiError> {
    match p.map(|p| common::PeriodKind::try_from(p.kind)) {
        None | Some(Ok(common::PeriodKind::Unspecified)) => Ok(default),
        Some(Ok(common::PeriodKind::Month)) => Ok(PeriodKind::Month),
        Some(Ok(common::PeriodKind::Quarter)) => Ok(PeriodKind::Quarter),
        _ => Err(ApiError::invalid("period.kind", "must be MONTH or QUARTER")),
    }
}

/// The period requested (empty key: the current one) in the tenant's calendar.
pub(crate) fn period_key(
    ctx: &Ctx,
    p: Option<&common::Period>,
    kind: PeriodKind,
) -> Result<String, ApiError> {
    match p.map(|p| p.key.as_str()).filter(|k| !k.is_empty()) {
        None => Ok(ctx.calendar.period(kind, Utc::now()).key),
        Some(k) => ctx
            .calendar
            .parse_key(kind, k)
            .map(|p| p.key)
            .map_err(|e| ApiError::invalid("period.key", e.to_string())),
    }
}

fn s(d: Decimal) -> String {
    d.normalize().to_string()
}

pub(crate) fn money_s(ctx: &Ctx, d: Decimal) -> String {
    ctx.currency.round(d).to_string()
}

#[derive(sqlx::FromRow)]
struct Row {
    posting_id: Uuid,
    line_id: Uuid,
    line_key: String,
    source_period_key: String,
    period_key: String,
    kind: String,
    status: String,
    amount: Decimal,
    deal_id: String,
    summary: String,
    /// JSON text, passed through as is (parsing it per query cost more than the query).
    explanation: String,
    caused_by: Vec<String>,
    posted_at: DateTime<Utc>,
}

const ROW_COLUMNS: &str = "posting_id, line_id, line_key, source_period_key, period_key, kind, status, amount, deal_id, summary,
                           explanation::text AS explanation, caused_by, posted_at";

/// As [`ROW_COLUMNS`], with the explanation of a line's latest posting only (a statement
/// shows that one; earlier postings' explanations are read by `ExplainLine`).
const STATEMENT_COLUMNS: &str = "posting_id, line_id, line_key, source_period_key, period_key, kind, status, amount, deal_id, summary,
                           CASE WHEN seq = max(seq) OVER (PARTITION BY line_id) THEN explanation::text ELSE '' END AS explanation,
                           caused_by, posted_at";

/// As [`STATEMENT_COLUMNS`] without the explanations (GetStatement's default).
const STATEMENT_COLUMNS_BRIEF: &str = "posting_id, line_id, line_key, source_period_key, period_key, kind, status, amount, deal_id, summary,
                           '' AS explanation, caused_by, posted_at";

/// Statement lines: postings grouped by line, net per status; fully cancelled lines left out.
fn lines_of(ctx: &Ctx, statement_key: &str, rows: &[Row]) -> Vec<pb::StatementLine> {
    let mut by_line: BTreeMap<Uuid, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by_line.entry(r.line_id).or_default().push(r);
    }
    let mut out: Vec<pb::StatementLine> = by_line
        .into_iter()
        .filter_map(|(id, rs)| {
            let mut by_status: BTreeMap<St, Decimal> = BTreeMap::new();
            for r in &rs {
                if let Some(st) = St::parse(&r.status) {
                    *by_status.entry(st).or_default() += r.amount;
                }
            }
            by_status.retain(|_, a| !a.is_zero());
            if by_status.is_empty() {
                return None;
            }
            let last = rs.last()?;
            let late = last.source_period_key != statement_key;
            let kind = if late {
                Kind::Adjustment
            } else {
                Kind::of_key(&last.line_key)
            };
            Some(pb::StatementLine {
                line_id: id.to_string(),
                key: if late {
                    format!("adjust:{}:{}", last.source_period_key, last.line_key)
                } else {
                    last.line_key.clone()
                },
                kind: kind.to_proto(),
                source_period: last.source_period_key.clone(),
                amount: money_s(ctx, by_status.values().copied().sum()),
                by_status: by_status
                    .iter()
                    .map(|(st, a)| pb::StatusAmount {
                        status: st.to_proto(),
                        amount: money_s(ctx, *a),
                    })
                    .collect(),
                deal_id: last.deal_id.clone(),
                summary: last.summary.trim_start_matches("recomputed: ").to_owned(),
                explanation_json: last.explanation.clone(),
                postings: u32::try_from(rs.len()).unwrap_or(u32::MAX),
            })
        })
        .collect();
    out.sort_by(|a, b| a.kind.cmp(&b.kind).then_with(|| a.key.cmp(&b.key)));
    out
}

impl Api {
    async fn statement(
        &self,
        ctx: &Ctx,
        rep: &str,
        kind: PeriodKind,
        key: &str,
        with_explanations: bool,
        at: DateTime<Utc>,
    ) -> Result<pb::Statement, ApiError> {
        let columns = if with_explanations {
            STATEMENT_COLUMNS
        } else {
            STATEMENT_COLUMNS_BRIEF
        };
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {columns} FROM ledger WHERE tenant_id = $1 AND rep_id = $2 AND period_kind = $3 AND period_key = $4
               AND posted_at <= $5 ORDER BY chain_seq"
        ))
        .bind(&ctx.tenant)
        .bind(rep)
        .bind(kind.as_str())
        .bind(key)
        .bind(at)
        .fetch_all(&self.pool)
        .await?;
        let lines = lines_of(ctx, key, &rows);
        let mut by_kind: BTreeMap<i32, Decimal> = BTreeMap::new();
        let mut by_status: BTreeMap<i32, Decimal> = BTreeMap::new();
        let mut total = Decimal::ZERO;
        for l in &lines {
            let a: Decimal = l.amount.parse().unwrap_or_default();
            total += a;
            *by_kind.entry(l.kind).or_default() += a;
            for st in &l.by_status {
                *by_status.entry(st.status).or_default() +=
                    st.amount.parse::<Decimal>().unwrap_or_default();
            }
        }
        let result: Option<(String, i32, Decimal, Option<Decimal>)> = sqlx::query_as(
            "SELECT plan_id, plan_version, revenue, attainment FROM period_results_history
              WHERE tenant_id = $1 AND rep_id = $2 AND period_kind = $3 AND period_key = $4 AND recorded_at <= $5
              ORDER BY recorded_at DESC LIMIT 1",
        )
        .bind(&ctx.tenant)
        .bind(rep)
        .bind(kind.as_str())
        .bind(key)
        .bind(at)
        .fetch_optional(&self.pool)
        .await?;
        let mut conn = self.pool.acquire().await?;
        let (closed, paid) = store::period_state_at(&mut conn, &ctx.tenant, kind, key, at).await?;
        // The plan the results were computed with (plan versions never change); read from
        // Postgres when this instance's cached context predates it.
        let cached = result.as_ref().and_then(|r| {
            ctx.plans
                .iter()
                .find(|p| p.plan_id == r.0 && i64::from(p.version) == i64::from(r.1))
        });
        let fetched: Option<Plan> = match (&result, cached) {
            (Some(r), None) => sqlx::query_scalar::<_, sqlx::types::Json<Plan>>(
                "SELECT definition FROM plans WHERE tenant_id = $1 AND plan_id = $2 AND version = $3",
            )
            .bind(&ctx.tenant)
            .bind(&r.0)
            .bind(r.1)
            .fetch_optional(&mut *conn)
            .await?
            .map(|j| j.0),
            _ => None,
        };
        let plan = cached.or(fetched.as_ref());
        let next_tier = result.as_ref().and_then(|r| {
            let plan = plan?;
            let n = crate::domain::compute::next_tier(plan, rep, r.2, ctx.currency)?;
            Some(pb::NextTier {
                from: s(n.from),
                rate: s(n.rate),
                revenue_needed: money_s(ctx, n.revenue_needed),
            })
        });
        Ok(pb::Statement {
            rep_id: rep.to_owned(),
            period: Some(ctx.period_pb(kind, key)),
            currency: ctx.currency.code().to_owned(),
            plan_id: result.as_ref().map(|r| r.0.clone()).unwrap_or_default(),
            plan_version: result
                .as_ref()
                .map_or(0, |r| u32::try_from(r.1).unwrap_or(0)),
            total: money_s(ctx, total),
            totals_by_kind: by_kind
                .into_iter()
                .map(|(k, a)| pb::KindAmount {
                    kind: k,
                    amount: money_s(ctx, a),
                })
                .collect(),
            totals_by_status: by_status
                .into_iter()
                .map(|(st, a)| pb::StatusAmount {
                    status: st,
                    amount: money_s(ctx, a),
                })
                .collect(),
            lines,
            revenue: result
                .as_ref()
                .map(|r| money_s(ctx, r.2))
                .unwrap_or_default(),
            attainment: result.and_then(|r| r.3).map(s).unwrap_or_default(),
            closed,
            paid,
            next_tier,
            as_of: Some(spm_proto::ext::timestamp(at)),
        })
    }

    /// The moment a read of a rep's statement period is of: the shared locks of its chain
    /// and period wait for postings in flight, then the database's clock is read (see
    /// `chain::Locks`). `asked` (an `as_of`) must not be later than that.
    async fn moment(
        &self,
        tenant: &str,
        rep: &str,
        kind: PeriodKind,
        key: &str,
        asked: Option<&prost_types::Timestamp>,
        field: &str,
    ) -> Result<DateTime<Utc>, ApiError> {
        let asked = match asked {
            None => None,
            Some(t) => Some(
                spm_proto::ext::datetime(t)
                    .ok_or_else(|| ApiError::invalid(field, "is not a valid timestamp"))?,
            ),
        };
        let mut conn = self.pool.acquire().await?;
        let now = crate::chain::Locks::default()
            .period(tenant, kind, key, true)
            .chain(tenant, rep, kind, key, true)
            .take(&mut conn)
            .await?;
        match asked {
            Some(t) if t > now => Err(ApiError::invalid(
                field,
                format!(
                    "{} is in the future (now is {}): a statement can only be asked as it was",
                    spm_core::chain::instant(t),
                    spm_core::chain::instant(now)
                ),
            )),
            Some(t) => Ok(t),
            None => Ok(now),
        }
    }

    pub(crate) async fn ctx(&self, tenant: &str) -> Result<Arc<Ctx>, ApiError> {
        if let Some((at, c)) = self.contexts.lock().expect("contexts").get(tenant)
            && at.elapsed() < CTX_TTL
        {
            return Ok(c.clone());
        }
        let mut conn = self.pool.acquire().await?;
        let c = Arc::new(Ctx::for_tenant(&mut conn, tenant).await?);
        let mut cache = self.contexts.lock().expect("contexts");
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(tenant.to_owned(), (std::time::Instant::now(), c.clone()));
        Ok(c)
    }

    async fn load_statement(
        &self,
        tenant: &str,
        r: &pb::GetStatementRequest,
        cache_key: crate::cache::Key,
    ) -> Result<Bytes, ApiError> {
        let ticket = self.statements.ticket(tenant);
        let ctx = self.ctx(tenant).await?;
        let default = self.rep_kind(&ctx, &r.rep_id).await?;
        let kind = kind_of(r.period.as_ref(), default)?;
        let key = period_key(&ctx, r.period.as_ref(), kind)?;
        let at = self
            .moment(tenant, &r.rep_id, kind, &key, r.as_of.as_ref(), "as_of")
            .await?;
        let s = self
            .statement(&ctx, &r.rep_id, kind, &key, r.with_explanations, at)
            .await?;
        let reply = Bytes::from(pb::GetStatementResponse { statement: Some(s) }.encode_to_vec());
        if r.as_of.is_none() {
            self.statements.put(cache_key, ticket, reply.clone());
        }
        Ok(reply)
    }

    /// The encoded `GetStatementResponse` of `r`: from the cache, or loaded (one load per
    /// statement at a time; who waited finds it cached).
    pub async fn statement_reply(
        &self,
        req: Request<pb::GetStatementRequest>,
    ) -> Result<Bytes, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        if r.rep_id.is_empty() {
            return Err(ApiError::invalid("rep_id", "is required").into());
        }
        c.require_rep(&self.pool, &r.rep_id).await?;
        let asked = r.period.as_ref().map(|p| (p.kind, p.key.clone()));
        let cache_key = (
            c.tenant_id.clone(),
            r.rep_id.clone(),
            (asked, r.with_explanations),
        );
        if r.as_of.is_some() {
            // The past is not cached (each moment is asked rarely); it is exact anyway.
            return Ok(self.load_statement(&c.tenant_id, &r, cache_key).await?);
        }
        if let Some(reply) = self.statements.get(&cache_key) {
            return Ok(reply);
        }
        let lock = self.statements.load_lock(&cache_key);
        let guard = lock.lock().await;
        let loaded = match self.statements.get(&cache_key) {
            Some(reply) => Ok(reply),
            None => {
                self.load_statement(&c.tenant_id, &r, cache_key.clone())
                    .await
            }
        };
        drop(guard);
        self.statements.loaded(&cache_key, &lock);
        Ok(loaded?)
    }

    pub(crate) fn forget_ctx(&self, tenant: &str) {
        self.contexts.lock().expect("contexts").remove(tenant);
    }

    /// The period kind of the rep's plan (month when it has none).
    async fn rep_kind(&self, ctx: &Ctx, rep: &str) -> Result<PeriodKind, ApiError> {
        let mut conn = self.pool.acquire().await?;
        for kind in [PeriodKind::Month, PeriodKind::Quarter] {
            let key = ctx.calendar.period(kind, Utc::now()).key;
            if ctx.plan_for(&mut conn, rep, kind, &key).await?.is_some() {
                return Ok(kind);
            }
        }
        Ok(PeriodKind::Month)
    }

    /// Commits an admin change of `tenant`; this instance's cached statements of the
    /// tenant go at once (read-your-writes), other instances' at the NOTIFY.
    pub(crate) async fn commit(
        &self,
        tenant: &str,
        tx: sqlx::Transaction<'_, sqlx::Postgres>,
        mut out: Outbox,
    ) -> Result<(), ApiError> {
        let mut tx = tx;
        out.write(&mut tx).await?;
        tx.commit().await?;
        self.statements
            .invalidate(&serde_json::json!({ "tenant": tenant }).to_string());
        self.relay.notify_one();
        Ok(())
    }
}

fn posting_pb(ctx: &Ctx, r: &Row) -> pb::Posting {
    pb::Posting {
        posting_id: r.posting_id.to_string(),
        kind: Kind::parse(&r.kind).map_or(0, Kind::to_proto),
        status: St::parse(&r.status).map_or(0, St::to_proto),
        amount: money_s(ctx, r.amount),
        period: r.period_key.clone(),
        posted_at: Some(spm_proto::ext::timestamp(r.posted_at)),
        reason: r.summary.clone(),
        explanation_json: r.explanation.clone(),
        caused_by: r.caused_by.clone(),
    }
}

/// A dispute as the audit trail shows it.
fn dispute_pb_json(r: &DisputeRow) -> serde_json::Value {
    serde_json::json!({
        "dispute_id": r.dispute_id.to_string(),
        "line_id": r.line_id.to_string(),
        "rep_id": r.rep_id,
        "status": r.status,
        "note": r.note,
        "resolved_by": r.resolved_by,
        "adjustment": r.adjustment.map(spm_core::chain::decimal),
        "adjustment_posting": r.adjustment_posting.map(|p| p.to_string()),
    })
}

fn dispute_pb(r: DisputeRow) -> pb::Dispute {
    pb::Dispute {
        dispute_id: r.dispute_id.to_string(),
        line_id: r.line_id.to_string(),
        rep_id: r.rep_id,
        reason: r.reason,
        opened_by: r.opened_by,
        status: match r.status.as_str() {
            "open" => pb::DisputeStatus::Open,
            "rejected" => pb::DisputeStatus::Rejected,
            _ => pb::DisputeStatus::Accepted,
        } as i32,
        note: r.note,
        resolved_by: r.resolved_by,
        adjustment: r.adjustment.map(s).unwrap_or_default(),
        adjustment_line_id: r
            .adjustment_posting
            .map(|u| u.to_string())
            .unwrap_or_default(),
        opened_at: Some(spm_proto::ext::timestamp(r.opened_at)),
        resolved_at: r.resolved_at.map(spm_proto::ext::timestamp),
    }
}

#[derive(sqlx::FromRow)]
struct DisputeRow {
    dispute_id: Uuid,
    line_id: Uuid,
    rep_id: String,
    reason: String,
    opened_by: String,
    status: String,
    note: String,
    resolved_by: String,
    adjustment: Option<Decimal>,
    adjustment_posting: Option<Uuid>,
    opened_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
}

const DISPUTE_COLUMNS: &str = "dispute_id, line_id, rep_id, reason, opened_by, status, note, resolved_by, adjustment, adjustment_posting, opened_at, resolved_at";

#[tonic::async_trait]
impl IncentiveService for Api {
    /// Served by [`StatementRoute`] from encoded replies; this path (the generated
    /// dispatcher's) decodes the same reply.
    async fn get_statement(
        &self,
        req: Request<pb::GetStatementRequest>,
    ) -> Result<Response<pb::GetStatementResponse>, Status> {
        let reply = self.statement_reply(req).await?;
        pb::GetStatementResponse::decode(reply)
            .map(Response::new)
            .map_err(|e| Status::internal(format!("cached statement: {e}")))
    }

    async fn explain_line(
        &self,
        req: Request<pb::ExplainLineRequest>,
    ) -> Result<Response<pb::ExplainLineResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let id = Uuid::parse_str(&r.line_id)
            .map_err(|_| ApiError::invalid("line_id", "must be a UUID"))?;
        let origin: Option<(String, String, String)> = sqlx::query_as(
            "SELECT rep_id, period_kind, source_period_key FROM ledger WHERE tenant_id = $1 AND line_id = $2 ORDER BY seq LIMIT 1",
        )
        .bind(&c.tenant_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(ApiError::from)?;
        let Some((rep, kind_s, source)) = origin else {
            return Err(ApiError::NotFound(format!("line {id}")).into());
        };
        // A line out of the caller's scope is as absent as one that does not exist.
        if c.require_rep(&self.pool, &rep).await.is_err() {
            return Err(ApiError::NotFound(format!("line {id}")).into());
        }
        // Writers of a line's later adjustments also hold its source period's chain lock.
        let kind: PeriodKind = kind_s.parse().unwrap_or(PeriodKind::Month);
        let at = self
            .moment(&c.tenant_id, &rep, kind, &source, r.as_of.as_ref(), "as_of")
            .await?;
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {ROW_COLUMNS} FROM ledger WHERE tenant_id = $1 AND line_id = $2 AND posted_at <= $3 ORDER BY posted_at, seq"
        ))
        .bind(&c.tenant_id)
        .bind(id)
        .bind(at)
        .fetch_all(&self.pool)
        .await
        .map_err(ApiError::from)?;
        let Some(first) = rows.first() else {
            return Err(ApiError::NotFound(format!(
                "line {id} had no postings yet at {}",
                spm_core::chain::instant(at)
            ))
            .into());
        };
        let ctx = self.ctx(&c.tenant_id).await?;
        let line = lines_of(&ctx, &first.source_period_key, &rows)
            .into_iter()
            .next()
            .unwrap_or_else(|| pb::StatementLine {
                line_id: id.to_string(),
                key: first.line_key.clone(),
                amount: "0".into(),
                summary: "fully cancelled by later postings".into(),
                ..Default::default()
            });
        let postings = rows.iter().map(|r| posting_pb(&ctx, r)).collect();
        Ok(Response::new(pb::ExplainLineResponse {
            line: Some(line),
            rep_id: rep,
            postings,
        }))
    }

    async fn list_awards(
        &self,
        req: Request<pb::ListAwardsRequest>,
    ) -> Result<Response<pb::ListAwardsResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let scope = if r.rep_id.is_empty() {
            c.scope(&self.pool).await?.rep_list()
        } else {
            c.require_rep(&self.pool, &r.rep_id).await?;
            None
        };
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
            "SELECT payload FROM awards WHERE tenant_id = $1 AND ($2 = '' OR rep_id = $2)
               AND ($3::text[] IS NULL OR rep_id = ANY($3)) ORDER BY granted_at, award_id",
        )
        .bind(&c.tenant_id)
        .bind(&r.rep_id)
        .bind(scope)
        .fetch_all(&self.pool)
        .await
        .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListAwardsResponse {
            awards: rows
                .into_iter()
                .filter_map(|(b,)| ev::AwardGranted::decode(b.as_slice()).ok())
                .collect(),
        }))
    }

    async fn what_if(
        &self,
        req: Request<pb::WhatIfRequest>,
    ) -> Result<Response<pb::WhatIfResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        if !r.rep_id.is_empty() {
            c.require_rep(&self.pool, &r.rep_id).await?;
        }
        let ctx = self.ctx(&c.tenant_id).await?;
        let mut v = Violations::new();
        v.id("rep_id", &r.rep_id, 128);
        let amount = match r.amount.as_ref() {
            None => {
                v.add("amount", "is required");
                None
            }
            Some(m) => match Money::parse_non_negative(&m.amount, &m.currency) {
                Ok(x) if x.currency == ctx.currency => Some(x.amount),
                Ok(_) => {
                    v.add(
                        "amount.currency",
                        format!("must be the tenant's base currency {}", ctx.currency),
                    );
                    None
                }
                Err(e) => {
                    v.add("amount", e.to_string());
                    None
                }
            },
        };
        let close_at = match r.close_at.as_ref() {
            None => Some(Utc::now()),
            Some(ts) => spm_proto::ext::datetime(ts).or_else(|| {
                v.add("close_at", "is not a valid timestamp");
                None
            }),
        };
        let (Some(amount), Some(close_at)) = (amount, close_at) else {
            return Err(ApiError::InvalidArgument(v.0).into());
        };
        let () = v.finish(()).map_err(ApiError::InvalidArgument)?;
        let kind = self.rep_kind(&ctx, &r.rep_id).await?;
        let key = ctx.calendar.period(kind, close_at).key;
        let mut conn = self.pool.acquire().await.map_err(ApiError::from)?;
        let Some(plan) = ctx
            .plan_for(&mut conn, &r.rep_id, kind, &key)
            .await
            .map_err(ApiError::from)?
            .cloned()
        else {
            return Err(ApiError::FailedPrecondition(format!(
                "no plan governs rep {} in {key}",
                r.rep_id
            ))
            .into());
        };
        let rp = engine::input(&mut conn, &ctx, &r.rep_id, kind, &key, Mode::Normal)
            .await
            .map_err(ApiError::from)?;
        drop(conn);
        let before = compute(&plan, &rp, ctx.currency);
        let mut with = rp.clone();
        with.deals.push(DealIn {
            deal_id: "what-if".into(),
            event_id: "what-if".into(),
            closed_at: close_at,
            local_date: ctx.calendar.local_date(close_at),
            credited: amount,
            lines: r
                .lines
                .iter()
                .map(|l| {
                    let a = l
                        .amount
                        .as_ref()
                        .and_then(|m| parse_decimal(&m.amount).ok())
                        .unwrap_or_default();
                    (l.product_id.clone(), a)
                })
                .collect(),
            payments: Vec::new(),
            reversals: Vec::new(),
        });
        let after = compute(&plan, &with, ctx.currency);
        let changed = changed_lines(&ctx, &key, &before, &after);
        let delta = after.total() - before.total();
        Ok(Response::new(pb::WhatIfResponse {
            period: Some(ctx.period_pb(kind, &key)),
            current_total: money_s(&ctx, before.total()),
            new_total: money_s(&ctx, after.total()),
            delta: money_s(&ctx, delta),
            changed_lines: changed,
            attainment_before: before.attainment.map(s).unwrap_or_default(),
            attainment_after: after.attainment.map(s).unwrap_or_default(),
            summary: format!(
                "closing {} {} in {key} earns {} {} more (attainment {} -> {})",
                s(amount),
                ctx.currency,
                money_s(&ctx, delta),
                ctx.currency,
                before.attainment.map(s).unwrap_or_else(|| "-".into()),
                after.attainment.map(s).unwrap_or_else(|| "-".into())
            ),
        }))
    }

    async fn simulate_plan(
        &self,
        req: Request<pb::SimulatePlanRequest>,
    ) -> Result<Response<pb::SimulatePlanResponse>, Status> {
        let c = caller(&req)?;
        c.require_tenant_reader()?;
        let r = req.into_inner();
        let draft_pb = r
            .draft
            .ok_or_else(|| ApiError::invalid("draft", "is required"))?;
        let draft = plan::from_proto(&draft_pb).map_err(|v| {
            ApiError::InvalidArgument(v.into_iter().map(|f| f.under("draft")).collect())
        })?;
        let ctx = self.ctx(&c.tenant_id).await?;
        let kind = kind_of(r.period.as_ref(), draft.period_kind)?;
        if kind != draft.period_kind {
            return Err(ApiError::invalid(
                "period.kind",
                "must match the draft plan's period kind",
            )
            .into());
        }
        let key = period_key(&ctx, r.period.as_ref(), kind)?;
        let (payouts, deals, totals) = simulate(&self.pool, &ctx, &draft, kind, &key).await?;
        Ok(Response::new(pb::SimulatePlanResponse {
            period: Some(ctx.period_pb(kind, &key)),
            reps: u32::try_from(payouts.len()).unwrap_or(u32::MAX),
            payouts,
            current_total: money_s(&ctx, totals.0),
            draft_total: money_s(&ctx, totals.1),
            difference: money_s(&ctx, totals.1 - totals.0),
            deals,
        }))
    }

    async fn open_dispute(
        &self,
        req: Request<pb::OpenDisputeRequest>,
    ) -> Result<Response<pb::OpenDisputeResponse>, Status> {
        let c = caller(&req)?;
        c.require_writer()?;
        let mut r = req.into_inner();
        // A person opens disputes as themself, whatever the request says.
        if c.person.is_some() {
            r.opened_by = c.actor();
        }
        let mut v = Violations::new();
        let line_id = Uuid::parse_str(&r.line_id).ok();
        if line_id.is_none() {
            v.add("line_id", "must be a UUID");
        }
        if r.reason.trim().is_empty() {
            v.add("reason", "is required");
        }
        v.text("reason", &r.reason, 2000);
        if c.person.is_none() {
            v.id("opened_by", &r.opened_by, 128);
        }
        let () = v.finish(()).map_err(ApiError::InvalidArgument)?;
        let line_id = line_id.expect("checked");
        let rep: Option<String> = sqlx::query_scalar(
            "SELECT rep_id FROM ledger WHERE tenant_id = $1 AND line_id = $2 LIMIT 1",
        )
        .bind(&c.tenant_id)
        .bind(line_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(ApiError::from)?;
        let rep = rep.ok_or_else(|| ApiError::NotFound(format!("line {line_id}")))?;
        // Someone else's line: a rep cannot even read it, so it is absent to them.
        if c.require_rep(&self.pool, &rep).await.is_err() {
            return Err(ApiError::NotFound(format!("line {line_id}")).into());
        }
        c.require_dispute_opener(&rep)?;
        let ctx = self.ctx(&c.tenant_id).await?;
        let mut tx = self.pool.begin().await.map_err(ApiError::from)?;
        let id = Uuid::new_v4();
        let row: DisputeRow = sqlx::query_as(&format!(
            "INSERT INTO disputes (tenant_id, dispute_id, line_id, rep_id, reason, opened_by, status)
             VALUES ($1, $2, $3, $4, $5, $6, 'open') RETURNING {DISPUTE_COLUMNS}"
        ))
        .bind(&c.tenant_id)
        .bind(id)
        .bind(line_id)
        .bind(&rep)
        .bind(&r.reason)
        .bind(&r.opened_by)
        .fetch_one(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        let mut out = Outbox::new(&self.kafka);
        out.emit(
            &tracing::Span::current(),
            topics::EARNINGS,
            spm_core::kafka_key(&c.tenant_id, &rep),
            &ctx.envelope(
                "",
                Payload::DisputeOpened(ev::DisputeOpened {
                    dispute_id: id.to_string(),
                    line_id: line_id.to_string(),
                    rep_id: rep.clone(),
                    reason: r.reason.clone(),
                    opened_by: r.opened_by.clone(),
                }),
            ),
        );
        self.commit(&c.tenant_id, tx, out).await?;
        Ok(Response::new(pb::OpenDisputeResponse {
            dispute: Some(dispute_pb(row)),
        }))
    }

    async fn diff_statement(
        &self,
        req: Request<pb::DiffStatementRequest>,
    ) -> Result<Response<pb::DiffStatementResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        if r.rep_id.is_empty() {
            return Err(ApiError::invalid("rep_id", "is required").into());
        }
        c.require_rep(&self.pool, &r.rep_id).await?;
        let from = r
            .from
            .as_ref()
            .ok_or_else(|| ApiError::invalid("from", "is required"))?;
        let from = spm_proto::ext::datetime(from)
            .ok_or_else(|| ApiError::invalid("from", "is not a valid timestamp"))?;
        let ctx = self.ctx(&c.tenant_id).await?;
        let default = self.rep_kind(&ctx, &r.rep_id).await?;
        let kind = kind_of(r.period.as_ref(), default)?;
        let key = period_key(&ctx, r.period.as_ref(), kind)?;
        let to = self
            .moment(&c.tenant_id, &r.rep_id, kind, &key, r.to.as_ref(), "to")
            .await?;
        if from > to {
            return Err(ApiError::invalid("from", "must not be after to").into());
        }
        #[derive(sqlx::FromRow)]
        struct DiffRow {
            #[sqlx(flatten)]
            row: Row,
            plan_id: String,
            plan_version: i32,
        }
        let rows: Vec<DiffRow> = sqlx::query_as(&format!(
            "SELECT {ROW_COLUMNS}, plan_id, plan_version
               FROM ledger WHERE tenant_id = $1 AND rep_id = $2 AND period_kind = $3 AND period_key = $4
                AND posted_at > $5 AND posted_at <= $6 ORDER BY chain_seq"
        ))
        .bind(&c.tenant_id)
        .bind(&r.rep_id)
        .bind(kind.as_str())
        .bind(&key)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await
        .map_err(ApiError::from)?;
        let mut conn = self.pool.acquire().await.map_err(ApiError::from)?;
        let total_from =
            store::period_total_at(&mut conn, &c.tenant_id, &r.rep_id, kind, &key, from)
                .await
                .map_err(ApiError::from)?;
        let total_to = store::period_total_at(&mut conn, &c.tenant_id, &r.rep_id, kind, &key, to)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::DiffStatementResponse {
            period: Some(ctx.period_pb(kind, &key)),
            from: Some(spm_proto::ext::timestamp(from)),
            to: Some(spm_proto::ext::timestamp(to)),
            total_from: money_s(&ctx, total_from),
            total_to: money_s(&ctx, total_to),
            postings: rows
                .into_iter()
                .map(|d| pb::DiffPosting {
                    line_id: d.row.line_id.to_string(),
                    line_key: d.row.line_key.clone(),
                    deal_id: d.row.deal_id.clone(),
                    plan_id: d.plan_id,
                    plan_version: u32::try_from(d.plan_version).unwrap_or(0),
                    posting: Some(posting_pb(&ctx, &d.row)),
                })
                .collect(),
        }))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let c = caller(&req)?;
        let managed_teams = match (c.role, c.own_rep()) {
            (spm_server::Role::Manager, Some(me)) => {
                let mut conn = self.pool.acquire().await.map_err(ApiError::from)?;
                spm_server::org::managed_teams(&mut conn, &c.tenant_id, me)
                    .await
                    .map_err(ApiError::from)?
            }
            _ => Vec::new(),
        };
        Ok(Response::new(pb::WhoAmIResponse {
            tenant_id: c.tenant_id.clone(),
            role: c.role.as_str().to_owned(),
            login: c
                .person
                .as_ref()
                .map(|p| p.login.clone())
                .unwrap_or_default(),
            rep_id: c.own_rep().unwrap_or_default().to_owned(),
            display_name: c
                .person
                .as_ref()
                .map(|p| p.display_name.clone())
                .unwrap_or_default(),
            managed_teams,
        }))
    }

    async fn list_disputes(
        &self,
        req: Request<pb::ListDisputesRequest>,
    ) -> Result<Response<pb::ListDisputesResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let scope = if r.rep_id.is_empty() {
            c.scope(&self.pool).await?.rep_list()
        } else {
            c.require_rep(&self.pool, &r.rep_id).await?;
            None
        };
        let rows: Vec<DisputeRow> = sqlx::query_as(&format!(
            "SELECT {DISPUTE_COLUMNS} FROM disputes WHERE tenant_id = $1 AND ($2 = '' OR rep_id = $2)
               AND (NOT $3 OR status = 'open') AND ($4::text[] IS NULL OR rep_id = ANY($4))
             ORDER BY opened_at, dispute_id"
        ))
        .bind(&c.tenant_id)
        .bind(&r.rep_id)
        .bind(r.open_only)
        .bind(scope)
        .fetch_all(&self.pool)
        .await
        .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListDisputesResponse {
            disputes: rows.into_iter().map(dispute_pb).collect(),
        }))
    }
}

fn changed_lines(
    ctx: &Ctx,
    key: &str,
    before: &Outcome,
    after: &Outcome,
) -> Vec<pb::StatementLine> {
    let prev: BTreeMap<&str, Decimal> = before
        .lines
        .iter()
        .map(|l| (l.key.as_str(), l.total()))
        .collect();
    after
        .lines
        .iter()
        .filter(|l| prev.get(l.key.as_str()) != Some(&l.total()))
        .map(|l| pb::StatementLine {
            line_id: String::new(),
            key: l.key.clone(),
            kind: l.kind.to_proto(),
            source_period: key.to_owned(),
            amount: money_s(
                ctx,
                l.total() - prev.get(l.key.as_str()).copied().unwrap_or_default(),
            ),
            by_status: l
                .amounts
                .iter()
                .map(|(st, a)| pb::StatusAmount {
                    status: st.to_proto(),
                    amount: money_s(ctx, *a),
                })
                .collect(),
            deal_id: l.deal_id.clone(),
            summary: l.summary.clone(),
            explanation_json: l.explanation.to_string(),
            postings: 0,
        })
        .collect()
}

/// Reps whose deals a plan simulation holds in memory at once.
const SIMULATION_REPS_PER_ROUND: usize = 25;

/// Runs `draft` and each rep's current plan over a period's stored events.
pub async fn simulate(
    pool: &PgPool,
    ctx: &Ctx,
    draft: &Plan,
    kind: PeriodKind,
    key: &str,
) -> Result<(Vec<pb::RepPayout>, u32, (Decimal, Decimal)), ApiError> {
    let mut conn = pool.acquire().await?;
    let (closed, _) = store::period_state(&mut conn, &ctx.tenant, kind, key).await?;
    let period = ctx
        .calendar
        .parse_key(kind, key)
        .map_err(|e| ApiError::invalid("period.key", e.to_string()))?;
    let last_day = ctx
        .calendar
        .local_date(period.end - chrono::Duration::seconds(1));
    let all_reps = store::reps_closing_in(&mut conn, &ctx.tenant, kind, key).await?;
    let mut payouts = Vec::new();
    let mut n_deals = 0u32;
    let (mut cur_total, mut draft_total) = (Decimal::ZERO, Decimal::ZERO);
    // A few reps at a time: memory follows the chunk, not the tenant's whole period.
    for reps in all_reps.chunks(SIMULATION_REPS_PER_ROUND) {
        let deals = store::deals_of_period(&mut conn, &ctx.tenant, Some(reps), kind, key).await?;
        let kpis = store::kpis(&mut conn, &ctx.tenant, Some(reps), kind, key).await?;
        let org = spm_server::org::reps(&mut conn, &ctx.tenant, reps).await?;
        for (rep, ds) in deals {
            n_deals += u32::try_from(ds.len()).unwrap_or(0);
            let (metrics, score) = kpis.get(&rep).cloned().unwrap_or_default();
            let rp = RepPeriod {
                rep_id: rep.clone(),
                period_key: key.to_owned(),
                deals: ds,
                metrics,
                score,
                closed,
                paid: false,
            };
            let team = org.get(&rep).map(|r| r.team_id.clone()).unwrap_or_default();
            let chain = spm_server::org::chain(&team, &ctx.teams);
            let current = plan::select(&ctx.plans, &rep, &chain, last_day)
                .filter(|p| p.period_kind == kind)
                .map_or(Decimal::ZERO, |p| compute(p, &rp, ctx.currency).total());
            let drafted = compute(draft, &rp, ctx.currency).total();
            cur_total += current;
            draft_total += drafted;
            payouts.push(pb::RepPayout {
                rep_id: rep,
                current: money_s(ctx, current),
                draft: money_s(ctx, drafted),
                difference: money_s(ctx, drafted - current),
            });
        }
    }
    Ok((payouts, n_deals, (cur_total, draft_total)))
}

#[tonic::async_trait]
impl IncentiveAdminService for Api {
    type ExportLedgerStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<pb::ExportLedgerResponse, Status>> + Send>,
    >;

    async fn verify_ledger(
        &self,
        req: Request<pb::VerifyLedgerRequest>,
    ) -> Result<Response<pb::VerifyLedgerResponse>, Status> {
        let c = caller(&req)?;
        spm_server::audit::require_audit_reader(&c)?;
        let r = req.into_inner();
        let ctx = self.ctx(&c.tenant_id).await?;
        let period = match r.period.as_ref().filter(|p| !p.key.is_empty()) {
            None => None,
            Some(p) => {
                let kind = kind_of(Some(p), PeriodKind::Month)?;
                Some((kind, period_key(&ctx, Some(p), kind)?))
            }
        };
        let started = std::time::Instant::now();
        let mut conn = self.pool.acquire().await.map_err(ApiError::from)?;
        let v = crate::chain::verify(
            &mut conn,
            &c.tenant_id,
            period.as_ref().map(|(k, p)| (*k, p.as_str())),
        )
        .await
        .map_err(ApiError::from)?;
        let took = started.elapsed();
        tracing::info!(tenant = %c.tenant_id, postings = v.postings, breaks = v.breaks.len(), ?took, "ledger verified");
        Ok(Response::new(pb::VerifyLedgerResponse {
            ok: v.breaks.is_empty(),
            postings: v.postings,
            chains: v.chains,
            seals: v.seals,
            breaks: v
                .breaks
                .into_iter()
                .take(1000)
                .map(|b| pb::ChainBreak {
                    chain: b.chain,
                    seq: b.seq,
                    id: b.id,
                    problem: b.problem,
                })
                .collect(),
            took_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        }))
    }

    async fn export_ledger(
        &self,
        req: Request<pb::ExportLedgerRequest>,
    ) -> Result<Response<Self::ExportLedgerStream>, Status> {
        let c = caller(&req)?;
        spm_server::audit::require_audit_reader(&c)?;
        let r = req.into_inner();
        let p = r
            .period
            .as_ref()
            .filter(|p| !p.key.is_empty())
            .ok_or_else(|| ApiError::invalid("period.key", "is required"))?;
        let ctx = self.ctx(&c.tenant_id).await?;
        let kind = kind_of(Some(p), PeriodKind::Month)?;
        let key = period_key(&ctx, Some(p), kind)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<String>>(4);
        let (etx, erx) = tokio::sync::oneshot::channel::<Status>();
        let pool = self.pool.clone();
        let tenant = c.tenant_id.clone();
        tokio::spawn(async move {
            let mut sink = crate::chain::Sink::new(tx);
            let done = async {
                let mut conn = pool.acquire().await?;
                crate::chain::export(&mut conn, &tenant, kind, &key, &mut sink).await
            }
            .await;
            if let Err(e) = done {
                let _ = etx.send(ApiError::from(e).into());
            }
        });
        let lines = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|lines| Ok(pb::ExportLedgerResponse { lines }));
        let failed = futures::stream::once(erx).filter_map(|e| async move { e.ok().map(Err) });
        Ok(Response::new(Box::pin(lines.chain(failed))))
    }

    async fn put_plan(
        &self,
        req: Request<pb::PutPlanRequest>,
    ) -> Result<Response<pb::PutPlanResponse>, Status> {
        let c = caller(&req)?;
        let plan = self.put_plan_as(&c, req.into_inner()).await?;
        Ok(Response::new(pb::PutPlanResponse { plan: Some(plan) }))
    }

    async fn list_plans(
        &self,
        req: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        let c = caller(&req)?;
        let plans = self.list_plans_as(&c, req.into_inner().history).await?;
        Ok(Response::new(pb::ListPlansResponse { plans }))
    }

    async fn get_plan(
        &self,
        req: Request<pb::GetPlanRequest>,
    ) -> Result<Response<pb::GetPlanResponse>, Status> {
        let c = caller(&req)?;
        Ok(Response::new(self.get_plan_as(&c, req.into_inner()).await?))
    }

    async fn transition_plan(
        &self,
        req: Request<pb::TransitionPlanRequest>,
    ) -> Result<Response<pb::TransitionPlanResponse>, Status> {
        let c = caller(&req)?;
        Ok(Response::new(
            self.transition_plan_as(&c, req.into_inner()).await?,
        ))
    }

    async fn approve_plan(
        &self,
        req: Request<pb::ApprovePlanRequest>,
    ) -> Result<Response<pb::ApprovePlanResponse>, Status> {
        let c = caller(&req)?;
        Ok(Response::new(
            self.approve_plan_as(&c, req.into_inner()).await?,
        ))
    }

    async fn get_plan_policy(
        &self,
        req: Request<pb::GetPlanPolicyRequest>,
    ) -> Result<Response<pb::GetPlanPolicyResponse>, Status> {
        let c = caller(&req)?;
        Ok(Response::new(pb::GetPlanPolicyResponse {
            approvals_required: self.plan_policy_as(&c, None).await?,
        }))
    }

    async fn set_plan_policy(
        &self,
        req: Request<pb::SetPlanPolicyRequest>,
    ) -> Result<Response<pb::SetPlanPolicyResponse>, Status> {
        let c = caller(&req)?;
        let n = req.into_inner().approvals_required;
        Ok(Response::new(pb::SetPlanPolicyResponse {
            approvals_required: self.plan_policy_as(&c, Some(n)).await?,
        }))
    }

    async fn compare_plan(
        &self,
        req: Request<pb::ComparePlanRequest>,
    ) -> Result<Response<pb::ComparePlanResponse>, Status> {
        let c = caller(&req)?;
        Ok(Response::new(
            self.compare_plan_as(&c, req.into_inner()).await?,
        ))
    }

    async fn close_period(
        &self,
        req: Request<pb::ClosePeriodRequest>,
    ) -> Result<Response<pb::ClosePeriodResponse>, Status> {
        let c = caller(&req)?;
        c.require_configure()?;
        let r = req.into_inner();
        let mut tx = self.pool.begin().await.map_err(ApiError::from)?;
        Ctx::lock_plans(&mut tx, &c.tenant_id)
            .await
            .map_err(ApiError::from)?;
        let ctx = Ctx::for_tenant(&mut tx, &c.tenant_id)
            .await
            .map_err(ApiError::from)?;
        let kind = kind_of(r.period.as_ref(), PeriodKind::Month)?;
        let key = period_key(&ctx, r.period.as_ref(), kind)?;
        let (closed, _) = store::period_state(&mut tx, &c.tenant_id, kind, &key)
            .await
            .map_err(ApiError::from)?;
        if closed {
            return Err(ApiError::FailedPrecondition(format!("{key} is already closed")).into());
        }
        let mut out = Outbox::new(&self.kafka);
        let (reps, report) = engine::settle_period(&mut tx, &ctx, kind, &key, false, &mut out)
            .await
            .map_err(ApiError::from)?;
        spm_server::audit::record(
            &mut tx,
            &c,
            spm_server::audit::Action::new("incentive", "period.close", format!("period:{}/{key}", kind.as_str()))
                .before(serde_json::json!({"closed": false}))
                .after(serde_json::json!({"closed": true, "reps": reps, "postings": report.postings, "awards": report.awards})),
        )
        .await
        .map_err(ApiError::from)?;
        self.commit(&c.tenant_id, tx, out).await?;
        tracing::info!(tenant = %c.tenant_id, period = %key, reps, postings = report.postings, "period closed");
        Ok(Response::new(pb::ClosePeriodResponse {
            reps,
            postings: report.postings,
            awards: report.awards,
        }))
    }

    async fn mark_period_paid(
        &self,
        req: Request<pb::MarkPeriodPaidRequest>,
    ) -> Result<Response<pb::MarkPeriodPaidResponse>, Status> {
        let c = caller(&req)?;
        c.require_configure()?;
        let r = req.into_inner();
        let mut tx = self.pool.begin().await.map_err(ApiError::from)?;
        Ctx::lock_plans(&mut tx, &c.tenant_id)
            .await
            .map_err(ApiError::from)?;
        let ctx = Ctx::for_tenant(&mut tx, &c.tenant_id)
            .await
            .map_err(ApiError::from)?;
        let kind = kind_of(r.period.as_ref(), PeriodKind::Month)?;
        let key = period_key(&ctx, r.period.as_ref(), kind)?;
        let (closed, paid) = store::period_state(&mut tx, &c.tenant_id, kind, &key)
            .await
            .map_err(ApiError::from)?;
        if !closed {
            return Err(
                ApiError::FailedPrecondition(format!("close {key} before paying it")).into(),
            );
        }
        if paid {
            return Err(ApiError::FailedPrecondition(format!("{key} is already paid")).into());
        }
        let mut out = Outbox::new(&self.kafka);
        let (reps, _) = engine::settle_period(&mut tx, &ctx, kind, &key, true, &mut out)
            .await
            .map_err(ApiError::from)?;
        let paid_total: Decimal = sqlx::query_scalar(
            "SELECT COALESCE(sum(amount), 0) FROM ledger WHERE tenant_id = $1 AND period_kind = $2 AND period_key = $3 AND status = 'paid'",
        )
        .bind(&c.tenant_id)
        .bind(kind.as_str())
        .bind(&key)
        .fetch_one(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        spm_server::audit::record(
            &mut tx,
            &c,
            spm_server::audit::Action::new("incentive", "period.pay", format!("period:{}/{key}", kind.as_str()))
                .before(serde_json::json!({"closed": true, "paid": false}))
                .after(serde_json::json!({"closed": true, "paid": true, "reps": reps, "paid_total": spm_core::chain::decimal(paid_total)})),
        )
        .await
        .map_err(ApiError::from)?;
        self.commit(&c.tenant_id, tx, out).await?;
        Ok(Response::new(pb::MarkPeriodPaidResponse {
            reps,
            paid: money_s(&ctx, paid_total),
        }))
    }

    async fn resolve_dispute(
        &self,
        req: Request<pb::ResolveDisputeRequest>,
    ) -> Result<Response<pb::ResolveDisputeResponse>, Status> {
        let c = caller(&req)?;
        c.require_writer()?;
        let mut r = req.into_inner();
        if c.person.is_some() {
            r.resolved_by = c.actor();
        }
        let id = Uuid::parse_str(&r.dispute_id)
            .map_err(|_| ApiError::invalid("dispute_id", "must be a UUID"))?;
        let mut v = Violations::new();
        if c.person.is_none() {
            v.id("resolved_by", &r.resolved_by, 128);
        }
        v.text("note", &r.note, 2000);
        let mut tx = self.pool.begin().await.map_err(ApiError::from)?;
        Ctx::lock_plans(&mut tx, &c.tenant_id)
            .await
            .map_err(ApiError::from)?;
        let ctx = Ctx::for_tenant(&mut tx, &c.tenant_id)
            .await
            .map_err(ApiError::from)?;
        let outcome =
            ev::DisputeOutcome::try_from(r.outcome).unwrap_or(ev::DisputeOutcome::Unspecified);
        let adjustment = match outcome {
            ev::DisputeOutcome::Accepted => {
                match Money::parse(&r.adjustment, ctx.currency.code()) {
                    Ok(m) if !m.amount.is_zero() => Some(m.amount),
                    Ok(_) => {
                        v.add("adjustment", "must not be zero when accepting");
                        None
                    }
                    Err(e) => {
                        v.add("adjustment", e.to_string());
                        None
                    }
                }
            }
            ev::DisputeOutcome::Rejected => None,
            ev::DisputeOutcome::Unspecified => {
                v.add("outcome", "must be REJECTED or ACCEPTED");
                None
            }
        };
        let () = v.finish(()).map_err(ApiError::InvalidArgument)?;
        let d: Option<DisputeRow> = sqlx::query_as(&format!(
            "SELECT {DISPUTE_COLUMNS} FROM disputes WHERE tenant_id = $1 AND dispute_id = $2 FOR UPDATE"
        ))
        .bind(&c.tenant_id)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        let d = d.ok_or_else(|| ApiError::NotFound(format!("dispute {id}")))?;
        if c.require_rep(&self.pool, &d.rep_id).await.is_err() {
            return Err(ApiError::NotFound(format!("dispute {id}")).into());
        }
        c.require_dispute_resolver(&self.pool, &d.rep_id).await?;
        if d.status != "open" {
            return Err(ApiError::FailedPrecondition(format!(
                "dispute {id} is already {}",
                d.status
            ))
            .into());
        }
        let mut out = Outbox::new(&self.kafka);
        let mut posting = None;
        if let Some(amount) = adjustment {
            let (kind_s, source): (String, String) = sqlx::query_as(
                "SELECT period_kind, source_period_key FROM ledger WHERE tenant_id = $1 AND line_id = $2 ORDER BY seq LIMIT 1",
            )
            .bind(&c.tenant_id)
            .bind(d.line_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(ApiError::from)?;
            let kind: PeriodKind = kind_s.parse().unwrap_or(PeriodKind::Month);
            let now_key = ctx.calendar.period(kind, Utc::now()).key;
            let post_key = store::next_open(&mut tx, &c.tenant_id, &ctx.calendar, kind, &now_key)
                .await
                .map_err(ApiError::from)?;
            let mut held = crate::chain::Locks::default()
                .period(&c.tenant_id, kind, &post_key, true)
                .chain(&c.tenant_id, &d.rep_id, kind, &post_key, false)
                .hold(&mut tx, &c.tenant_id)
                .await
                .map_err(ApiError::from)?;
            let pid = Uuid::new_v4();
            let line_key = format!("dispute:{id}");
            let row = store::LedgerRow {
                posting_id: pid,
                rep_id: d.rep_id.clone(),
                period_kind: kind,
                period_key: post_key.clone(),
                source_period_key: post_key.clone(),
                line_key: line_key.clone(),
                line_id: engine::line_id(&c.tenant_id, &d.rep_id, kind, &post_key, &line_key),
                kind: Kind::Adjustment.as_str().into(),
                status: St::Payable.as_str().into(),
                amount,
                currency: ctx.currency.code().into(),
                plan_id: String::new(),
                plan_version: 0,
                deal_id: String::new(),
                summary: format!("dispute {id} accepted by {}: {}", r.resolved_by, r.note),
                explanation: crate::domain::chain::canonical_json(
                    &serde_json::json!({"dispute": id.to_string(), "disputed_line": d.line_id.to_string(), "disputed_period": source, "reason": d.reason, "note": r.note}),
                ),
                caused_by: Vec::new(),
            };
            crate::chain::append(&mut tx, &c.tenant_id, std::slice::from_ref(&row), &mut held)
                .await
                .map_err(ApiError::from)?;
            let total = store::period_total(&mut tx, &c.tenant_id, &d.rep_id, kind, &post_key)
                .await
                .map_err(ApiError::from)?;
            let m = |a: Decimal| common::Money {
                amount: ctx.currency.round(a).to_string(),
                currency: ctx.currency.code().to_owned(),
            };
            out.emit(
                &tracing::Span::current(),
                topics::EARNINGS,
                spm_core::kafka_key(&c.tenant_id, &d.rep_id),
                &ctx.envelope(
                    "",
                    Payload::EarningAdjusted(ev::EarningAdjusted {
                        line_id: row.line_id.to_string(),
                        rep_id: d.rep_id.clone(),
                        period: Some(ctx.period_pb(kind, &post_key)),
                        adjusts_period: Some(ctx.period_pb(kind, &source)),
                        amount: Some(m(amount)),
                        reason: row.summary.clone(),
                        explanation_json: row.explanation.clone(),
                        period_total: Some(m(total)),
                        by_status: crate::domain::compute::Status::parse(&row.status)
                            .map(|s| ev::StatusAmount {
                                status: s.to_proto(),
                                amount: Some(m(amount)),
                            })
                            .into_iter()
                            .collect(),
                    }),
                ),
            );
            posting = Some((row.line_id, amount));
        }
        let status = if posting.is_some() {
            "accepted"
        } else {
            "rejected"
        };
        let row: DisputeRow = sqlx::query_as(&format!(
            "UPDATE disputes SET status = $3, note = $4, resolved_by = $5, adjustment = $6, adjustment_posting = $7, resolved_at = now()
              WHERE tenant_id = $1 AND dispute_id = $2 RETURNING {DISPUTE_COLUMNS}"
        ))
        .bind(&c.tenant_id)
        .bind(id)
        .bind(status)
        .bind(&r.note)
        .bind(&r.resolved_by)
        .bind(posting.map(|p| p.1))
        .bind(posting.map(|p| p.0))
        .fetch_one(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        spm_server::audit::record(
            &mut tx,
            &c,
            spm_server::audit::Action::new("incentive", "dispute.resolve", format!("dispute:{id}"))
                .before(dispute_pb_json(&d))
                .after(dispute_pb_json(&row)),
        )
        .await
        .map_err(ApiError::from)?;
        out.emit(
            &tracing::Span::current(),
            topics::EARNINGS,
            spm_core::kafka_key(&c.tenant_id, &d.rep_id),
            &ctx.envelope(
                "",
                Payload::DisputeResolved(ev::DisputeResolved {
                    dispute_id: id.to_string(),
                    line_id: d.line_id.to_string(),
                    rep_id: d.rep_id.clone(),
                    outcome: outcome as i32,
                    adjustment_line_id: posting.map(|p| p.0.to_string()).unwrap_or_default(),
                    adjustment: posting.map(|p| common::Money {
                        amount: ctx.currency.round(p.1).to_string(),
                        currency: ctx.currency.code().into(),
                    }),
                    note: r.note.clone(),
                    resolved_by: r.resolved_by.clone(),
                }),
            ),
        );
        self.commit(&c.tenant_id, tx, out).await?;
        Ok(Response::new(pb::ResolveDisputeResponse {
            dispute: Some(dispute_pb(row)),
        }))
    }
}
