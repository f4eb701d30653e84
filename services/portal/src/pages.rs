//! The pages. Each handler calls the services with the session's token and renders what
//! they answer; a refusal from a service becomes a page that says what to do.

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use spm_proto::incentive::v1 as ipb;
use spm_proto::incentive::v1::incentive_service_client::IncentiveServiceClient;
use spm_proto::ingest::v1 as gpb;
use spm_proto::ingest::v1::ingest_admin_service_client::IngestAdminServiceClient;
use spm_proto::scoring::v1 as spb;
use spm_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use spm_server::oidc::{self, client};
use tonic::Code;

use crate::session::{Pending, Session, random_id, same};
use crate::{Lang, Portal};

pub fn router(p: Portal) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/go", get(go))
        .route("/lang", get(set_lang))
        .route("/portal.css", get(css))
        .route("/auth/callback", get(callback))
        .route("/logout", post(logout))
        .route("/t/{tenant}/", get(home))
        .route("/t/{tenant}/login", get(login))
        .route("/t/{tenant}/lines/{line}", get(line))
        .route("/t/{tenant}/lines/{line}/dispute", post(dispute))
        .route("/t/{tenant}/reps/{rep}", get(rep_page))
        .route("/t/{tenant}/live", get(live))
        .fallback(fallback)
        .with_state(p)
}

const COOKIE: &str = "spm_session";

fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

fn lang(h: &HeaderMap) -> Lang {
    Lang::choose(
        cookie(h, "lang"),
        h.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()),
    )
}

fn form(body: &str) -> std::collections::HashMap<String, String> {
    url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

/// What every page's frame shows.
struct Chrome {
    l: Lang,
    tenant: String,
    who: String,
    csrf: String,
    other_lang: &'static str,
    path: String,
}

impl Chrome {
    fn new(l: Lang, s: Option<&Session>, path: &str) -> Self {
        Self {
            l,
            tenant: s.map(|s| s.tenant.clone()).unwrap_or_default(),
            who: s
                .map(|s| {
                    if s.name.is_empty() {
                        s.login.clone()
                    } else {
                        format!("{} ({})", s.name, s.login)
                    }
                })
                .unwrap_or_default(),
            csrf: s.map(|s| s.csrf.clone()).unwrap_or_default(),
            other_lang: if l == Lang::En { "zh" } else { "en" },
            path: path.to_owned(),
        }
    }
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    c: Chrome,
    error: String,
    company: String,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    c: Chrome,
    title: String,
    body: String,
    action: String,
    action_href: String,
}

struct LineRow {
    id: String,
    key: String,
    kind: String,
    amount: String,
    status: String,
    summary: String,
}

struct Board {
    rank: u32,
    rep_id: String,
    name: String,
    value: String,
    mine: bool,
    link: bool,
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    c: Chrome,
    heading: String,
    period: String,
    total: String,
    statuses: Vec<(String, String)>,
    attainment: String,
    revenue: String,
    score: String,
    rank: String,
    lines: Vec<LineRow>,
    board: Vec<Board>,
    has_statement: bool,
    /// The person's own page: it follows their notifications live.
    live: bool,
}

#[derive(Template)]
#[template(path = "line.html")]
struct LinePage {
    c: Chrome,
    line_id: String,
    key: String,
    amount: String,
    summary: String,
    trace: Vec<(String, String)>,
    postings: Vec<(String, String, String, String, String)>,
    own: bool,
    notice: String,
    error: String,
    reason: String,
}

fn html(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a page");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

fn message(status: StatusCode, c: Chrome, title: &str, body: &str, back: Option<&str>) -> Response {
    let (action, href) = match back {
        Some(h) => (c.l.t("back").to_owned(), h.to_owned()),
        None => (String::new(), String::new()),
    };
    html(
        status,
        &MessagePage {
            c,
            title: title.to_owned(),
            body: body.to_owned(),
            action,
            action_href: href,
        },
    )
}

/// A service's refusal as a page; an ended token sends the person to sign in again.
fn failed(s: &tonic::Status, l: Lang, session: Option<&Session>, path: &str) -> Response {
    let c = Chrome::new(l, session, path);
    let home = session.map(|s| format!("/t/{}/", s.tenant));
    match s.code() {
        Code::PermissionDenied => message(
            StatusCode::FORBIDDEN,
            c,
            l.t("denied_title"),
            l.t("denied_body"),
            home.as_deref(),
        ),
        Code::NotFound => message(
            StatusCode::NOT_FOUND,
            c,
            l.t("not_found_title"),
            l.t("not_found_body"),
            home.as_deref(),
        ),
        Code::Unauthenticated => match session {
            Some(s) => Redirect::to(&format!("/t/{}/login", s.tenant)).into_response(),
            None => Redirect::to("/").into_response(),
        },
        _ => {
            tracing::warn!(code = ?s.code(), message = %s.message(), "a service call failed");
            message(
                StatusCode::SERVICE_UNAVAILABLE,
                c,
                l.t("unavailable_title"),
                l.t("unavailable_body"),
                home.as_deref(),
            )
        }
    }
}

fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// The session of this request for `tenant`, or a redirect to sign in.
fn session_of(p: &Portal, h: &HeaderMap, tenant: &str) -> Result<Session, Redirect> {
    match cookie(h, COOKIE).and_then(|id| p.sessions.get(id)) {
        Some(s) if s.tenant == tenant => Ok(s),
        _ => Err(Redirect::to(&format!("/t/{tenant}/login"))),
    }
}

async fn index(h: HeaderMap) -> Response {
    html(
        StatusCode::OK,
        &IndexPage {
            c: Chrome::new(lang(&h), None, "/"),
            error: String::new(),
            company: String::new(),
        },
    )
}

#[derive(serde::Deserialize)]
struct Go {
    company: String,
}

async fn go(State(p): State<Portal>, h: HeaderMap, Query(q): Query<Go>) -> Response {
    let company = q.company.trim().to_lowercase();
    let ok = !company.is_empty()
        && company.len() <= 40
        && company
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let known = ok
        && IngestAdminServiceClient::new(p.ingest.clone())
            .get_sign_in(gpb::GetSignInRequest {
                tenant_id: company.clone(),
            })
            .await
            .is_ok();
    if known {
        return Redirect::to(&format!("/t/{company}/login")).into_response();
    }
    let l = lang(&h);
    html(
        StatusCode::UNPROCESSABLE_ENTITY,
        &IndexPage {
            c: Chrome::new(l, None, "/"),
            error: l.t("unknown_company").to_owned(),
            company,
        },
    )
}

#[derive(serde::Deserialize)]
struct LangQ {
    to: String,
    #[serde(default)]
    back: String,
}

async fn set_lang(Query(q): Query<LangQ>) -> Response {
    let l = Lang::parse(&q.to).unwrap_or(Lang::En);
    // Only a path of this site: never an open redirect.
    let back = if q.back.starts_with('/') && !q.back.starts_with("//") {
        q.back
    } else {
        "/".into()
    };
    let mut r = Redirect::to(&back).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "lang={}; Path=/; Max-Age=31536000; SameSite=Lax",
        l.code()
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../templates/portal.css"),
    )
        .into_response()
}

async fn fallback(h: HeaderMap) -> Response {
    let l = lang(&h);
    message(
        StatusCode::NOT_FOUND,
        Chrome::new(l, None, "/"),
        l.t("not_found_title"),
        l.t("not_found_body"),
        Some("/"),
    )
}

async fn login(State(p): State<Portal>, h: HeaderMap, Path(tenant): Path<String>) -> Response {
    let l = lang(&h);
    let sign_in = match IngestAdminServiceClient::new(p.ingest.clone())
        .get_sign_in(gpb::GetSignInRequest {
            tenant_id: tenant.clone(),
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == Code::NotFound => {
            return html(
                StatusCode::NOT_FOUND,
                &IndexPage {
                    c: Chrome::new(l, None, "/"),
                    error: l.t("unknown_company").to_owned(),
                    company: tenant,
                },
            );
        }
        Err(s) => return failed(&s, l, None, "/"),
    };
    let doc = match oidc::discover(oidc::shared_http(), &sign_in.issuer).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "the tenant's provider cannot be discovered");
            return message(
                StatusCode::BAD_GATEWAY,
                Chrome::new(l, None, "/"),
                l.t("signin_title"),
                l.t("signin_body"),
                Some("/"),
            );
        }
    };
    let (Some(auth), Some(token)) = (doc.authorization_endpoint, doc.token_endpoint) else {
        return message(
            StatusCode::BAD_GATEWAY,
            Chrome::new(l, None, "/"),
            l.t("signin_title"),
            l.t("signin_body"),
            Some("/"),
        );
    };
    let pkce = client::Pkce::new();
    let state = random_id();
    let redirect = format!(
        "{}/auth/callback",
        p.config.public_url.trim_end_matches('/')
    );
    let url = client::Authorize {
        authorization_endpoint: &auth,
        client_id: &p.config.client_id,
        redirect_uri: &redirect,
        resource: &sign_in.audience,
        scope: "openid email profile",
        state: &state,
        pkce: &pkce,
    }
    .url();
    p.sessions.begin_sign_in(
        state,
        Pending {
            tenant,
            audience: sign_in.audience,
            verifier: pkce.verifier,
            challenge: pkce.challenge,
            token_endpoint: token,
            authorization_endpoint: auth,
            started: Utc::now(),
        },
    );
    Redirect::to(&url).into_response()
}

#[derive(serde::Deserialize)]
struct Callback {
    #[serde(default)]
    code: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    error: String,
}

async fn callback(State(p): State<Portal>, h: HeaderMap, Query(q): Query<Callback>) -> Response {
    let l = lang(&h);
    let fail = |why: &str| {
        tracing::warn!(why, "sign-in failed");
        message(
            StatusCode::BAD_REQUEST,
            Chrome::new(l, None, "/"),
            l.t("signin_title"),
            l.t("signin_body"),
            Some("/"),
        )
    };
    if !q.error.is_empty() {
        return fail(&q.error);
    }
    let Some(pending) = p.sessions.finish_sign_in(&q.state) else {
        return fail("unknown or stale state");
    };
    let redirect = format!(
        "{}/auth/callback",
        p.config.public_url.trim_end_matches('/')
    );
    let pkce = client::Pkce {
        verifier: pending.verifier.clone(),
        challenge: pending.challenge.clone(),
    };
    let a = client::Authorize {
        authorization_endpoint: &pending.authorization_endpoint,
        client_id: &p.config.client_id,
        redirect_uri: &redirect,
        resource: &pending.audience,
        scope: "openid email profile",
        state: &q.state,
        pkce: &pkce,
    };
    let tokens = match client::exchange_code(
        oidc::shared_http(),
        &pending.token_endpoint,
        &a,
        &q.code,
        Some(&p.config.client_secret),
    )
    .await
    {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let me = match IncentiveServiceClient::new(p.incentive.clone())
        .who_am_i(bearer(ipb::WhoAmIRequest {}, &tokens.access_token))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == Code::PermissionDenied => {
            // Signed in at the provider, but nobody here: say what to do.
            return message(
                StatusCode::FORBIDDEN,
                Chrome::new(l, None, "/"),
                l.t("no_rep_title"),
                l.t("no_rep_body"),
                None,
            );
        }
        Err(s) => return failed(&s, l, None, "/"),
    };
    if me.tenant_id != pending.tenant {
        return fail("the token is for another tenant");
    }
    let lifetime = tokens
        .expires_in
        .unwrap_or(p.config.session_secs)
        .min(p.config.session_secs);
    let s = Session {
        tenant: me.tenant_id.clone(),
        token: tokens.access_token,
        login: me.login,
        role: me.role,
        rep_id: me.rep_id,
        name: me.display_name,
        managed_teams: me.managed_teams,
        csrf: random_id(),
        expires_at: Utc::now() + chrono::Duration::seconds(lifetime),
    };
    let id = p.sessions.start(s);
    let mut r = Redirect::to(&format!("/t/{}/", me.tenant_id)).into_response();
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age={lifetime}{}",
        if p.secure_cookies() { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// A form's CSRF token must be the session's.
fn csrf_ok(s: &Session, f: &std::collections::HashMap<String, String>) -> bool {
    f.get("csrf").is_some_and(|t| same(t, &s.csrf))
}

fn csrf_refused(l: Lang, s: Option<&Session>) -> Response {
    message(
        StatusCode::FORBIDDEN,
        Chrome::new(l, s, "/"),
        l.t("csrf_title"),
        l.t("csrf_body"),
        s.map(|s| format!("/t/{}/", s.tenant)).as_deref(),
    )
}

async fn logout(State(p): State<Portal>, h: HeaderMap, body: String) -> Response {
    let l = lang(&h);
    let id = cookie(&h, COOKIE).unwrap_or_default().to_owned();
    let Some(s) = p.sessions.get(&id) else {
        return Redirect::to("/").into_response();
    };
    if !csrf_ok(&s, &form(&body)) {
        return csrf_refused(l, Some(&s));
    }
    p.sessions.end(&id);
    let mut r = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn percent(share: &str) -> String {
    share
        .parse::<rust_decimal::Decimal>()
        .map(|d| {
            format!(
                "{}%",
                (d * rust_decimal::Decimal::ONE_HUNDRED)
                    .round_dp(1)
                    .normalize()
            )
        })
        .unwrap_or_else(|_| "—".into())
}

/// One rep's page: their statement of the current period, score and rank.
async fn rep_view(p: &Portal, s: &Session, l: Lang, rep: &str, path: &str) -> Response {
    let mut inc = IncentiveServiceClient::new(p.incentive.clone());
    let st = match inc
        .get_statement(bearer(
            ipb::GetStatementRequest {
                rep_id: rep.to_owned(),
                period: None,
                with_explanations: false,
            },
            &s.token,
        ))
        .await
    {
        Ok(r) => r.into_inner().statement.unwrap_or_default(),
        Err(e) => return failed(&e, l, Some(s), path),
    };
    let mut sc = ScoringServiceClient::new(p.scoring.clone());
    let score = sc
        .get_score(bearer(
            spb::GetScoreRequest {
                rep_id: rep.to_owned(),
                period: None,
            },
            &s.token,
        ))
        .await
        .ok()
        .and_then(|r| r.into_inner().score)
        .map(|x| x.score)
        .unwrap_or_default();
    let board = leaderboard(p, s, l, &st.currency, "").await;
    let rank = board
        .iter()
        .find(|b| b.rep_id == rep)
        .map(|b| format!("#{}", b.rank))
        .unwrap_or_else(|| "—".into());
    let cur = st.currency.clone();
    let page = HomePage {
        // A report's page is titled with the name the leaderboard gives them.
        heading: if rep == s.rep_id {
            s.name.clone()
        } else {
            board
                .iter()
                .find(|b| b.rep_id == rep && b.name != "—")
                .map_or_else(|| rep.to_owned(), |b| b.name.clone())
        },
        period: st
            .period
            .as_ref()
            .map(|x| x.key.clone())
            .unwrap_or_default(),
        total: l.money(&st.total, &cur),
        statuses: st
            .totals_by_status
            .iter()
            .map(|x| {
                (
                    spm_proto::ext::earning_status_name(x.status),
                    l.money(&x.amount, &cur),
                )
            })
            .collect(),
        attainment: percent(&st.attainment),
        revenue: l.money(&st.revenue, &cur),
        score: if score.is_empty() {
            "—".into()
        } else {
            score
        },
        rank,
        lines: st
            .lines
            .iter()
            .map(|x| LineRow {
                id: x.line_id.clone(),
                key: x.key.clone(),
                kind: spm_proto::ext::earning_kind_name(x.kind),
                amount: l.money(&x.amount, &cur),
                status: x
                    .by_status
                    .iter()
                    .map(|b| {
                        format!(
                            "{} {}",
                            spm_proto::ext::earning_status_name(b.status),
                            l.money(&b.amount, &cur)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                summary: x.summary.clone(),
            })
            .collect(),
        board,
        has_statement: true,
        live: rep == s.rep_id,
        c: Chrome::new(l, Some(s), path),
    };
    html(StatusCode::OK, &page)
}

async fn leaderboard(p: &Portal, s: &Session, l: Lang, cur: &str, team: &str) -> Vec<Board> {
    let mut sc = ScoringServiceClient::new(p.scoring.clone());
    let Ok(r) = sc
        .get_leaderboard(bearer(
            spb::GetLeaderboardRequest {
                team_id: team.to_owned(),
                period: None,
                by: "revenue".into(),
                top_n: 20,
            },
            &s.token,
        ))
        .await
    else {
        return Vec::new();
    };
    let may_open = s.role != "rep";
    r.into_inner()
        .entries
        .into_iter()
        .map(|e| Board {
            rank: e.rank,
            mine: !s.rep_id.is_empty() && e.rep_id == s.rep_id,
            link: may_open && !e.value.is_empty() && !e.rep_id.is_empty(),
            // Revenue in the tenant's base currency; empty where the viewer may not see it.
            value: if e.value.is_empty() {
                String::new()
            } else {
                l.money(&e.value, cur).trim_end().to_owned()
            },
            name: if e.display_name.is_empty() {
                "—".into()
            } else {
                e.display_name
            },
            rep_id: e.rep_id,
        })
        .collect()
}

async fn home(State(p): State<Portal>, h: HeaderMap, Path(tenant): Path<String>) -> Response {
    let s = match session_of(&p, &h, &tenant) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let l = lang(&h);
    let path = format!("/t/{tenant}/");
    if !s.rep_id.is_empty() {
        return rep_view(&p, &s, l, &s.rep_id.clone(), &path).await;
    }
    // Comp admins, finance and auditors: the tenant's leaderboard, each rep one click away.
    let board = leaderboard(&p, &s, l, "", "").await;
    html(
        StatusCode::OK,
        &HomePage {
            heading: s.name.clone(),
            period: String::new(),
            total: String::new(),
            statuses: Vec::new(),
            attainment: String::new(),
            revenue: String::new(),
            score: String::new(),
            rank: String::new(),
            lines: Vec::new(),
            board,
            has_statement: false,
            live: false,
            c: Chrome::new(l, Some(&s), &path),
        },
    )
}

async fn rep_page(
    State(p): State<Portal>,
    h: HeaderMap,
    Path((tenant, rep)): Path<(String, String)>,
) -> Response {
    let s = match session_of(&p, &h, &tenant) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let path = format!("/t/{tenant}/reps/{rep}");
    rep_view(&p, &s, lang(&h), &rep, &path).await
}

#[derive(serde::Deserialize, Default)]
struct LineQ {
    #[serde(default)]
    sent: String,
}

async fn line(
    State(p): State<Portal>,
    h: HeaderMap,
    Path((tenant, line)): Path<(String, String)>,
    Query(q): Query<LineQ>,
) -> Response {
    let s = match session_of(&p, &h, &tenant) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let l = lang(&h);
    let notice = if q.sent.is_empty() {
        String::new()
    } else {
        l.t("dispute_sent").to_owned()
    };
    line_view(&p, &s, l, &line, notice, String::new(), String::new()).await
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.replace('_', " ")
                } else {
                    format!("{prefix} › {}", k.replace('_', " "))
                };
                flatten(&key, x, out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix} {}", i + 1), x, out);
            }
        }
        serde_json::Value::Null => {}
        serde_json::Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

async fn line_view(
    p: &Portal,
    s: &Session,
    l: Lang,
    line: &str,
    notice: String,
    error: String,
    reason: String,
) -> Response {
    let path = format!("/t/{}/lines/{line}", s.tenant);
    let r = match IncentiveServiceClient::new(p.incentive.clone())
        .explain_line(bearer(
            ipb::ExplainLineRequest {
                line_id: line.to_owned(),
            },
            &s.token,
        ))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) if e.code() == Code::InvalidArgument => {
            return failed(&tonic::Status::not_found(""), l, Some(s), &path);
        }
        Err(e) => return failed(&e, l, Some(s), &path),
    };
    let ln = r.line.unwrap_or_default();
    let cur = "";
    let mut trace = Vec::new();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&ln.explanation_json) {
        flatten("", &v, &mut trace);
    }
    if trace.is_empty()
        && let Some(first) = r.postings.first()
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&first.explanation_json)
    {
        flatten("", &v, &mut trace);
    }
    let page = LinePage {
        line_id: line.to_owned(),
        key: ln.key.clone(),
        amount: l.money(&ln.amount, cur).trim_end().to_owned(),
        summary: ln.summary.clone(),
        trace,
        postings: r
            .postings
            .iter()
            .map(|x| {
                (
                    x.posted_at
                        .as_ref()
                        .and_then(spm_proto::ext::datetime)
                        .map(|t| l.date(t))
                        .unwrap_or_default(),
                    spm_proto::ext::earning_kind_name(x.kind),
                    spm_proto::ext::earning_status_name(x.status),
                    l.money(&x.amount, cur).trim_end().to_owned(),
                    x.reason.clone(),
                )
            })
            .collect(),
        own: r.rep_id == s.rep_id,
        notice,
        error,
        reason,
        c: Chrome::new(l, Some(s), &path),
    };
    html(StatusCode::OK, &page)
}

async fn dispute(
    State(p): State<Portal>,
    h: HeaderMap,
    Path((tenant, line)): Path<(String, String)>,
    body: String,
) -> Response {
    let s = match session_of(&p, &h, &tenant) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let l = lang(&h);
    let f = form(&body);
    if !csrf_ok(&s, &f) {
        return csrf_refused(l, Some(&s));
    }
    let reason = f.get("reason").cloned().unwrap_or_default();
    match IncentiveServiceClient::new(p.incentive.clone())
        .open_dispute(bearer(
            ipb::OpenDisputeRequest {
                line_id: line.clone(),
                reason: reason.clone(),
                opened_by: String::new(),
            },
            &s.token,
        ))
        .await
    {
        Ok(_) => Redirect::to(&format!("/t/{tenant}/lines/{line}?sent=1")).into_response(),
        Err(e) if e.code() == Code::InvalidArgument => {
            use tonic_types::StatusExt as _;
            let why = e
                .get_details_bad_request()
                .map(|b| {
                    b.field_violations
                        .iter()
                        .map(|v| format!("{}: {}", v.field, v.description))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_else(|| e.message().to_owned());
            let mut r = line_view(&p, &s, l, &line, String::new(), why, reason).await;
            *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            r
        }
        Err(e) => failed(&e, l, Some(&s), &format!("/t/{tenant}/lines/{line}")),
    }
}

/// The person's notifications as server-sent events (from notification's `Subscribe`, with
/// their token: only their own). The page appends each to its feed and refreshes its figures.
async fn live(State(p): State<Portal>, h: HeaderMap, Path(tenant): Path<String>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt as _;
    let s = match session_of(&p, &h, &tenant) {
        Ok(s) => s,
        Err(_) => return StatusCode::UNAUTHORIZED.into_response(),
    };
    let stream = match spm_proto::notification::v1::notification_service_client::NotificationServiceClient::new(
        p.notification.clone(),
    )
    .subscribe(bearer(
        spm_proto::notification::v1::SubscribeRequest {
            recipient: String::new(),
        },
        &s.token,
    ))
    .await
    {
        Ok(r) => r.into_inner(),
        Err(e) if e.code() == Code::PermissionDenied => return StatusCode::FORBIDDEN.into_response(),
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
    };
    let events = stream
        .take_while(|m| std::future::ready(m.is_ok()))
        .filter_map(|m| async move {
            let n = m.ok()?.notification?;
            let data = serde_json::json!({"title": n.title, "body": n.body, "rule": n.rule});
            Some(Ok::<_, std::convert::Infallible>(
                Event::default()
                    .event("notification")
                    .data(data.to_string()),
            ))
        });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
