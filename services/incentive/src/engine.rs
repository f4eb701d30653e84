//! Recomputing a rep-period: compute its earnings under the plan, post the difference to
//! the ledger (in the period, or as adjustments in the next open period when it is
//! closed), record the period's results, grant awards, and emit the events.

use std::collections::{BTreeMap, HashMap};

use chrono::Utc;
use prost::Message as _;
use rust_decimal::Decimal;
use spm_bus::Outbox;
use spm_core::money::Currency;
use spm_core::period::{Calendar, PeriodKind};
use spm_core::topics;
use spm_proto::common::v1 as common;
use spm_proto::events::v1 as ev;
use spm_proto::events::v1::event_envelope::Payload;
use spm_server::org::{self, Team};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::awards::{self, Award, AwardKind, PeriodResult};
use crate::domain::chain::canonical_json;
use crate::domain::compute::{Kind, RepPeriod};
use crate::domain::ledger::postings;
use crate::domain::plan::{self, Plan};
use crate::store::{self, LedgerRow};

/// A tenant's context for a batch of recomputations.
pub struct Ctx {
    pub tenant: String,
    pub context: common::TenantContext,
    pub calendar: Calendar,
    pub currency: Currency,
    pub emit: bool,
    /// The LIVE versions: what pays.
    pub plans: Vec<Plan>,
    /// Versions in shadow (SHADOW, PENDING_APPROVAL): each is computed beside the live
    /// plans, as if it were live, into its own ledger ([`store::insert_shadow`]).
    pub shadows: Vec<Plan>,
    /// Recompute only the shadows (a version entering shadow catches up): nothing is
    /// posted to the ledger, recorded or emitted.
    pub shadow_only: bool,
    /// Whether a plan is assigned by team ([`plan::assigns_by_team`]): only then are
    /// reps' teams read and `teams` loaded.
    pub by_team: bool,
    pub teams: HashMap<String, Team>,
    /// The consumer's warm rep-periods (none for API calls and rebuilds).
    pub warm: Option<std::sync::Arc<crate::warm::Warm>>,
    /// The credits the consumer's batch stored, per rep-period.
    pub fresh: crate::warm::Fresh,
}

impl Ctx {
    pub async fn load(
        conn: &mut PgConnection,
        tenant: &str,
        context: common::TenantContext,
        emit: bool,
    ) -> Result<Self, sqlx::Error> {
        let plans = store::plans(conn, tenant).await?;
        Self::with_plans(conn, tenant, context, emit, plans).await
    }

    /// Takes the tenant's plans lock shared (to the end of the transaction), so that the
    /// plans read next stay the tenant's plans until this transaction ends: a plan change
    /// takes it exclusively, then recomputes what it changes.
    pub async fn lock_plans(conn: &mut PgConnection, tenant: &str) -> Result<(), sqlx::Error> {
        crate::chain::Locks::default()
            .plans(tenant, true)
            .take(conn)
            .await
            .map(|_| ())
    }

    /// [`Ctx::load`] with the tenant's plans already read.
    pub async fn with_plans(
        conn: &mut PgConnection,
        tenant: &str,
        context: common::TenantContext,
        emit: bool,
        (plans, shadows): (Vec<Plan>, Vec<Plan>),
    ) -> Result<Self, sqlx::Error> {
        let calendar =
            Calendar::new(&context.time_zone, context.fiscal_year_start_month).unwrap_or_default();
        let currency = Currency::new(&context.base_currency)
            .unwrap_or_else(|_| Currency::new("EUR").expect("EUR"));
        let by_team = plan::assigns_by_team(&plans) || plan::assigns_by_team(&shadows);
        Ok(Self {
            tenant: tenant.to_owned(),
            teams: if by_team {
                org::teams(conn, tenant).await?
            } else {
                HashMap::new()
            },
            by_team,
            plans,
            shadows,
            shadow_only: false,
            warm: None,
            fresh: HashMap::new(),
            context,
            calendar,
            currency,
            emit,
        })
    }

    /// The tenant's context as stored from `spm.tenants.v1` (admin calls).
    pub async fn for_tenant(conn: &mut PgConnection, tenant: &str) -> Result<Self, sqlx::Error> {
        let row: Option<(String, i32, String)> = sqlx::query_as(
            "SELECT time_zone, fiscal_year_start_month, base_currency FROM auth_tenants WHERE tenant_id = $1",
        )
        .bind(tenant)
        .fetch_optional(&mut *conn)
        .await?;
        let context = row
            .map(|(tz, m, c)| common::TenantContext {
                time_zone: tz,
                fiscal_year_start_month: u32::try_from(m).unwrap_or(1),
                base_currency: c,
            })
            .unwrap_or_else(|| common::TenantContext {
                time_zone: "UTC".into(),
                fiscal_year_start_month: 1,
                base_currency: "EUR".into(),
            });
        Self::load(conn, tenant, context, true).await
    }

    pub fn period_pb(&self, kind: PeriodKind, key: &str) -> common::Period {
        common::Period {
            kind: match kind {
                PeriodKind::Week => common::PeriodKind::Week,
                PeriodKind::Month => common::PeriodKind::Month,
                PeriodKind::Quarter => common::PeriodKind::Quarter,
                PeriodKind::Year => common::PeriodKind::Year,
            } as i32,
            key: key.to_owned(),
        }
    }

    pub fn envelope(&self, causation: &str, payload: Payload) -> ev::EventEnvelope {
        let now = spm_proto::ext::timestamp(Utc::now());
        ev::EventEnvelope {
            event_id: Uuid::new_v4().to_string(),
            tenant_id: self.tenant.clone(),
            occurred_at: Some(now),
            recorded_at: Some(now),
            source: "spm-incentive".into(),
            tenant_context: Some(self.context.clone()),
            causation_id: causation.to_owned(),
            payload: Some(payload),
        }
    }

    /// The plan of a rep for a period, if any governs it with this period kind.
    pub async fn plan_for(
        &self,
        conn: &mut PgConnection,
        rep: &str,
        kind: PeriodKind,
        key: &str,
    ) -> Result<Option<&Plan>, sqlx::Error> {
        let Ok(period) = self.calendar.parse_key(kind, key) else {
            return Ok(None);
        };
        let last_day = self
            .calendar
            .local_date(period.end - chrono::Duration::seconds(1));
        let team = if self.by_team {
            org::reps(conn, &self.tenant, &[rep.to_owned()])
                .await?
                .remove(rep)
                .map(|r| r.team_id)
                .unwrap_or_default()
        } else {
            String::new()
        };
        let chain = org::chain(&team, &self.teams);
        Ok(plan::select(&self.plans, rep, &chain, last_day).filter(|p| p.period_kind == kind))
    }
}

/// Why a recompute happens.
#[derive(Debug, Clone, Default)]
pub struct Cause {
    pub span: Option<tracing::Span>,
    pub causation: String,
    /// Client event ids that triggered it.
    pub events: Vec<String>,
}

/// Where postings go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Into the period, or the next open one if it is closed.
    Normal,
    /// Into the period itself (closing or paying it), as closed/paid.
    Settle { paid: bool },
}

/// What a recompute did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Report {
    pub postings: u32,
    pub awards: u32,
    /// Postings to shadow ledgers.
    pub shadow_postings: u32,
}

/// A shadow version in one round of [`recompute_many`].
struct Shadow<'a> {
    id: (&'a str, i32),
    /// The reps it concerns, with the plan each would have were it live.
    plans: HashMap<String, Option<&'a Plan>>,
    held: HashMap<String, crate::domain::ledger::Holdings>,
}

/// The rep-period input (deals, metrics, state) as stored.
pub async fn input(
    conn: &mut PgConnection,
    ctx: &Ctx,
    rep: &str,
    kind: PeriodKind,
    key: &str,
    mode: Mode,
) -> Result<RepPeriod, sqlx::Error> {
    let reps = [rep.to_owned()];
    let deals = store::deals_of_period(conn, &ctx.tenant, Some(&reps), kind, key)
        .await?
        .remove(rep)
        .unwrap_or_default();
    let (metrics, score) = store::kpis(conn, &ctx.tenant, Some(&reps), kind, key)
        .await?
        .remove(rep)
        .unwrap_or_default();
    let (closed, paid) = match mode {
        Mode::Normal => store::period_state(conn, &ctx.tenant, kind, key).await?,
        Mode::Settle { paid } => (true, paid),
    };
    Ok(RepPeriod {
        rep_id: rep.to_owned(),
        period_key: key.to_owned(),
        deals,
        metrics,
        score,
        closed,
        paid,
    })
}

/// One rep's period.
#[derive(Debug, Clone, Copy)]
pub struct RepKey<'a> {
    pub rep: &'a str,
    pub kind: PeriodKind,
    pub key: &'a str,
}

/// Recomputes one rep-period and posts the difference.
pub async fn recompute(
    conn: &mut PgConnection,
    ctx: &Ctx,
    at: RepKey<'_>,
    cause: &Cause,
    mode: Mode,
    out: &mut Outbox,
) -> Result<Report, sqlx::Error> {
    let mut causes = HashMap::new();
    causes.insert(at.rep.to_owned(), cause.clone());
    recompute_many(
        conn,
        ctx,
        &[(at.rep.to_owned(), at.kind, at.key.to_owned())],
        &causes,
        mode,
        out,
    )
    .await
}

/// Recomputes many rep-periods with a handful of queries per period (not per rep): loads
/// every affected rep's deals, metrics, holdings and org at once, computes in memory, and
/// appends all postings in one insert.
/// Reps recomputed together (per period) in one round of [`recompute_many`].
const REPS_PER_ROUND: usize = 20;

#[allow(clippy::too_many_lines)]
pub async fn recompute_many(
    conn: &mut PgConnection,
    ctx: &Ctx,
    pairs: &[(String, PeriodKind, String)],
    causes: &HashMap<String, Cause>,
    mode: Mode,
    out: &mut Outbox,
) -> Result<Report, sqlx::Error> {
    let mut by_period: BTreeMap<(PeriodKind, String), Vec<String>> = BTreeMap::new();
    for (rep, kind, key) in pairs {
        by_period
            .entry((*kind, key.clone()))
            .or_default()
            .push(rep.clone());
    }
    let mut report = Report::default();
    let no_cause = Cause::default();
    // At most REPS_PER_ROUND reps of a period at a time: what a round holds in memory
    // (deals, ledger holdings, explanations) stays bounded whatever the batch.
    let mut rounds: Vec<((PeriodKind, String), Vec<String>)> = Vec::new();
    for (period, mut reps) in by_period {
        reps.sort();
        reps.dedup();
        for chunk in reps.chunks(REPS_PER_ROUND) {
            rounds.push((period.clone(), chunk.to_vec()));
        }
    }
    // Reps' teams do not depend on the period: read once for every round, and only if a
    // plan is assigned by team.
    let org_reps = if ctx.by_team {
        let mut everyone: Vec<String> = pairs.iter().map(|(rep, _, _)| rep.clone()).collect();
        everyone.sort();
        everyone.dedup();
        org::reps(conn, &ctx.tenant, &everyone).await?
    } else {
        HashMap::new()
    };
    // Lock every chain this call may post to, and share the periods' locks (a period is
    // not closed under our feet): writers of a chain are ordered, and the posting time
    // taken after the locks orders them against statement reads (see `chain::Locks`).
    let mut locks = crate::chain::Locks::default();
    let mut post_keys: HashMap<(PeriodKind, String), String> = HashMap::new();
    for ((kind, key), reps) in &rounds {
        let post_key = match post_keys.get(&(*kind, key.clone())) {
            Some(p) => p.clone(),
            None => {
                let p = post_key_of(conn, ctx, *kind, key, mode).await?;
                post_keys.insert((*kind, key.clone()), p.clone());
                locks.period(&ctx.tenant, *kind, key, true);
                if p != *key {
                    locks.period(&ctx.tenant, *kind, &p, true);
                }
                p
            }
        };
        for r in reps {
            locks.chain(&ctx.tenant, r, *kind, key, false);
            if post_key != *key {
                locks.chain(&ctx.tenant, r, *kind, &post_key, false);
            }
        }
    }
    // Each shadow version with the plan set it would pay under: the live versions and it.
    let shadow_sets: Vec<(&Plan, Vec<Plan>)> = ctx
        .shadows
        .iter()
        .map(|s| {
            let mut set = ctx.plans.clone();
            set.push(s.clone());
            (s, set)
        })
        .collect();
    let mut held = if rounds.is_empty() {
        crate::chain::Held::at(Utc::now())
    } else {
        locks.hold(conn, &ctx.tenant).await?
    };
    for ((kind, key), reps) in rounds {
        let Ok(period) = ctx.calendar.parse_key(kind, &key) else {
            continue;
        };
        let last_day = ctx
            .calendar
            .local_date(period.end - chrono::Duration::seconds(1));
        let plans: HashMap<&str, &Plan> = reps
            .iter()
            .filter_map(|r| {
                let team = org_reps
                    .get(r)
                    .map(|x| x.team_id.clone())
                    .unwrap_or_default();
                let chain = org::chain(&team, &ctx.teams);
                plan::select(&ctx.plans, r, &chain, last_day)
                    .filter(|p| p.period_kind == kind)
                    .map(|p| (r.as_str(), p))
            })
            .collect();
        // Warm rep-periods (consumer only; their ledger only while the period takes its own
        // postings): what they hold, checked against the chains' heads read under the locks.
        let warm = ctx.warm.as_deref().filter(|_| !ctx.shadow_only);
        let own_chain = post_keys.get(&(kind, key.clone())) == Some(&key);
        let mut taken: HashMap<String, crate::warm::Inputs> = HashMap::new();
        // Reps whose warm holdings are current (their chain's head is the one held).
        let mut ledgers: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut held_all: HashMap<String, crate::domain::ledger::Holdings> = HashMap::new();
        if let Some(w) = warm {
            for r in &reps {
                let (inputs, ledger) = w.take(&(ctx.tenant.clone(), r.clone(), kind, key.clone()));
                if let Some(i) = inputs {
                    taken.insert(r.clone(), i);
                }
                if let Some(l) = ledger
                    && own_chain
                    && l.head == held.head(r, kind, &key)
                {
                    ledgers.insert(r.clone());
                    if !l.held.is_empty() {
                        held_all.insert(r.clone(), l.held);
                    }
                }
            }
        }
        if !ctx.shadow_only {
            let cold: Vec<String> = reps
                .iter()
                .filter(|r| !ledgers.contains(r.as_str()))
                .cloned()
                .collect();
            if !cold.is_empty() {
                held_all.extend(store::holdings_of(conn, &ctx.tenant, &cold, kind, &key).await?);
            }
            if cfg!(debug_assertions) && cold.len() < reps.len() {
                let warm_reps: Vec<String> = ledgers.iter().cloned().collect();
                let full = store::holdings_of(conn, &ctx.tenant, &warm_reps, kind, &key).await?;
                for r in &warm_reps {
                    assert_eq!(full.get(r), held_all.get(r), "warm holdings of {r} {key}");
                }
            }
        }
        // Per shadow version: the plan each rep would have (reps it concerns: those its
        // plan governs now or would govern, and those its ledger holds anything for), and
        // what its ledger holds.
        let mut shadows: Vec<Shadow<'_>> = Vec::with_capacity(shadow_sets.len());
        for (s, set) in &shadow_sets {
            let version = i32::try_from(s.version).unwrap_or(0);
            let held = store::shadow_holdings_of(
                conn,
                &ctx.tenant,
                (&s.plan_id, version),
                &reps,
                kind,
                &key,
            )
            .await?;
            let mut plans_of: HashMap<String, Option<&Plan>> = HashMap::new();
            for r in &reps {
                let team = org_reps
                    .get(r)
                    .map(|x| x.team_id.clone())
                    .unwrap_or_default();
                let chain = org::chain(&team, &ctx.teams);
                let would =
                    plan::select(set, r, &chain, last_day).filter(|p| p.period_kind == kind);
                let now = plans.get(r.as_str());
                let concerned = would.is_some_and(|p| p.plan_id == s.plan_id)
                    || now.is_some_and(|p| p.plan_id == s.plan_id)
                    || held.contains_key(r.as_str());
                if concerned {
                    plans_of.insert(r.clone(), would);
                }
            }
            shadows.push(Shadow {
                id: (&s.plan_id, version),
                plans: plans_of,
                held,
            });
        }
        // Reps without a plan, without anything held and no shadow's concern: nothing to do.
        let live: Vec<String> = reps
            .iter()
            .filter(|r| {
                (!ctx.shadow_only
                    && (plans.contains_key(r.as_str()) || held_all.contains_key(r.as_str())))
                    || shadows.iter().any(|s| s.plans.contains_key(r.as_str()))
            })
            .cloned()
            .collect();
        if live.is_empty() {
            continue;
        }
        let (mut deals, marks) = deals_of(conn, ctx, &live, kind, &key, taken).await?;
        let mut kpis = store::kpis(conn, &ctx.tenant, Some(&live), kind, &key).await?;
        let (closed, paid) = match mode {
            Mode::Normal => store::period_state(conn, &ctx.tenant, kind, &key).await?,
            Mode::Settle { paid } => (true, paid),
        };
        let late_paid = mode == Mode::Normal && paid;
        let post_key = if closed && mode == Mode::Normal {
            store::next_open(conn, &ctx.tenant, &ctx.calendar, kind, &key).await?
        } else {
            key.clone()
        };
        let late = post_key != key;
        if post_keys.get(&(kind, key.clone())) != Some(&post_key) {
            // The period was closed between our look and our locks: lock where we post now.
            let mut more = crate::chain::Locks::default();
            more.period(&ctx.tenant, kind, &post_key, true);
            for r in &live {
                more.chain(&ctx.tenant, r, kind, &post_key, false);
            }
            more.hold_more(conn, &ctx.tenant, &mut held).await?;
        }
        // What badges granted during a period need, read only if a plan here has one.
        let (with_deal, granted) =
            if !ctx.shadow_only && plans.values().any(|p| awards::any_during(p)) {
                (
                    store::reps_with_deals(conn, &ctx.tenant, &live).await?,
                    store::awards_of(conn, &ctx.tenant, &live).await?,
                )
            } else {
                Default::default()
            };

        // Whether this round's holdings and total are kept warm: only for a round posting
        // into its own open period (a late round posts into another period's chain).
        let keep_ledger = warm.is_some() && own_chain && !late;
        let mut rows: Vec<LedgerRow> = Vec::new();
        let mut shadow_rows: Vec<Vec<LedgerRow>> = vec![Vec::new(); shadows.len()];
        let mut results = Vec::new();
        let mut awards_due: Vec<(String, Award)> = Vec::new();
        let empty = crate::domain::ledger::Holdings::new();
        let mut back: HashMap<String, Vec<crate::domain::compute::DealIn>> = HashMap::new();
        for rep in &live {
            let plan = plans.get(rep.as_str()).copied();
            let (metrics, score) = kpis.remove(rep).unwrap_or_default();
            let rp = RepPeriod {
                rep_id: rep.clone(),
                period_key: key.clone(),
                deals: deals.remove(rep).unwrap_or_default(),
                metrics,
                score,
                closed,
                paid: paid && !late_paid,
            };
            let cause = causes.get(rep).unwrap_or(&no_cause);
            // The shadows first: what each version would post for this rep, by the same
            // rules, into its own ledger (always the period itself; never an event).
            for (s, out_rows) in shadows.iter().zip(shadow_rows.iter_mut()) {
                let Some(would) = s.plans.get(rep) else {
                    continue;
                };
                let held = s.held.get(rep.as_str()).unwrap_or(&empty);
                let (_, moved) = postings(*would, &rp, ctx.currency, held, late_paid);
                let (plan_id, plan_version) = would.map_or((String::new(), 0), |p| {
                    (p.plan_id.clone(), i32::try_from(p.version).unwrap_or(0))
                });
                let texts = explanations(&moved);
                for (p, explanation) in moved.into_iter().zip(texts) {
                    out_rows.push(LedgerRow {
                        posting_id: Uuid::now_v7(),
                        rep_id: rep.clone(),
                        period_kind: kind,
                        period_key: key.clone(),
                        source_period_key: key.clone(),
                        line_id: line_id(&ctx.tenant, rep, kind, &key, &p.key),
                        line_key: p.key,
                        kind: p.kind.as_str().to_owned(),
                        status: p.status.as_str().to_owned(),
                        amount: p.amount,
                        currency: ctx.currency.code().to_owned(),
                        plan_id: plan_id.clone(),
                        plan_version,
                        deal_id: p.deal_id,
                        summary: p.summary,
                        explanation,
                        caused_by: cause.events.clone(),
                    });
                }
            }
            if ctx.shadow_only {
                continue;
            }
            let held = held_all.get(rep.as_str()).unwrap_or(&empty);
            let (outcome, moved) = postings(plan, &rp, ctx.currency, held, late_paid);
            let (plan_id, plan_version) = plan.map_or((String::new(), 0), |p| {
                (p.plan_id.clone(), i32::try_from(p.version).unwrap_or(0))
            });
            if keep_ledger {
                let h = held_all.entry(rep.clone()).or_default();
                crate::domain::ledger::hold(h, &moved);
            }
            let texts = explanations(&moved);
            for (p, explanation) in moved.into_iter().zip(texts) {
                rows.push(LedgerRow {
                    posting_id: Uuid::now_v7(),
                    rep_id: rep.clone(),
                    period_kind: kind,
                    period_key: post_key.clone(),
                    source_period_key: key.clone(),
                    line_id: line_id(&ctx.tenant, rep, kind, &key, &p.key),
                    line_key: p.key,
                    kind: if late { Kind::Adjustment } else { p.kind }
                        .as_str()
                        .to_owned(),
                    status: p.status.as_str().to_owned(),
                    amount: p.amount,
                    currency: ctx.currency.code().to_owned(),
                    plan_id: plan_id.clone(),
                    plan_version,
                    deal_id: p.deal_id,
                    summary: if late {
                        format!("late change to closed period {key}: {}", p.summary)
                    } else {
                        p.summary
                    },
                    explanation,
                    caused_by: cause.events.clone(),
                });
            }
            if let Some(p) = plan {
                results.push((
                    rep.clone(),
                    p.plan_id.clone(),
                    i32::try_from(p.version).unwrap_or(0),
                    outcome.revenue,
                    outcome.attainment,
                    rp.score,
                ));
                let current = PeriodResult {
                    period_key: key.clone(),
                    attainment: outcome.attainment,
                    score: rp.score,
                };
                for a in
                    awards::during(p, with_deal.contains(rep) && !rp.deals.is_empty(), &current)
                {
                    if !granted.contains(&(rep.clone(), a.code.clone(), a.period_key.clone())) {
                        awards_due.push((rep.clone(), a));
                    }
                }
            }
            if warm.is_some() {
                back.insert(rep.clone(), rp.deals);
            }
        }

        for (s, r) in shadows.iter().zip(&shadow_rows) {
            store::insert_shadow(conn, &ctx.tenant, s.id, r, held.at).await?;
            report.shadow_postings += u32::try_from(r.len()).unwrap_or(u32::MAX);
        }
        if ctx.shadow_only {
            continue;
        }
        crate::chain::append(conn, &ctx.tenant, &rows, &mut held).await?;
        report.postings += u32::try_from(rows.len()).unwrap_or(u32::MAX);
        // Statement totals after this round of the reps it posted to: their chains' totals
        // as the append moved them (ledger_chains.total, read under the chain's lock with
        // its head), else read (a chain this writer did not lock: none today).
        let mut posted: HashMap<&str, Decimal> = HashMap::new();
        for r in &rows {
            *posted.entry(r.rep_id.as_str()).or_default() += r.amount;
        }
        let mut totals: HashMap<String, Decimal> = HashMap::new();
        if ctx.emit && !rows.is_empty() {
            for r in posted.keys() {
                if let Some(t) = held.total(r, kind, &post_key) {
                    totals.insert((*r).to_owned(), t);
                }
            }
            let unknown: Vec<String> = posted
                .keys()
                .filter(|r| !totals.contains_key(**r))
                .map(|r| (*r).to_owned())
                .collect();
            if !unknown.is_empty() {
                totals.extend(
                    store::period_totals(conn, &ctx.tenant, &unknown, kind, &post_key).await?,
                );
            }
            if cfg!(debug_assertions) {
                let all: Vec<String> = posted.keys().map(|r| (*r).to_owned()).collect();
                let full = store::period_totals(conn, &ctx.tenant, &all, kind, &post_key).await?;
                for r in &all {
                    assert_eq!(full.get(r), totals.get(r), "chain total of {r} {post_key}");
                }
            }
        }
        if let Some(w) = warm {
            for r in &live {
                let k = (ctx.tenant.clone(), r.clone(), kind, key.clone());
                let inputs = back.remove(r).map(|deals| crate::warm::Inputs {
                    mark: marks.get(r).copied().unwrap_or(0),
                    deals,
                });
                let ledger = keep_ledger.then(|| crate::warm::Ledger {
                    head: held.head(r, kind, &key),
                    held: held_all.remove(r).unwrap_or_default(),
                });
                w.put(k, inputs, ledger);
            }
        }
        if ctx.emit && !rows.is_empty() {
            let money = |a: Decimal| common::Money {
                amount: ctx.currency.round(a).to_string(),
                currency: ctx.currency.code().to_owned(),
            };
            for g in by_line(&rows) {
                let r = g[0];
                let total = totals.get(&r.rep_id).copied().unwrap_or_default();
                let amount: Decimal = g.iter().map(|r| r.amount).sum();
                let mut parts: Vec<(crate::domain::compute::Status, Decimal)> = Vec::new();
                for r in &g {
                    let Some(st) = crate::domain::compute::Status::parse(&r.status) else {
                        continue;
                    };
                    match parts.iter_mut().find(|(s, _)| *s == st) {
                        Some((_, a)) => *a += r.amount,
                        None => parts.push((st, r.amount)),
                    }
                }
                parts.retain(|(_, a)| !a.is_zero());
                let main = parts
                    .iter()
                    .max_by_key(|(_, a)| *a)
                    .map_or(0, |(s, _)| s.to_proto());
                let by_status: Vec<ev::StatusAmount> = parts
                    .iter()
                    .map(|(s, a)| ev::StatusAmount {
                        status: s.to_proto(),
                        amount: Some(money(*a)),
                    })
                    .collect();
                let payload = if r.kind == Kind::Adjustment.as_str() {
                    Payload::EarningAdjusted(ev::EarningAdjusted {
                        line_id: r.line_id.to_string(),
                        rep_id: r.rep_id.clone(),
                        period: Some(ctx.period_pb(kind, &post_key)),
                        adjusts_period: Some(ctx.period_pb(kind, &key)),
                        amount: Some(money(amount)),
                        reason: r.summary.clone(),
                        explanation_json: r.explanation.clone(),
                        period_total: Some(money(total)),
                        by_status,
                    })
                } else {
                    Payload::EarningPosted(ev::EarningPosted {
                        line_id: r.line_id.to_string(),
                        rep_id: r.rep_id.clone(),
                        period: Some(ctx.period_pb(kind, &key)),
                        kind: Kind::parse(&r.kind).map_or(0, Kind::to_proto),
                        status: main,
                        amount: Some(money(amount)),
                        deal_id: r.deal_id.clone(),
                        plan_id: r.plan_id.clone(),
                        plan_version: u32::try_from(r.plan_version).unwrap_or(0),
                        summary: r.summary.clone(),
                        explanation_json: r.explanation.clone(),
                        period_total: Some(money(total)),
                        by_status,
                    })
                };
                let cause = causes.get(&r.rep_id).unwrap_or(&no_cause);
                let span = cause.span.clone().unwrap_or_else(tracing::Span::current);
                out.emit(
                    &span,
                    topics::EARNINGS,
                    spm_core::kafka_key(&ctx.tenant, &r.rep_id),
                    &ctx.envelope(&cause.causation, payload),
                );
            }
        }
        store::save_results(conn, &ctx.tenant, kind, &key, &results, held.at).await?;
        for (rep, a) in awards_due {
            let cause = causes.get(&rep).unwrap_or(&no_cause);
            report.awards +=
                grant(conn, ctx, &rep, kind, std::slice::from_ref(&a), cause, out).await?;
        }
        // What the rounds emit goes into the transaction's outbox as it piles up, not all
        // at the end: a plan change over a year of deals emits hundreds of thousands.
        out.spill(conn, SPILL_EVENTS).await?;
    }
    Ok(report)
}

/// Events held in memory by [`recompute_many`] before they are written to the outbox (a
/// live batch of 1,000 deals emits fewer, so the consumer path writes once at commit).
const SPILL_EVENTS: usize = 5_000;

/// Reps' deals of a period, and their marks: from the warm entries taken out where they
/// are current, or brought up to date with this batch's own credits; read in full
/// otherwise (and always without a warm store).
async fn deals_of(
    conn: &mut PgConnection,
    ctx: &Ctx,
    live: &[String],
    kind: PeriodKind,
    key: &str,
    mut taken: HashMap<String, crate::warm::Inputs>,
) -> Result<
    (
        BTreeMap<String, Vec<crate::domain::compute::DealIn>>,
        HashMap<String, i64>,
    ),
    sqlx::Error,
> {
    if ctx.warm.is_none() || ctx.shadow_only {
        let deals = store::deals_of_period(conn, &ctx.tenant, Some(live), kind, key).await?;
        return Ok((deals, HashMap::new()));
    }
    let marks = store::marks(conn, &ctx.tenant, live, kind, key).await?;
    let mut ready: BTreeMap<String, Vec<crate::domain::compute::DealIn>> = BTreeMap::new();
    let mut catch_up: HashMap<String, Vec<crate::domain::compute::DealIn>> = HashMap::new();
    let mut ids: Vec<Uuid> = Vec::new();
    let mut cold: Vec<String> = Vec::new();
    for r in live {
        let now = marks.get(r).copied().unwrap_or(0);
        let fresh = ctx.fresh.get(&(r.clone(), kind, key.to_owned()));
        match taken.remove(r) {
            Some(i) if i.mark == now && fresh.is_none() => {
                ready.insert(r.clone(), i.deals);
            }
            Some(i) if fresh.is_some_and(|(after, _)| *after == now && i.mark + 1 == now) => {
                ids.extend(fresh.map(|f| f.1.iter().copied()).into_iter().flatten());
                catch_up.insert(r.clone(), i.deals);
            }
            _ => cold.push(r.clone()),
        }
    }
    if !catch_up.is_empty() {
        let reread = store::add_fresh(conn, &ctx.tenant, &mut catch_up, &ids).await?;
        for (r, d) in catch_up {
            if reread.contains(&r) {
                cold.push(r);
            } else {
                ready.insert(r, d);
            }
        }
    }
    if cfg!(debug_assertions) && !ready.is_empty() {
        let warm_reps: Vec<String> = ready.keys().cloned().collect();
        let full = store::deals_of_period(conn, &ctx.tenant, Some(&warm_reps), kind, key).await?;
        for r in &warm_reps {
            assert_eq!(
                full.get(r).map(Vec::as_slice).unwrap_or_default(),
                ready[r].as_slice(),
                "warm deals of {r} {key}"
            );
        }
    }
    if !cold.is_empty() {
        ready.extend(store::deals_of_period(conn, &ctx.tenant, Some(&cold), kind, key).await?);
    }
    Ok((ready, marks))
}

/// Where changes to a period are posted: the period itself while open (and when settling
/// it), else the first open period after it.
async fn post_key_of(
    conn: &mut PgConnection,
    ctx: &Ctx,
    kind: PeriodKind,
    key: &str,
    mode: Mode,
) -> Result<String, sqlx::Error> {
    if mode != Mode::Normal {
        return Ok(key.to_owned());
    }
    let (closed, _) = store::period_state(conn, &ctx.tenant, kind, key).await?;
    if closed {
        store::next_open(conn, &ctx.tenant, &ctx.calendar, kind, key).await
    } else {
        Ok(key.to_owned())
    }
}

/// The canonical JSON of each posting's explanation. Postings come in (line key, status)
/// order and the postings of one line key carry the same explanation: it is serialized once
/// per line, not once per posting.
fn explanations(moved: &[crate::domain::ledger::Posting]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(moved.len());
    for (i, p) in moved.iter().enumerate() {
        let text = match (i.checked_sub(1).map(|j| &moved[j]), out.last()) {
            (Some(prev), Some(t))
                if prev.key == p.key
                    && (std::sync::Arc::ptr_eq(&prev.explanation, &p.explanation)
                        || prev.explanation == p.explanation) =>
            {
                t.clone()
            }
            _ => canonical_json(&p.explanation),
        };
        out.push(text);
    }
    out
}

/// Postings of one round grouped by line (and by posted vs adjusted), in posting order:
/// each group is one earnings event.
fn by_line(rows: &[LedgerRow]) -> Vec<Vec<&LedgerRow>> {
    let mut groups: Vec<Vec<&LedgerRow>> = Vec::new();
    let mut at: HashMap<(Uuid, bool), usize> = HashMap::new();
    for r in rows {
        let k = (r.line_id, r.kind == Kind::Adjustment.as_str());
        match at.get(&k) {
            Some(&i) => groups[i].push(r),
            None => {
                at.insert(k, groups.len());
                groups.push(vec![r]);
            }
        }
    }
    groups
}

/// The stable id of a statement line.
pub fn line_id(
    tenant: &str,
    rep: &str,
    kind: PeriodKind,
    source_key: &str,
    line_key: &str,
) -> Uuid {
    spm_core::derived_id(&[tenant, "line", rep, kind.as_str(), source_key, line_key])
}

/// Records awards not granted before and emits them.
pub async fn grant(
    conn: &mut PgConnection,
    ctx: &Ctx,
    rep: &str,
    kind: PeriodKind,
    list: &[Award],
    cause: &Cause,
    out: &mut Outbox,
) -> Result<u32, sqlx::Error> {
    let mut n = 0;
    for a in list {
        let award_id = spm_core::derived_id(&[&ctx.tenant, "award", rep, &a.code, &a.period_key]);
        let msg = ev::AwardGranted {
            award_id: award_id.to_string(),
            rep_id: rep.to_owned(),
            kind: match a.kind {
                AwardKind::Badge => ev::AwardKind::Badge,
                AwardKind::Promotion => ev::AwardKind::PromotionEligibility,
            } as i32,
            code: a.code.clone(),
            title: a.title.clone(),
            period: (!a.period_key.is_empty()).then(|| ctx.period_pb(kind, &a.period_key)),
            reason: a.reason.clone(),
        };
        let inserted = sqlx::query(
            "INSERT INTO awards (tenant_id, award_id, rep_id, code, period_key, payload) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT DO NOTHING",
        )
        .bind(&ctx.tenant)
        .bind(award_id)
        .bind(rep)
        .bind(&a.code)
        .bind(&a.period_key)
        .bind(msg.encode_to_vec())
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted > 0 {
            n += 1;
            if ctx.emit {
                let span = cause.span.clone().unwrap_or_else(tracing::Span::current);
                out.emit(
                    &span,
                    topics::EARNINGS,
                    spm_core::kafka_key(&ctx.tenant, rep),
                    &ctx.envelope(&cause.causation, Payload::AwardGranted(msg)),
                );
            }
        }
    }
    Ok(n)
}

/// Closes (or pays) a period: settles every rep-period in it, then marks it.
pub async fn settle_period(
    conn: &mut PgConnection,
    ctx: &Ctx,
    kind: PeriodKind,
    key: &str,
    paid: bool,
    out: &mut Outbox,
) -> Result<(u32, Report), sqlx::Error> {
    // Exclusively: no posting to the period and no statement read of it is in flight
    // while it settles, and the seal covers exactly what the period holds.
    let at = crate::chain::Locks::default()
        .period(&ctx.tenant, kind, key, false)
        .take(&mut *conn)
        .await?;
    let reps = store::reps_of_period(conn, &ctx.tenant, kind, key).await?;
    let pairs: Vec<(String, PeriodKind, String)> = reps
        .iter()
        .map(|r| (r.clone(), kind, key.to_owned()))
        .collect();
    let mut total = recompute_many(
        conn,
        ctx,
        &pairs,
        &HashMap::new(),
        Mode::Settle { paid },
        out,
    )
    .await?;
    let col = if paid { "paid_at" } else { "closed_at" };
    sqlx::query(&format!(
        "INSERT INTO periods (tenant_id, period_kind, period_key, {col}) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, period_kind, period_key) DO UPDATE SET {col} = COALESCE(periods.{col}, $4)"
    ))
    .bind(&ctx.tenant)
    .bind(kind.as_str())
    .bind(key)
    .bind(spm_core::chain::micros(at))
    .execute(&mut *conn)
    .await?;
    let seal = crate::chain::seal(
        conn,
        &ctx.tenant,
        kind,
        key,
        if paid { "paid" } else { "close" },
    )
    .await?;
    out.emit(
        &tracing::Span::current(),
        topics::EARNINGS,
        spm_core::kafka_key(&ctx.tenant, "seals"),
        &ctx.envelope(
            "",
            Payload::LedgerSealed(ev::LedgerSealed {
                period: Some(ctx.period_pb(kind, key)),
                seal_no: u64::try_from(seal.seal_no).unwrap_or(0),
                reason: seal.reason.clone(),
                chains: u64::try_from(seal.chains).unwrap_or(0),
                postings: u64::try_from(seal.postings).unwrap_or(0),
                root: spm_core::chain::hex(&seal.root),
                sealed_at: Some(spm_proto::ext::timestamp(seal.sealed_at)),
                prev_hash: spm_core::chain::hex(&seal.prev_hash),
                hash: spm_core::chain::hex(&seal.hash),
            }),
        ),
    );
    tracing::info!(tenant = %ctx.tenant, period = key, seal = seal.seal_no, root = %spm_core::chain::hex(&seal.root), "period sealed");
    // Every statement of the period shows closed/paid now.
    crate::cache::changed(&mut *conn, &ctx.tenant, None).await?;
    if !paid {
        for rep in &reps {
            total.awards += close_awards(conn, ctx, rep, kind, key, out).await?;
        }
    }
    Ok((u32::try_from(reps.len()).unwrap_or(u32::MAX), total))
}

/// Streak badges and promotion eligibility, from the consecutive closed periods ending
/// with `key`.
async fn close_awards(
    conn: &mut PgConnection,
    ctx: &Ctx,
    rep: &str,
    kind: PeriodKind,
    key: &str,
    out: &mut Outbox,
) -> Result<u32, sqlx::Error> {
    let Some(plan) = ctx.plan_for(conn, rep, kind, key).await?.cloned() else {
        return Ok(0);
    };
    let results: HashMap<String, (Option<Decimal>, Option<Decimal>)> = sqlx::query_as::<_, (String, Option<Decimal>, Option<Decimal>)>(
        "SELECT r.period_key, r.attainment, r.score FROM period_results r
           JOIN periods p ON p.tenant_id = r.tenant_id AND p.period_kind = r.period_kind AND p.period_key = r.period_key
          WHERE r.tenant_id = $1 AND r.rep_id = $2 AND r.period_kind = $3 AND p.closed_at IS NOT NULL",
    )
    .bind(&ctx.tenant)
    .bind(rep)
    .bind(kind.as_str())
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|(k, a, s)| (k, (a, s)))
    .collect();
    let mut history = Vec::new();
    let Ok(mut p) = ctx.calendar.parse_key(kind, key) else {
        return Ok(0);
    };
    for _ in 0..36 {
        let Some((a, s)) = results.get(&p.key) else {
            break;
        };
        history.push(PeriodResult {
            period_key: p.key.clone(),
            attainment: *a,
            score: *s,
        });
        p = ctx
            .calendar
            .period(kind, p.start - chrono::Duration::seconds(1));
    }
    history.reverse();
    let list = awards::at_close(&plan, &history);
    grant(conn, ctx, rep, kind, &list, &Cause::default(), out).await
}
