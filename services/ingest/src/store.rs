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

/// Earlier records of `ids`: content hash, acceptance time and records published.
pub async fn existing(
    conn: &mut PgConnection,
    tenant_id: &str,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, (Vec<u8>, DateTime<Utc>, i32)>, sqlx::Error> {
    let keys: Vec<Uuid> = ids.iter().map(|id| record_id(tenant_id, *id)).collect();
    let rows: Vec<(Uuid, Vec<u8>, DateTime<Utc>, i32)> = sqlx::query_as(
        "SELECT event_id, content_sha256, accepted_at, published FROM idempotency WHERE id = ANY($1)",
    )
    .bind(&keys)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, h, at, p)| (id, (h, at, p)))
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
    if !others.is_empty() {
        let (ids, counts): (Vec<Uuid>, Vec<i32>) = others
            .into_iter()
            .map(|(id, n)| (record_id(tenant_id, id), n))
            .unzip();
        sqlx::query(
            "UPDATE idempotency i SET published = u.n FROM UNNEST($1::uuid[], $2::int[]) AS u(id, n) WHERE i.id = u.id",
        )
        .bind(&ids)
        .bind(&counts)
        .execute(&mut *conn)
        .await?;
    }
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
    if !reps.is_empty() {
        let rows: Vec<(String, bool)> = sqlx::query_as(
            "SELECT rep_id, active FROM reps WHERE tenant_id = $1 AND rep_id = ANY($2)",
        )
        .bind(tenant_id)
        .bind(reps)
        .fetch_all(&mut *conn)
        .await?;
        state.reps = rows
            .into_iter()
            .map(|(r, active)| (r, RepState { active }))
            .collect();
    }
    if !deals.is_empty() {
        let rows: Vec<(String, sqlx::types::Json<DealState>)> = sqlx::query_as(
            "SELECT deal_id, state FROM deals WHERE tenant_id = $1 AND deal_id = ANY($2) ORDER BY deal_id FOR UPDATE",
        )
        .bind(tenant_id)
        .bind(deals)
        .fetch_all(&mut *conn)
        .await?;
        state.deals = rows.into_iter().map(|(d, s)| (d, s.0)).collect();
    }
    // A full reversal names no amount: its currency is the deal's.
    let mut currencies: Vec<String> = currencies.iter().map(|c| (*c).to_owned()).collect();
    currencies.extend(state.deals.values().map(|d| d.currency.clone()));
    currencies.sort();
    currencies.dedup();
    if !currencies.is_empty() {
        let rows: Vec<(String, NaiveDate, Decimal)> = sqlx::query_as(
            "SELECT currency, effective_from, rate FROM fx_rates WHERE tenant_id = $1 AND currency = ANY($2)",
        )
        .bind(tenant_id)
        .bind(currencies)
        .fetch_all(&mut *conn)
        .await?;
        for (c, d, r) in rows {
            state.fx.insert(&c, d, r);
        }
    }
    Ok(state)
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

pub async fn set_fx_rate(
    pool: &PgPool,
    tenant_id: &str,
    currency: &str,
    from: NaiveDate,
    rate: Decimal,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO fx_rates (tenant_id, currency, effective_from, rate) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, currency, effective_from) DO UPDATE SET rate = EXCLUDED.rate, created_at = now()",
    )
    .bind(tenant_id)
    .bind(currency)
    .bind(from)
    .bind(rate)
    .execute(pool)
    .await?;
    Ok(())
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
