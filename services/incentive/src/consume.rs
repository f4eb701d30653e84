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

use crate::domain::plan::Plan;
use crate::engine::{self, Cause, Ctx, Mode};
use crate::store;

pub struct IncentiveHandler {
    /// False when rebuilding: recomputations still post differences but announce nothing.
    pub emit: bool,
    /// What this process keeps of large rep-periods between batches (not when rebuilding).
    pub warm: Option<std::sync::Arc<crate::warm::Warm>>,
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
    pub fn live(warm: crate::warm::Warm) -> Self {
        Self {
            emit: true,
            warm: Some(std::sync::Arc::new(warm)),
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
        // Rep-periods touched only by a new score snapshot: recomputed only if a plan of
        // the tenant depends on KPIs (below), since otherwise nothing they pay can move.
        let mut scored: BTreeSet<(String, PeriodKind, String)> = BTreeSet::new();
        let mut causes: HashMap<String, Cause> = HashMap::new();
        let mut org_changed: BTreeSet<String> = BTreeSet::new();
        let mut teams_changed: BTreeSet<String> = BTreeSet::new();

        // 1. Read the batch: credits and score snapshots are written together below (one
        // statement each, not one per event); what they touch is settled in event order.
        let mut credits: Vec<store::NewCredit> = Vec::new();
        let mut kpis: BTreeMap<(String, PeriodKind, String), store::NewKpi> = BTreeMap::new();
        let mut touches: Vec<Touch> = Vec::new();
        for (pos, inc) in events.iter().enumerate() {
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
                match change {
                    spm_server::org::Change::Rep(r) => org_changed.insert(r),
                    spm_server::org::Change::Team(t) => teams_changed.insert(t),
                };
                continue;
            }
            let month = cal.period(PeriodKind::Month, at).key;
            let quarter = cal.period(PeriodKind::Quarter, at).key;
            let local = cal.local_date(at);
            let mut credit = |kind: &'static str, rep: &str, deal: &str, amount, lines, full| {
                credits.push(store::NewCredit {
                    rep: rep.to_owned(),
                    event_id: inc.event_id,
                    source: if e.causation_id.is_empty() {
                        inc.event_id.to_string()
                    } else {
                        e.causation_id.clone()
                    },
                    kind,
                    deal: deal.to_owned(),
                    at,
                    local,
                    month: month.clone(),
                    quarter: quarter.clone(),
                    amount,
                    lines,
                    full,
                    currency: base.code().to_owned(),
                });
            };
            match &e.payload {
                Some(Payload::DealCredited(d)) => {
                    let fx = parse_decimal(&d.fx_rate).unwrap_or(Decimal::ONE);
                    let lines: Vec<(String, Decimal)> = d
                        .lines
                        .iter()
                        .map(|l| (l.product_id.clone(), base.round(dec(&l.amount) * fx)))
                        .collect();
                    credit(
                        "deal",
                        &d.rep_id,
                        &d.deal_id,
                        dec(&d.credited_base_amount),
                        lines,
                        false,
                    );
                    touches.push(Touch::Period {
                        pos,
                        rep: d.rep_id.clone(),
                        month,
                        quarter,
                    });
                }
                Some(Payload::PaymentCredited(p)) => {
                    credit(
                        "payment",
                        &p.rep_id,
                        &p.deal_id,
                        dec(&p.credited_base_amount),
                        Vec::new(),
                        false,
                    );
                    touches.push(Touch::Deal {
                        pos,
                        rep: p.rep_id.clone(),
                        deal: p.deal_id.clone(),
                    });
                }
                Some(Payload::DealReversalCredited(r)) => {
                    credit(
                        "reversal",
                        &r.rep_id,
                        &r.deal_id,
                        dec(&r.credited_base_amount),
                        Vec::new(),
                        r.full,
                    );
                    touches.push(Touch::Deal {
                        pos,
                        rep: r.rep_id.clone(),
                        deal: r.deal_id.clone(),
                    });
                }
                Some(Payload::ScoreChanged(sc)) => {
                    let Some(p) = &sc.period else { continue };
                    let kind = match common::PeriodKind::try_from(p.kind) {
                        Ok(common::PeriodKind::Month) => PeriodKind::Month,
                        Ok(common::PeriodKind::Quarter) => PeriodKind::Quarter,
                        _ => continue,
                    };
                    let row = store::NewKpi {
                        pos,
                        metrics: serde_json::to_value(&sc.metrics).unwrap_or_default(),
                        score: parse_decimal(&sc.score).ok(),
                        at,
                        event_id: inc.event_id,
                    };
                    // The latest snapshot of a rep-period in the batch is the one that counts.
                    let k = (sc.rep_id.clone(), kind, p.key.clone());
                    if kpis
                        .get(&k)
                        .is_none_or(|old| (old.at, old.event_id) < (row.at, row.event_id))
                    {
                        kpis.insert(k, row);
                    }
                }
                _ => {}
            }
        }

        // 2. Write them: one statement for the credits, one for the snapshots (returning
        // the rep-periods whose snapshot moved forward), one for the deals' periods.
        let stored = store::insert_credits(conn, tenant, &credits).await?;
        for (rep, kind, key) in store::upsert_kpis(conn, tenant, &kpis).await? {
            let pos = kpis[&(rep.clone(), kind, key.clone())].pos;
            touches.push(Touch::Score {
                pos,
                rep,
                kind,
                key,
            });
        }
        let linked: Vec<(String, String)> = touches
            .iter()
            .filter_map(|t| match t {
                Touch::Deal { rep, deal, .. } => Some((rep.clone(), deal.clone())),
                _ => None,
            })
            .collect();
        let deal_periods = store::deal_periods(conn, tenant, &linked).await?;
        // The rep-periods whose credits this batch stored (a deal's month and quarter; a
        // payment's or reversal's, its deal's): their marks move (crate::warm).
        let mut fresh_ids: BTreeMap<(String, PeriodKind, String), Vec<uuid::Uuid>> =
            BTreeMap::new();
        for c in credits
            .iter()
            .filter(|c| stored.contains(&(c.rep.clone(), c.event_id)))
        {
            let (m, q) = if c.kind == "deal" {
                (c.month.clone(), c.quarter.clone())
            } else {
                match deal_periods.get(&(c.rep.clone(), c.deal.clone())) {
                    Some(p) => p.clone(),
                    None => continue,
                }
            };
            for (kind, key) in [(PeriodKind::Month, m), (PeriodKind::Quarter, q)] {
                fresh_ids
                    .entry((c.rep.clone(), kind, key))
                    .or_default()
                    .push(c.event_id);
            }
        }
        let marks = store::bump_marks(conn, tenant, &fresh_ids.keys().cloned().collect()).await?;
        let fresh: crate::warm::Fresh = fresh_ids
            .into_iter()
            .filter_map(|(k, ids)| Some((k.clone(), (*marks.get(&k)?, ids))))
            .collect();

        // 3. What they touch, in event order (the last event of a rep is its cause).
        touches.sort_by_key(Touch::pos);
        for t in touches {
            let inc = events[t.pos()];
            let e = &inc.envelope;
            let cause = |causes: &mut HashMap<String, Cause>, rep: &str| {
                let c = causes.entry(rep.to_owned()).or_default();
                c.span = Some(inc.span.clone());
                c.causation.clone_from(&e.causation_id);
            };
            // A credit touches its deal's month and quarter (a payment or reversal only once
            // its deal is known) and is one of the rep's causing events.
            let credited = match t {
                Touch::Period {
                    rep,
                    month,
                    quarter,
                    ..
                } => Some((rep, month, quarter)),
                Touch::Deal { rep, deal, .. } => deal_periods
                    .get(&(rep.clone(), deal))
                    .map(|(m, q)| (rep, m.clone(), q.clone())),
                Touch::Score { rep, kind, key, .. } => {
                    scored.insert((rep.clone(), kind, key));
                    cause(&mut causes, &rep);
                    None
                }
            };
            if let Some((rep, month, quarter)) = credited {
                touch(&mut pairs, &rep, &month, &quarter);
                cause(&mut causes, &rep);
                causes
                    .entry(rep)
                    .or_default()
                    .events
                    .push(e.causation_id.clone());
            }
        }

        if pairs.is_empty()
            && scored.is_empty()
            && org_changed.is_empty()
            && teams_changed.is_empty()
        {
            return Ok(());
        }
        // A team moving in the hierarchy moves the reps of its whole subtree.
        for team in teams_changed.iter().filter(|t| !t.is_empty()) {
            org_changed.extend(spm_server::org::team_members(conn, tenant, team).await?);
        }
        // A rep moving team may change plan: recompute its open periods with results.
        if !org_changed.is_empty() {
            let moved: Vec<String> = org_changed.into_iter().collect();
            let periods: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT r.rep_id, r.period_kind, r.period_key FROM period_results r
                   LEFT JOIN periods p ON p.tenant_id = r.tenant_id AND p.period_kind = r.period_kind AND p.period_key = r.period_key
                  WHERE r.tenant_id = $1 AND r.rep_id = ANY($2) AND p.closed_at IS NULL",
            )
            .bind(tenant)
            .bind(&moved)
            .fetch_all(&mut *conn)
            .await?;
            for (rep, k, key) in periods {
                if let Ok(kind) = k.parse::<PeriodKind>() {
                    pairs.insert((rep, kind, key));
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
            entry.1.extend(scored);
            return Ok(());
        }
        if pairs.is_empty() && scored.is_empty() {
            return Ok(());
        }
        // The plans read stay the tenant's plans until this transaction ends.
        Ctx::lock_plans(conn, tenant).await?;
        let plans = store::plans(conn, tenant).await?;
        if plans.0.iter().chain(&plans.1).any(Plan::depends_on_kpis) {
            pairs.extend(scored);
        }
        if pairs.is_empty() {
            return Ok(());
        }
        let mut ctx = Ctx::with_plans(conn, tenant, ctx_pb, self.emit, plans).await?;
        ctx.warm.clone_from(&self.warm);
        ctx.fresh = fresh;
        let pairs: Vec<(String, PeriodKind, String)> = pairs.into_iter().collect();
        engine::recompute_many(conn, &ctx, &pairs, &causes, Mode::Normal, out).await?;
        Ok(())
    }
}

/// A rep-period pair and its month and quarter.
fn touch(
    pairs: &mut BTreeSet<(String, PeriodKind, String)>,
    rep: &str,
    month: &str,
    quarter: &str,
) {
    pairs.insert((rep.to_owned(), PeriodKind::Month, month.to_owned()));
    pairs.insert((rep.to_owned(), PeriodKind::Quarter, quarter.to_owned()));
}

/// What an event of the batch touches, settled once the batch is written.
enum Touch {
    /// A deal: its own month and quarter.
    Period {
        pos: usize,
        rep: String,
        month: String,
        quarter: String,
    },
    /// A payment or reversal: the periods its deal closed in, once the deal is known.
    Deal {
        pos: usize,
        rep: String,
        deal: String,
    },
    /// A score snapshot that moved forward.
    Score {
        pos: usize,
        rep: String,
        kind: PeriodKind,
        key: String,
    },
}

impl Touch {
    fn pos(&self) -> usize {
        match self {
            Self::Period { pos, .. } | Self::Deal { pos, .. } | Self::Score { pos, .. } => *pos,
        }
    }
}
