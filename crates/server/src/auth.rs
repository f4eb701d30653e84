//! Authentication, shared by every service.
//!
//! Platforms send `authorization: Bearer spm_<key_id>_<secret>`; people send the JWT their
//! company's OpenID Connect provider issued them (`authorization: Bearer eyJ...`). Ingest is
//! the source of truth for tenants, keys, identity providers and people and publishes them
//! on `spm.tenants.v1` (only the SHA-256 of a key travels); every service keeps the same
//! tables in its own schema, filled by [`apply_tenant_event`] from that topic, and
//! authenticates against them. The tenant of a request always comes from its credential
//! (the key, or the token's issuer and audience), never from the payload.
//!
//! What each [`Role`] may see is decided in [`crate::access`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use spm_proto::events::v1::event_envelope::Payload;
use spm_proto::events::v1::{ApiKeyRole, EventEnvelope, PeerView, PersonRole};
use sqlx::{PgConnection, PgPool};

use crate::error::ApiError;
use crate::oidc::{self, Jwks, KeyError, TokenError};

/// `(version, description, sql)` of the auth tables, run by [`crate::db::migrate`].
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
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
    ),
    (
        4,
        "auth identity providers, people and the leaderboard peer view",
        r#"
ALTER TABLE auth_tenants ADD COLUMN peer_view text NOT NULL DEFAULT 'names';

CREATE TABLE auth_idps (
    tenant_id    text        PRIMARY KEY,
    issuer       text        NOT NULL,
    audience     text        NOT NULL,
    person_claim text        NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX auth_idps_issuer ON auth_idps (issuer);

CREATE TABLE auth_people (
    tenant_id    text        NOT NULL,
    login        text        NOT NULL,
    role         text        NOT NULL,
    rep_id       text        NOT NULL DEFAULT '',
    active       boolean     NOT NULL,
    display_name text        NOT NULL DEFAULT '',
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, login)
);
"#,
    ),
];

/// What a caller may do: the two roles of API keys, and the five of people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Key: send events, read the tenant's data.
    Integration,
    /// Key: also administer the tenant (goals, plans, keys, FX rates, people).
    Admin,
    /// Person: own data only.
    Rep,
    /// Person: own data and the reporting subtree.
    Manager,
    /// Person: the tenant's plans, goals, scorecards, periods and disputes; reads every rep.
    CompAdmin,
    /// Person: reads everything, changes nothing.
    Finance,
    /// Person: reads everything, changes nothing.
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Integration => "integration",
            Self::Admin => "admin",
            Self::Rep => "rep",
            Self::Manager => "manager",
            Self::CompAdmin => "comp_admin",
            Self::Finance => "finance",
            Self::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Integration,
            Self::Admin,
            Self::Rep,
            Self::Manager,
            Self::CompAdmin,
            Self::Finance,
            Self::Auditor,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    /// An API key's role (people's roles are not key roles).
    pub fn is_key(self) -> bool {
        matches!(self, Self::Integration | Self::Admin)
    }

    pub fn from_person_proto(r: PersonRole) -> Option<Self> {
        match r {
            PersonRole::Rep => Some(Self::Rep),
            PersonRole::Manager => Some(Self::Manager),
            PersonRole::CompAdmin => Some(Self::CompAdmin),
            PersonRole::Finance => Some(Self::Finance),
            PersonRole::Auditor => Some(Self::Auditor),
            PersonRole::Unspecified => None,
        }
    }

    pub fn to_person_proto(self) -> PersonRole {
        match self {
            Self::Rep => PersonRole::Rep,
            Self::Manager => PersonRole::Manager,
            Self::CompAdmin => PersonRole::CompAdmin,
            Self::Finance => PersonRole::Finance,
            Self::Auditor => PersonRole::Auditor,
            Self::Integration | Self::Admin => PersonRole::Unspecified,
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
            Self::Admin => ApiKeyRole::Admin,
            _ => ApiKeyRole::Integration,
        }
    }
}

/// A signed-in person (callers with a token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// The person claim's value, lower case.
    pub login: String,
    /// The rep this person is, if any (always set for reps and managers).
    pub rep_id: Option<String>,
    pub display_name: String,
}

/// The authenticated caller of a request (in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant_id: String,
    /// The API key's id, or `person:<login>` for a person.
    pub key_id: String,
    pub role: Role,
    pub person: Option<Person>,
}

impl Caller {
    /// A caller authenticated by an API key.
    pub fn key(tenant_id: impl Into<String>, key_id: impl Into<String>, role: Role) -> Self {
        Self {
            tenant_id: tenant_id.into(),
            key_id: key_id.into(),
            role,
            person: None,
        }
    }

    /// Who did it, for audit fields (`opened_by`, `resolved_by`): the person's login, or
    /// `key:<id>`.
    pub fn actor(&self) -> String {
        match &self.person {
            Some(p) => p.login.clone(),
            None => format!("key:{}", self.key_id),
        }
    }

    /// The rep a person is (None for keys and for people without a rep).
    pub fn own_rep(&self) -> Option<&str> {
        self.person.as_ref().and_then(|p| p.rep_id.as_deref())
    }
}

/// The caller of a request, as put there by the gRPC edge layer.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, ApiError> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or(ApiError::Unauthenticated("missing credentials".into()))
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

/// A tenant's identity provider as the auth tables know it.
#[derive(Debug, Clone)]
struct Idp {
    tenant_id: String,
    audience: String,
    person_claim: String,
}

type Cache<K, V> = Arc<Mutex<HashMap<K, (Instant, V)>>>;

fn cached<K: std::hash::Hash + Eq, V: Clone>(cache: &Cache<K, V>, k: &K) -> Option<V> {
    let c = cache.lock().expect("auth cache lock");
    c.get(k)
        .filter(|(at, _)| at.elapsed() < KeyStore::CACHE_TTL)
        .map(|(_, v)| v.clone())
}

fn remember<K: std::hash::Hash + Eq, V>(cache: &Cache<K, V>, k: K, v: V) {
    let mut c = cache.lock().expect("auth cache lock");
    if c.len() > 100_000 {
        c.clear();
    }
    c.insert(k, (Instant::now(), v));
}

/// Authenticates API keys against the service's `auth_keys` table and people's tokens
/// against their tenant's identity provider and `auth_people`/`org_reps`, caching hits
/// briefly: a revoked key, a disabled person or a changed provider takes effect within
/// [`KeyStore::CACHE_TTL`].
#[derive(Clone)]
pub struct KeyStore {
    pool: PgPool,
    cache: Cache<String, Entry>,
    idps: Cache<String, Vec<Idp>>,
    people: Cache<(String, String), Result<Caller, ApiError>>,
    /// Tokens verified in the last [`KeyStore::CACHE_TTL`], by their SHA-256: the tenant,
    /// the person's login and `exp`. A client reuses its token for many calls; its
    /// signature is checked once per TTL, its expiry on every call.
    verified: Cache<[u8; 32], (String, String, i64)>,
    jwks: Jwks,
}

impl KeyStore {
    pub const CACHE_TTL: Duration = Duration::from_secs(5);

    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            cache: Arc::default(),
            idps: Arc::default(),
            people: Arc::default(),
            verified: Arc::default(),
            jwks: Jwks::new(),
        }
    }

    /// Authenticates the `authorization` header value: an API key or a person's JWT.
    pub async fn authenticate_header(&self, value: Option<&str>) -> Result<Caller, ApiError> {
        let value = value.ok_or(ApiError::Unauthenticated(
            "missing authorization header".into(),
        ))?;
        let credential = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(ApiError::Unauthenticated(
                "authorization must be 'Bearer <api key or token>'".into(),
            ))?
            .trim();
        if oidc::looks_like_jwt(credential) {
            self.authenticate_token(credential).await
        } else {
            self.authenticate(credential).await
        }
    }

    async fn idps_of(&self, issuer: &str) -> Result<Vec<Idp>, ApiError> {
        if let Some(v) = cached(&self.idps, &issuer.to_owned()) {
            return Ok(v);
        }
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT i.tenant_id, i.audience, i.person_claim FROM auth_idps i
               LEFT JOIN auth_tenants t USING (tenant_id)
              WHERE i.issuer = $1 AND i.issuer <> '' AND COALESCE(t.active, true)",
        )
        .bind(issuer)
        .fetch_all(&self.pool)
        .await?;
        let v: Vec<Idp> = rows
            .into_iter()
            .map(|(tenant_id, audience, person_claim)| Idp {
                tenant_id,
                audience,
                person_claim,
            })
            .collect();
        remember(&self.idps, issuer.to_owned(), v.clone());
        Ok(v)
    }

    /// Authenticates a person's token: its issuer and audience pick the tenant, the issuer's
    /// published keys verify it, and its person claim names the person.
    pub async fn authenticate_token(&self, token: &str) -> Result<Caller, ApiError> {
        let bad = |e: TokenError| ApiError::Unauthenticated(e.to_string().into());
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((tenant, login, exp)) = cached(&self.verified, &digest) {
            let now = chrono::Utc::now().timestamp();
            if now > exp.saturating_add(oidc::LEEWAY) {
                return Err(bad(TokenError::Expired(exp)));
            }
            return self.person(&tenant, &login).await;
        }
        self.verify_token(token, digest).await
    }

    /// Verifies a token not seen in the last [`KeyStore::CACHE_TTL`] (`digest`: its SHA-256).
    async fn verify_token(&self, token: &str, digest: [u8; 32]) -> Result<Caller, ApiError> {
        let bad = |e: TokenError| ApiError::Unauthenticated(e.to_string().into());
        let head = oidc::peek(token).map_err(bad)?;
        let idps = self.idps_of(&head.iss).await?;
        if idps.is_empty() {
            return Err(bad(TokenError::UnknownIssuer(head.iss)));
        }
        let idp = idps
            .iter()
            .find(|i| head.aud.contains(&i.audience))
            .ok_or_else(|| bad(TokenError::NoTenantForAudience))?;
        let key = self
            .jwks
            .key(&head.iss, head.kid.as_deref(), &head.alg)
            .await
            .map_err(|e| match e {
                KeyError::Unknown(kid) => bad(TokenError::UnknownKey(kid)),
                KeyError::Unreachable(why) => ApiError::unavailable(format!(
                    "the identity provider's keys cannot be fetched: {why}"
                )),
            })?;
        let now = chrono::Utc::now().timestamp();
        let claims = oidc::verify(
            token,
            now,
            &oidc::Expect {
                issuer: &head.iss,
                audience: &idp.audience,
            },
            &key,
        )
        .map_err(bad)?;
        let login = match claims.get(&idp.person_claim) {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.trim().to_lowercase(),
            _ => {
                return Err(ApiError::Unauthenticated(
                    format!(
                        "the token has no {:?} claim, which names the person for this tenant",
                        idp.person_claim
                    )
                    .into(),
                ));
            }
        };
        if idp.person_claim == "email"
            && claims.get("email_verified") == Some(&serde_json::Value::Bool(false))
        {
            return Err(ApiError::Unauthenticated(
                "the token's e-mail address is not verified by the identity provider".into(),
            ));
        }
        // verify() checked that exp is a number.
        let exp = claims
            .get("exp")
            .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f.floor() as i64)))
            .unwrap_or(now);
        remember(
            &self.verified,
            digest,
            (idp.tenant_id.clone(), login.clone(), exp),
        );
        self.person(&idp.tenant_id, &login).await
    }

    /// The caller a signed-in person of `tenant` with `login` is.
    async fn person(&self, tenant: &str, login: &str) -> Result<Caller, ApiError> {
        let k = (tenant.to_owned(), login.to_owned());
        if let Some(v) = cached(&self.people, &k) {
            return v;
        }
        let v = resolve_person(&self.pool, tenant, login).await;
        if !matches!(v, Err(ApiError::Internal(_) | ApiError::Unavailable { .. })) {
            remember(&self.people, k, v.clone());
        }
        v
    }

    /// Authenticates a key string.
    pub async fn authenticate(&self, key: &str) -> Result<Caller, ApiError> {
        let bad = ApiError::Unauthenticated("invalid API key".into());
        let key_id = key_id_of(key).ok_or_else(|| bad.clone())?;
        let entry = match self.cached(key_id) {
            Some(e) => e,
            None => {
                let e = self.load(key_id).await?.ok_or_else(|| bad.clone())?;
                remember(&self.cache, key_id.to_owned(), e.clone());
                e
            }
        };
        if !entry.usable || !constant_time_eq(sha256_hex(key).as_bytes(), entry.sha256.as_bytes()) {
            return Err(bad);
        }
        Ok(Caller::key(entry.tenant_id, key_id, entry.role))
    }

    fn cached(&self, key_id: &str) -> Option<Entry> {
        cached(&self.cache, &key_id.to_owned())
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
                    role: Role::parse(&role).filter(|r| r.is_key())?,
                    // A key may arrive before its tenant (different partitions of the compacted
                    // topic); an unknown tenant is not a deactivated one.
                    usable: not_revoked && active.unwrap_or(true),
                })
            }),
        )
    }
}

/// A rep as a person: id, name, active, and whether anyone reports to them or they manage
/// a team (then they sign in as a manager).
const REP_OF_PERSON: &str = "SELECT r.rep_id, r.display_name, r.active,
        EXISTS (SELECT 1 FROM org_reps x WHERE x.tenant_id = r.tenant_id AND x.manager_id = r.rep_id)
     OR EXISTS (SELECT 1 FROM org_teams t WHERE t.tenant_id = r.tenant_id AND t.manager_id = r.rep_id)
   FROM org_reps r";

/// Who a signed-in person is: an explicit grant in `auth_people` (role, optional rep,
/// disabled), else the rep whose login (or, without one, e-mail) is `login`, as a manager
/// when anyone reports to them or they manage a team, as a rep otherwise.
async fn resolve_person(pool: &PgPool, tenant: &str, login: &str) -> Result<Caller, ApiError> {
    let denied = |m: String| Err(ApiError::PermissionDenied(m));
    let grant: Option<(String, String, bool, String)> = sqlx::query_as(
        "SELECT role, rep_id, active, display_name FROM auth_people WHERE tenant_id = $1 AND login = $2",
    )
    .bind(tenant)
    .bind(login)
    .fetch_optional(pool)
    .await?;
    if let Some((_, _, false, _)) = &grant {
        return denied(format!("{login} is disabled in this tenant"));
    }
    // (rep_id, display_name, active, manages anyone)
    let reps: Vec<(String, String, bool, bool)> = match grant.as_ref().map(|g| g.1.as_str()) {
        Some(rep) if !rep.is_empty() => {
            sqlx::query_as(&format!(
                "{REP_OF_PERSON} WHERE r.tenant_id = $1 AND r.rep_id = $2"
            ))
            .bind(tenant)
            .bind(rep)
            .fetch_all(pool)
            .await?
        }
        _ => {
            sqlx::query_as(&format!(
                "{REP_OF_PERSON}
                  WHERE r.tenant_id = $1 AND lower(CASE WHEN r.login <> '' THEN r.login ELSE r.email END) = $2
                  LIMIT 2"
            ))
            .bind(tenant)
            .bind(login)
            .fetch_all(pool)
            .await?
        }
    };
    if reps.len() > 1 {
        return denied(format!(
            "{login} is the login of more than one rep of this tenant; an admin must give each rep its own login"
        ));
    }
    let rep = reps.into_iter().next();
    let role = match (&grant, &rep) {
        (Some((role, ..)), _) => Role::parse(role)
            .filter(|r| !r.is_key())
            .ok_or_else(|| ApiError::Internal(format!("stored person role {role:?}")))?,
        (None, Some((.., true))) => Role::Manager,
        (None, Some(_)) => Role::Rep,
        (None, None) => {
            return denied(format!(
                "signed in as {login}, but no rep or person of this tenant has that login"
            ));
        }
    };
    if matches!(role, Role::Rep | Role::Manager) {
        match &rep {
            None => {
                return denied(format!(
                    "{login} has the role {} but no rep of this tenant is mapped to them",
                    role.as_str()
                ));
            }
            Some((_, _, false, _)) => {
                return denied(format!("{login}'s rep is inactive in this tenant"));
            }
            Some(_) => {}
        }
    }
    let display_name = match (&grant, &rep) {
        (Some((_, _, _, n)), _) if !n.is_empty() => n.clone(),
        (_, Some((_, n, _, _))) => n.clone(),
        _ => String::new(),
    };
    Ok(Caller {
        tenant_id: tenant.to_owned(),
        key_id: format!("person:{login}"),
        role,
        person: Some(Person {
            login: login.to_owned(),
            rep_id: rep.map(|r| r.0),
            display_name,
        }),
    })
}

/// The stored form of a leaderboard peer view.
pub fn peer_view_str(v: PeerView) -> &'static str {
    match v {
        PeerView::Unspecified | PeerView::Names => "names",
        PeerView::RanksOnly => "ranks_only",
        PeerView::Full => "full",
    }
}

/// What reps and managers of `tenant` see of peers on a leaderboard.
pub async fn peer_view(pool: &PgPool, tenant: &str) -> Result<PeerView, sqlx::Error> {
    let v: Option<String> =
        sqlx::query_scalar("SELECT peer_view FROM auth_tenants WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(pool)
            .await?;
    Ok(match v.as_deref() {
        Some("ranks_only") => PeerView::RanksOnly,
        Some("full") => PeerView::Full,
        _ => PeerView::Names,
    })
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
                "INSERT INTO auth_tenants (tenant_id, name, time_zone, fiscal_year_start_month, base_currency, active, updated_at, peer_view)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (tenant_id) DO UPDATE SET
                   name = EXCLUDED.name, time_zone = EXCLUDED.time_zone,
                   fiscal_year_start_month = EXCLUDED.fiscal_year_start_month,
                   base_currency = EXCLUDED.base_currency, active = EXCLUDED.active,
                   updated_at = EXCLUDED.updated_at, peer_view = EXCLUDED.peer_view
                 WHERE auth_tenants.updated_at <= EXCLUDED.updated_at",
            )
            .bind(&ev.tenant_id)
            .bind(&t.name)
            .bind(&ctx.time_zone)
            .bind(i32::try_from(ctx.fiscal_year_start_month).unwrap_or(1))
            .bind(&ctx.base_currency)
            .bind(t.active)
            .bind(at)
            .bind(peer_view_str(t.leaderboard_peer_view()))
            .execute(conn)
            .await?;
            Ok(true)
        }
        Some(Payload::IdentityProviderSet(i)) => {
            sqlx::query(
                "INSERT INTO auth_idps (tenant_id, issuer, audience, person_claim, updated_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (tenant_id) DO UPDATE SET
                   issuer = EXCLUDED.issuer, audience = EXCLUDED.audience,
                   person_claim = EXCLUDED.person_claim, updated_at = EXCLUDED.updated_at
                 WHERE auth_idps.updated_at <= EXCLUDED.updated_at",
            )
            .bind(&ev.tenant_id)
            .bind(&i.issuer)
            .bind(&i.audience)
            .bind(&i.person_claim)
            .bind(at)
            .execute(conn)
            .await?;
            Ok(true)
        }
        Some(Payload::PersonUpserted(p)) => {
            let role = Role::from_person_proto(p.role()).unwrap_or(Role::Rep);
            sqlx::query(
                "INSERT INTO auth_people (tenant_id, login, role, rep_id, active, display_name, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (tenant_id, login) DO UPDATE SET
                   role = EXCLUDED.role, rep_id = EXCLUDED.rep_id, active = EXCLUDED.active,
                   display_name = EXCLUDED.display_name, updated_at = EXCLUDED.updated_at
                 WHERE auth_people.updated_at <= EXCLUDED.updated_at",
            )
            .bind(&ev.tenant_id)
            .bind(p.login.to_lowercase())
            .bind(role.as_str())
            .bind(&p.rep_id)
            .bind(p.active)
            .bind(&p.display_name)
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
    fn roles_round_trip_and_keys_are_told_apart() {
        for r in [
            Role::Integration,
            Role::Admin,
            Role::Rep,
            Role::Manager,
            Role::CompAdmin,
            Role::Finance,
            Role::Auditor,
        ] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(r.is_key(), matches!(r, Role::Integration | Role::Admin));
            if !r.is_key() {
                assert_eq!(Role::from_person_proto(r.to_person_proto()), Some(r));
            }
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
