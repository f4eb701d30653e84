//! The connector's tables (migrations/100_connect.sql).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool, Row as _};

use crate::domain::mapping::{DealState, Fields, Problem};

#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub replay_id: Option<Vec<u8>>,
    pub checkpointed_at: Option<DateTime<Utc>>,
    pub state: String,
}

pub async fn ensure_stream(
    pool: &PgPool,
    tenant: &str,
    source: &str,
    stream: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO checkpoints (tenant_id, source, stream) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(tenant)
    .bind(source)
    .bind(stream)
    .execute(pool)
    .await
    .map(|_| ())
}

pub async fn checkpoint(
    pool: &PgPool,
    tenant: &str,
    source: &str,
    stream: &str,
) -> sqlx::Result<Checkpoint> {
    let r = sqlx::query(
        "SELECT replay_id, checkpointed_at, state FROM checkpoints WHERE tenant_id = $1 AND source = $2 AND stream = $3",
    )
    .bind(tenant)
    .bind(source)
    .bind(stream)
    .fetch_one(pool)
    .await?;
    Ok(Checkpoint {
        replay_id: r.get(0),
        checkpointed_at: r.get(1),
        state: r.get(2),
    })
}

pub async fn set_state(
    pool: &PgPool,
    tenant: &str,
    source: &str,
    stream: &str,
    state: &str,
    error: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE checkpoints SET state = $4, last_error = $5 WHERE tenant_id = $1 AND source = $2 AND stream = $3",
    )
    .bind(tenant)
    .bind(source)
    .bind(stream)
    .bind(state)
    .bind(error)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Moves a stream's checkpoint and counters (in the transaction that follows ingest's
/// acknowledgement). `replay_id: None` keeps the position (a HubSpot inbox).
#[allow(clippy::too_many_arguments)]
pub async fn advance(
    conn: &mut PgConnection,
    tenant: &str,
    source: &str,
    stream: &str,
    replay_id: Option<&[u8]>,
    events_in: i64,
    submitted: i64,
    rejected: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE checkpoints SET replay_id = COALESCE($4, replay_id),
                checkpointed_at = CASE WHEN $4 IS NULL THEN checkpointed_at ELSE now() END,
                state = 'running', last_error = '',
                events_in = events_in + $5, submitted = submitted + $6, rejected = rejected + $7
          WHERE tenant_id = $1 AND source = $2 AND stream = $3",
    )
    .bind(tenant)
    .bind(source)
    .bind(stream)
    .bind(replay_id)
    .bind(events_in)
    .bind(submitted)
    .bind(rejected)
    .execute(conn)
    .await
    .map(|_| ())
}

/// A stored record: its fields, whether it is deleted, and the position of the last change
/// merged into it.
#[derive(Debug, Default)]
pub struct Record {
    pub fields: Fields,
    pub deleted: bool,
    pub position: Option<(i64, i32)>,
}

pub async fn record(
    conn: &mut PgConnection,
    tenant: &str,
    source: &str,
    object: &str,
    id: &str,
) -> sqlx::Result<Option<Record>> {
    let r = sqlx::query(
        "SELECT fields, deleted, commit_number, sequence_number FROM records WHERE tenant_id = $1 AND source = $2 AND object = $3 AND record_id = $4",
    )
    .bind(tenant)
    .bind(source)
    .bind(object)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(r.map(|r| {
        let f: sqlx::types::Json<Fields> = r.get(0);
        let cn: Option<i64> = r.get(2);
        let seq: Option<i32> = r.get(3);
        Record {
            fields: f.0,
            deleted: r.get(1),
            position: cn.zip(seq),
        }
    }))
}

#[allow(clippy::too_many_arguments)]
pub async fn put_record(
    conn: &mut PgConnection,
    tenant: &str,
    source: &str,
    object: &str,
    id: &str,
    parent: Option<&str>,
    fields: &Fields,
    deleted: bool,
    position: Option<(i64, i32)>,
) -> sqlx::Result<()> {
    let (cn, seq) = position.unzip();
    sqlx::query(
        "INSERT INTO records (tenant_id, source, object, record_id, parent_id, fields, deleted, commit_number, sequence_number)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (tenant_id, source, object, record_id) DO UPDATE
            SET parent_id = COALESCE(EXCLUDED.parent_id, records.parent_id),
                fields = EXCLUDED.fields, deleted = EXCLUDED.deleted,
                commit_number = EXCLUDED.commit_number, sequence_number = EXCLUDED.sequence_number,
                updated_at = now()",
    )
    .bind(tenant)
    .bind(source)
    .bind(object)
    .bind(id)
    .bind(parent)
    .bind(sqlx::types::Json(fields))
    .bind(deleted)
    .bind(cn)
    .bind(seq)
    .execute(conn)
    .await
    .map(|_| ())
}

/// The live child records (splits, line items) of a deal, in record id order.
pub async fn children(
    conn: &mut PgConnection,
    tenant: &str,
    source: &str,
    object: &str,
    parent: &str,
) -> sqlx::Result<Vec<Fields>> {
    let rows = sqlx::query(
        "SELECT fields FROM records WHERE tenant_id = $1 AND source = $2 AND object = $3
            AND parent_id = $4 AND NOT deleted ORDER BY record_id",
    )
    .bind(tenant)
    .bind(source)
    .bind(object)
    .bind(parent)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| r.get::<sqlx::types::Json<Fields>, _>(0).0)
        .collect())
}

pub async fn deal(
    conn: &mut PgConnection,
    tenant: &str,
    source: &str,
    id: &str,
) -> sqlx::Result<DealState> {
    let r = sqlx::query(
        "SELECT closed_amount, closed_currency, reversed FROM deals WHERE tenant_id = $1 AND source = $2 AND deal_id = $3",
    )
    .bind(tenant)
    .bind(source)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(match r {
        None => DealState::default(),
        Some(r) => {
            let amount: Option<Decimal> = r.get(0);
            let currency: Option<String> = r.get(1);
            DealState {
                closed: amount.zip(currency),
                reversed: r.get(2),
            }
        }
    })
}

pub async fn put_deal(
    conn: &mut PgConnection,
    tenant: &str,
    source: &str,
    id: &str,
    s: &DealState,
) -> sqlx::Result<()> {
    let (amount, currency) = s.closed.clone().unzip();
    sqlx::query(
        "INSERT INTO deals (tenant_id, source, deal_id, closed_amount, closed_currency, reversed)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (tenant_id, source, deal_id) DO UPDATE
            SET closed_amount = EXCLUDED.closed_amount, closed_currency = EXCLUDED.closed_currency,
                reversed = EXCLUDED.reversed",
    )
    .bind(tenant)
    .bind(source)
    .bind(id)
    .bind(amount)
    .bind(currency)
    .bind(s.reversed)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Where a problem came from.
pub struct Origin<'a> {
    pub tenant: &'a str,
    pub source: &'a str,
    pub stream: &'a str,
    pub crm_event_id: &'a str,
    pub record_id: &'a str,
}

pub async fn add_error(conn: &mut PgConnection, o: &Origin<'_>, p: &Problem) -> sqlx::Result<()> {
    tracing::warn!(
        tenant = o.tenant, source = o.source, stream = o.stream, crm_event = o.crm_event_id,
        record = o.record_id, field = %p.field, reason = p.reason.code(), message = %p.message,
        "CRM record not submitted"
    );
    crate::metrics::rejected(o.source, p.reason.code());
    sqlx::query(
        "INSERT INTO record_errors (tenant_id, source, stream, crm_event_id, record_id, field, reason, message)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(o.tenant)
    .bind(o.source)
    .bind(o.stream)
    .bind(o.crm_event_id)
    .bind(o.record_id)
    .bind(&p.field)
    .bind(p.reason.code())
    .bind(&p.message)
    .execute(conn)
    .await
    .map(|_| ())
}
