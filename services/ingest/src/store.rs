//! Ingest's queries.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use spm_core::money::Currency;
use spm_core::period::Calendar;
use spm_proto::common::v1::TenantContext;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::accept::Tenant;
use crate::domain::{DealState, IngestState, RepState};

/// A tenant as ingest knows it, or `None`.
pub async fn tenant(
    pool: &PgPool,
    tenant_id: &str,
) -> Result<Option<(Tenant, String, bool)>, sqlx::Error> {
    let row: Option<(String, String, i32, String, bool)> = sqlx::query_as(
        "SELECT name, time_zone, fiscal_year_start_month, base_currency, active FROM auth_tenants WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(name, tz, m, cur, active)| {
        let month = u32::try_from(m).ok()?;
        Some((
            Tenant {
                tenant_id: tenant_id.to_owned(),
                calendar: Calendar::new(&tz, month).ok()?,
                base: Currency::new(&cur).ok()?,
                context: TenantContext {
                    time_zone: tz,
                    fiscal_year_start_month: month,
                    base_currency: cur,
                },
            },
            name,
            active,
        ))
    }))
}

/// The webhook secrets of a tenant: (current, previous).
pub async fn webhook_secrets(
    pool: &PgPool,
    tenant_id: &str,
) -> Result<Option<(String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT webhook_secret, previous_secret FROM tenant_secrets WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_optional(pool)
    .await
}

/// The key of a client event's idempotency record.
pub fn record_id(tenant_id: &str, event_id: Uuid) -> Uuid {
    let mut buf = Uuid::encode_buffer();
    spm_core::derived_id(&[tenant_id, event_id.hyphenated().encode_lower(&mut buf)])
}

/// Inserts idempotency records for `ids` (content hashes alongside); returns the ids that
/// were new. Rows stay locked until the transaction ends, so a concurrent submission of the
/// same id waits for this one's outcome.
pub async fn claim(
    conn: &mut PgConnection,
    tenant_id: &str,
    ids: &[Uuid],
    hashes: &[&[u8]],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let keys: Vec<Uuid> = ids.iter().map(|id| record_id(tenant_id, *id)).collect();
    sqlx::query_scalar(
        "INSERT INTO idempotency (id, tenant_id, event_id, content_sha256, accepted_at)
         SELECT k, $1, e, h, $5 FROM UNNEST($2::uuid[], $3::uuid[], $4::bytea[]) AS u(k, e, h)
         ON CONFLICT (id) DO NOTHING
         RETURNING event_id",
    )
    .bind(tenant_id)
    .bind(&keys)
    .bind(ids)
    .bind(hashes)
    .bind(now)
    .fetch_all(conn)
    .await
}

/// What ingest recorded of an event accepted before.
#[derive(Debug, Clone)]
pub struct Earlier {
    pub content_sha256: Vec<u8>,
    pub accepted_at: DateTime<Utc>,
    pub published: i32,
    /// Where it stands, when it was parked.
    pub parked: Option<ParkedStatus>,
}

/// A parked event's state ('waiting', 'failed', 'released', 'discarded'), what it still
/// waits for, and why it failed.
#[derive(Debug, Clone)]
pub struct ParkedStatus {
    pub state: String,
    pub waits: Vec<String>,
    pub error: Option<String>,
}

/// Earlier records of `ids`.
pub async fn existing(
    conn: &mut PgConnection,
    tenant_id: &str,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Earlier>, sqlx::Error> {
    let keys: Vec<Uuid> = ids.iter().map(|id| record_id(tenant_id, *id)).collect();
    type Row = (
        Uuid,
        Vec<u8>,
        DateTime<Utc>,
        i32,
        Option<String>,
        Option<Vec<String>>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT i.event_id, i.content_sha256, i.accepted_at, i.published, p.state, p.waits, p.error
           FROM idempotency i
           LEFT JOIN parked p ON p.tenant_id = i.tenant_id AND p.event_id = i.event_id
          WHERE i.id = ANY($1)",
    )
    .bind(&keys)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, h, at, p, state, waits, error)| {
            (
                id,
                Earlier {
                    content_sha256: h,
                    accepted_at: at,
                    published: p,
                    parked: state.map(|state| ParkedStatus {
                        state,
                        waits: waits.unwrap_or_default(),
                        error,
                    }),
                },
            )
        })
        .collect())
}

/// Records how many records each accepted event published, and drops the claims of
/// events that were rejected.
pub async fn settle(
    conn: &mut PgConnection,
    tenant_id: &str,
    published: &[(Uuid, i32)],
    rejected: &[Uuid],
) -> Result<(), sqlx::Error> {
    // Most events publish one record (the column's default): update only the others.
    let others: Vec<(Uuid, i32)> = published.iter().copied().filter(|(_, n)| *n != 1).collect();
    set_published(&mut *conn, tenant_id, &others).await?;
    if !rejected.is_empty() {
        let keys: Vec<Uuid> = rejected
            .iter()
            .map(|id| record_id(tenant_id, *id))
            .collect();
        sqlx::query("DELETE FROM idempotency WHERE id = ANY($1)")
            .bind(&keys)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Records how many records each of these events published (parked events released later).
pub async fn set_published(
    conn: &mut PgConnection,
    tenant_id: &str,
    published: &[(Uuid, i32)],
) -> Result<(), sqlx::Error> {
    if published.is_empty() {
        return Ok(());
    }
    let (ids, counts): (Vec<Uuid>, Vec<i32>) = published
        .iter()
        .map(|(id, n)| (record_id(tenant_id, *id), *n))
        .unzip();
    sqlx::query(
        "UPDATE idempotency i SET published = u.n FROM UNNEST($1::uuid[], $2::int[]) AS u(id, n) WHERE i.id = u.id",
    )
    .bind(&ids)
    .bind(&counts)
    .execute(conn)
    .await?;
    Ok(())
}

/// Loads what accepting a batch needs: the named reps, the named deals (locked against
/// concurrent payments and reversals) and the FX rates of the named currencies.
pub async fn load_state(
    conn: &mut PgConnection,
    tenant_id: &str,
    reps: &[&str],
    deals: &[&str],
    currencies: &[&str],
) -> Result<IngestState, sqlx::Error> {
    let mut state = IngestState::default();
    load_into(conn, tenant_id, &mut state, reps, deals, currencies).await?;
    Ok(state)
}

/// Adds to `state` what it does not hold yet of the named reps, deals and currencies.
pub async fn load_into(
    conn: &mut PgConnection,
    tenant_id: &str,
    state: &mut IngestState,
    reps: &[&str],
    deals: &[&str],
    currencies: &[&str],
) -> Result<(), sqlx::Error> {
    let reps: Vec<&str> = reps
        .iter()
        .copied()
        .filter(|r| !state.reps.contains_key(*r))
        .collect();
    let deals: Vec<&str> = deals
        .iter()
        .copied()
        .filter(|d| !state.deals.contains_key(*d))
        .collect();
    let currencies: Vec<&str> = currencies
        .iter()
        .copied()
        .filter(|c| !state.fx.has(c))
        .collect();
    if !reps.is_empty() {
        let rows: Vec<(String, bool)> = sqlx::query_as(
            "SELECT rep_id, active FROM reps WHERE tenant_id = $1 AND rep_id = ANY($2)",
        )
        .bind(tenant_id)
        .bind(&reps)
        .fetch_all(&mut *conn)
        .await?;
        state
            .reps
            .extend(rows.into_iter().map(|(r, active)| (r, RepState { active })));
    }
    let mut new_deal_currencies = Vec::new();
    if !deals.is_empty() {
        let rows: Vec<(String, sqlx::types::Json<DealState>)> = sqlx::query_as(
            "SELECT deal_id, state FROM deals WHERE tenant_id = $1 AND deal_id = ANY($2) ORDER BY deal_id FOR UPDATE",
        )
        .bind(tenant_id)
        .bind(&deals)
        .fetch_all(&mut *conn)
        .await?;
        for (d, s) in rows {
            new_deal_currencies.push(s.0.currency.clone());
            state.deals.insert(d, s.0);
        }
    }
    // A full reversal names no amount: its currency is the deal's.
    let mut currencies: Vec<String> = currencies.iter().map(|c| (*c).to_owned()).collect();
    currencies.extend(new_deal_currencies.into_iter().filter(|c| !state.fx.has(c)));
    currencies.sort();
    currencies.dedup();
    if !currencies.is_empty() {
        let rows: Vec<(String, NaiveDate, Decimal)> = sqlx::query_as(
            "SELECT currency, effective_from, rate FROM fx_rates WHERE tenant_id = $1 AND currency = ANY($2)",
        )
        .bind(tenant_id)
        .bind(&currencies)
        .fetch_all(&mut *conn)
        .await?;
        for (c, d, r) in rows {
            state.fx.insert(&c, d, r);
        }
        for c in &currencies {
            state.fx.mark_loaded(c);
        }
    }
    Ok(())
}

/// Serialises parking against releasing, per tenant, for the rest of the transaction: a
/// batch that parks events takes it exclusively, one that only makes reps or deals known
/// takes it shared. A parker then sees every referent committed before it, and a creator
/// every parked event committed before it, so nothing is left waiting for something that
/// has arrived; creators do not wait for each other.
pub async fn lock_parking(
    conn: &mut PgConnection,
    tenant_id: &str,
    exclusive: bool,
) -> Result<(), sqlx::Error> {
    let sql = if exclusive {
        "SELECT pg_advisory_xact_lock(hashtextextended('spm.ingest.parking/' || $1, 0))"
    } else {
        "SELECT pg_advisory_xact_lock_shared(hashtextextended('spm.ingest.parking/' || $1, 0))"
    };
    sqlx::query(sql).bind(tenant_id).execute(conn).await?;
    Ok(())
}

/// A parked event as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ParkedRow {
    pub event_id: Uuid,
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    pub event: Vec<u8>,
    pub waits: Vec<String>,
    pub parked_at: DateTime<Utc>,
    pub state: String,
    pub error: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub discarded_by: Option<String>,
    pub discard_reason: Option<String>,
}

const PARKED_COLUMNS: &str = "event_id, kind, occurred_at, event, waits, parked_at, state, error, resolved_at, discarded_by, discard_reason";

/// Waiting events that wait for any of `keys` (locked: a discard waits for this batch).
pub async fn parked_waiting_on(
    conn: &mut PgConnection,
    tenant_id: &str,
    keys: &[String],
) -> Result<Vec<ParkedRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {PARKED_COLUMNS} FROM parked
          WHERE tenant_id = $1 AND state = 'waiting' AND waits && $2::text[]
          ORDER BY occurred_at, event_id FOR UPDATE"
    ))
    .bind(tenant_id)
    .bind(keys)
    .fetch_all(conn)
    .await
}

/// A newly parked event: (id, kind, occurred at, CrmEvent bytes, waits).
pub type NewParked = (Uuid, &'static str, DateTime<Utc>, Vec<u8>, Vec<String>);

/// What a batch changed in the parked table.
#[derive(Debug, Default)]
pub struct ParkedChanges {
    pub parked: Vec<NewParked>,
    /// Still waiting, for fewer things.
    pub waits: Vec<(Uuid, Vec<String>)>,
    pub released: Vec<Uuid>,
    /// Could not be applied when released: (id, why).
    pub failed: Vec<(Uuid, String)>,
}

impl ParkedChanges {
    pub fn is_empty(&self) -> bool {
        self.parked.is_empty()
            && self.waits.is_empty()
            && self.released.is_empty()
            && self.failed.is_empty()
    }
}

pub async fn save_parked(
    conn: &mut PgConnection,
    tenant_id: &str,
    c: &ParkedChanges,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if !c.parked.is_empty() {
        let ids: Vec<Uuid> = c.parked.iter().map(|p| p.0).collect();
        let kinds: Vec<&str> = c.parked.iter().map(|p| p.1).collect();
        let at: Vec<DateTime<Utc>> = c.parked.iter().map(|p| p.2).collect();
        let events: Vec<&[u8]> = c.parked.iter().map(|p| p.3.as_slice()).collect();
        // text[][] must be rectangular: pass each event's waits as one joined string.
        let waits: Vec<String> = c.parked.iter().map(|p| p.4.join("\u{1f}")).collect();
        sqlx::query(
            "INSERT INTO parked (tenant_id, event_id, kind, occurred_at, event, waits, parked_at)
             SELECT $1, e, k, o, b, string_to_array(w, chr(31)), $7
               FROM UNNEST($2::uuid[], $3::text[], $4::timestamptz[], $5::bytea[], $6::text[]) AS u(e, k, o, b, w)",
        )
        .bind(tenant_id)
        .bind(&ids)
        .bind(&kinds)
        .bind(&at)
        .bind(&events)
        .bind(&waits)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    if !c.waits.is_empty() {
        let ids: Vec<Uuid> = c.waits.iter().map(|p| p.0).collect();
        let waits: Vec<String> = c.waits.iter().map(|p| p.1.join("\u{1f}")).collect();
        sqlx::query(
            "UPDATE parked p SET waits = string_to_array(u.w, chr(31))
               FROM UNNEST($2::uuid[], $3::text[]) AS u(e, w)
              WHERE p.tenant_id = $1 AND p.event_id = u.e",
        )
        .bind(tenant_id)
        .bind(&ids)
        .bind(&waits)
        .execute(&mut *conn)
        .await?;
    }
    if !c.released.is_empty() {
        sqlx::query(
            "UPDATE parked SET state = 'released', waits = '{}', resolved_at = $3
              WHERE tenant_id = $1 AND event_id = ANY($2)",
        )
        .bind(tenant_id)
        .bind(&c.released)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    if !c.failed.is_empty() {
        let ids: Vec<Uuid> = c.failed.iter().map(|p| p.0).collect();
        let why: Vec<&str> = c.failed.iter().map(|p| p.1.as_str()).collect();
        sqlx::query(
            "UPDATE parked p SET state = 'failed', waits = '{}', error = u.why, resolved_at = $4
               FROM UNNEST($2::uuid[], $3::text[]) AS u(e, why)
              WHERE p.tenant_id = $1 AND p.event_id = u.e",
        )
        .bind(tenant_id)
        .bind(&ids)
        .bind(&why)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A filter of the parked list.
#[derive(Debug, Clone, Default)]
pub struct ParkedFilter {
    /// `rep:<id>`, `deal:<id>`, or `rep` / `deal` for any of that kind.
    pub waiting_for: Option<String>,
    pub parked_before: Option<DateTime<Utc>>,
    pub states: Vec<String>,
    pub limit: i64,
}

/// Parked events of a tenant matching `f`, oldest first, and how many match in all.
pub async fn list_parked(
    pool: &PgPool,
    tenant_id: &str,
    f: &ParkedFilter,
) -> Result<(Vec<ParkedRow>, i64), sqlx::Error> {
    let (exact, prefix) = match f.waiting_for.as_deref() {
        Some(w) if w.contains(':') => (Some(w.to_owned()), None),
        Some(w) => (None, Some(format!("{w}:"))),
        None => (None, None),
    };
    let filter = "tenant_id = $1 AND state = ANY($2)
          AND ($3::text IS NULL OR $3 = ANY(waits))
          AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM unnest(waits) w WHERE starts_with(w, $4)))
          AND ($5::timestamptz IS NULL OR parked_at <= $5)";
    let rows: Vec<ParkedRow> = sqlx::query_as(&format!(
        "SELECT {PARKED_COLUMNS} FROM parked WHERE {filter} ORDER BY parked_at, event_id LIMIT $6"
    ))
    .bind(tenant_id)
    .bind(&f.states)
    .bind(&exact)
    .bind(&prefix)
    .bind(f.parked_before)
    .bind(f.limit)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM parked WHERE {filter}"))
        .bind(tenant_id)
        .bind(&f.states)
        .bind(&exact)
        .bind(&prefix)
        .bind(f.parked_before)
        .fetch_one(pool)
        .await?;
    Ok((rows, total))
}

/// Discards a waiting or failed event; `Ok(None)` when there is no such parked event,
/// `Err(state)` inside when it is in another state.
/// Discards a parked event, recorded in the audit trail as `caller`'s.
pub async fn discard_parked(
    pool: &PgPool,
    caller: &spm_server::Caller,
    event_id: Uuid,
    by: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Option<Result<ParkedRow, String>>, sqlx::Error> {
    let tenant_id = caller.tenant_id.as_str();
    let mut tx = pool.begin().await?;
    let current: Option<String> = sqlx::query_scalar(
        "SELECT state FROM parked WHERE tenant_id = $1 AND event_id = $2 FOR UPDATE",
    )
    .bind(tenant_id)
    .bind(event_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(current) = current else {
        return Ok(None);
    };
    if current != "waiting" && current != "failed" {
        return Ok(Some(Err(current)));
    }
    let row: ParkedRow = sqlx::query_as(&format!(
        "UPDATE parked SET state = 'discarded', resolved_at = $3, discarded_by = $4, discard_reason = $5
          WHERE tenant_id = $1 AND event_id = $2 RETURNING {PARKED_COLUMNS}"
    ))
    .bind(tenant_id)
    .bind(event_id)
    .bind(now)
    .bind(by)
    .bind(reason)
    .fetch_one(&mut *tx)
    .await?;
    spm_server::audit::record(
        &mut tx,
        caller,
        spm_server::audit::Action::new(
            "ingest",
            "parked_event.discard",
            format!("parked_event:{event_id}"),
        )
        .before(serde_json::json!({"state": current}))
        .after(serde_json::json!({"state": "discarded", "reason": reason})),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(Ok(row)))
}

/// Across tenants, for the metrics: (state, waits for rep / deal, count, oldest parked_at)
/// of the events that need attention.
pub async fn parked_stats(
    pool: &PgPool,
) -> Result<Vec<(String, String, i64, Option<DateTime<Utc>>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT state,
                CASE WHEN state = 'failed' THEN '' WHEN EXISTS (SELECT 1 FROM unnest(waits) w WHERE starts_with(w, 'deal:')) THEN 'deal' ELSE 'rep' END AS on,
                count(*), min(parked_at)
           FROM parked WHERE state IN ('waiting', 'failed')
          GROUP BY 1, 2",
    )
    .fetch_all(pool)
    .await
}

/// Writes the reps and deals the batch changed.
pub async fn save_state(
    conn: &mut PgConnection,
    tenant_id: &str,
    state: &IngestState,
) -> Result<(), sqlx::Error> {
    if !state.dirty_reps.is_empty() {
        let ids: Vec<&str> = state.dirty_reps.iter().map(String::as_str).collect();
        let active: Vec<bool> = state
            .dirty_reps
            .iter()
            .map(|r| state.reps[r].active)
            .collect();
        sqlx::query(
            "INSERT INTO reps (tenant_id, rep_id, active)
             SELECT $1, * FROM UNNEST($2::text[], $3::bool[])
             ON CONFLICT (tenant_id, rep_id) DO UPDATE SET active = EXCLUDED.active, updated_at = now()",
        )
        .bind(tenant_id)
        .bind(&ids)
        .bind(&active)
        .execute(&mut *conn)
        .await?;
    }
    if !state.dirty_deals.is_empty() {
        let ids: Vec<&str> = state.dirty_deals.iter().map(String::as_str).collect();
        let states: Vec<serde_json::Value> = state
            .dirty_deals
            .iter()
            .map(|d| serde_json::to_value(&state.deals[d]).expect("deal state serializes"))
            .collect();
        sqlx::query(
            "INSERT INTO deals (tenant_id, deal_id, state)
             SELECT $1, * FROM UNNEST($2::text[], $3::jsonb[])
             ON CONFLICT (tenant_id, deal_id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()",
        )
        .bind(tenant_id)
        .bind(&ids)
        .bind(&states)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Sets a rate; returns the rate it replaced for that date, if any.
pub async fn set_fx_rate(
    conn: &mut sqlx::PgConnection,
    tenant_id: &str,
    currency: &str,
    from: NaiveDate,
    rate: Decimal,
) -> Result<Option<Decimal>, sqlx::Error> {
    let before: Option<Decimal> = sqlx::query_scalar(
        "SELECT rate FROM fx_rates WHERE tenant_id = $1 AND currency = $2 AND effective_from = $3 FOR UPDATE",
    )
    .bind(tenant_id)
    .bind(currency)
    .bind(from)
    .fetch_optional(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO fx_rates (tenant_id, currency, effective_from, rate) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, currency, effective_from) DO UPDATE SET rate = EXCLUDED.rate, created_at = now()",
    )
    .bind(tenant_id)
    .bind(currency)
    .bind(from)
    .bind(rate)
    .execute(&mut *conn)
    .await?;
    Ok(before)
}

pub async fn fx_rates(
    pool: &PgPool,
    tenant_id: &str,
    currency: &str,
) -> Result<Vec<(String, NaiveDate, Decimal)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT currency, effective_from, rate FROM fx_rates
          WHERE tenant_id = $1 AND ($2 = '' OR currency = $2)
          ORDER BY currency, effective_from",
    )
    .bind(tenant_id)
    .bind(currency)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Migration 101 computes the same ids in SQL for rows accepted before it:
    /// `uuid_generate_v5('5c1f3d2e-…', 'acme' || chr(31) || '0f8fad5b-…')` gave this value.
    #[test]
    fn record_ids_match_what_the_migration_computes_in_sql() {
        let id = Uuid::parse_str("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap();
        assert_eq!(
            record_id("acme", id).to_string(),
            "d82b8cd4-ddf4-590a-aa72-626c19b23a7e"
        );
    }
}
