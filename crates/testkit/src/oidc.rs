//! The stack's OpenID provider (deploy/local/oidc) for tests and benchmarks: sign a person in
//! through its real login page (authorization code with PKCE, like a browser would), forge
//! tokens with the provider's own signing key (expired, wrong audience...), rotate its keys.

use std::collections::HashMap;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::RsaKeyPair;
use serde_json::{Value, json};
use spm_server::oidc::client::{self, Authorize, Pkce, TokenSet};

/// Every local person's password (deploy/local/oidc/people.json).
pub const PASSWORD: &str = "spm-local";

/// The public client the `spm` CLI uses at the local provider.
pub const CLI_CLIENT: &str = "spm-cli";

/// The audience (resource) a test tenant's tokens carry.
pub fn audience_for(tenant: &str) -> String {
    format!("urn:spm:{tenant}")
}

#[derive(Clone)]
pub struct Idp {
    pub issuer: String,
    keys_file: PathBuf,
    http: reqwest::Client,
}

impl Idp {
    /// The provider of `deploy/local/stack up` (SPM_OIDC_ISSUER, SPM_OIDC_KEYS).
    pub fn from_env() -> Self {
        let issuer = std::env::var("SPM_OIDC_ISSUER")
            .unwrap_or_else(|_| "http://127.0.0.1:59400".to_owned());
        let keys_file = std::env::var("SPM_OIDC_KEYS")
            .map(PathBuf::from)
            .unwrap_or_else(|_| crate::repo_root().join(".local/oidc/keys.json"));
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            issuer,
            keys_file,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("http client"),
        }
    }

    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.issuer)
        }
    }

    /// Signs `email` in with the local password for a token of `resource`.
    pub async fn token(&self, email: &str, resource: &str) -> String {
        self.login(email, PASSWORD, resource)
            .await
            .unwrap_or_else(|e| panic!("signing {email} in: {e}"))
            .access_token
    }

    /// The whole authorization code flow of the CLI client, the person typing `email` and
    /// `password` into the provider's login page.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        resource: &str,
    ) -> Result<TokenSet, String> {
        let redirect = "http://127.0.0.1:9/callback";
        let pkce = Pkce::new();
        let state = uuid::Uuid::new_v4().to_string();
        let auth_endpoint = format!("{}/auth", self.issuer);
        let a = Authorize {
            authorization_endpoint: &auth_endpoint,
            client_id: CLI_CLIENT,
            redirect_uri: redirect,
            resource,
            scope: "openid email profile",
            state: &state,
            pkce: &pkce,
        };
        let landed = self.browse(&a.url(), email, password).await?;
        let code = client::code_of(&landed, &state)?;
        client::exchange_code(
            &self.http,
            &format!("{}/token", self.issuer),
            &a,
            &code,
            None,
        )
        .await
    }

    /// What a browser does with an authorization URL: follow redirects to the login page,
    /// submit `email` and `password`, and follow on until the provider redirects outside
    /// itself. Returns that outside URL (the client's redirect with the code).
    pub async fn browse(
        &self,
        authorize_url: &str,
        email: &str,
        password: &str,
    ) -> Result<String, String> {
        let mut jar: HashMap<String, String> = HashMap::new();
        let mut next = authorize_url.to_owned();
        let mut submitted = false;
        for _ in 0..10 {
            let cookie = jar
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            let login_page = next.contains("/interaction/") && !submitted;
            let req = if login_page {
                submitted = true;
                self.http
                    .post(format!("{}/login", self.url(&next)))
                    .form(&[("login", email), ("password", password)])
            } else {
                self.http.get(self.url(&next))
            };
            let res = req
                .header("cookie", cookie)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            for c in res.headers().get_all("set-cookie") {
                if let Some((kv, _)) = c.to_str().unwrap_or_default().split_once(';')
                    && let Some((k, v)) = kv.split_once('=')
                {
                    jar.insert(k.trim().to_owned(), v.to_owned());
                }
            }
            let status = res.status();
            let location = res
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .map(str::to_owned);
            match location {
                Some(l) if status.is_redirection() => {
                    let l = self.url(&l);
                    if !l.starts_with(&self.issuer) {
                        return Ok(l);
                    }
                    next = l;
                }
                _ => {
                    let body = res.text().await.unwrap_or_default();
                    return Err(format!(
                        "the provider answered HTTP {} at {next}: {}",
                        status.as_u16(),
                        body.chars().take(300).collect::<String>()
                    ));
                }
            }
        }
        Err("too many redirects".into())
    }

    fn keys(&self) -> Value {
        let text = std::fs::read_to_string(&self.keys_file)
            .or_else(|_| std::fs::read_to_string(self.running_keys_file()))
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.keys_file.display()));
        serde_json::from_str(&text).expect("keys.json")
    }

    /// Where the running provider keeps its keys (when the stack was started by another
    /// checkout, not this one's `.local`).
    fn running_keys_file(&self) -> PathBuf {
        let url = format!("{}/_local/info", self.issuer);
        // A blocking call from sync code: on a thread of its own, outside any runtime.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let v: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
                v["keys_file"].as_str().map(PathBuf::from)
            })
        })
        .join()
        .ok()
        .flatten()
        .unwrap_or_default()
    }

    /// The key id the provider signs with now.
    pub fn current_kid(&self) -> String {
        self.keys()["keys"][0]["kid"]
            .as_str()
            .expect("kid")
            .to_owned()
    }

    /// Claims like the provider's access tokens for `email` and `audience`, valid for an hour.
    pub fn claims(&self, email: &str, audience: &str) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": self.issuer, "aud": audience, "sub": email, "email": email,
            "email_verified": true, "iat": now, "exp": now + 3600, "client_id": CLI_CLIENT,
            "jti": uuid::Uuid::new_v4().to_string(),
        })
    }

    /// A token with `header` and `claims`, signed RS256 with the provider's current key.
    pub fn forge(&self, header: &Value, claims: &Value) -> String {
        let keys = self.keys();
        let der = STANDARD
            .decode(keys["keys"][0]["pkcs8"].as_str().expect("pkcs8"))
            .expect("base64");
        let pair = RsaKeyPair::from_pkcs8(&der).expect("RSA key");
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).expect("json")),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("json"))
        );
        let mut sig = vec![0; pair.public().modulus_len()];
        pair.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            input.as_bytes(),
            &mut sig,
        )
        .expect("sign");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// The header the provider puts on its tokens.
    pub fn header(&self) -> Value {
        json!({"alg": "RS256", "typ": "at+jwt", "kid": self.current_kid()})
    }

    /// The current key's public JWK (`n`, `e`), e.g. to forge an HMAC keyed with it.
    pub fn public_jwk(&self) -> Value {
        let k = &self.keys()["keys"][0];
        json!({"kty": "RSA", "kid": k["kid"], "n": k["n"], "e": k["e"], "alg": "RS256", "use": "sig"})
    }

    /// Rotates the provider's signing key while it runs: a new key signs from now on, the
    /// old ones stay published. Returns the new key id.
    pub async fn rotate(&self) -> String {
        let res = self
            .http
            .post(format!("{}/_local/rotate?retire=1", self.issuer))
            .send()
            .await
            .expect("rotating the provider's key");
        assert!(res.status().is_success(), "rotate: {}", res.status());
        let v: Value = res.json().await.expect("json");
        v["kid"].as_str().expect("kid").to_owned()
    }
}
