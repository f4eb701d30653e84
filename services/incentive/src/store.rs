//! Incentive's queries.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use spm_core::period::{Calendar, PeriodKind};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::compute::{DealIn, Linked, Status};
use crate::domain::ledger::Holdings;
use crate::domain::plan::Plan;

/// The versions of a tenant's plans that pay (LIVE), and those running in shadow
/// (SHADOW or PENDING_APPROVAL), each by plan id and version.
pub async fn plans(
    conn: &mut PgConnection,
    tenant: &str,
) -> Result<(Vec<Plan>, Vec<Plan>), sqlx::Error> {
    let rows: Vec<(sqlx::types::Json<Plan>, String)> = sqlx::query_as(
        "SELECT definition, state FROM plans
          WHERE tenant_id = $1 AND state IN ('LIVE', 'SHADOW', 'PENDING_APPROVAL')
          ORDER BY plan_id, version",
    )
    .bind(tenant)
    .fetch_all(conn)
    .await?;
    let (mut live, mut shadows) = (Vec::new(), Vec::new());
    for (p, state) in rows {
        if state == "LIVE" {
            live.push(p.0);
        } else {
            shadows.push(p.0);
        }
    }
    Ok((live, shadows))
}

/// A credit to store (deal, payment or reversal of a rep).
pub struct NewCredit {
    pub rep: String,
    pub event_id: Uuid,
    pub source: String,
    pub kind: &'static str,
    pub deal: String,
    pub at: DateTime<Utc>,
    pub local: NaiveDate,
    pub month: String,
    pub quarter: String,
    pub amount: Decimal,
    pub lines: Vec<(String, Decimal)>,
    pub full: bool,
    pub currency: String,
}

/// Stores credits (one statement; an event stored before is skipped); returns the
/// (rep, event id) of those stored now.
pub async fn insert_credits(
    conn: &mut PgConnection,
    tenant: &str,
    credits: &[NewCredit],
) -> Result<std::collections::HashSet<(String, Uuid)>, sqlx::Error> {
    if credits.is_empty() {
        return Ok(std::collections::HashSet::new());
    }
    let col = |f: fn(&NewCredit) -> String| credits.iter().map(f).collect::<Vec<String>>();
    let lines: Vec<serde_json::Value> = credits
        .iter()
        .map(|c| serde_json::to_value(&c.lines).unwrap_or_default())
        .collect();
    sqlx::query_as(
        "INSERT INTO credits (tenant_id, rep_id, event_id, source_event_id, kind, deal_id, occurred_at, local_date,
                              month_key, quarter_key, amount, lines, full_reversal, currency)
         SELECT $1, * FROM UNNEST($2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],
                                  $8::date[], $9::text[], $10::text[], $11::numeric[], $12::jsonb[], $13::bool[], $14::text[])
         ON CONFLICT DO NOTHING
         RETURNING rep_id, event_id",
    )
    .bind(tenant)
    .bind(col(|c| c.rep.clone()))
    .bind(credits.iter().map(|c| c.event_id).collect::<Vec<_>>())
    .bind(col(|c| c.source.clone()))
    .bind(col(|c| c.kind.to_owned()))
    .bind(col(|c| c.deal.clone()))
    .bind(credits.iter().map(|c| c.at).collect::<Vec<_>>())
    .bind(credits.iter().map(|c| c.local).collect::<Vec<_>>())
    .bind(col(|c| c.month.clone()))
    .bind(col(|c| c.quarter.clone()))
    .bind(credits.iter().map(|c| c.amount).collect::<Vec<_>>())
    .bind(lines)
    .bind(credits.iter().map(|c| c.full).collect::<Vec<_>>())
    .bind(col(|c| c.currency.clone()))
    .fetch_all(conn)
    .await
    .map(|rows: Vec<(String, Uuid)>| rows.into_iter().collect())
}

/// A score snapshot of a rep-period.
pub struct NewKpi {
    /// Position of its event in the batch.
    pub pos: usize,
    pub metrics: serde_json::Value,
    pub score: Option<Decimal>,
    pub at: DateTime<Utc>,
    pub event_id: Uuid,
}

/// Stores the snapshots that are newer than what is stored (one statement); returns the
/// rep-periods whose snapshot changed.
pub async fn upsert_kpis(
    conn: &mut PgConnection,
    tenant: &str,
    kpis: &BTreeMap<(String, PeriodKind, String), NewKpi>,
) -> Result<Vec<(String, PeriodKind, String)>, sqlx::Error> {
    if kpis.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "INSERT INTO kpis (tenant_id, rep_id, period_kind, period_key, metrics, score, occurred_at, event_id)
         SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::jsonb[], $6::numeric[], $7::timestamptz[], $8::uuid[])
         ON CONFLICT (tenant_id, rep_id, period_kind, period_key) DO UPDATE SET
           metrics = EXCLUDED.metrics, score = EXCLUDED.score, occurred_at = EXCLUDED.occurred_at,
           event_id = EXCLUDED.event_id
         WHERE (kpis.occurred_at, kpis.event_id) < (EXCLUDED.occurred_at, EXCLUDED.event_id)
         RETURNING rep_id, period_kind, period_key",
    )
    .bind(tenant)
    .bind(kpis.keys().map(|k| k.0.clone()).collect::<Vec<_>>())
    .bind(kpis.keys().map(|k| k.1.as_str()).collect::<Vec<_>>())
    .bind(kpis.keys().map(|k| k.2.clone()).collect::<Vec<_>>())
    .bind(kpis.values().map(|v| v.metrics.clone()).collect::<Vec<_>>())
    .bind(kpis.values().map(|v| v.score).collect::<Vec<_>>())
    .bind(kpis.values().map(|v| v.at).collect::<Vec<_>>())
    .bind(kpis.values().map(|v| v.event_id).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(rep, kind, key)| Some((rep, kind.parse().ok()?, key)))
        .collect())
}

/// The (month, quarter) each (rep, deal) closed in, for the deals whose credit is known.
pub async fn deal_periods(
    conn: &mut PgConnection,
    tenant: &str,
    pairs: &[(String, String)],
) -> Result<std::collections::HashMap<(String, String), (String, String)>, sqlx::Error> {
    if pairs.is_empty() {
        return Ok(std::collections::HashMap::new());
    }
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (c.rep_id, c.deal_id) c.rep_id, c.deal_id, c.month_key, c.quarter_key
           FROM credits c JOIN UNNEST($2::text[], $3::text[]) AS p(rep_id, deal_id)
             ON c.rep_id = p.rep_id AND c.deal_id = p.deal_id
          WHERE c.tenant_id = $1 AND c.kind = 'deal'
          ORDER BY c.rep_id, c.deal_id",
    )
    .bind(tenant)
    .bind(pairs.iter().map(|p| p.0.clone()).collect::<Vec<_>>())
    .bind(pairs.iter().map(|p| p.1.clone()).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(r, d, m, q)| ((r, d), (m, q)))
        .collect())
}

#[derive(sqlx::FromRow)]
struct CreditRow {
    rep_id: String,
    event_id: Uuid,
    source_event_id: String,
    kind: String,
    deal_id: String,
    occurred_at: DateTime<Utc>,
    local_date: NaiveDate,
    amount: Decimal,
    lines: sqlx::types::Json<Vec<(String, Decimal)>>,
    full_reversal: bool,
}

impl CreditRow {
    fn into_deal(self) -> DealIn {
        DealIn {
            deal_id: self.deal_id,
            event_id: self.source_event_id,
            closed_at: self.occurred_at,
            local_date: self.local_date,
            credited: self.amount,
            lines: self.lines.0,
            payments: Vec::new(),
            reversals: Vec::new(),
        }
    }

    fn into_linked(self) -> Linked {
        Linked {
            event_id: self.source_event_id,
            at: self.occurred_at,
            amount: self.amount,
            full: self.full_reversal,
        }
    }
}

fn key_column(kind: PeriodKind) -> &'static str {
    if kind == PeriodKind::Quarter {
        "quarter_key"
    } else {
        "month_key"
    }
}

/// The deals of `reps` closed in a period, each with its payments and reversals (all
/// reps when `reps` is None), keyed by rep.
pub async fn deals_of_period(
    conn: &mut PgConnection,
    tenant: &str,
    reps: Option<&[String]>,
    kind: PeriodKind,
    key: &str,
) -> Result<BTreeMap<String, Vec<DealIn>>, sqlx::Error> {
    let col = key_column(kind);
    // Two single-table reads instead of a self-join: planned against stale statistics (a
    // table that grew from empty seconds ago), the join became a nested loop over every
    // credit (1.6 s instead of 0.5 ms under a 200 deals/s stream). Each read here is
    // linear whatever plan Postgres picks; the (rep, deal) pairing is done below.
    let only = if reps.is_some() {
        "AND rep_id = ANY($3)"
    } else {
        "AND $3::text[] IS NULL"
    };
    let cols = "rep_id, event_id, source_event_id, kind, deal_id, occurred_at, local_date, amount, lines, full_reversal";
    let mut rows: Vec<CreditRow> = sqlx::query_as(&format!(
        "SELECT {cols} FROM credits
          WHERE tenant_id = $1 AND kind = 'deal' AND {col} = $2 {only}
          ORDER BY rep_id, occurred_at, source_event_id COLLATE \"C\""
    ))
    .persistent(false)
    .bind(tenant)
    .bind(key)
    .bind(reps)
    .fetch_all(&mut *conn)
    .await?;
    if !rows.is_empty() {
        let mut rep_ids: Vec<&str> = rows.iter().map(|r| r.rep_id.as_str()).collect();
        rep_ids.dedup();
        let deal_ids: Vec<&str> = rows.iter().map(|r| r.deal_id.as_str()).collect();
        let linked: Vec<CreditRow> = sqlx::query_as(&format!(
            "SELECT {cols} FROM credits
              WHERE tenant_id = $1 AND kind <> 'deal' AND rep_id = ANY($2) AND deal_id = ANY($3)
              ORDER BY rep_id, occurred_at, source_event_id COLLATE \"C\""
        ))
        .persistent(false)
        .bind(tenant)
        .bind(&rep_ids)
        .bind(&deal_ids)
        .fetch_all(&mut *conn)
        .await?;
        rows.extend(linked);
    }
    let mut deals: BTreeMap<(String, String), DealIn> = BTreeMap::new();
    let mut links = Vec::new();
    for r in rows {
        if r.kind == "deal" {
            // A deal id closes once per rep; a duplicate credit would be a second deal.
            deals
                .entry((r.rep_id.clone(), r.deal_id.clone()))
                .or_insert_with(|| r.into_deal());
        } else {
            links.push(r);
        }
    }
    for l in links {
        if let Some(d) = deals.get_mut(&(l.rep_id.clone(), l.deal_id.clone())) {
            let payment = l.kind == "payment";
            let linked = l.into_linked();
            if payment {
                d.payments.push(linked);
            } else {
                d.reversals.push(linked);
            }
        }
    }
    let mut out: BTreeMap<String, Vec<DealIn>> = BTreeMap::new();
    for ((rep, _), d) in deals {
        out.entry(rep).or_default().push(d);
    }
    Ok(out)
}

/// Moves the marks of rep-periods whose credits this transaction stored (each by one,
/// in key order: concurrent writers lock the rows in the same order); returns the marks
/// after.
pub async fn bump_marks(
    conn: &mut PgConnection,
    tenant: &str,
    touched: &BTreeSet<(String, PeriodKind, String)>,
) -> Result<std::collections::HashMap<(String, PeriodKind, String), i64>, sqlx::Error> {
    if touched.is_empty() {
        return Ok(std::collections::HashMap::new());
    }
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "INSERT INTO credit_marks (tenant_id, rep_id, period_kind, period_key, n)
         SELECT $1, u.r, u.k, u.p, 1 FROM UNNEST($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS u(r, k, p, o)
          ORDER BY u.o
         ON CONFLICT (tenant_id, rep_id, period_kind, period_key) DO UPDATE SET n = credit_marks.n + 1
         RETURNING rep_id, period_kind, period_key, n",
    )
    .bind(tenant)
    .bind(touched.iter().map(|t| t.0.as_str()).collect::<Vec<_>>())
    .bind(touched.iter().map(|t| t.1.as_str()).collect::<Vec<_>>())
    .bind(touched.iter().map(|t| t.2.as_str()).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(r, k, p, n)| Some(((r, k.parse().ok()?, p), n)))
        .collect())
}

/// The marks of reps' credits for a period (0: none stored yet).
pub async fn marks(
    conn: &mut PgConnection,
    tenant: &str,
    reps: &[String],
    kind: PeriodKind,
    key: &str,
) -> Result<std::collections::HashMap<String, i64>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT rep_id, n FROM credit_marks
          WHERE tenant_id = $1 AND period_kind = $2 AND period_key = $3 AND rep_id = ANY($4)",
    )
    .bind(tenant)
    .bind(kind.as_str())
    .bind(key)
    .bind(reps)
    .fetch_all(conn)
    .await?;
    let mut out: std::collections::HashMap<String, i64> = rows.into_iter().collect();
    for r in reps {
        out.entry(r.clone()).or_insert(0);
    }
    Ok(out)
}

/// Brings reps' deals of a period (as [`deals_of_period`] read them before this batch) up
/// to date with the credits of `ids` this batch stored: the new deals with every payment
/// and reversal stored for them, and the new payments and reversals of the deals known.
/// Read back from Postgres, so decoded exactly as a full read decodes them, and placed
/// where a full read places them. Returns the reps that need a full read instead (a deal
/// credited twice).
pub async fn add_fresh(
    conn: &mut PgConnection,
    tenant: &str,
    deals: &mut std::collections::HashMap<String, Vec<DealIn>>,
    ids: &[Uuid],
) -> Result<BTreeSet<String>, sqlx::Error> {
    let reps: Vec<String> = deals.keys().cloned().collect();
    let cols = "rep_id, event_id, source_event_id, kind, deal_id, occurred_at, local_date, amount, lines, full_reversal";
    let fresh_deals: Vec<CreditRow> = sqlx::query_as(&format!(
        "SELECT {cols} FROM credits
          WHERE tenant_id = $1 AND rep_id = ANY($2) AND event_id = ANY($3) AND kind = 'deal'
          ORDER BY rep_id, occurred_at, source_event_id COLLATE \"C\""
    ))
    .bind(tenant)
    .bind(&reps)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut reread = BTreeSet::new();
    let mut new_deals: Vec<(String, String)> = Vec::new();
    for r in fresh_deals {
        let Some(list) = deals.get_mut(&r.rep_id) else {
            continue;
        };
        match list.binary_search_by(|d| d.deal_id.cmp(&r.deal_id)) {
            Ok(_) => {
                reread.insert(r.rep_id.clone());
            }
            Err(at) => {
                new_deals.push((r.rep_id.clone(), r.deal_id.clone()));
                list.insert(at, r.into_deal());
            }
        }
    }
    let new_ids: Vec<&str> = new_deals.iter().map(|(_, d)| d.as_str()).collect();
    let linked: Vec<CreditRow> = sqlx::query_as(&format!(
        "SELECT {cols} FROM credits
          WHERE tenant_id = $1 AND rep_id = ANY($2) AND kind <> 'deal' AND (event_id = ANY($3) OR deal_id = ANY($4))
          ORDER BY rep_id, occurred_at, source_event_id COLLATE \"C\""
    ))
    .bind(tenant)
    .bind(&reps)
    .bind(ids)
    .bind(&new_ids)
    .fetch_all(&mut *conn)
    .await?;
    let own: std::collections::HashSet<&Uuid> = ids.iter().collect();
    for l in linked {
        let Some(list) = deals.get_mut(&l.rep_id) else {
            continue;
        };
        // This batch's own, or stored before for a deal new here (not a payment of a deal
        // already known stored before: that one is in the list already).
        if !own.contains(&l.event_id)
            && !new_deals
                .iter()
                .any(|(r, d)| *r == l.rep_id && *d == l.deal_id)
        {
            continue;
        }
        let Ok(at) = list.binary_search_by(|d| d.deal_id.cmp(&l.deal_id)) else {
            continue;
        };
        let d = &mut list[at];
        let payment = l.kind == "payment";
        let linked = l.into_linked();
        let to = if payment {
            &mut d.payments
        } else {
            &mut d.reversals
        };
        // A full read links them in (time, source event) order.
        let pos = to.partition_point(|x| (x.at, &x.event_id) <= (linked.at, &linked.event_id));
        to.insert(pos, linked);
    }
    Ok(reread)
}

/// The latest scoring metrics and score of reps for a period.
pub async fn kpis(
    conn: &mut PgConnection,
    tenant: &str,
    reps: Option<&[String]>,
    kind: PeriodKind,
    key: &str,
) -> Result<BTreeMap<String, (BTreeMap<String, Decimal>, Option<Decimal>)>, sqlx::Error> {
    type KpiRow = (
        String,
        sqlx::types::Json<BTreeMap<String, String>>,
        Option<Decimal>,
    );
    let only = if reps.is_some() {
        "AND rep_id = ANY($4)"
    } else {
        "AND $4::text[] IS NULL"
    };
    let rows: Vec<KpiRow> = sqlx::query_as(&format!(
        "SELECT rep_id, metrics, score FROM kpis WHERE tenant_id = $1 AND period_kind = $2 AND period_key = $3 {only}"
    ))
    .persistent(false)
    .bind(tenant)
    .bind(kind.as_str())
    .bind(key)
    .bind(reps)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(rep, m, s)| {
            let metrics =
                m.0.into_iter()
                    .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
                    .collect();
            (rep, (metrics, s))
        })
        .collect())
}

/// (closed, paid) of a period.
pub async fn period_state(
    conn: &mut PgConnection,
    tenant: &str,
    kind: PeriodKind,
    key: &str,
) -> Result<(bool, bool), sqlx::Error> {
    period_state_at(conn, tenant, kind, key, DateTime::<Utc>::MAX_UTC).await
}

/// (closed, paid) of a period as it was at `at`.
pub async fn period_state_at(
    conn: &mut PgConnection,
    tenant: &str,
    kind: PeriodKind,
    key: &str,
    at: DateTime<Utc>,
) -> Result<(bool, bool), sqlx::Error> {
    type StateRow = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let row: Option<StateRow> = sqlx::query_as(
        "SELECT closed_at, paid_at FROM periods WHERE tenant_id = $1 AND period_kind = $2 AND period_key = $3",
    )
    .bind(tenant)
    .bind(kind.as_str())
    .bind(key)
    .fetch_optional(conn)
    .await?;
    Ok(row.map_or((false, false), |(c, p)| {
        (c.is_some_and(|c| c <= at), p.is_some_and(|p| p <= at))
    }))
}

/// The first period from `key` on that is not closed (where late changes are posted).
pub async fn next_open(
    conn: &mut PgConnection,
    tenant: &str,
    cal: &Calendar,
    kind: PeriodKind,
    key: &str,
) -> Result<String, sqlx::Error> {
    let closed: BTreeSet<String> = sqlx::query_scalar(
        "SELECT period_key FROM periods WHERE tenant_id = $1 AND period_kind = $2 AND closed_at IS NOT NULL",
    )
    .bind(tenant)
    .bind(kind.as_str())
    .fetch_all(conn)
    .await?
    .into_iter()
    .collect();
    let Ok(mut p) = cal.parse_key(kind, key) else {
        return Ok(key.to_owned());
    };
    for _ in 0..240 {
        if !closed.contains(&p.key) {
            return Ok(p.key);
        }
        p = cal.period(kind, p.end);
    }
    Ok(p.key)
}

/// What the ledger holds for a rep's source period (dispute adjustments excluded: they are
/// not computed from events).
pub async fn holdings(
    conn: &mut PgConnection,
    tenant: &str,
    rep: &str,
    kind: PeriodKind,
    key: &str,
) -> Result<Holdings, sqlx::Error> {
    let rows: Vec<(String, String, Decimal)> = sqlx::query_as(
        "SELECT line_key, status, sum(amount) FROM ledger
          WHERE tenant_id = $1 AND rep_id = $2 AND period_kind = $3 AND source_period_key = $4
            AND line_key NOT LIKE 'dispute:%'
          GROUP BY 1, 2",
    )
    .bind(tenant)
    .bind(rep)
    .bind(kind.as_str())
    .bind(key)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(k, s, a)| Some(((k, Status::parse(&s)?), a)))
        .collect())
}

/// What the ledger holds per rep for a source period (dispute adjustments excluded).
pub async fn holdings_of(
    conn: &mut PgConnection,
    tenant: &str,
    reps: &[String],
    kind: PeriodKind,
    key: &str,
) -> Result<std::collections::HashMap<String, Holdings>, sqlx::Error> {
    let rows: Vec<(String, String, String, Decimal)> = sqlx::query_as(
        "SELECT rep_id, line_key, status, sum(amount) FROM ledger
          WHERE tenant_id = $1 AND rep_id = ANY($2) AND period_kind = $3 AND source_period_key = $4
            AND line_key NOT LIKE 'dispute:%'
          GROUP BY 1, 2, 3",
    )
    .bind(tenant)
    .bind(reps)
    .bind(kind.as_str())
    .bind(key)
    .fetch_all(conn)
    .await?;
    Ok(holdings_by_rep(rows))
}

/// Holdings per rep from (rep, line key, status, sum) rows of a ledger.
fn holdings_by_rep(
    rows: Vec<(String, String, String, Decimal)>,
) -> std::collections::HashMap<String, Holdings> {
    let mut out: std::collections::HashMap<String, Holdings> = std::collections::HashMap::new();
    for (rep, k, s, a) in rows {
        if let Some(st) = Status::parse(&s) {
            out.entry(rep).or_default().insert((k, st), a);
        }
    }
    out
}

/// The reps with a deal closed in a period, in order.
pub async fn reps_closing_in(
    conn: &mut PgConnection,
    tenant: &str,
    kind: PeriodKind,
    key: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let col = key_column(kind);
    sqlx::query_scalar(&format!(
        "SELECT DISTINCT rep_id FROM credits WHERE tenant_id = $1 AND kind = 'deal' AND {col} = $2 ORDER BY 1"
    ))
    .persistent(false)
    .bind(tenant)
    .bind(key)
    .fetch_all(conn)
    .await
}

/// The reps (of `reps`) with at least one deal ever.
pub async fn reps_with_deals(
    conn: &mut PgConnection,
    tenant: &str,
    reps: &[String],
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT rep_id FROM credits WHERE tenant_id = $1 AND rep_id = ANY($2) AND kind = 'deal'")
            .bind(tenant)
            .bind(reps)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Awards already granted to `reps`: (rep, code, period key).
pub async fn awards_of(
    conn: &mut PgConnection,
    tenant: &str,
    reps: &[String],
) -> Result<std::collections::HashSet<(String, String, String)>, sqlx::Error> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT rep_id, code, period_key FROM awards WHERE tenant_id = $1 AND rep_id = ANY($2)",
    )
    .bind(tenant)
    .bind(reps)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Statement totals of reps for a period.
pub async fn period_totals(
    conn: &mut PgConnection,
    tenant: &str,
    reps: &[String],
    kind: PeriodKind,
    key: &str,
) -> Result<std::collections::HashMap<String, Decimal>, sqlx::Error> {
    let rows: Vec<(String, Decimal)> = sqlx::query_as(
        "SELECT rep_id, COALESCE(sum(amount), 0) FROM ledger
          WHERE tenant_id = $1 AND rep_id = ANY($2) AND period_kind = $3 AND period_key = $4 GROUP BY rep_id",
    )
    .bind(tenant)
    .bind(reps)
    .bind(kind.as_str())
    .bind(key)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// A rep-period's results: (rep, plan id, plan version, revenue, attainment, score).
pub type ResultRow = (
    String,
    String,
    i32,
    Decimal,
    Option<Decimal>,
    Option<Decimal>,
);

/// Stores rep-periods' results; what changed is also added to their history at `at` (the
/// moment of the ledger postings made with them).
pub async fn save_results(
    conn: &mut PgConnection,
    tenant: &str,
    kind: PeriodKind,
    key: &str,
    rows: &[ResultRow],
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let reps: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    crate::cache::changed(&mut *conn, tenant, Some(&reps)).await?;
    let plans: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    let versions: Vec<i32> = rows.iter().map(|r| r.2).collect();
    let revenue: Vec<Decimal> = rows.iter().map(|r| r.3).collect();
    let att: Vec<Option<Decimal>> = rows.iter().map(|r| r.4).collect();
    let score: Vec<Option<Decimal>> = rows.iter().map(|r| r.5).collect();
    sqlx::query(
        "WITH changed AS (
         INSERT INTO period_results (tenant_id, rep_id, period_kind, period_key, plan_id, plan_version, revenue, attainment, score)
         SELECT $1, u.rep, $2, $3, u.plan, u.ver, u.rev, u.att, u.score
           FROM UNNEST($4::text[], $5::text[], $6::int[], $7::numeric[], $8::numeric[], $9::numeric[]) AS u(rep, plan, ver, rev, att, score)
         ON CONFLICT (tenant_id, rep_id, period_kind, period_key) DO UPDATE SET
           plan_id = EXCLUDED.plan_id, plan_version = EXCLUDED.plan_version, revenue = EXCLUDED.revenue,
           attainment = EXCLUDED.attainment, score = EXCLUDED.score
         WHERE (period_results.plan_id, period_results.plan_version, period_results.revenue, period_results.attainment, period_results.score)
               IS DISTINCT FROM (EXCLUDED.plan_id, EXCLUDED.plan_version, EXCLUDED.revenue, EXCLUDED.attainment, EXCLUDED.score)
         RETURNING *)
         INSERT INTO period_results_history (tenant_id, rep_id, period_kind, period_key, recorded_at, plan_id, plan_version, revenue, attainment, score)
         SELECT tenant_id, rep_id, period_kind, period_key, $10, plan_id, plan_version, revenue, attainment, score FROM changed
         ON CONFLICT (tenant_id, rep_id, period_kind, period_key, recorded_at) DO UPDATE SET
           plan_id = EXCLUDED.plan_id, plan_version = EXCLUDED.plan_version, revenue = EXCLUDED.revenue,
           attainment = EXCLUDED.attainment, score = EXCLUDED.score",
    )
    .bind(tenant)
    .bind(kind.as_str())
    .bind(key)
    .bind(&reps)
    .bind(&plans)
    .bind(&versions)
    .bind(&revenue)
    .bind(&att)
    .bind(&score)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// One row to append to the ledger.
#[derive(Debug, Clone)]
pub struct LedgerRow {
    pub posting_id: Uuid,
    pub rep_id: String,
    pub period_kind: PeriodKind,
    pub period_key: String,
    pub source_period_key: String,
    pub line_key: String,
    pub line_id: Uuid,
    pub kind: String,
    pub status: String,
    pub amount: Decimal,
    pub currency: String,
    pub plan_id: String,
    pub plan_version: i32,
    pub deal_id: String,
    pub summary: String,
    /// The explanation's canonical JSON (`domain::chain::canonical_json`), serialized once:
    /// the text the chain hashes, the column stores and the event carries.
    pub explanation: String,
    pub caused_by: Vec<String>,
}

/// A chain's new head: (rep, period kind, period key, length, head hash, total).
pub type HeadRow<'a> = (&'a str, &'a str, &'a str, i64, Vec<u8>, Decimal);

/// Each row's `caused_by` as a JSON array of strings: arrays of arrays cannot go through
/// UNNEST, so it travels as text and is unpacked by `jsonb_array_elements_text`.
fn caused_json(rows: &[LedgerRow]) -> Vec<String> {
    rows.iter()
        .map(|r| serde_json::to_string(&r.caused_by).expect("a list of strings serializes"))
        .collect()
}

/// Appends chained postings (see [`crate::chain::append`], which computes the chain
/// columns) and moves their chains' heads and totals, in one statement.
#[allow(clippy::too_many_arguments)]
pub async fn insert_chained(
    conn: &mut PgConnection,
    tenant: &str,
    rows: &[LedgerRow],
    at: DateTime<Utc>,
    seqs: &[i64],
    prevs: &[Vec<u8>],
    hashes: &[Vec<u8>],
    heads: &[HeadRow<'_>],
) -> Result<(), sqlx::Error> {
    let reps: Vec<&str> = rows.iter().map(|r| r.rep_id.as_str()).collect();
    crate::cache::changed(&mut *conn, tenant, Some(&reps)).await?;
    let col = |f: fn(&LedgerRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.posting_id).collect();
    let line_ids: Vec<Uuid> = rows.iter().map(|r| r.line_id).collect();
    let amounts: Vec<Decimal> = rows.iter().map(|r| r.amount).collect();
    let versions: Vec<i32> = rows.iter().map(|r| r.plan_version).collect();
    let expl: Vec<&str> = rows.iter().map(|r| r.explanation.as_str()).collect();
    let caused = caused_json(rows);
    sqlx::query(
        "WITH posted AS (
           INSERT INTO ledger (posting_id, tenant_id, rep_id, period_kind, period_key, source_period_key, line_key, line_id,
                               kind, status, amount, currency, plan_id, plan_version, deal_id, summary, explanation, caused_by,
                               posted_at, chain_seq, prev_hash, hash)
           SELECT u.id, $1, u.rep, u.pk, u.key, u.src, u.lk, u.lid, u.kind, u.status, u.amount, u.cur, u.plan, u.ver, u.deal,
                  u.summary, u.expl::jsonb, ARRAY(SELECT jsonb_array_elements_text(u.caused::jsonb)), $19, u.cseq, u.prev, u.hash
             FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::uuid[], $9::text[],
                         $10::text[], $11::numeric[], $12::text[], $13::text[], $14::int[], $15::text[], $16::text[],
                         $17::text[], $18::text[], $20::bigint[], $21::bytea[], $22::bytea[])
                  AS u(id, rep, pk, key, src, lk, lid, kind, status, amount, cur, plan, ver, deal, summary, expl, caused, cseq, prev, hash)
         )
         INSERT INTO ledger_chains (tenant_id, rep_id, period_kind, period_key, length, head, total)
         SELECT $1, * FROM UNNEST($23::text[], $24::text[], $25::text[], $26::bigint[], $27::bytea[], $28::numeric[])
         ON CONFLICT (tenant_id, period_kind, period_key, rep_id)
         DO UPDATE SET length = EXCLUDED.length, head = EXCLUDED.head, total = EXCLUDED.total",
    )
    .bind(tenant)
    .bind(&ids)
    .bind(col(|r| &r.rep_id))
    .bind(col(|r| r.period_kind.as_str()))
    .bind(col(|r| &r.period_key))
    .bind(col(|r| &r.source_period_key))
    .bind(col(|r| &r.line_key))
    .bind(&line_ids)
    .bind(col(|r| &r.kind))
    .bind(col(|r| &r.status))
    .bind(&amounts)
    .bind(col(|r| &r.currency))
    .bind(col(|r| &r.plan_id))
    .bind(&versions)
    .bind(col(|r| &r.deal_id))
    .bind(col(|r| &r.summary))
    .bind(&expl)
    .bind(&caused)
    .bind(at)
    .bind(seqs)
    .bind(prevs)
    .bind(hashes)
    .bind(heads.iter().map(|w| w.0).collect::<Vec<_>>())
    .bind(heads.iter().map(|w| w.1).collect::<Vec<_>>())
    .bind(heads.iter().map(|w| w.2).collect::<Vec<_>>())
    .bind(heads.iter().map(|w| w.3).collect::<Vec<_>>())
    .bind(heads.iter().map(|w| w.4.clone()).collect::<Vec<_>>())
    .bind(heads.iter().map(|w| w.5).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// The statement total of a rep's period.
pub async fn period_total(
    conn: &mut PgConnection,
    tenant: &str,
    rep: &str,
    kind: PeriodKind,
    key: &str,
) -> Result<Decimal, sqlx::Error> {
    period_total_at(conn, tenant, rep, kind, key, DateTime::<Utc>::MAX_UTC).await
}

/// The statement total of a rep's period as it was at `at`.
pub async fn period_total_at(
    conn: &mut PgConnection,
    tenant: &str,
    rep: &str,
    kind: PeriodKind,
    key: &str,
    at: DateTime<Utc>,
) -> Result<Decimal, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(amount), 0) FROM ledger
          WHERE tenant_id = $1 AND rep_id = $2 AND period_kind = $3 AND period_key = $4 AND posted_at <= $5",
    )
    .bind(tenant)
    .bind(rep)
    .bind(kind.as_str())
    .bind(key)
    .bind(at)
    .fetch_one(conn)
    .await
}

/// The rep-periods with anything to recompute in a period (deals, metrics or postings).
pub async fn reps_of_period(
    conn: &mut PgConnection,
    tenant: &str,
    kind: PeriodKind,
    key: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let col = key_column(kind);
    sqlx::query_scalar(&format!(
        "SELECT rep_id FROM credits WHERE tenant_id = $1 AND kind = 'deal' AND {col} = $2
         UNION SELECT rep_id FROM kpis WHERE tenant_id = $1 AND period_kind = $3 AND period_key = $2
         UNION SELECT rep_id FROM ledger WHERE tenant_id = $1 AND period_kind = $3 AND source_period_key = $2
         ORDER BY 1"
    ))
    .bind(tenant)
    .bind(key)
    .bind(kind.as_str())
    .fetch_all(conn)
    .await
}

/// What a shadow version's ledger holds for reps of a period (as [`holdings_of`]).
pub async fn shadow_holdings_of(
    conn: &mut PgConnection,
    tenant: &str,
    shadow: (&str, i32),
    reps: &[String],
    kind: PeriodKind,
    key: &str,
) -> Result<std::collections::HashMap<String, Holdings>, sqlx::Error> {
    let rows: Vec<(String, String, String, Decimal)> = sqlx::query_as(
        "SELECT rep_id, line_key, status, sum(amount) FROM shadow_ledger
          WHERE tenant_id = $1 AND plan_id = $2 AND plan_version = $3 AND period_kind = $4 AND period_key = $5
            AND rep_id = ANY($6)
          GROUP BY 1, 2, 3",
    )
    .bind(tenant)
    .bind(shadow.0)
    .bind(shadow.1)
    .bind(kind.as_str())
    .bind(key)
    .bind(reps)
    .fetch_all(conn)
    .await?;
    Ok(holdings_by_rep(rows))
}

/// Appends postings to a shadow version's ledger (`plan_id`/`plan_version` of each row
/// name the plan that produced the line), in one statement.
pub async fn insert_shadow(
    conn: &mut PgConnection,
    tenant: &str,
    shadow: (&str, i32),
    rows: &[LedgerRow],
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&LedgerRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.posting_id).collect();
    let line_ids: Vec<Uuid> = rows.iter().map(|r| r.line_id).collect();
    let amounts: Vec<Decimal> = rows.iter().map(|r| r.amount).collect();
    let versions: Vec<i32> = rows.iter().map(|r| r.plan_version).collect();
    let expl: Vec<&str> = rows.iter().map(|r| r.explanation.as_str()).collect();
    let caused = caused_json(rows);
    sqlx::query(
        "INSERT INTO shadow_ledger (posting_id, tenant_id, plan_id, plan_version, rep_id, period_kind, period_key, line_key, line_id,
                                    kind, status, amount, currency, line_plan_id, line_plan_version, deal_id, summary, explanation,
                                    caused_by, posted_at)
         SELECT u.id, $1, $2, $3, u.rep, u.pk, u.key, u.lk, u.lid, u.kind, u.status, u.amount, u.cur, u.plan, u.ver, u.deal,
                u.summary, u.expl::jsonb, ARRAY(SELECT jsonb_array_elements_text(u.caused::jsonb)), $19
           FROM UNNEST($4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[], $9::uuid[], $10::text[], $11::text[],
                       $12::numeric[], $13::text[], $14::text[], $15::int[], $16::text[], $17::text[], $18::text[], $20::text[])
                AS u(id, rep, pk, key, lk, lid, kind, status, amount, cur, plan, ver, deal, summary, expl, caused)",
    )
    .bind(tenant)
    .bind(shadow.0)
    .bind(shadow.1)
    .bind(&ids)
    .bind(col(|r| &r.rep_id))
    .bind(col(|r| r.period_kind.as_str()))
    .bind(col(|r| &r.period_key))
    .bind(col(|r| &r.line_key))
    .bind(&line_ids)
    .bind(col(|r| &r.kind))
    .bind(col(|r| &r.status))
    .bind(&amounts)
    .bind(col(|r| &r.currency))
    .bind(col(|r| &r.plan_id))
    .bind(&versions)
    .bind(col(|r| &r.deal_id))
    .bind(col(|r| &r.summary))
    .bind(&expl)
    .bind(at)
    .bind(&caused)
    .execute(conn)
    .await?;
    Ok(())
}
