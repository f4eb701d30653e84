//! `spm login`: sign in as a person with the company's OpenID provider, so that the CLI's
//! calls are that person's (a rep sees their own statement, a manager their team).
//!
//! The authorization code grant with PKCE and a loopback redirect (RFC 8252): the CLI
//! listens on 127.0.0.1 on a free port, opens (or prints) the provider's sign-in address,
//! receives the code on `/callback`, exchanges it, and keeps the access token in
//! `$SPM_TOKEN_FILE` (default `~/.config/spm/token.json`, mode 0600). Every later command
//! sends it instead of an API key, unless `--key`/`SPM_API_KEY` is given. `spm logout`
//! forgets it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use spm_server::oidc::{self, client};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The OpenID provider (its issuer URL).
    #[arg(
        long,
        env = "SPM_OIDC_ISSUER",
        default_value = "http://127.0.0.1:59400"
    )]
    pub issuer: String,
    /// The CLI's client id at the provider (a public client allowed loopback redirects).
    #[arg(long, env = "SPM_OIDC_CLIENT_ID", default_value = "spm-cli")]
    pub client_id: String,
    /// The audience of your tenant's tokens, as set with SetIdentityProvider (default: the
    /// local demo tenant's, urn:spm:<tenant>).
    #[arg(long, env = "SPM_OIDC_AUDIENCE")]
    pub audience: Option<String>,
    /// Print the sign-in address instead of opening a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// How long to wait for the sign-in, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// What `spm login` keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub issuer: String,
    pub client_id: String,
    pub audience: String,
    pub login: String,
    pub expires_at: i64,
    pub access_token: String,
}

pub fn token_path() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("SPM_TOKEN_FILE") {
        return Ok(PathBuf::from(p));
    }
    let base = match std::env::var("XDG_CONFIG_HOME") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var("HOME").context("HOME is not set")?).join(".config"),
    };
    Ok(base.join("spm/token.json"))
}

/// The stored person token, if someone signed in: an error once it expired.
pub fn stored_token() -> anyhow::Result<Option<String>> {
    let path = token_path()?;
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let s: Stored = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a token file; run `spm logout`", path.display()))?;
    let now = chrono::Utc::now().timestamp();
    if now >= s.expires_at {
        bail!(
            "the sign-in of {} expired at {}; run `spm login` again (or `spm logout` to use API keys)",
            s.login,
            chrono::DateTime::from_timestamp(s.expires_at, 0).unwrap_or_default()
        );
    }
    Ok(Some(s.access_token))
}

fn claims_of(token: &str) -> serde_json::Value {
    token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn default_audience() -> anyhow::Result<String> {
    let c: crate::commands::Creds = serde_json::from_str(
        &std::fs::read_to_string(crate::commands::creds_path()?)
            .context("no --audience / SPM_OIDC_AUDIENCE and no demo tenant (run `spm demo`)")?,
    )?;
    Ok(format!("urn:spm:{}", c.tenant))
}

/// Waits for the provider's redirect to `/callback` and answers the browser.
async fn callback(listener: tokio::net::TcpListener, port: u16) -> anyhow::Result<String> {
    loop {
        let (mut sock, _) = listener.accept().await?;
        let mut buf = vec![0u8; 8192];
        let n = sock.read(&mut buf).await.unwrap_or(0);
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        let target = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("/")
            .to_owned();
        if !target.starts_with("/callback") {
            let _ = sock
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            continue;
        }
        let body = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>SPM sign-in</title></head>\
                    <body><main><h1>Signed in</h1><p>You can close this tab and go back to the terminal.</p></main></body></html>";
        let _ = sock
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await;
        return Ok(format!("http://127.0.0.1:{port}{target}"));
    }
}

pub async fn login(a: &Args) -> anyhow::Result<()> {
    let audience = match &a.audience {
        Some(x) => x.clone(),
        None => default_audience()?,
    };
    let http = oidc::shared_http();
    let doc = oidc::discover(http, &a.issuer)
        .await
        .map_err(anyhow::Error::msg)
        .context("reading the identity provider's discovery document")?;
    let (Some(auth), Some(token_endpoint)) = (&doc.authorization_endpoint, &doc.token_endpoint)
    else {
        bail!("the provider's discovery document has no authorization or token endpoint");
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let pkce = client::Pkce::new();
    let state = uuid::Uuid::new_v4().to_string();
    let req = client::Authorize {
        authorization_endpoint: auth,
        client_id: &a.client_id,
        redirect_uri: &redirect,
        resource: &audience,
        scope: "openid email profile",
        state: &state,
        pkce: &pkce,
    };
    let url = req.url();
    println!("Open this address in a browser to sign in:\n  {url}");
    if !a.no_browser {
        let _ = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    println!("Waiting for the sign-in (up to {} s)...", a.timeout);
    use std::io::Write as _;
    std::io::stdout().flush()?;
    let landed = tokio::time::timeout(Duration::from_secs(a.timeout), callback(listener, port))
        .await
        .context("no sign-in arrived in time")??;
    let code = client::code_of(&landed, &state).map_err(anyhow::Error::msg)?;
    let tokens = client::exchange_code(http, token_endpoint, &req, &code, None)
        .await
        .map_err(anyhow::Error::msg)?;
    let claims = claims_of(&tokens.access_token);
    let login = claims["email"]
        .as_str()
        .or(claims["sub"].as_str())
        .unwrap_or("?")
        .to_owned();
    let expires_at = claims["exp"]
        .as_i64()
        .unwrap_or_else(|| chrono::Utc::now().timestamp() + tokens.expires_in.unwrap_or(300));
    let stored = Stored {
        issuer: a.issuer.clone(),
        client_id: a.client_id.clone(),
        audience,
        login: login.clone(),
        expires_at,
        access_token: tokens.access_token,
    };
    let path = token_path()?;
    write_private(&path, &serde_json::to_vec_pretty(&stored)?)?;
    println!(
        "Signed in as {login} until {}. The CLI now calls SPM as you (`spm logout` to stop).",
        chrono::DateTime::from_timestamp(expires_at, 0).unwrap_or_default()
    );
    Ok(())
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::io::Write::write_all(&mut f, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub fn logout() -> anyhow::Result<()> {
    let path = token_path()?;
    match std::fs::remove_file(&path) {
        Ok(()) => println!("Signed out ({} removed).", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("Nobody was signed in."),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
