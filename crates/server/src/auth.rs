//! Tenant authentication, shared by every service.
//!
//! Callers send `authorization: Bearer spm_<key_id>_<secret>`. Ingest is the source of
//! truth for tenants and keys and publishes them on `spm.tenants.v1` (only the SHA-256 of
//! a key travels); every service keeps the same two tables in its own schema, filled by
//! [`apply_tenant_event`] from that topic, and authenticates against them. The tenant of a
//! request always comes from its key, never from the payload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use spm_proto::events::v1::event_envelope::Payload;
use spm_proto::events::v1::{ApiKeyRole, EventEnvelope};
use sqlx::{PgConnection, PgPool};

use crate::error::ApiError;

/// `(version, description, sql)` of the auth tables, run by [`crate::db::migrate`].
pub const MIGRATIONS: &[(i64, &str, &str)] = &[(
    2,
    "auth tenants and keys",
    r#"
CREATE TABLE auth_tenants (
    tenant_id               text        PRIMARY KEY,
    name                    text        NOT NULL,
    time_zone               text        NOT NULL,
    fiscal_year_start_month integer     NOT NULL,
    base_currency           text        NOT NULL,
    active                  boolean     NOT NULL,
    updated_at              timestamptz NOT NULL
);

CREATE TABLE auth_keys (
    key_id     text        PRIMARY KEY,
    tenant_id  text        NOT NULL,
    key_sha256 text        NOT NULL,
    role       text        NOT NULL,
    label      text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX auth_keys_tenant ON auth_keys (tenant_id);
"#,
)];

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Send events, read the tenant's data.
    Integration,
    /// Also administer the tenant (goals, plans, keys, FX rates).
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Integration => "integration",
            Self::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "integration" => Some(Self::Integration),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn from_proto(r: ApiKeyRole) -> Option<Self> {
        match r {
            ApiKeyRole::Integration => Some(Self::Integration),
            ApiKeyRole::Admin => Some(Self::Admin),
            ApiKeyRole::Unspecified => None,
        }
    }

    pub fn to_proto(self) -> ApiKeyRole {
        match self {
            Self::Integration => ApiKeyRole::Integration,
            Self::Admin => ApiKeyRole::Admin,
        }
    }
}

/// The authenticated caller of a request (in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant_id: String,
    pub key_id: String,
    pub role: Role,
}

impl Caller {
    /// `PERMISSION_DENIED` unless the key is an admin key.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Integration => Err(ApiError::PermissionDenied(
                "this call needs an ADMIN key of the tenant".into(),
            )),
        }
    }
}

/// The caller of a request, as put there by the gRPC edge layer.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, ApiError> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or(ApiError::Unauthenticated("missing credentials"))
}

/// A freshly generated key: the full key string is shown to its creator once.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key_id: String,
    pub key: String,
    pub sha256: String,
}

/// Generates a key `spm_<16 hex>_<64 hex>` (256 bits of secret).
pub fn generate_key() -> NewKey {
    let id: [u8; 8] = rand::random();
    let secret: [u8; 32] = rand::random();
    let key_id = hex::encode(id);
    let key = format!("spm_{key_id}_{}", hex::encode(secret));
    NewKey {
        sha256: sha256_hex(&key),
        key_id,
        key,
    }
}

/// A random secret (webhook signing secrets, admin tokens): 64 hex characters.
pub fn generate_secret() -> String {
    let secret: [u8; 32] = rand::random();
    hex::encode(secret)
}

/// Lower-case hex SHA-256 of `s`. Keys are 256-bit random, so a plain hash is enough (no
/// password-hashing work factor is needed against guessing).
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn key_id_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("spm_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16
        && secret.len() == 64
        && id
            .bytes()
            .chain(secret.bytes())
            .all(|b| b.is_ascii_hexdigit()))
    .then_some(id)
}

#[derive(Debug, Clone)]
struct Entry {
    tenant_id: String,
    sha256: String,
    role: Role,
    usable: bool,
}

/// Authenticates keys against the service's `auth_keys` table, caching hits briefly: a
/// revoked key stops working within [`KeyStore::CACHE_TTL`].
#[derive(Clone)]
pub struct KeyStore {
    pool: PgPool,
    cache: Arc<Mutex<HashMap<String, (Instant, Entry)>>>,
}

impl KeyStore {
    pub const CACHE_TTL: Duration = Duration::from_secs(5);

    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Authenticates the `authorization` header value.
    pub async fn authenticate_header(&self, value: Option<&str>) -> Result<Caller, ApiError> {
        let value = value.ok_or(ApiError::Unauthenticated("missing authorization header"))?;
        let key = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(ApiError::Unauthenticated(
                "authorization must be 'Bearer <api key>'",
            ))?
            .trim();
        self.authenticate(key).await
    }

    /// Authenticates a key string.
    pub async fn authenticate(&self, key: &str) -> Result<Caller, ApiError> {
        let bad = ApiError::Unauthenticated("invalid API key");
        let key_id = key_id_of(key).ok_or_else(|| bad.clone())?;
        let entry = match self.cached(key_id) {
            Some(e) => e,
            None => {
                let e = self.load(key_id).await?.ok_or_else(|| bad.clone())?;
                self.cache
                    .lock()
                    .expect("key cache lock")
                    .insert(key_id.to_owned(), (Instant::now(), e.clone()));
                e
            }
        };
        if !entry.usable || !constant_time_eq(sha256_hex(key).as_bytes(), entry.sha256.as_bytes()) {
            return Err(bad);
        }
        Ok(Caller {
            tenant_id: entry.tenant_id,
            key_id: key_id.to_owned(),
            role: entry.role,
        })
    }

    fn cached(&self, key_id: &str) -> Option<Entry> {
        let cache = self.cache.lock().expect("key cache lock");
        cache
            .get(key_id)
            .filter(|(at, _)| at.elapsed() < Self::CACHE_TTL)
            .map(|(_, e)| e.clone())
    }

    async fn load(&self, key_id: &str) -> Result<Option<Entry>, ApiError> {
        let row: Option<(String, String, String, bool, Option<bool>)> = sqlx::query_as(
            "SELECT k.tenant_id, k.key_sha256, k.role, k.revoked_at IS NULL, t.active
               FROM auth_keys k LEFT JOIN auth_tenants t USING (tenant_id)
              WHERE k.key_id = $1",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.and_then(|(tenant_id, sha256, role, not_revoked, active)| {
                Some(Entry {
                    tenant_id,
                    sha256,
                    role: Role::parse(&role)?,
                    // A key may arrive before its tenant (different partitions of the compacted
                    // topic); an unknown tenant is not a deactivated one.
                    usable: not_revoked && active.unwrap_or(true),
                })
            }),
        )
    }
}

/// Applies a tenant or API key event from `spm.tenants.v1` to the auth tables. Returns
/// false for any other event. Idempotent and safe under redelivery.
pub async fn apply_tenant_event(
    conn: &mut PgConnection,
    ev: &EventEnvelope,
) -> Result<bool, sqlx::Error> {
    let at = ev
        .occurred_at
        .as_ref()
        .and_then(spm_proto::ext::datetime)
        .unwrap_or_default();
    match &ev.payload {
        Some(Payload::TenantUpserted(t)) => {
            forget_calendar(&ev.tenant_id);
            let ctx = t.context.clone().unwrap_or_default();
            sqlx::query(
                "INSERT INTO auth_tenants (tenant_id, name, time_zone, fiscal_year_start_month, base_currency, active, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (tenant_id) DO UPDATE SET
                   name = EXCLUDED.name, time_zone = EXCLUDED.time_zone,
                   fiscal_year_start_month = EXCLUDED.fiscal_year_start_month,
                   base_currency = EXCLUDED.base_currency, active = EXCLUDED.active,
                   updated_at = EXCLUDED.updated_at
                 WHERE auth_tenants.updated_at <= EXCLUDED.updated_at",
            )
            .bind(&ev.tenant_id)
            .bind(&t.name)
            .bind(&ctx.time_zone)
            .bind(i32::try_from(ctx.fiscal_year_start_month).unwrap_or(1))
            .bind(&ctx.base_currency)
            .bind(t.active)
            .bind(at)
            .execute(conn)
            .await?;
            Ok(true)
        }
        Some(Payload::ApiKeyIssued(k)) => {
            let role = Role::from_proto(k.role()).unwrap_or(Role::Integration);
            sqlx::query(
                "INSERT INTO auth_keys (key_id, tenant_id, key_sha256, role, label, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (key_id) DO UPDATE SET
                   tenant_id = EXCLUDED.tenant_id, key_sha256 = EXCLUDED.key_sha256,
                   role = EXCLUDED.role, label = EXCLUDED.label",
            )
            .bind(&k.key_id)
            .bind(&ev.tenant_id)
            .bind(&k.key_sha256)
            .bind(role.as_str())
            .bind(&k.label)
            .bind(at)
            .execute(conn)
            .await?;
            Ok(true)
        }
        Some(Payload::ApiKeyRevoked(k)) => {
            // A revocation wins over any issue of the same key, whatever the order.
            sqlx::query(
                "INSERT INTO auth_keys (key_id, tenant_id, key_sha256, role, revoked_at)
                 VALUES ($1, $2, '', 'integration', $3)
                 ON CONFLICT (key_id) DO UPDATE SET revoked_at = COALESCE(auth_keys.revoked_at, EXCLUDED.revoked_at)",
            )
            .bind(&k.key_id)
            .bind(&ev.tenant_id)
            .bind(at)
            .execute(conn)
            .await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The calendar of a tenant as this service knows it (from `spm.tenants.v1`).
type CalendarEntry = Option<(spm_core::period::Calendar, String)>;

/// Tenants' calendars and base currencies, read on every query: cached for a few seconds.
/// Applying a tenant change here forgets the entry at once; other instances of the service
/// see it within [`CALENDAR_TTL`].
static CALENDARS: std::sync::LazyLock<Mutex<HashMap<String, (Instant, CalendarEntry)>>> =
    std::sync::LazyLock::new(Mutex::default);

pub const CALENDAR_TTL: Duration = Duration::from_secs(5);

fn forget_calendar(tenant_id: &str) {
    CALENDARS.lock().expect("calendar cache").remove(tenant_id);
}

/// A tenant's fiscal calendar and base currency (None for an unknown tenant).
pub async fn tenant_calendar(pool: &PgPool, tenant_id: &str) -> Result<CalendarEntry, sqlx::Error> {
    if let Some((at, entry)) = CALENDARS.lock().expect("calendar cache").get(tenant_id)
        && at.elapsed() < CALENDAR_TTL
    {
        return Ok(entry.clone());
    }
    let row: Option<(String, i32, String)> = sqlx::query_as(
        "SELECT time_zone, fiscal_year_start_month, base_currency FROM auth_tenants WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_optional(pool)
    .await?;
    let entry = row.and_then(|(tz, m, cur)| {
        let cal = spm_core::period::Calendar::new(&tz, u32::try_from(m).ok()?).ok()?;
        Some((cal, cur))
    });
    let mut cache = CALENDARS.lock().expect("calendar cache");
    if cache.len() > 100_000 {
        cache.clear();
    }
    cache.insert(tenant_id.to_owned(), (Instant::now(), entry.clone()));
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_hash() {
        let k = generate_key();
        assert_eq!(key_id_of(&k.key), Some(k.key_id.as_str()));
        assert_eq!(k.sha256, sha256_hex(&k.key));
        assert_ne!(generate_key().key, k.key);
    }

    #[test]
    fn malformed_keys_are_rejected_before_any_lookup() {
        for bad in [
            "",
            "spm_",
            "spm_abc_def",
            "xyz_0123456789abcdef_00",
            &format!("spm_{}_{}", "g".repeat(16), "0".repeat(64)),
        ] {
            assert_eq!(key_id_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
