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
        .route("/healthz", get(|| async { "ok" }))
        .route("/auth/callback", get(callback))
        .route("/logout", post(logout))
        .route("/t/{tenant}/", get(home))
        .route("/t/{tenant}/login", get(login))
        .route("/t/{tenant}/lines/{line}", get(line))
        .route("/t/{tenant}/lines/{line}/dispute", post(dispute))
        .route("/t/{tenant}/reps/{rep}", get(rep_page))
        .route("/t/{tenant}/live", get(live))
        .route("/t/{tenant}/whatif", get(what_if))
        .route("/t/{tenant}/team", get(crate::team::team))
        .route("/t/{tenant}/disputes", get(crate::admin::disputes))
        .route("/t/{tenant}/disputes/{id}", post(crate::admin::resolve))
        .route(
            "/t/{tenant}/plans",
            get(crate::admin::plans).post(crate::admin::put_plan),
        )
        .route("/t/{tenant}/plans/edit", get(crate::admin::edit_plan))
        .route(
            "/t/{tenant}/plans/{plan}/{version}/state",
            axum::routing::post(crate::admin::plan_state),
        )
        .route(
            "/t/{tenant}/plans/{plan}/{version}/compare",
            get(crate::admin::compare_plan),
        )
        .route("/t/{tenant}/audit", get(crate::audit::audit))
        .route("/t/{tenant}/audit/verify", post(crate::audit::verify))
        .route(
            "/t/{tenant}/periods",
            get(crate::admin::periods).post(crate::admin::period_action),
        )
        .fallback(fallback)
        .with_state(p)
}

const COOKIE: &str = "spm_session";

pub(crate) fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

pub(crate) fn lang(h: &HeaderMap) -> Lang {
    Lang::choose(
        cookie(h, "lang"),
        h.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()),
    )
}

pub(crate) fn form(body: &str) -> std::collections::HashMap<String, String> {
    url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

/// What every page's frame shows.
pub(crate) struct Chrome {
    pub l: Lang,
    pub tenant: String,
    pub who: String,
    pub csrf: String,
    pub other_lang: &'static str,
    pub path: String,
    /// The sections the person's role opens: (href, label, whether this page is in it).
    pub nav: Vec<(String, &'static str, bool)>,
}

impl Chrome {
    pub(crate) fn new(l: Lang, s: Option<&Session>, path: &str) -> Self {
        let nav = s.map(|s| nav_of(l, s, path)).unwrap_or_default();
        Self {
            nav,
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

/// The sections of the portal a role opens (the services still decide what each shows).
fn nav_of(l: Lang, s: &Session, path: &str) -> Vec<(String, &'static str, bool)> {
    let t = &s.tenant;
    let mut out = vec![(format!("/t/{t}/"), l.t("nav_home"), false)];
    let role = s.role.as_str();
    if role == "manager" {
        out.push((format!("/t/{t}/team"), l.t("nav_team"), false));
    }
    if matches!(role, "comp_admin" | "finance" | "auditor" | "admin") {
        out.push((format!("/t/{t}/plans"), l.t("nav_plans"), false));
        out.push((format!("/t/{t}/periods"), l.t("nav_periods"), false));
    }
    if matches!(
        role,
        "manager" | "comp_admin" | "finance" | "auditor" | "admin"
    ) {
        out.push((format!("/t/{t}/disputes"), l.t("nav_disputes"), false));
    }
    if matches!(role, "comp_admin" | "auditor" | "admin") {
        out.push((format!("/t/{t}/audit"), l.t("nav_audit"), false));
    }
    // The longest matching section is the current one.
    if let Some(i) = out
        .iter()
        .enumerate()
        .filter(|(_, (h, _, _))| {
            path == h || (h.len() > t.len() + 4 && path.starts_with(h.as_str()))
        })
        .max_by_key(|(_, (h, _, _))| h.len())
        .map(|(i, _)| i)
    {
        out[i].2 = true;
    }
    out
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

pub(crate) struct Board {
    pub rank: u32,
    pub rep_id: String,
    pub name: String,
    pub value: String,
    pub mine: bool,
    pub link: bool,
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
    /// "8% from here: 6,000.00 EUR more revenue" (empty on the top tier).
    next_tier: String,
    score: String,
    /// (KPI, value, points, weight).
    kpis: Vec<(String, String, String, String)>,
    rank: String,
    lines: Vec<LineRow>,
    /// (title, period, reason, is the promotion eligibility).
    awards: Vec<(String, String, String, bool)>,
    disputes: Vec<DisputeRow>,
    chart: Vec<Bar>,
    currency: String,
    board: Vec<Board>,
    has_statement: bool,
    /// The person's own page: the what-if estimator.
    own: bool,
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

pub(crate) fn html(status: StatusCode, t: &impl Template) -> Response {
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

pub(crate) fn message(
    status: StatusCode,
    c: Chrome,
    title: &str,
    body: &str,
    back: Option<&str>,
) -> Response {
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
pub(crate) fn failed(
    s: &tonic::Status,
    l: Lang,
    session: Option<&Session>,
    path: &str,
) -> Response {
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

pub(crate) fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// The session of this request for `tenant`, or a redirect to sign in.
pub(crate) fn session_of(p: &Portal, h: &HeaderMap, tenant: &str) -> Result<Session, Redirect> {
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

/// A posted form of `tenant`'s signed-in person, its CSRF token checked: the session, the
/// language and the fields; else the response (sign-in redirect or CSRF refusal).
pub(crate) fn posted(
    p: &Portal,
    h: &HeaderMap,
    tenant: &str,
    body: &str,
) -> Result<(Session, Lang, std::collections::HashMap<String, String>), Box<Response>> {
    let s = session_of(p, h, tenant).map_err(|r| Box::new(r.into_response()))?;
    let l = lang(h);
    let f = form(body);
    if !csrf_ok(&s, &f) {
        return Err(Box::new(csrf_refused(l, Some(&s))));
    }
    Ok((s, l, f))
}

/// A form's CSRF token must be the session's.
pub(crate) fn csrf_ok(s: &Session, f: &std::collections::HashMap<String, String>) -> bool {
    f.get("csrf").is_some_and(|t| same(t, &s.csrf))
}

pub(crate) fn csrf_refused(l: Lang, s: Option<&Session>) -> Response {
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

pub(crate) fn percent(share: &str) -> String {
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

/// The period before `key` ("2026-11" → "2026-10", "FY2027-Q1" → "FY2026-Q4").
fn previous_key(key: &str) -> Option<String> {
    if let Some(rest) = key.strip_prefix("FY") {
        let (y, q) = rest.split_once("-Q")?;
        let (y, q) = (y.parse::<i32>().ok()?, q.parse::<u32>().ok()?);
        return Some(if q > 1 {
            format!("FY{y}-Q{}", q - 1)
        } else {
            format!("FY{}-Q4", y - 1)
        });
    }
    let (y, m) = key.split_once('-')?;
    let (y, m) = (y.parse::<i32>().ok()?, m.parse::<u32>().ok()?);
    Some(if m > 1 {
        format!("{y}-{:02}", m - 1)
    } else {
        format!("{}-12", y - 1)
    })
}

/// One bar pair of the chart over periods.
pub(crate) struct Bar {
    pub period: String,
    pub earned: String,
    pub attainment: String,
    /// Heights in percent of the tallest.
    pub earned_h: u32,
    pub attainment_h: u32,
}

/// Bars from (period, earned, attainment share), oldest first, scaled to the largest.
fn bars(l: Lang, cur: &str, rows: &[(String, String, String)]) -> Vec<Bar> {
    use rust_decimal::Decimal;
    let dec = |x: &str| x.parse::<Decimal>().unwrap_or_default();
    let max_e = rows.iter().map(|r| dec(&r.1)).max().unwrap_or_default();
    let max_a = rows.iter().map(|r| dec(&r.2)).max().unwrap_or_default();
    let h = |v: Decimal, max: Decimal| -> u32 {
        if max <= Decimal::ZERO || v <= Decimal::ZERO {
            0
        } else {
            u32::try_from((v * Decimal::ONE_HUNDRED / max).round().mantissa()).unwrap_or(0)
        }
    };
    rows.iter()
        .map(|(p, e, a)| Bar {
            period: p.clone(),
            earned: l.money(e, cur),
            attainment: if a.is_empty() {
                "—".into()
            } else {
                percent(a)
            },
            earned_h: h(dec(e), max_e),
            attainment_h: h(dec(a), max_a),
        })
        .collect()
}

/// How many periods the chart shows.
const CHART_PERIODS: usize = 6;

/// One rep's page: their statement of the current period, score, rank, badges, questions
/// and the periods before.
async fn rep_view(p: &Portal, s: &Session, l: Lang, rep: &str, path: &str) -> Response {
    let mut inc = IncentiveServiceClient::new(p.incentive.clone());
    let st = match inc
        .get_statement(bearer(
            ipb::GetStatementRequest {
                as_of: None,
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
    let period = st.period.clone().unwrap_or_default();
    // The periods before this one, for the chart (cached statements: cheap).
    let mut keys = vec![period.key.clone()];
    while keys.len() < CHART_PERIODS {
        match keys.last().and_then(|k| previous_key(k)) {
            Some(k) => keys.push(k),
            None => break,
        }
    }
    let history = futures::future::join_all(keys.iter().skip(1).map(|k| {
        let mut inc = inc.clone();
        let req = bearer(
            ipb::GetStatementRequest {
                as_of: None,
                rep_id: rep.to_owned(),
                period: Some(spm_proto::common::v1::Period {
                    kind: period.kind,
                    key: k.clone(),
                }),
                with_explanations: false,
            },
            &s.token,
        );
        async move { inc.get_statement(req).await.ok()?.into_inner().statement }
    }));
    let mut sc = ScoringServiceClient::new(p.scoring.clone());
    let score = async {
        sc.get_score(bearer(
            spb::GetScoreRequest {
                rep_id: rep.to_owned(),
                period: None,
            },
            &s.token,
        ))
        .await
        .ok()
        .and_then(|r| r.into_inner().score)
    };
    let mut inc2 = inc.clone();
    let awards = async {
        inc2.list_awards(bearer(
            ipb::ListAwardsRequest {
                rep_id: rep.to_owned(),
            },
            &s.token,
        ))
        .await
        .map(|r| r.into_inner().awards)
        .unwrap_or_default()
    };
    let mut inc3 = inc.clone();
    let disputes = async {
        inc3.list_disputes(bearer(
            ipb::ListDisputesRequest {
                rep_id: rep.to_owned(),
                open_only: false,
            },
            &s.token,
        ))
        .await
        .map(|r| r.into_inner().disputes)
        .unwrap_or_default()
    };
    let board = leaderboard(p, s, l, &st.currency, "");
    let (history, score, awards, disputes, board) =
        tokio::join!(history, score, awards, disputes, board);
    let rank = board
        .iter()
        .find(|b| b.rep_id == rep)
        .map(|b| format!("#{}", b.rank))
        .unwrap_or_else(|| "—".into());
    let cur = st.currency.clone();
    let mut chart_rows: Vec<(String, String, String)> = history
        .into_iter()
        .flatten()
        .map(|h| {
            (
                h.period.map(|p| p.key).unwrap_or_default(),
                h.total,
                h.attainment,
            )
        })
        .collect();
    chart_rows.reverse();
    chart_rows.push((period.key.clone(), st.total.clone(), st.attainment.clone()));
    let line_keys: std::collections::HashMap<&str, &str> = st
        .lines
        .iter()
        .map(|x| (x.line_id.as_str(), x.key.as_str()))
        .collect();
    let (score_value, kpis) = match score {
        Some(x) => (
            x.score.clone(),
            x.kpis
                .iter()
                .map(|k| {
                    (
                        l.metric(&k.metric),
                        k.value.clone(),
                        k.points.clone(),
                        k.weight.clone(),
                    )
                })
                .collect(),
        ),
        None => (String::new(), Vec::new()),
    };
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
        period: period.key.clone(),
        total: l.money(&st.total, &cur),
        statuses: st
            .totals_by_status
            .iter()
            .map(|x| (l.earning_status(x.status), l.money(&x.amount, &cur)))
            .collect(),
        attainment: percent(&st.attainment),
        revenue: l.money(&st.revenue, &cur),
        next_tier: st
            .next_tier
            .as_ref()
            .map(|n| {
                l.t("next_tier_text")
                    .replace("{rate}", &percent(&n.rate))
                    .replace("{needed}", &l.money(&n.revenue_needed, &cur))
            })
            .unwrap_or_default(),
        score: if score_value.is_empty() {
            "—".into()
        } else {
            score_value
        },
        kpis,
        rank,
        lines: st
            .lines
            .iter()
            .map(|x| LineRow {
                id: x.line_id.clone(),
                key: x.key.clone(),
                kind: l.earning_kind(x.kind),
                amount: l.money(&x.amount, &cur),
                status: x
                    .by_status
                    .iter()
                    .map(|b| {
                        format!(
                            "{} {}",
                            l.earning_status(b.status),
                            l.money(&b.amount, &cur)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                summary: x.summary.clone(),
            })
            .collect(),
        awards: awards
            .iter()
            .map(|a| {
                (
                    a.title.clone(),
                    a.period.as_ref().map(|p| p.key.clone()).unwrap_or_default(),
                    a.reason.clone(),
                    a.kind == spm_proto::events::v1::AwardKind::PromotionEligibility as i32,
                )
            })
            .collect(),
        disputes: disputes
            .iter()
            .rev()
            .map(|d| DisputeRow {
                line_id: d.line_id.clone(),
                line: line_keys
                    .get(d.line_id.as_str())
                    .map_or_else(|| l.t("earlier_line").to_owned(), |k| (*k).to_owned()),
                reason: d.reason.clone(),
                status: l.dispute_status(d.status),
                note: d.note.clone(),
                adjustment: if d.adjustment.is_empty() {
                    String::new()
                } else {
                    l.money(&d.adjustment, &cur)
                },
            })
            .collect(),
        chart: bars(l, &cur, &chart_rows),
        currency: cur.clone(),
        board,
        has_statement: true,
        own: rep == s.rep_id,
        live: rep == s.rep_id,
        c: Chrome::new(l, Some(s), path),
    };
    html(StatusCode::OK, &page)
}

pub(crate) struct DisputeRow {
    pub line_id: String,
    pub line: String,
    pub reason: String,
    pub status: String,
    pub note: String,
    pub adjustment: String,
}

pub(crate) async fn leaderboard(
    p: &Portal,
    s: &Session,
    l: Lang,
    cur: &str,
    team: &str,
) -> Vec<Board> {
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
            next_tier: String::new(),
            score: String::new(),
            kpis: Vec::new(),
            rank: String::new(),
            lines: Vec::new(),
            awards: Vec::new(),
            disputes: Vec::new(),
            chart: Vec::new(),
            currency: String::new(),
            board,
            has_statement: false,
            own: false,
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
                as_of: None,
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
                    l.earning_kind(x.kind),
                    l.earning_status(x.status),
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
    let (s, l, f) = match posted(&p, &h, &tenant, &body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
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
            let why = violations(&e)
                .into_iter()
                .map(|(_, d)| d)
                .collect::<Vec<_>>()
                .join("; ");
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

#[derive(Template)]
#[template(path = "whatif.html")]
struct WhatIfPage {
    c: Chrome,
    amount: String,
    currency: String,
    error: String,
    has_result: bool,
    period: String,
    now: String,
    with: String,
    delta: String,
    attainment_before: String,
    attainment_after: String,
    summary: String,
    /// (line, kind, amount, how).
    lines: Vec<(String, String, String, String)>,
}

#[derive(serde::Deserialize, Default)]
struct WhatIfQ {
    #[serde(default)]
    amount: String,
}

/// The estimator: what the person's statement would be if a deal closed today at `amount`
/// (incentive's `WhatIf`; nothing is recorded).
async fn what_if(
    State(p): State<Portal>,
    h: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<WhatIfQ>,
) -> Response {
    let s = match session_of(&p, &h, &tenant) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let l = lang(&h);
    let path = format!("/t/{tenant}/whatif");
    if s.rep_id.is_empty() {
        return failed(&tonic::Status::permission_denied(""), l, Some(&s), &path);
    }
    let mut inc = IncentiveServiceClient::new(p.incentive.clone());
    // The statement's currency is the tenant's base currency, the one WhatIf takes.
    let currency = match inc
        .get_statement(bearer(
            ipb::GetStatementRequest {
                as_of: None,
                rep_id: s.rep_id.clone(),
                period: None,
                with_explanations: false,
            },
            &s.token,
        ))
        .await
    {
        Ok(r) => r.into_inner().statement.unwrap_or_default().currency,
        Err(e) => return failed(&e, l, Some(&s), &path),
    };
    let amount = q.amount.trim().replace([',', ' '], "");
    let mut page = WhatIfPage {
        amount: q.amount.trim().to_owned(),
        currency: currency.clone(),
        error: String::new(),
        has_result: false,
        period: String::new(),
        now: String::new(),
        with: String::new(),
        delta: String::new(),
        attainment_before: String::new(),
        attainment_after: String::new(),
        summary: String::new(),
        lines: Vec::new(),
        c: Chrome::new(l, Some(&s), &path),
    };
    if amount.is_empty() {
        return html(StatusCode::OK, &page);
    }
    match inc
        .what_if(bearer(
            ipb::WhatIfRequest {
                rep_id: s.rep_id.clone(),
                amount: Some(spm_proto::common::v1::Money {
                    amount,
                    currency: currency.clone(),
                }),
                lines: Vec::new(),
                close_at: None,
            },
            &s.token,
        ))
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            page.has_result = true;
            page.period = r.period.map(|p| p.key).unwrap_or_default();
            page.now = l.money(&r.current_total, &currency);
            page.with = l.money(&r.new_total, &currency);
            page.delta = format!("+{}", l.money(&r.delta, &currency));
            page.attainment_before = percent(&r.attainment_before);
            page.attainment_after = percent(&r.attainment_after);
            page.summary = r.summary;
            page.lines = r
                .changed_lines
                .iter()
                .map(|x| {
                    (
                        x.key.clone(),
                        l.earning_kind(x.kind),
                        l.money(&x.amount, &currency),
                        x.summary.clone(),
                    )
                })
                .collect();
            html(StatusCode::OK, &page)
        }
        Err(e) if e.code() == Code::InvalidArgument => {
            page.error = violations(&e)
                .into_iter()
                .map(|(_, d)| d)
                .collect::<Vec<_>>()
                .join("; ");
            html(StatusCode::UNPROCESSABLE_ENTITY, &page)
        }
        Err(e) if e.code() == Code::FailedPrecondition => {
            page.error = l.t("whatif_no_plan").to_owned();
            html(StatusCode::UNPROCESSABLE_ENTITY, &page)
        }
        Err(e) => failed(&e, l, Some(&s), &path),
    }
}

/// The field violations of an INVALID_ARGUMENT answer: (field, what to fix).
pub(crate) fn violations(e: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt as _;
    match e.get_details_bad_request() {
        Some(b) if !b.field_violations.is_empty() => b
            .field_violations
            .iter()
            .map(|v| (v.field.clone(), v.description.clone()))
            .collect(),
        _ => vec![(String::new(), e.message().to_owned())],
    }
}
