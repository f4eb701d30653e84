//! OpenID Connect bearer tokens (JWS compact serialisation, RFC 7515/7519).
//!
//! [`verify`] is the pure check of one token against an issuer's keys: the algorithm must be
//! one of [`ALGORITHMS`] (asymmetric only, so neither `none` nor an HMAC keyed with a public
//! key can pass), the key must be of that algorithm's type, the signature must hold, and
//! `iss`, `aud`, `exp` and `nbf` must match with [`LEEWAY`] of clock skew.
//!
//! [`Jwks`] fetches and caches the issuers' key sets: discovered from
//! `<issuer>/.well-known/openid-configuration`, refreshed when a token names a key id it
//! does not know (a provider rotating its keys) at most once per [`Jwks::MIN_REFRESH`], and
//! re-read every [`Jwks::MAX_AGE`]. When the provider cannot be reached the keys already
//! known keep working.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The signature algorithms accepted. Symmetric (`HS*`) and `none` are never accepted.
pub const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY: i64 = 30;

/// Longest token considered (header, claims and signature).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was refused. The message names the problem without echoing the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the bearer token is not a JWT (three base64url parts separated by dots)")]
    Malformed,
    #[error("the token's algorithm {0:?} is not accepted (allowed: {allowed})", allowed = ALGORITHMS.join(", "))]
    Algorithm(String),
    #[error("the token has critical header parameters this server does not understand")]
    Critical,
    #[error("the token's issuer {0:?} is not the identity provider of any tenant")]
    UnknownIssuer(String),
    #[error("the token's signing key {0:?} is not among the issuer's published keys")]
    UnknownKey(String),
    #[error("the issuer's key {0:?} cannot verify {1} signatures")]
    KeyMismatch(String, String),
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has no valid {0:?} claim")]
    MissingClaim(&'static str),
    #[error("the token's issuer is {0:?}, expected {1:?}")]
    Issuer(String, String),
    #[error("the token is not meant for this tenant's API (aud does not contain {0:?})")]
    Audience(String),
    #[error("no tenant takes tokens of this issuer with the token's audience")]
    NoTenantForAudience,
    #[error("the token expired at {0} (unix seconds)")]
    Expired(i64),
    #[error("the token is not valid before {0} (unix seconds)")]
    NotYetValid(i64),
}

#[derive(Debug, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

/// A public key of an issuer's JWKS (only what verification needs).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Jwk {
    pub kty: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub alg: Option<String>,
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
    #[serde(default)]
    pub n: Option<String>,
    #[serde(default)]
    pub e: Option<String>,
    #[serde(default)]
    pub crv: Option<String>,
    #[serde(default)]
    pub x: Option<String>,
    #[serde(default)]
    pub y: Option<String>,
}

/// A token's header fields that choose the key, read before anything is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    pub alg: String,
    pub kid: Option<String>,
    pub iss: String,
    pub aud: Vec<String>,
}

fn b64(part: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)
}

fn parts(token: &str) -> Result<[&str; 3], TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let mut it = token.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(h), Some(p), Some(s), None) if !h.is_empty() && !p.is_empty() => Ok([h, p, s]),
        _ => Err(TokenError::Malformed),
    }
}

fn header(h: &str) -> Result<Header, TokenError> {
    serde_json::from_slice(&b64(h)?).map_err(|_| TokenError::Malformed)
}

fn claims(p: &str) -> Result<Map<String, Value>, TokenError> {
    serde_json::from_slice(&b64(p)?).map_err(|_| TokenError::Malformed)
}

fn audiences(c: &Map<String, Value>) -> Vec<String> {
    match c.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether a bearer credential looks like a JWT rather than an API key.
pub fn looks_like_jwt(credential: &str) -> bool {
    credential.starts_with("eyJ") && credential.bytes().filter(|b| *b == b'.').count() == 2
}

/// Reads the header and the claims that pick the tenant and the key, without verifying.
pub fn peek(token: &str) -> Result<Unverified, TokenError> {
    let [h, p, _] = parts(token)?;
    let header = header(h)?;
    if !ALGORITHMS.contains(&header.alg.as_str()) {
        return Err(TokenError::Algorithm(header.alg));
    }
    let c = claims(p)?;
    let iss = c
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(TokenError::MissingClaim("iss"))?
        .to_owned();
    Ok(Unverified {
        alg: header.alg,
        kid: header.kid,
        iss,
        aud: audiences(&c),
    })
}

/// What a token must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
}

fn numeric(c: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, TokenError> {
    match c.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite() && f.abs() < 1e15)
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or(TokenError::MissingClaim(name)),
    }
}

/// Verifies `token` at unix time `now` against `key` (the issuer's key its `kid` names).
/// Returns the token's claims.
pub fn verify(
    token: &str,
    now: i64,
    expect: &Expect<'_>,
    key: &Jwk,
) -> Result<Map<String, Value>, TokenError> {
    let [h, p, s] = parts(token)?;
    let header = header(h)?;
    if !ALGORITHMS.contains(&header.alg.as_str()) {
        return Err(TokenError::Algorithm(header.alg));
    }
    if header.crit.is_some() {
        return Err(TokenError::Critical);
    }
    let sig = b64(s)?;
    let message = &token.as_bytes()[..h.len() + 1 + p.len()];
    verify_signature(&header.alg, key, message, &sig)?;

    let c = claims(p)?;
    let iss = c
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(TokenError::MissingClaim("iss"))?;
    if iss != expect.issuer {
        return Err(TokenError::Issuer(iss.to_owned(), expect.issuer.to_owned()));
    }
    if !audiences(&c).iter().any(|a| a == expect.audience) {
        return Err(TokenError::Audience(expect.audience.to_owned()));
    }
    let exp = numeric(&c, "exp")?.ok_or(TokenError::MissingClaim("exp"))?;
    if now > exp.saturating_add(LEEWAY) {
        return Err(TokenError::Expired(exp));
    }
    if let Some(nbf) = numeric(&c, "nbf")?
        && now < nbf.saturating_sub(LEEWAY)
    {
        return Err(TokenError::NotYetValid(nbf));
    }
    Ok(c)
}

fn verify_signature(alg: &str, key: &Jwk, message: &[u8], sig: &[u8]) -> Result<(), TokenError> {
    let kid = key.kid.clone().unwrap_or_default();
    let mismatch = || TokenError::KeyMismatch(kid.clone(), alg.to_owned());
    if key.alg.as_deref().is_some_and(|a| a != alg)
        || key.use_.as_deref().is_some_and(|u| u != "sig")
    {
        return Err(mismatch());
    }
    let field = |v: &Option<String>| -> Result<Vec<u8>, TokenError> {
        v.as_deref()
            .ok_or_else(mismatch)
            .and_then(|s| b64(s).map_err(|_| mismatch()))
    };
    let ok = match alg {
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => {
            if key.kty != "RSA" {
                return Err(mismatch());
            }
            let (n, e) = (field(&key.n)?, field(&key.e)?);
            let params: &signature::RsaParameters = match alg {
                "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                _ => &signature::RSA_PSS_2048_8192_SHA512,
            };
            signature::RsaPublicKeyComponents { n: &n, e: &e }
                .verify(params, message, sig)
                .is_ok()
        }
        "ES256" | "ES384" => {
            let (crv, len, params) = if alg == "ES256" {
                ("P-256", 32, &signature::ECDSA_P256_SHA256_FIXED)
            } else {
                ("P-384", 48, &signature::ECDSA_P384_SHA384_FIXED)
            };
            if key.kty != "EC" || key.crv.as_deref() != Some(crv) {
                return Err(mismatch());
            }
            let (x, y) = (field(&key.x)?, field(&key.y)?);
            if x.len() != len || y.len() != len {
                return Err(mismatch());
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            UnparsedPublicKey::new(params, point)
                .verify(message, sig)
                .is_ok()
        }
        "EdDSA" => {
            if key.kty != "OKP" || key.crv.as_deref() != Some("Ed25519") {
                return Err(mismatch());
            }
            UnparsedPublicKey::new(&signature::ED25519, field(&key.x)?)
                .verify(message, sig)
                .is_ok()
        }
        other => return Err(TokenError::Algorithm(other.to_owned())),
    };
    if ok {
        Ok(())
    } else {
        Err(TokenError::Signature)
    }
}

/// Whether `issuer` is an acceptable issuer URL: https, or http on a loopback host (local
/// development and tests), without query or fragment. Returns the problem otherwise.
pub fn check_issuer_url(issuer: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(issuer).map_err(|e| format!("is not a URL ({e})"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or a fragment".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" => match url.host() {
            Some(url::Host::Ipv4(a)) if a.is_loopback() => Ok(()),
            Some(url::Host::Ipv6(a)) if a.is_loopback() => Ok(()),
            Some(url::Host::Domain("localhost")) => Ok(()),
            _ => Err(
                "must be an https URL (plain http is allowed only on a loopback address)".into(),
            ),
        },
        _ => Err("must be an https URL".into()),
    }
}

/// The parts of a discovery document SPM uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
}

/// An HTTP client for identity providers: short timeouts, no redirects to elsewhere.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(3))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("the identity provider HTTP client builds")
}

/// One [`http_client`] for the process.
pub fn shared_http() -> &'static reqwest::Client {
    static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    HTTP.get_or_init(http_client)
}

/// Fetches and checks `issuer`'s discovery document: it must name the same issuer and a
/// JWKS URL. The error says what went wrong, for an admin.
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Discovery, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let res = http
        .get(&url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| format!("discovery document {url} could not be fetched ({e})"))?;
    if !res.status().is_success() {
        return Err(format!(
            "discovery document {url} answered HTTP {}",
            res.status().as_u16()
        ));
    }
    let doc: Discovery = res
        .json()
        .await
        .map_err(|e| format!("discovery document {url} is not valid JSON ({e})"))?;
    if doc.issuer != issuer {
        return Err(format!(
            "discovery document {url} names issuer {:?}, not {issuer:?}",
            doc.issuer
        ));
    }
    check_issuer_url(&doc.jwks_uri).map_err(|e| format!("its jwks_uri {e}"))?;
    Ok(doc)
}

async fn fetch_keys(http: &reqwest::Client, issuer: &str) -> Result<Vec<Jwk>, String> {
    #[derive(Deserialize)]
    struct KeySet {
        keys: Vec<Value>,
    }
    let doc = discover(http, issuer).await?;
    let res = http
        .get(&doc.jwks_uri)
        .send()
        .await
        .map_err(|e| format!("JWKS {} could not be fetched ({e})", doc.jwks_uri))?;
    if !res.status().is_success() {
        return Err(format!(
            "JWKS {} answered HTTP {}",
            doc.jwks_uri,
            res.status().as_u16()
        ));
    }
    let set: KeySet = res
        .json()
        .await
        .map_err(|e| format!("JWKS {} is not valid JSON ({e})", doc.jwks_uri))?;
    // Keys of kinds we do not use (encryption keys, symmetric ones) are skipped.
    Ok(set
        .keys
        .into_iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
        .filter(|k| k.use_.as_deref().is_none_or(|u| u == "sig"))
        .filter(|k| matches!(k.kty.as_str(), "RSA" | "EC" | "OKP"))
        .collect())
}

#[derive(Default)]
struct IssuerKeys {
    keys: Vec<Jwk>,
    fetched: Option<Instant>,
}

/// Why no key could be found for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The provider publishes no key with the token's `kid`.
    Unknown(String),
    /// The provider could not be asked and the key is not cached.
    Unreachable(String),
}

/// An issuer's keys and when they were fetched.
type Fetched = (Instant, Arc<Vec<Jwk>>);

/// The issuers' key sets, shared by every request of a process.
#[derive(Clone)]
pub struct Jwks {
    http: reqwest::Client,
    /// What every request reads: each issuer's keys and when they were fetched.
    known: Arc<std::sync::RwLock<HashMap<String, Fetched>>>,
    /// One refresh at a time per issuer.
    issuers: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<IssuerKeys>>>>>,
}

impl Default for Jwks {
    fn default() -> Self {
        Self::new()
    }
}

impl Jwks {
    /// At most one refresh per issuer in this interval, however many unknown key ids arrive.
    pub const MIN_REFRESH: Duration = Duration::from_secs(1);
    /// Keys are re-read at least this often.
    pub const MAX_AGE: Duration = Duration::from_secs(600);

    pub fn new() -> Self {
        Self {
            http: shared_http().clone(),
            known: Arc::default(),
            issuers: Arc::default(),
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn pick(keys: &[Jwk], kid: Option<&str>, alg: &str) -> Option<Jwk> {
        match kid {
            Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)).cloned(),
            // No kid: the provider must have exactly one key usable with the algorithm.
            None => {
                let mut fit = keys.iter().filter(|k| {
                    k.alg.as_deref().is_none_or(|a| a == alg)
                        && match alg {
                            "EdDSA" => k.kty == "OKP",
                            a if a.starts_with("ES") => k.kty == "EC",
                            _ => k.kty == "RSA",
                        }
                });
                match (fit.next(), fit.next()) {
                    (Some(k), None) => Some(k.clone()),
                    _ => None,
                }
            }
        }
    }

    /// The key of `issuer` a token with `kid` and `alg` is to be verified with.
    pub async fn key(&self, issuer: &str, kid: Option<&str>, alg: &str) -> Result<Jwk, KeyError> {
        if let Some((at, keys)) = self.known.read().expect("jwks lock").get(issuer)
            && at.elapsed() < Self::MAX_AGE
            && let Some(k) = Self::pick(keys, kid, alg)
        {
            return Ok(k);
        }
        let slot = self
            .issuers
            .lock()
            .expect("jwks lock")
            .entry(issuer.to_owned())
            .or_default()
            .clone();
        let mut state = slot.lock().await;
        let fresh = state.fetched.is_some_and(|t| t.elapsed() < Self::MAX_AGE);
        if fresh && let Some(k) = Self::pick(&state.keys, kid, alg) {
            return Ok(k);
        }
        // Unknown kid (a rotation) or stale keys: fetch again, no more than once per
        // MIN_REFRESH (later callers wait for the interval rather than fail).
        if let Some(t) = state.fetched
            && t.elapsed() < Self::MIN_REFRESH
        {
            tokio::time::sleep(Self::MIN_REFRESH - t.elapsed()).await;
        }
        match fetch_keys(&self.http, issuer).await {
            Ok(keys) => {
                state.keys = keys;
                state.fetched = Some(Instant::now());
                self.known.write().expect("jwks lock").insert(
                    issuer.to_owned(),
                    (Instant::now(), Arc::new(state.keys.clone())),
                );
                Self::pick(&state.keys, kid, alg)
                    .ok_or_else(|| KeyError::Unknown(kid.unwrap_or("").to_owned()))
            }
            Err(e) => {
                tracing::warn!(%issuer, error = %e, "could not refresh the identity provider's keys");
                // Availability over freshness: a key we know keeps verifying.
                Self::pick(&state.keys, kid, alg).ok_or(KeyError::Unreachable(e))
            }
        }
    }
}

/// The client side of OAuth 2.0 for people's tools (the `spm` CLI, test drivers): the
/// authorization code grant with PKCE (RFC 7636) and a loopback redirect (RFC 8252), and
/// refreshing.
pub mod client {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde::{Deserialize, Serialize};
    use sha2::{Digest as _, Sha256};

    /// A PKCE verifier and its S256 challenge.
    #[derive(Debug, Clone)]
    pub struct Pkce {
        pub verifier: String,
        pub challenge: String,
    }

    impl Pkce {
        pub fn new() -> Self {
            let bytes: [u8; 32] = rand::random();
            let verifier = URL_SAFE_NO_PAD.encode(bytes);
            let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
            Self {
                verifier,
                challenge,
            }
        }
    }

    impl Default for Pkce {
        fn default() -> Self {
            Self::new()
        }
    }

    /// What a token endpoint answers.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
    pub struct TokenSet {
        pub access_token: String,
        #[serde(default)]
        pub refresh_token: Option<String>,
        #[serde(default)]
        pub id_token: Option<String>,
        #[serde(default)]
        pub expires_in: Option<i64>,
        #[serde(default)]
        pub token_type: Option<String>,
    }

    /// An authorization request.
    #[derive(Debug, Clone)]
    pub struct Authorize<'a> {
        pub authorization_endpoint: &'a str,
        pub client_id: &'a str,
        pub redirect_uri: &'a str,
        /// The API the token is for (RFC 8707); it becomes the access token's `aud`.
        pub resource: &'a str,
        pub scope: &'a str,
        pub state: &'a str,
        pub pkce: &'a Pkce,
    }

    impl Authorize<'_> {
        pub fn url(&self) -> String {
            let mut u = reqwest::Url::parse(self.authorization_endpoint)
                .unwrap_or_else(|_| reqwest::Url::parse("http://invalid/").expect("a URL"));
            u.query_pairs_mut()
                .append_pair("response_type", "code")
                .append_pair("client_id", self.client_id)
                .append_pair("redirect_uri", self.redirect_uri)
                .append_pair("scope", self.scope)
                .append_pair("state", self.state)
                .append_pair("code_challenge", &self.pkce.challenge)
                .append_pair("code_challenge_method", "S256")
                .append_pair("resource", self.resource);
            u.into()
        }
    }

    async fn token_call(
        http: &reqwest::Client,
        token_endpoint: &str,
        form: &[(&str, &str)],
        secret: Option<(&str, &str)>,
    ) -> Result<TokenSet, String> {
        let mut req = http.post(token_endpoint).form(form);
        if let Some((id, secret)) = secret {
            // client_secret_basic (RFC 6749 2.3.1): both form-urlencoded first.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            req = req.basic_auth(enc(id), Some(enc(secret)));
        }
        let res = req
            .send()
            .await
            .map_err(|e| format!("token endpoint {token_endpoint}: {e}"))?;
        let status = res.status();
        let body = res.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "token endpoint {token_endpoint} answered HTTP {}: {body}",
                status.as_u16()
            ));
        }
        serde_json::from_str(&body).map_err(|e| format!("token endpoint answer: {e}"))
    }

    /// Exchanges an authorization code for tokens; a confidential client (a web server)
    /// passes its secret.
    pub async fn exchange_code(
        http: &reqwest::Client,
        token_endpoint: &str,
        a: &Authorize<'_>,
        code: &str,
        client_secret: Option<&str>,
    ) -> Result<TokenSet, String> {
        token_call(
            http,
            token_endpoint,
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("client_id", a.client_id),
                ("redirect_uri", a.redirect_uri),
                ("code_verifier", &a.pkce.verifier),
                ("resource", a.resource),
            ],
            client_secret.map(|s| (a.client_id, s)),
        )
        .await
    }

    /// New tokens from a refresh token.
    pub async fn refresh(
        http: &reqwest::Client,
        token_endpoint: &str,
        client_id: &str,
        refresh_token: &str,
        resource: &str,
    ) -> Result<TokenSet, String> {
        token_call(
            http,
            token_endpoint,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", client_id),
                ("resource", resource),
            ],
            None,
        )
        .await
    }

    /// The `code` of a redirect to `redirect_uri`, checking `state`.
    pub fn code_of(redirected_to: &str, state: &str) -> Result<String, String> {
        let u = reqwest::Url::parse(redirected_to).map_err(|e| e.to_string())?;
        let q: std::collections::HashMap<_, _> = u.query_pairs().into_owned().collect();
        if let Some(e) = q.get("error") {
            return Err(format!(
                "the identity provider refused: {e} {}",
                q.get("error_description").map_or("", String::as_str)
            ));
        }
        if q.get("state").map(String::as_str) != Some(state) {
            return Err("the redirect's state does not match this sign-in".into());
        }
        q.get("code")
            .cloned()
            .ok_or_else(|| "the redirect has no code".into())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn pkce_challenge_is_the_s256_of_the_verifier() {
            let p = Pkce::new();
            assert_eq!(p.verifier.len(), 43);
            assert_eq!(
                p.challenge,
                URL_SAFE_NO_PAD.encode(Sha256::digest(p.verifier.as_bytes()))
            );
            assert_ne!(Pkce::new().verifier, p.verifier);
        }

        #[test]
        fn redirects_yield_the_code_only_with_the_right_state() {
            let ok = "http://127.0.0.1:5/callback?code=abc&state=s1";
            assert_eq!(code_of(ok, "s1").unwrap(), "abc");
            assert!(code_of(ok, "s2").is_err());
            assert!(
                code_of(
                    "http://127.0.0.1:5/callback?error=access_denied&state=s1",
                    "s1"
                )
                .is_err()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};

    const ISS: &str = "https://id.example.com";
    const AUD: &str = "spm";
    const NOW: i64 = 1_800_000_000;

    fn enc(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    struct Es {
        pair: EcdsaKeyPair,
        jwk: Jwk,
    }

    fn es256(kid: &str) -> Es {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let pk = pair.public_key().as_ref();
        let jwk = Jwk {
            kty: "EC".into(),
            kid: Some(kid.into()),
            alg: Some("ES256".into()),
            use_: Some("sig".into()),
            n: None,
            e: None,
            crv: Some("P-256".into()),
            x: Some(URL_SAFE_NO_PAD.encode(&pk[1..33])),
            y: Some(URL_SAFE_NO_PAD.encode(&pk[33..65])),
        };
        Es { pair, jwk }
    }

    fn claims(exp: i64) -> Value {
        serde_json::json!({"iss": ISS, "aud": [AUD, "other"], "sub": "u1", "email": "a@x.com", "exp": exp, "iat": NOW - 10})
    }

    fn sign(es: &Es, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", enc(header), enc(claims));
        let sig = es
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn expect() -> Expect<'static> {
        Expect {
            issuer: ISS,
            audience: AUD,
        }
    }

    #[test]
    fn a_good_es256_token_verifies_and_yields_its_claims() {
        let k = es256("k1");
        let t = sign(
            &k,
            &serde_json::json!({"alg":"ES256","kid":"k1"}),
            &claims(NOW + 60),
        );
        assert!(looks_like_jwt(&t));
        let p = peek(&t).unwrap();
        assert_eq!((p.iss.as_str(), p.kid.as_deref()), (ISS, Some("k1")));
        let c = verify(&t, NOW, &expect(), &k.jwk).unwrap();
        assert_eq!(c["email"], "a@x.com");
    }

    #[test]
    fn time_claims_honour_the_leeway_and_no_more() {
        let k = es256("k1");
        let h = serde_json::json!({"alg":"ES256","kid":"k1"});
        let t = sign(&k, &h, &claims(NOW - LEEWAY));
        assert!(verify(&t, NOW, &expect(), &k.jwk).is_ok());
        let t = sign(&k, &h, &claims(NOW - LEEWAY - 1));
        assert_eq!(
            verify(&t, NOW, &expect(), &k.jwk),
            Err(TokenError::Expired(NOW - LEEWAY - 1))
        );
        let mut c = claims(NOW + 600);
        c["nbf"] = (NOW + LEEWAY + 5).into();
        let t = sign(&k, &h, &c);
        assert_eq!(
            verify(&t, NOW, &expect(), &k.jwk),
            Err(TokenError::NotYetValid(NOW + LEEWAY + 5))
        );
        let mut c = claims(NOW + 600);
        c.as_object_mut().unwrap().remove("exp");
        let t = sign(&k, &h, &c);
        assert_eq!(
            verify(&t, NOW, &expect(), &k.jwk),
            Err(TokenError::MissingClaim("exp"))
        );
    }

    #[test]
    fn issuer_audience_and_tampering_are_caught() {
        let k = es256("k1");
        let h = serde_json::json!({"alg":"ES256","kid":"k1"});
        let mut c = claims(NOW + 60);
        c["iss"] = "https://evil.example.com".into();
        assert!(matches!(
            verify(&sign(&k, &h, &c), NOW, &expect(), &k.jwk),
            Err(TokenError::Issuer(..))
        ));
        let mut c = claims(NOW + 60);
        c["aud"] = "someone-else".into();
        assert_eq!(
            verify(&sign(&k, &h, &c), NOW, &expect(), &k.jwk),
            Err(TokenError::Audience(AUD.into()))
        );
        // Swap in a payload naming someone else, keep the signature.
        let t = sign(&k, &h, &claims(NOW + 60));
        let [hh, _, s] = parts(&t).unwrap();
        let mut c = claims(NOW + 60);
        c["email"] = "boss@x.com".into();
        let forged = format!("{hh}.{}.{s}", enc(&c));
        assert_eq!(
            verify(&forged, NOW, &expect(), &k.jwk),
            Err(TokenError::Signature)
        );
        // Another key's signature.
        let other = es256("k1");
        assert_eq!(
            verify(&t, NOW, &expect(), &other.jwk),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn none_hmac_and_mismatched_keys_are_refused() {
        let k = es256("k1");
        let body = enc(&claims(NOW + 60));
        let none = format!("{}.{body}.", enc(&serde_json::json!({"alg":"none"})));
        assert_eq!(
            verify(&none, NOW, &expect(), &k.jwk),
            Err(TokenError::Algorithm("none".into()))
        );
        assert!(matches!(peek(&none), Err(TokenError::Algorithm(_))));
        let hs = format!(
            "{}.{body}.c2ln",
            enc(&serde_json::json!({"alg":"HS256","kid":"k1"}))
        );
        assert_eq!(
            verify(&hs, NOW, &expect(), &k.jwk),
            Err(TokenError::Algorithm("HS256".into()))
        );
        // An EC key cannot verify an RSA algorithm, whatever the signature.
        let rs = format!(
            "{}.{body}.c2ln",
            enc(&serde_json::json!({"alg":"RS256","kid":"k1"}))
        );
        assert!(matches!(
            verify(&rs, NOW, &expect(), &k.jwk),
            Err(TokenError::KeyMismatch(..))
        ));
        let crit = sign(
            &k,
            &serde_json::json!({"alg":"ES256","kid":"k1","crit":["exp"]}),
            &claims(NOW + 60),
        );
        assert_eq!(
            verify(&crit, NOW, &expect(), &k.jwk),
            Err(TokenError::Critical)
        );
        for bad in ["", "a.b", "a.b.c.d", "eyJ.!!.x"] {
            assert_eq!(
                verify(bad, NOW, &expect(), &k.jwk),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn ed25519_tokens_verify() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = Jwk {
            kty: "OKP".into(),
            kid: None,
            alg: None,
            use_: None,
            n: None,
            e: None,
            crv: Some("Ed25519".into()),
            x: Some(URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())),
            y: None,
        };
        let input = format!(
            "{}.{}",
            enc(&serde_json::json!({"alg":"EdDSA"})),
            enc(&claims(NOW + 60))
        );
        let t = format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(pair.sign(input.as_bytes()).as_ref())
        );
        assert!(verify(&t, NOW, &expect(), &jwk).is_ok());
        assert_eq!(
            Jwks::pick(std::slice::from_ref(&jwk), None, "EdDSA"),
            Some(jwk.clone())
        );
        assert_eq!(Jwks::pick(&[jwk.clone(), jwk], None, "EdDSA"), None);
    }

    #[test]
    fn issuer_urls_must_be_https_except_on_loopback() {
        assert!(check_issuer_url("https://login.example.com/tenant").is_ok());
        assert!(check_issuer_url("http://127.0.0.1:7400").is_ok());
        assert!(check_issuer_url("http://localhost:7400").is_ok());
        assert!(check_issuer_url("http://login.example.com").is_err());
        assert!(check_issuer_url("ftp://x").is_err());
        assert!(check_issuer_url("not a url").is_err());
        assert!(check_issuer_url("https://x.example.com/?a=1").is_err());
    }
}
