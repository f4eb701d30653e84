//! Scoring's queries.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::facts::{Delta, Fact, FactKind};
use crate::domain::metrics::CellTotals;
use crate::domain::scorecard::Scorecard;

pub use spm_server::org::{Rep, Team, reps, team_members, teams};

/// One version of a goal.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GoalVersion {
    pub goal_id: Uuid,
    pub version: i32,
    pub subject_kind: String,
    pub subject_id: String,
    pub metric: String,
    pub period_kind: String,
    pub period_key: String,
    pub target: Decimal,
    pub effective_from: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub superseded_at: Option<DateTime<Utc>>,
}

/// The latest version of every scorecard of a tenant, ordered by id.
pub async fn scorecards(
    conn: &mut PgConnection,
    tenant: &str,
) -> Result<Vec<Scorecard>, sqlx::Error> {
    let rows: Vec<(sqlx::types::Json<Scorecard>,)> = sqlx::query_as(
        "SELECT DISTINCT ON (scorecard_id) definition FROM scorecards WHERE tenant_id = $1
          ORDER BY scorecard_id, version DESC",
    )
    .bind(tenant)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.0.0).collect())
}

/// Every version of the goals of the given periods (`kind:key`).
pub async fn goal_versions(
    conn: &mut PgConnection,
    tenant: &str,
    periods: &[String],
) -> Result<Vec<GoalVersion>, sqlx::Error> {
    sqlx::query_as(
        "SELECT goal_id, version, subject_kind, subject_id, metric, period_kind, period_key, target, effective_from,
                created_at, superseded_at
           FROM goals WHERE tenant_id = $1 AND (period_kind || ':' || period_key) = ANY($2)
          ORDER BY goal_id, version",
    )
    .bind(tenant)
    .bind(periods)
    .fetch_all(conn)
    .await
}

/// The versions in force at `at` (or at the period end if earlier): per goal, the latest
/// version whose effective_from is not after that instant.
pub fn in_force(
    versions: &[GoalVersion],
    at: impl Fn(&GoalVersion) -> DateTime<Utc>,
) -> Vec<GoalVersion> {
    let mut best: HashMap<Uuid, &GoalVersion> = HashMap::new();
    for v in versions {
        if v.effective_from > at(v) {
            continue;
        }
        match best.get(&v.goal_id) {
            Some(b) if (b.effective_from, b.version) >= (v.effective_from, v.version) => {}
            _ => {
                best.insert(v.goal_id, v);
            }
        }
    }
    let mut out: Vec<GoalVersion> = best.into_values().cloned().collect();
    out.sort_by_key(|g| g.goal_id);
    out
}

/// Month cells of reps for months, as totals per (rep, month).
pub async fn month_cells(
    conn: &mut PgConnection,
    tenant: &str,
    reps: &[String],
    months: &[String],
) -> Result<HashMap<(String, String), CellTotals>, sqlx::Error> {
    let rows: Vec<(String, String, String, Decimal, i64)> = sqlx::query_as(
        "SELECT rep_id, period_key, cell, sum, n FROM cells
          WHERE tenant_id = $1 AND period_kind = 'month' AND rep_id = ANY($2) AND period_key = ANY($3)",
    )
    .bind(tenant)
    .bind(reps)
    .bind(months)
    .fetch_all(conn)
    .await?;
    let mut out: HashMap<(String, String), CellTotals> = HashMap::new();
    for (rep, month, cell, sum, n) in rows {
        out.entry((rep, month)).or_default().add(&cell, sum, n);
    }
    Ok(out)
}

/// Totals of a set of reps over months.
pub async fn totals_of(
    conn: &mut PgConnection,
    tenant: &str,
    reps: &[String],
    months: &[String],
) -> Result<CellTotals, sqlx::Error> {
    let rows: Vec<(String, Decimal, i64)> = sqlx::query_as(
        "SELECT cell, sum(sum), sum(n)::bigint FROM cells
          WHERE tenant_id = $1 AND period_kind = 'month' AND rep_id = ANY($2) AND period_key = ANY($3)
          GROUP BY cell",
    )
    .bind(tenant)
    .bind(reps)
    .bind(months)
    .fetch_all(conn)
    .await?;
    let mut t = CellTotals::default();
    for (cell, sum, n) in rows {
        t.add(&cell, sum, n);
    }
    Ok(t)
}

/// Facts of (rep, deal) pairs already stored, for linking payments/reversals and deals.
/// (`deal_id <> ''` lets Postgres use the partial index `facts_deal`; without it the
/// lookup scanned the rep's facts, 3.5 ms a batch and growing.)
pub async fn linked_facts(
    conn: &mut PgConnection,
    tenant: &str,
    pairs: &BTreeSet<(String, String)>,
) -> Result<Vec<Fact>, sqlx::Error> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let (reps, deals): (Vec<String>, Vec<String>) = pairs.iter().cloned().unzip();
    let rows: Vec<FactRow> = sqlx::query_as(
        "SELECT f.rep_id, f.event_id, f.source_event_id, f.kind, f.occurred_at, f.week_key, f.month_key, f.deal_id,
                f.amount, f.score, f.due_month_key, f.full_reversal
           FROM facts f JOIN UNNEST($2::text[], $3::text[]) AS p(rep_id, deal_id)
             ON f.rep_id = p.rep_id AND f.deal_id = p.deal_id
          WHERE f.tenant_id = $1 AND f.deal_id <> ''",
    )
    .bind(tenant)
    .bind(&reps)
    .bind(&deals)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().filter_map(FactRow::into_fact).collect())
}

#[derive(sqlx::FromRow)]
pub struct FactRow {
    pub rep_id: String,
    pub event_id: Uuid,
    pub source_event_id: String,
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    pub week_key: String,
    pub month_key: String,
    pub deal_id: String,
    pub amount: Decimal,
    pub score: i32,
    pub due_month_key: String,
    pub full_reversal: bool,
}

impl FactRow {
    pub fn into_fact(self) -> Option<Fact> {
        Some(Fact {
            event_id: self.event_id,
            source_event_id: self.source_event_id,
            rep_id: self.rep_id,
            kind: FactKind::parse(&self.kind)?,
            occurred_at: self.occurred_at,
            week: self.week_key,
            month: self.month_key,
            deal_id: self.deal_id,
            amount: self.amount,
            score: self.score,
            due_month: self.due_month_key,
            full: self.full_reversal,
        })
    }
}

pub async fn insert_facts(
    conn: &mut PgConnection,
    tenant: &str,
    facts: &[Fact],
) -> Result<(), sqlx::Error> {
    if facts.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&Fact) -> String| facts.iter().map(f).collect::<Vec<String>>();
    let ids: Vec<Uuid> = facts.iter().map(|f| f.event_id).collect();
    let at: Vec<DateTime<Utc>> = facts.iter().map(|f| f.occurred_at).collect();
    let amounts: Vec<Decimal> = facts.iter().map(|f| f.amount).collect();
    let scores: Vec<i32> = facts.iter().map(|f| f.score).collect();
    let full: Vec<bool> = facts.iter().map(|f| f.full).collect();
    sqlx::query(
        "INSERT INTO facts (tenant_id, rep_id, event_id, source_event_id, kind, occurred_at, week_key, month_key, deal_id,
                            amount, score, due_month_key, full_reversal)
         SELECT $1, * FROM UNNEST($2::text[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[], $7::text[], $8::text[],
                                  $9::text[], $10::numeric[], $11::int[], $12::text[], $13::bool[])
         ON CONFLICT DO NOTHING",
    )
    .bind(tenant)
    .bind(col(|f| f.rep_id.clone()))
    .bind(&ids)
    .bind(col(|f| f.source_event_id.clone()))
    .bind(col(|f| f.kind.name()))
    .bind(&at)
    .bind(col(|f| f.week.clone()))
    .bind(col(|f| f.month.clone()))
    .bind(col(|f| f.deal_id.clone()))
    .bind(&amounts)
    .bind(&scores)
    .bind(col(|f| f.due_month.clone()))
    .bind(&full)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds deltas to cells (summed per cell first: one row per cell per batch).
pub async fn add_cells(
    conn: &mut PgConnection,
    tenant: &str,
    deltas: Vec<Delta>,
) -> Result<(), sqlx::Error> {
    let mut merged: std::collections::BTreeMap<
        (String, &'static str, String, &'static str),
        (Decimal, i64),
    > = std::collections::BTreeMap::new();
    for d in deltas {
        let e = merged
            .entry((d.rep_id, d.period_kind.as_str(), d.period_key, d.cell))
            .or_insert((Decimal::ZERO, 0));
        e.0 += d.sum;
        e.1 += d.n;
    }
    if merged.is_empty() {
        return Ok(());
    }
    let mut reps = Vec::new();
    let mut kinds = Vec::new();
    let mut keys = Vec::new();
    let mut cells = Vec::new();
    let mut sums = Vec::new();
    let mut ns = Vec::new();
    for ((rep, kind, key, cell), (sum, n)) in merged {
        reps.push(rep);
        kinds.push(kind);
        keys.push(key);
        cells.push(cell);
        sums.push(sum);
        ns.push(n);
    }
    sqlx::query(
        "INSERT INTO cells (tenant_id, rep_id, period_kind, period_key, cell, sum, n)
         SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::numeric[], $7::bigint[])
         ON CONFLICT (tenant_id, rep_id, period_kind, period_key, cell)
         DO UPDATE SET sum = cells.sum + EXCLUDED.sum, n = cells.n + EXCLUDED.n",
    )
    .bind(tenant)
    .bind(&reps)
    .bind(&kinds)
    .bind(&keys)
    .bind(&cells)
    .bind(&sums)
    .bind(&ns)
    .execute(conn)
    .await?;
    Ok(())
}
