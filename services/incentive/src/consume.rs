//! Incentive's event handler: deal, payment and reversal credits and score snapshots are
//! stored; every rep-period they touch is recomputed and the difference posted, in the
//! consumer loop's transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use rust_decimal::Decimal;
use spm_bus::{Handler, HandlerError, Incoming, Outbox};
use spm_core::money::{Currency, parse_decimal};
use spm_core::period::{Calendar, PeriodKind};
use spm_proto::common::v1 as common;
use spm_proto::events::v1::event_envelope::Payload;
use sqlx::PgConnection;

use crate::engine::{self, Cause, Ctx, Mode};

pub struct IncentiveHandler {
    /// False when rebuilding: recomputations still post differences but announce nothing.
    pub emit: bool,
    /// When rebuilding: rep-periods to recompute once at the end, per tenant (with its
    /// latest context), instead of after every batch.
    pub deferred: Option<Deferred>,
}

pub type Deferred = std::sync::Arc<
    std::sync::Mutex<
        BTreeMap<
            String,
            (
                common::TenantContext,
                BTreeSet<(String, PeriodKind, String)>,
            ),
        >,
    >,
>;

impl IncentiveHandler {
    /// The live handler.
    pub fn live() -> Self {
        Self {
            emit: true,
            deferred: None,
        }
    }
}

fn dec(m: &Option<common::Money>) -> Decimal {
    m.as_ref()
        .and_then(|m| parse_decimal(&m.amount).ok())
        .unwrap_or_default()
}

#[async_trait]
impl Handler for IncentiveHandler {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &[&Incoming],
        out: &mut Outbox,
    ) -> Result<(), HandlerError> {
        let mut by_tenant: BTreeMap<&str, Vec<&Incoming>> = BTreeMap::new();
        for inc in batch {
            if spm_server::auth::apply_tenant_event(conn, &inc.envelope).await? {
                continue;
            }
            by_tenant
                .entry(inc.envelope.tenant_id.as_str())
                .or_default()
                .push(inc);
        }
        for (tenant, events) in by_tenant {
            self.apply_tenant(conn, tenant, &events, out).await?;
        }
        Ok(())
    }
}

impl IncentiveHandler {
    async fn apply_tenant(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        events: &[&Incoming],
        out: &mut Outbox,
    ) -> Result<(), HandlerError> {
        let ctx_pb = events
            .iter()
            .rev()
            .find_map(|e| e.envelope.tenant_context.clone())
            .unwrap_or_default();
        let mut pairs: BTreeSet<(String, PeriodKind, String)> = BTreeSet::new();
        let mut causes: HashMap<String, Cause> = HashMap::new();
        let mut org_changed: BTreeSet<String> = BTreeSet::new();

        for inc in events {
            let e = &inc.envelope;
            let cal = e
                .tenant_context
                .as_ref()
                .and_then(|c| Calendar::new(&c.time_zone, c.fiscal_year_start_month).ok())
                .unwrap_or_default();
            let base = e
                .tenant_context
                .as_ref()
                .and_then(|c| Currency::new(&c.base_currency).ok())
                .unwrap_or_else(|| Currency::new("EUR").expect("EUR"));
            let at = e
                .occurred_at
                .as_ref()
                .and_then(spm_proto::ext::datetime)
                .unwrap_or_default();
            if let Some(change) = spm_server::org::apply(conn, inc.event_id, e).await? {
                if let spm_server::org::Change::Rep(r) = change {
                    org_changed.insert(r);
                }
                continue;
            }
            let mut touch = |rep: &str, month: &str, quarter: &str| {
                pairs.insert((rep.to_owned(), PeriodKind::Month, month.to_owned()));
                pairs.insert((rep.to_owned(), PeriodKind::Quarter, quarter.to_owned()));
                let c = causes.entry(rep.to_owned()).or_default();
                c.span = Some(inc.span.clone());
                c.causation.clone_from(&e.causation_id);
                c.events.push(e.causation_id.clone());
            };
            let month = cal.period(PeriodKind::Month, at).key;
            let quarter = cal.period(PeriodKind::Quarter, at).key;
            let local = cal.local_date(at);
            match &e.payload {
                Some(Payload::DealCredited(d)) => {
                    let fx = parse_decimal(&d.fx_rate).unwrap_or(Decimal::ONE);
                    let lines: Vec<(String, Decimal)> = d
                        .lines
                        .iter()
                        .map(|l| (l.product_id.clone(), base.round(dec(&l.amount) * fx)))
                        .collect();
                    insert_credit(
                        conn,
                        tenant,
                        inc,
                        "deal",
                        &d.rep_id,
                        &d.deal_id,
                        &month,
                        &quarter,
                        local,
                        dec(&d.credited_base_amount),
                        &lines,
                        false,
                        base,
                    )
                    .await?;
                    touch(&d.rep_id, &month, &quarter);
                }
                Some(Payload::PaymentCredited(p)) => {
                    insert_credit(
                        conn,
                        tenant,
                        inc,
                        "payment",
                        &p.rep_id,
                        &p.deal_id,
                        &month,
                        &quarter,
                        local,
                        dec(&p.credited_base_amount),
                        &[],
                        false,
                        base,
                    )
                    .await?;
                    if let Some((m, q)) = deal_keys(conn, tenant, &p.rep_id, &p.deal_id).await? {
                        touch(&p.rep_id, &m, &q);
                    }
                }
                Some(Payload::DealReversalCredited(r)) => {
                    insert_credit(
                        conn,
                        tenant,
                        inc,
                        "reversal",
                        &r.rep_id,
                        &r.deal_id,
                        &month,
                        &quarter,
                        local,
                        dec(&r.credited_base_amount),
                        &[],
                        r.full,
                        base,
                    )
                    .await?;
                    if let Some((m, q)) = deal_keys(conn, tenant, &r.rep_id, &r.deal_id).await? {
                        touch(&r.rep_id, &m, &q);
                    }
                }
                Some(Payload::ScoreChanged(s)) => {
                    let Some(p) = &s.period else { continue };
                    let kind = match common::PeriodKind::try_from(p.kind) {
                        Ok(common::PeriodKind::Month) => PeriodKind::Month,
                        Ok(common::PeriodKind::Quarter) => PeriodKind::Quarter,
                        _ => continue,
                    };
                    let score: Option<Decimal> = parse_decimal(&s.score).ok();
                    let changed = sqlx::query(
                        "INSERT INTO kpis (tenant_id, rep_id, period_kind, period_key, metrics, score, occurred_at, event_id)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                         ON CONFLICT (tenant_id, rep_id, period_kind, period_key) DO UPDATE SET
                           metrics = EXCLUDED.metrics, score = EXCLUDED.score, occurred_at = EXCLUDED.occurred_at,
                           event_id = EXCLUDED.event_id
                         WHERE (kpis.occurred_at, kpis.event_id) < (EXCLUDED.occurred_at, EXCLUDED.event_id)",
                    )
                    .bind(tenant)
                    .bind(&s.rep_id)
                    .bind(kind.as_str())
                    .bind(&p.key)
                    .bind(sqlx::types::Json(&s.metrics))
                    .bind(score)
                    .bind(at)
                    .bind(inc.event_id)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                    if changed > 0 {
                        pairs.insert((s.rep_id.clone(), kind, p.key.clone()));
                        let c = causes.entry(s.rep_id.clone()).or_default();
                        c.span = Some(inc.span.clone());
                        c.causation.clone_from(&e.causation_id);
                    }
                }
                _ => {}
            }
        }

        if pairs.is_empty() && org_changed.is_empty() {
            return Ok(());
        }
        // A rep moving team may change plan: recompute its open periods with results.
        for rep in org_changed {
            let periods: Vec<(String, String)> = sqlx::query_as(
                "SELECT r.period_kind, r.period_key FROM period_results r
                   LEFT JOIN periods p ON p.tenant_id = r.tenant_id AND p.period_kind = r.period_kind AND p.period_key = r.period_key
                  WHERE r.tenant_id = $1 AND r.rep_id = $2 AND p.closed_at IS NULL",
            )
            .bind(tenant)
            .bind(&rep)
            .fetch_all(&mut *conn)
            .await?;
            for (k, key) in periods {
                if let Ok(kind) = k.parse::<PeriodKind>() {
                    pairs.insert((rep.clone(), kind, key));
                }
            }
        }
        if let Some(d) = &self.deferred {
            let mut d = d.lock().expect("deferred");
            let entry = d
                .entry(tenant.to_owned())
                .or_insert_with(|| (ctx_pb.clone(), BTreeSet::new()));
            entry.0 = ctx_pb;
            entry.1.extend(pairs);
            return Ok(());
        }
        let ctx = Ctx::load(conn, tenant, ctx_pb, self.emit).await?;
        let pairs: Vec<(String, PeriodKind, String)> = pairs.into_iter().collect();
        engine::recompute_many(conn, &ctx, &pairs, &causes, Mode::Normal, out).await?;
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn insert_credit(
    conn: &mut PgConnection,
    tenant: &str,
    inc: &Incoming,
    kind: &str,
    rep: &str,
    deal: &str,
    month: &str,
    quarter: &str,
    local: chrono::NaiveDate,
    amount: Decimal,
    lines: &[(String, Decimal)],
    full: bool,
    currency: Currency,
) -> Result<(), sqlx::Error> {
    let at = inc
        .envelope
        .occurred_at
        .as_ref()
        .and_then(spm_proto::ext::datetime)
        .unwrap_or_default();
    let source = if inc.envelope.causation_id.is_empty() {
        inc.event_id.to_string()
    } else {
        inc.envelope.causation_id.clone()
    };
    sqlx::query(
        "INSERT INTO credits (tenant_id, rep_id, event_id, source_event_id, kind, deal_id, occurred_at, local_date, month_key,
                              quarter_key, amount, lines, full_reversal, currency)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT DO NOTHING",
    )
    .bind(tenant)
    .bind(rep)
    .bind(inc.event_id)
    .bind(source)
    .bind(kind)
    .bind(deal)
    .bind(at)
    .bind(local)
    .bind(month)
    .bind(quarter)
    .bind(amount)
    .bind(sqlx::types::Json(lines))
    .bind(full)
    .bind(currency.code())
    .execute(conn)
    .await?;
    Ok(())
}

/// The (month, quarter) a rep's deal closed in, once its credit is known.
async fn deal_keys(
    conn: &mut PgConnection,
    tenant: &str,
    rep: &str,
    deal: &str,
) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT month_key, quarter_key FROM credits WHERE tenant_id = $1 AND rep_id = $2 AND deal_id = $3 AND kind = 'deal' LIMIT 1",
    )
    .bind(tenant)
    .bind(rep)
    .bind(deal)
    .fetch_optional(conn)
    .await
}
