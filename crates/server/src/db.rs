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
