//! The Postgres pool of a service, confined to the service's own schema, and its migrations
//! (the shared plumbing tables first, then the service's own, versions from 100).

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, PgPool};

/// Connects to `url` with every connection's `search_path` set to `schema`, creating the
/// schema when missing.
pub async fn connect(url: &str, schema: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    assert!(
        schema.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
        "schema names are lower-case identifiers"
    );
    let base = PgConnectOptions::from_str(url)?.log_statements(tracing::log::LevelFilter::Trace);
    {
        let mut c: sqlx::PgConnection = sqlx::Connection::connect_with(&base).await?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&mut c)
            .await?;
        sqlx::Connection::close(c).await?;
    }
    let opts = base.options([("search_path", schema)]);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(opts)
        .await
}

/// Runs the shared plumbing migrations followed by `service` migrations.
pub async fn migrate(pool: &PgPool, service: &Migrator) -> Result<(), sqlx::migrate::MigrateError> {
    let mut all: Vec<Migration> = shared_migrations();
    for m in service.iter() {
        assert!(m.version >= 100, "service migrations are numbered from 100");
        all.push(m.clone());
    }
    let migrator = Migrator {
        migrations: Cow::Owned(all),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    };
    migrator.run(pool).await
}

fn shared_migrations() -> Vec<Migration> {
    spm_bus::schema::MIGRATIONS
        .iter()
        .chain(crate::auth::MIGRATIONS)
        .chain(crate::org::MIGRATIONS)
        .chain(crate::audit::MIGRATIONS)
        .map(|(version, desc, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*desc),
                MigrationType::Simple,
                Cow::Borrowed(*sql),
                false,
            )
        })
        .collect()
}

/// How often [`keep_statistics`] looks at the service's tables.
pub const STATISTICS_EVERY: Duration = Duration::from_secs(2);

/// Rows a table must have grown by since its last analyze before [`keep_statistics`]
/// analyzes it again (the least of them; see [`statistics_due`]).
pub const ANALYZE_MIN_ROWS: i64 = 1_000;

/// Whether a table whose statistics describe `reltuples` rows (-1: never analyzed) and
/// that now holds about `live` rows should be analyzed now: when it has grown by at least
/// [`ANALYZE_MIN_ROWS`] and by half the rows its statistics know of. A table filling from
/// empty is analyzed at ~1k, 2k, 3k, 4.5k, 7k... rows (a logarithmic number of times in
/// all); a table that churns without growing (an outbox, heads updated in place) and a
/// large, steady table are left to autovacuum.
#[must_use]
pub fn statistics_due(reltuples: f64, live: i64) -> bool {
    // Row counts are far below 2^53: the conversion is exact.
    #[allow(clippy::cast_precision_loss)]
    let live = live as f64;
    let known = reltuples.max(0.0);
    #[allow(clippy::cast_precision_loss)]
    let floor = ANALYZE_MIN_ROWS as f64;
    live - known >= floor && live >= 1.5 * known
}

/// Analyzes the tables of the pool's schema that [`statistics_due`] says have outgrown
/// their statistics; returns the tables analyzed.
///
/// Why: autovacuum first looks at a database up to `autovacuum_naptime` (a minute by
/// default) after it changes. A table filled from empty in that minute (a new install's
/// back-fill, a month-end load, a rebuild) is planned as if it held a handful of rows: the
/// incentive's per-batch reads then walk the wrong index, and the same 100,000-deal apply
/// took Postgres 58 CPU-s instead of 20 (issue #21).
pub async fn analyze_due(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String, f32, i64)> = sqlx::query_as(
        "SELECT c.relname::text, c.reltuples, s.n_live_tup
           FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
          WHERE s.schemaname = current_schema() AND s.n_live_tup >= $1",
    )
    .bind(ANALYZE_MIN_ROWS)
    .fetch_all(pool)
    .await?;
    let mut done = Vec::new();
    for (table, reltuples, live) in rows {
        if !statistics_due(f64::from(reltuples), live) {
            continue;
        }
        // relname from the catalogue, quoted as an identifier.
        let quoted = format!("\"{}\"", table.replace('"', "\"\""));
        sqlx::query(&format!("ANALYZE {quoted}"))
            .execute(pool)
            .await?;
        tracing::debug!(table, live, reltuples, "analyzed");
        done.push(table);
    }
    Ok(done)
}

/// Runs [`analyze_due`] every [`STATISTICS_EVERY`] until `cancel`; a failure is logged
/// and retried on the next round (statistics are an optimisation, never a reason to stop).
pub async fn keep_statistics(pool: PgPool, cancel: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(STATISTICS_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(e) = analyze_due(&pool).await {
            tracing::warn!(error = %e, "keeping table statistics");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_are_due_when_a_table_outgrows_them() {
        // Never analyzed: once a thousand rows have come in.
        assert!(!statistics_due(-1.0, 999));
        assert!(statistics_due(-1.0, 1_000));
        // Analyzed at 10,000 rows: again at 15,000, not before.
        assert!(!statistics_due(10_000.0, 14_999));
        assert!(statistics_due(10_000.0, 15_000));
        // Small tables still wait for the floor.
        assert!(!statistics_due(100.0, 900));
        assert!(statistics_due(100.0, 1_100));
        // A table that churns without growing (an outbox drained as it fills) is never due.
        assert!(!statistics_due(0.0, 0));
        assert!(!statistics_due(50.0, 40));
        // Large steady tables are autovacuum's: 1% growth is not enough.
        assert!(!statistics_due(10_000_000.0, 10_100_000));
    }
}
