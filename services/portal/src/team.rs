//! A manager's team page: each team they manage with its figures and leaderboard, the
//! process alerts of their reports, the calibration of their revenue goals and the open
//! questions waiting for them. Scoring and incentive scope every answer to the subtree.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use spm_proto::incentive::v1 as ipb;
use spm_proto::incentive::v1::incentive_service_client::IncentiveServiceClient;
use spm_proto::scoring::v1 as spb;
use spm_proto::scoring::v1::scoring_service_client::ScoringServiceClient;

use crate::Portal;
use crate::pages::{Board, Chrome, bearer, failed, html, lang, leaderboard, percent, session_of};

pub(crate) struct TeamView {
    pub team_id: String,
    pub name: String,
    pub reps: u32,
    /// (metric, value).
    pub metrics: Vec<(String, String)>,
    /// (name, reps, revenue).
    pub sub_teams: Vec<(String, u32, String)>,
    pub board: Vec<Board>,
}

#[derive(Template)]
#[template(path = "team.html")]
struct TeamPage {
    c: Chrome,
    teams: Vec<TeamView>,
    alerts: Vec<String>,
    verdict: String,
    explanation: String,
    /// (rep, value, target, projected, on track).
    projections: Vec<(String, String, String, String, bool)>,
    open_disputes: usize,
}

/// A metric's value for people: amounts grouped with two decimals, rates as percent,
/// averages to two decimals, counts as they are; "—" where there is none.
fn metric_value(l: crate::Lang, metric: &str, value: &str) -> String {
    if value.is_empty() {
        return "—".into();
    }
    match metric {
        "revenue" | "avg_deal_size" | "amount_due" | "collected" | "amount_collected" => {
            l.money(value, "").trim_end().to_owned()
        }
        m if m.ends_with("_rate") => percent(value),
        "csat_avg" | "nps" => value
            .parse::<rust_decimal::Decimal>()
            .map(|d| d.round_dp(2).normalize().to_string())
            .unwrap_or_else(|_| value.to_owned()),
        _ => value.to_owned(),
    }
}

pub async fn team(State(p): State<Portal>, h: HeaderMap, Path(tenant): Path<String>) -> Response {
    let s = match session_of(&p, &h, &tenant) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let l = lang(&h);
    let path = format!("/t/{tenant}/team");
    let sc = ScoringServiceClient::new(p.scoring.clone());
    let mut teams = Vec::new();
    for team in &s.managed_teams {
        let mut c = sc.clone();
        let req = bearer(
            spb::GetTeamRollupRequest {
                team_id: team.clone(),
                period: None,
            },
            &s.token,
        );
        let rollup = async move { c.get_team_rollup(req).await };
        let board = leaderboard(&p, &s, l, "", team);
        let (rollup, board) = tokio::join!(rollup, board);
        let r = match rollup {
            Ok(r) => r.into_inner(),
            Err(e) => return failed(&e, l, Some(&s), &path),
        };
        let t = r.team.unwrap_or_default();
        teams.push(TeamView {
            team_id: team.clone(),
            name: if t.name.is_empty() {
                team.clone()
            } else {
                t.name.clone()
            },
            reps: t.rep_count,
            metrics: t
                .metrics
                .iter()
                .map(|m| (l.metric(&m.metric), metric_value(l, &m.metric, &m.value)))
                .collect(),
            sub_teams: r
                .sub_teams
                .iter()
                .map(|x| {
                    let rev = x
                        .metrics
                        .iter()
                        .find(|m| m.metric == "revenue")
                        .map(|m| metric_value(l, "revenue", &m.value))
                        .unwrap_or_default();
                    (x.name.clone(), x.rep_count, rev)
                })
                .collect(),
            board,
        });
    }
    let names: std::collections::HashMap<String, String> = teams
        .iter()
        .flat_map(|t| t.board.iter())
        .map(|b| (b.rep_id.clone(), b.name.clone()))
        .collect();
    let name = |rep: &str| names.get(rep).cloned().unwrap_or_else(|| rep.to_owned());
    let (mut c1, mut c2) = (sc.clone(), sc.clone());
    let req = bearer(
        spb::ListProcessAlertsRequest {
            rep_id: String::new(),
            limit: 20,
        },
        &s.token,
    );
    let alerts = async move { c1.list_process_alerts(req).await };
    let req = bearer(
        spb::GetGoalCalibrationRequest {
            metric: "revenue".into(),
            period: None,
            low_share: String::new(),
            high_share: String::new(),
        },
        &s.token,
    );
    let calibration = async move { c2.get_goal_calibration(req).await };
    let mut inc = IncentiveServiceClient::new(p.incentive.clone());
    let req = bearer(
        ipb::ListDisputesRequest {
            rep_id: String::new(),
            open_only: true,
        },
        &s.token,
    );
    let disputes = async move { inc.list_disputes(req).await };
    let (alerts, calibration, disputes) = tokio::join!(alerts, calibration, disputes);
    let alerts = alerts
        .map(|r| r.into_inner().alerts)
        .unwrap_or_default()
        .iter()
        .map(|a| {
            l.t("alert_text")
                .replace("{rep}", &name(&a.rep_id))
                .replace("{metric}", &l.metric(&a.metric))
                .replace("{actual}", &a.actual)
                .replace("{expected}", &a.expected)
                .replace("{window}", &a.window)
        })
        .collect();
    let cal = calibration.map(|r| r.into_inner()).ok();
    let page = TeamPage {
        verdict: cal
            .as_ref()
            .map(|c| l.verdict(c.verdict).to_owned())
            .unwrap_or_default(),
        // The service explains in English; in Chinese the verdict says it.
        explanation: cal
            .as_ref()
            .filter(|_| l == crate::Lang::En)
            .map(|c| c.explanation.clone())
            .unwrap_or_default(),
        projections: cal
            .map(|c| {
                c.projections
                    .iter()
                    .map(|g| {
                        (
                            name(&g.subject_id),
                            metric_value(l, "revenue", &g.value),
                            metric_value(l, "revenue", &g.target),
                            percent(&g.projected_attainment),
                            g.on_track,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        open_disputes: disputes
            .map(|r| r.into_inner().disputes.len())
            .unwrap_or_default(),
        alerts,
        teams,
        c: Chrome::new(l, Some(&s), &path),
    };
    html(StatusCode::OK, &page)
}
