//! `ScoringService`: scores, explanations, metrics, goal progress, leaderboards, team
//! rollups, live score changes, goal calibration and process alerts. Every query is
//! scoped to the caller's tenant.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;

use chrono::Utc;
use futures::Stream;
use prost::Message as _;
use rust_decimal::Decimal;
use spm_core::period::{Calendar, Period, PeriodKind};
use spm_proto::common::v1 as common;
use spm_proto::events::v1 as ev;
use spm_proto::scoring::v1 as pb;
use spm_proto::scoring::v1::scoring_service_server::ScoringService;
use spm_server::ApiError;
use spm_server::access::{PeerView, leaderboard_row};
use spm_server::auth::caller;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use crate::domain::calibration::{self, Verdict};
use crate::domain::goals::{attainment, projected};
use crate::domain::metrics::{CellTotals, is_metric};
use crate::domain::{rank, round};
use crate::engine::{self, months_of};
use crate::store::{self, Rep};

#[derive(Clone)]
pub struct Api {
    pub pool: PgPool,
    pub scores: broadcast::Sender<String>,
}

/// Parses a requested period (empty key: the current one) in the tenant's calendar.
pub fn period(
    cal: &Calendar,
    p: Option<&common::Period>,
    kinds: &[PeriodKind],
) -> Result<Period, ApiError> {
    let p = p.cloned().unwrap_or_default();
    let kind = match common::PeriodKind::try_from(p.kind) {
        Ok(common::PeriodKind::Month) => PeriodKind::Month,
        Ok(common::PeriodKind::Quarter) => PeriodKind::Quarter,
        Ok(common::PeriodKind::Year) => PeriodKind::Year,
        Ok(common::PeriodKind::Week) => PeriodKind::Week,
        _ => PeriodKind::Month,
    };
    if !kinds.contains(&kind) {
        let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        return Err(ApiError::invalid(
            "period.kind",
            format!("must be one of {}", names.join(", ")),
        ));
    }
    if p.key.is_empty() {
        return Ok(cal.period(kind, Utc::now()));
    }
    cal.parse_key(kind, &p.key)
        .map_err(|e| ApiError::invalid("period.key", e.to_string()))
}

pub fn period_pb(p: &Period) -> common::Period {
    let kind = match p.kind {
        PeriodKind::Week => common::PeriodKind::Week,
        PeriodKind::Month => common::PeriodKind::Month,
        PeriodKind::Quarter => common::PeriodKind::Quarter,
        PeriodKind::Year => common::PeriodKind::Year,
    };
    common::Period {
        kind: kind as i32,
        key: p.key.clone(),
    }
}

pub async fn calendar(pool: &PgPool, tenant: &str) -> Result<Calendar, ApiError> {
    Ok(spm_server::auth::tenant_calendar(pool, tenant)
        .await?
        .map(|(c, _)| c)
        .unwrap_or_default())
}

pub fn score_of(s: ev::ScoreChanged) -> pb::Score {
    pb::Score {
        rep_id: s.rep_id,
        team_id: s.team_id,
        period: s.period,
        scorecard_id: s.scorecard_id,
        scorecard_version: s.scorecard_version,
        score: s.score,
        cap: s.cap,
        kpis: s.kpis,
        pillars: s.pillars,
    }
}

const SCORED: &[PeriodKind] = &[PeriodKind::Month, PeriodKind::Quarter, PeriodKind::Year];

impl Api {
    /// The stored snapshot, or one computed now for a rep without data in the period.
    async fn snapshot(
        &self,
        tenant: &str,
        rep_id: &str,
        p: &Period,
        cal: &Calendar,
    ) -> Result<ev::ScoreChanged, ApiError> {
        let row: Option<(Vec<u8>,)> = sqlx::query_as(
            "SELECT snapshot FROM scores WHERE tenant_id = $1 AND rep_id = $2 AND period_kind = $3 AND period_key = $4",
        )
        .bind(tenant)
        .bind(rep_id)
        .bind(p.kind.as_str())
        .bind(&p.key)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((b,)) = row {
            return ev::ScoreChanged::decode(b.as_slice())
                .map_err(|e| ApiError::Internal(e.to_string()));
        }
        let mut conn = self.pool.acquire().await?;
        let reps = store::reps(&mut conn, tenant, &[rep_id.to_owned()]).await?;
        let rep = reps
            .get(rep_id)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("rep {rep_id:?} is not known to scoring")))?;
        let teams = store::teams(&mut conn, tenant).await?;
        let cards = store::scorecards(&mut conn, tenant).await?;
        let months = months_of(cal, p);
        let mut names = vec![format!("{}:{}", p.kind, p.key)];
        names.extend(months.iter().map(|m| format!("month:{m}")));
        let versions = store::goal_versions(&mut conn, tenant, &names).await?;
        let at = Utc::now().min(p.end);
        let goals = store::in_force(&versions, |_| at);
        let totals = CellTotals::default();
        let goal = |m: &str| engine::target(&goals, rep_id, p.kind, &p.key, m, &months);
        Ok(engine::snapshot(
            &rep,
            p.kind,
            &p.key,
            engine::resolve(&cards, &rep, &teams),
            &totals,
            &goal,
        ))
    }

    async fn goals_in_force(
        &self,
        conn: &mut sqlx::PgConnection,
        tenant: &str,
        p: &Period,
    ) -> Result<Vec<store::GoalVersion>, ApiError> {
        let versions =
            store::goal_versions(conn, tenant, &[format!("{}:{}", p.kind, p.key)]).await?;
        let at = Utc::now().min(p.end);
        Ok(store::in_force(&versions, |_| at))
    }

    async fn totals(
        &self,
        tenant: &str,
        subject: (pb::SubjectKind, &str),
        p: &Period,
        cal: &Calendar,
    ) -> Result<(CellTotals, Vec<String>), ApiError> {
        let mut conn = self.pool.acquire().await?;
        let reps = match subject.0 {
            pb::SubjectKind::Rep => vec![subject.1.to_owned()],
            pb::SubjectKind::Team => store::team_members(&mut conn, tenant, subject.1).await?,
            pb::SubjectKind::Unspecified => {
                return Err(ApiError::invalid("subject_kind", "must be REP or TEAM"));
            }
        };
        if p.kind == PeriodKind::Week {
            let rows: Vec<(String, Decimal, i64)> = sqlx::query_as(
                "SELECT cell, sum(sum), sum(n)::bigint FROM cells WHERE tenant_id = $1 AND period_kind = 'week'
                   AND period_key = $2 AND rep_id = ANY($3) GROUP BY cell",
            )
            .bind(tenant)
            .bind(&p.key)
            .bind(&reps)
            .fetch_all(&mut *conn)
            .await?;
            let mut t = CellTotals::default();
            for (c, s, n) in rows {
                t.add(&c, s, n);
            }
            return Ok((t, reps));
        }
        let months = months_of(cal, p);
        Ok((
            store::totals_of(&mut conn, tenant, &reps, &months).await?,
            reps,
        ))
    }
}

fn metric_values(t: &CellTotals) -> Vec<pb::MetricValue> {
    t.all()
        .into_iter()
        .map(|(m, v, n)| pb::MetricValue {
            metric: m.to_owned(),
            value: v.map(|v| v.to_string()).unwrap_or_default(),
            event_count: n,
        })
        .collect()
}

fn subject(kind: i32, id: &str) -> Result<(pb::SubjectKind, String), ApiError> {
    let k = pb::SubjectKind::try_from(kind).unwrap_or(pb::SubjectKind::Unspecified);
    if k == pb::SubjectKind::Unspecified {
        return Err(ApiError::invalid("subject_kind", "must be REP or TEAM"));
    }
    if id.is_empty() {
        return Err(ApiError::invalid("subject_id", "is required"));
    }
    Ok((k, id.to_owned()))
}

/// The facts behind one KPI metric in a period (client event ids first).
async fn contributions(
    pool: &PgPool,
    tenant: &str,
    rep: &str,
    metric: &str,
    months: &[String],
) -> Result<Vec<pb::Contribution>, sqlx::Error> {
    // Deals closed (or due) in the period and what is linked to them, or the period's own
    // payments, surveys or activities.
    let (sql, kinds): (&str, Vec<&str>) = match metric {
        "revenue" | "deals_won" | "avg_deal_size" => (
            "SELECT f.* FROM facts f WHERE f.tenant_id = $1 AND f.rep_id = $2 AND (
                (f.kind = 'deal' AND f.month_key = ANY($3))
                OR (f.kind = ANY($4) AND f.deal_id IN (SELECT deal_id FROM facts WHERE tenant_id = $1 AND rep_id = $2
                                                         AND kind = 'deal' AND month_key = ANY($3))))",
            vec!["reversal"],
        ),
        "amount_due" | "collected" | "collection_rate" => (
            "SELECT f.* FROM facts f WHERE f.tenant_id = $1 AND f.rep_id = $2 AND (
                (f.kind = 'deal' AND f.due_month_key = ANY($3))
                OR (f.kind = ANY($4) AND f.deal_id IN (SELECT deal_id FROM facts WHERE tenant_id = $1 AND rep_id = $2
                                                         AND kind = 'deal' AND due_month_key = ANY($3))))",
            vec!["reversal", "payment"],
        ),
        "amount_collected" => (
            "SELECT f.* FROM facts f WHERE f.tenant_id = $1 AND f.rep_id = $2 AND f.month_key = ANY($3) AND f.kind = ANY($4)",
            vec!["payment"],
        ),
        "csat_avg" => (
            "SELECT f.* FROM facts f WHERE f.tenant_id = $1 AND f.rep_id = $2 AND f.month_key = ANY($3) AND f.kind = ANY($4)",
            vec!["csat"],
        ),
        "nps" => (
            "SELECT f.* FROM facts f WHERE f.tenant_id = $1 AND f.rep_id = $2 AND f.month_key = ANY($3) AND f.kind = ANY($4)",
            vec!["nps"],
        ),
        _ => (
            "SELECT f.* FROM facts f WHERE f.tenant_id = $1 AND f.rep_id = $2 AND f.month_key = ANY($3) AND f.kind = ANY($4)",
            vec![],
        ),
    };
    let activity_kind = format!("activity:{metric}");
    let kinds: Vec<&str> = if kinds.is_empty() {
        vec![activity_kind.as_str()]
    } else {
        kinds
    };
    let sql = format!("{sql} ORDER BY f.occurred_at, f.event_id LIMIT 1000");
    let rows: Vec<store::FactRow> = sqlx::query_as(&sql)
        .bind(tenant)
        .bind(rep)
        .bind(months)
        .bind(&kinds)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| pb::Contribution {
            value: if r.kind == "csat" || r.kind == "nps" {
                r.score.to_string()
            } else if r.kind.starts_with("activity:") {
                "1".into()
            } else {
                r.amount.normalize().to_string()
            },
            event_id: r.source_event_id,
            kind: r.kind,
            occurred_at: Some(spm_proto::ext::timestamp(r.occurred_at)),
            deal_id: r.deal_id,
        })
        .collect())
}

type WatchStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchScoresResponse, Status>> + Send + 'static>>;

/// How often a live stream re-reads a manager's subtree.
const SCOPE_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

impl Api {
    /// A rep's figures need the rep in scope; a team's, the team managed by the caller.
    async fn require_subject(
        &self,
        c: &spm_server::Caller,
        kind: pb::SubjectKind,
        id: &str,
    ) -> Result<(), ApiError> {
        match kind {
            pb::SubjectKind::Team => c.require_team(&self.pool, id).await,
            _ => c.require_rep(&self.pool, id).await,
        }
    }
}

#[tonic::async_trait]
impl ScoringService for Api {
    async fn get_score(
        &self,
        req: Request<pb::GetScoreRequest>,
    ) -> Result<Response<pb::GetScoreResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        if r.rep_id.is_empty() {
            return Err(ApiError::invalid("rep_id", "is required").into());
        }
        c.require_rep(&self.pool, &r.rep_id).await?;
        let cal = calendar(&self.pool, &c.tenant_id).await?;
        let p = period(&cal, r.period.as_ref(), SCORED)?;
        let snap = self.snapshot(&c.tenant_id, &r.rep_id, &p, &cal).await?;
        Ok(Response::new(pb::GetScoreResponse {
            score: Some(score_of(snap)),
        }))
    }

    async fn explain_score(
        &self,
        req: Request<pb::ExplainScoreRequest>,
    ) -> Result<Response<pb::ExplainScoreResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        if r.rep_id.is_empty() {
            return Err(ApiError::invalid("rep_id", "is required").into());
        }
        c.require_rep(&self.pool, &r.rep_id).await?;
        let cal = calendar(&self.pool, &c.tenant_id).await?;
        let p = period(&cal, r.period.as_ref(), SCORED)?;
        let snap = self.snapshot(&c.tenant_id, &r.rep_id, &p, &cal).await?;
        let months = months_of(&cal, &p);
        let mut conn = self.pool.acquire().await.map_err(ApiError::from)?;
        let cards = store::scorecards(&mut conn, &c.tenant_id)
            .await
            .map_err(ApiError::from)?;
        drop(conn);
        let card = cards.iter().find(|x| x.scorecard_id == snap.scorecard_id);
        let mut kpis = Vec::new();
        for k in &snap.kpis {
            let rule = card
                .and_then(|cd| cd.kpis.iter().find(|x| x.kpi_id == k.kpi_id))
                .map(|x| {
                    format!(
                        "attainment = value {} / target {} = {}; points by {}; weighted {} x {}%",
                        if k.value.is_empty() { "n/a" } else { &k.value },
                        if k.target.is_empty() {
                            "n/a (no goal)"
                        } else {
                            &k.target
                        },
                        if k.attainment.is_empty() {
                            "n/a"
                        } else {
                            &k.attainment
                        },
                        x.curve.describe(),
                        k.points,
                        k.weight
                    )
                })
                .unwrap_or_default();
            let contributions =
                contributions(&self.pool, &c.tenant_id, &r.rep_id, &k.metric, &months)
                    .await
                    .map_err(ApiError::from)?;
            kpis.push(pb::KpiExplanation {
                kpi: Some(k.clone()),
                rule,
                contributions,
            });
        }
        Ok(Response::new(pb::ExplainScoreResponse {
            score: Some(score_of(snap)),
            kpis,
        }))
    }

    async fn get_metrics(
        &self,
        req: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::GetMetricsResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let (kind, id) = subject(r.subject_kind, &r.subject_id)?;
        self.require_subject(&c, kind, &id).await?;
        let cal = calendar(&self.pool, &c.tenant_id).await?;
        let p = period(
            &cal,
            r.period.as_ref(),
            &[
                PeriodKind::Week,
                PeriodKind::Month,
                PeriodKind::Quarter,
                PeriodKind::Year,
            ],
        )?;
        let (t, _) = self.totals(&c.tenant_id, (kind, &id), &p, &cal).await?;
        Ok(Response::new(pb::GetMetricsResponse {
            period: Some(period_pb(&p)),
            metrics: metric_values(&t),
        }))
    }

    async fn get_goal_progress(
        &self,
        req: Request<pb::GetGoalProgressRequest>,
    ) -> Result<Response<pb::GetGoalProgressResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let (kind, id) = subject(r.subject_kind, &r.subject_id)?;
        self.require_subject(&c, kind, &id).await?;
        let cal = calendar(&self.pool, &c.tenant_id).await?;
        let p = period(&cal, r.period.as_ref(), SCORED)?;
        let mut conn = self.pool.acquire().await.map_err(ApiError::from)?;
        let goals = self.goals_in_force(&mut conn, &c.tenant_id, &p).await?;
        let kind_name = if kind == pb::SubjectKind::Rep {
            "rep"
        } else {
            "team"
        };
        let mine: Vec<store::GoalVersion> = goals
            .into_iter()
            .filter(|g| g.subject_kind == kind_name && g.subject_id == id)
            .collect();
        let done: HashMap<uuid::Uuid, i32> = sqlx::query_as::<_, (uuid::Uuid, i32)>(
            "SELECT goal_id, max(milestone) FROM milestones WHERE tenant_id = $1 AND goal_id = ANY($2) GROUP BY goal_id",
        )
        .bind(&c.tenant_id)
        .bind(mine.iter().map(|g| g.goal_id).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .collect();
        drop(conn);
        let (t, _) = self.totals(&c.tenant_id, (kind, &id), &p, &cal).await?;
        let elapsed = round(p.elapsed_fraction(Utc::now()), 4);
        let goals = mine
            .into_iter()
            .map(|g| {
                let value = t.metric(&g.metric).0.unwrap_or_default();
                pb::GoalProgress {
                    value: round(value, 4).to_string(),
                    attainment: attainment(value, g.target)
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    elapsed: elapsed.to_string(),
                    projected_attainment: projected(value, g.target, elapsed)
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    last_milestone_percent: u32::try_from(
                        done.get(&g.goal_id).copied().unwrap_or(0),
                    )
                    .unwrap_or(0),
                    goal: Some(crate::admin::goal_pb(&g)),
                }
            })
            .collect();
        Ok(Response::new(pb::GetGoalProgressResponse { goals }))
    }

    async fn get_leaderboard(
        &self,
        req: Request<pb::GetLeaderboardRequest>,
    ) -> Result<Response<pb::GetLeaderboardResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let by = if r.by.is_empty() {
            "score".to_owned()
        } else {
            r.by.clone()
        };
        if by != "score" && !is_metric(&by) {
            return Err(ApiError::invalid(
                "by",
                format!("must be \"score\" or a metric, got {by:?}"),
            )
            .into());
        }
        let top_n = if r.top_n == 0 { 10 } else { r.top_n.min(1000) } as usize;
        let cal = calendar(&self.pool, &c.tenant_id).await?;
        let p = period(&cal, r.period.as_ref(), SCORED)?;
        let mut conn = self.pool.acquire().await.map_err(ApiError::from)?;
        let mut members: BTreeSet<String> =
            store::team_members(&mut conn, &c.tenant_id, &r.team_id)
                .await
                .map_err(ApiError::from)?
                .into_iter()
                .collect();
        if r.team_id.is_empty() {
            let with_data: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT rep_id FROM scores WHERE tenant_id = $1 AND period_kind = $2 AND period_key = $3",
            )
            .bind(&c.tenant_id)
            .bind(p.kind.as_str())
            .bind(&p.key)
            .fetch_all(&mut *conn)
            .await
            .map_err(ApiError::from)?;
            members.extend(with_data);
        }
        let members: Vec<String> = members.into_iter().collect();
        let reps: HashMap<String, Rep> = store::reps(&mut conn, &c.tenant_id, &members)
            .await
            .map_err(ApiError::from)?;
        let mut rows: Vec<(String, Decimal, ())> = Vec::new();
        if by == "score" {
            let scored: HashMap<String, Option<Decimal>> = sqlx::query_as::<_, (String, Option<Decimal>)>(
                "SELECT rep_id, score FROM scores WHERE tenant_id = $1 AND period_kind = $2 AND period_key = $3 AND rep_id = ANY($4)",
            )
            .bind(&c.tenant_id)
            .bind(p.kind.as_str())
            .bind(&p.key)
            .bind(&members)
            .fetch_all(&mut *conn)
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .collect();
            for m in &members {
                if let Some(Some(s)) = scored.get(m) {
                    rows.push((m.clone(), *s, ()));
                } else if !scored.contains_key(m) {
                    rows.push((m.clone(), Decimal::ZERO, ()));
                }
            }
        } else {
            let months = months_of(&cal, &p);
            let cells = store::month_cells(&mut conn, &c.tenant_id, &members, &months)
                .await
                .map_err(ApiError::from)?;
            for m in &members {
                let mut t = CellTotals::default();
                for mo in &months {
                    if let Some(x) = cells.get(&(m.clone(), mo.clone())) {
                        for (cell, (s, n)) in &x.0 {
                            t.add(cell, *s, *n);
                        }
                    }
                }
                if let Some(v) = t.metric(&by).0 {
                    rows.push((m.clone(), round(v, 4), ()));
                }
            }
        }
        drop(conn);
        // Peers outside the caller's scope show as the tenant's peer view says.
        let scope = c.scope(&self.pool).await?;
        let view = if scope.is_tenant() {
            PeerView::Full
        } else {
            spm_server::auth::peer_view(&self.pool, &c.tenant_id)
                .await
                .map_err(ApiError::from)?
        };
        let total = u32::try_from(rows.len()).unwrap_or(u32::MAX);
        let entries = rank::rank(rows)
            .into_iter()
            .take(top_n)
            .map(|(rank, rep_id, value, ())| {
                let rep = reps.get(&rep_id);
                let (rep_id, display_name, team_id, value) = leaderboard_row(
                    scope.allows(&rep_id),
                    view,
                    (
                        rep_id,
                        rep.map(|r| r.display_name.clone()).unwrap_or_default(),
                        rep.map(|r| r.team_id.clone()).unwrap_or_default(),
                        value.normalize().to_string(),
                    ),
                );
                pb::LeaderboardEntry {
                    rank,
                    display_name,
                    team_id,
                    rep_id,
                    value,
                }
            })
            .collect();
        Ok(Response::new(pb::GetLeaderboardResponse {
            period: Some(period_pb(&p)),
            by,
            entries,
            total_reps: total,
        }))
    }

    async fn get_team_rollup(
        &self,
        req: Request<pb::GetTeamRollupRequest>,
    ) -> Result<Response<pb::GetTeamRollupResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        if r.team_id.is_empty() {
            return Err(ApiError::invalid("team_id", "is required").into());
        }
        c.require_team(&self.pool, &r.team_id).await?;
        let cal = calendar(&self.pool, &c.tenant_id).await?;
        let p = period(
            &cal,
            r.period.as_ref(),
            &[
                PeriodKind::Week,
                PeriodKind::Month,
                PeriodKind::Quarter,
                PeriodKind::Year,
            ],
        )?;
        let mut conn = self.pool.acquire().await.map_err(ApiError::from)?;
        let teams = store::teams(&mut conn, &c.tenant_id)
            .await
            .map_err(ApiError::from)?;
        drop(conn);
        let team = teams
            .get(&r.team_id)
            .ok_or_else(|| ApiError::NotFound(format!("team {:?}", r.team_id)))?;
        let rollup = |id: String, name: String| {
            let api = self.clone();
            let p = p.clone();
            let tenant = c.tenant_id.clone();
            async move {
                let (t, members) = api
                    .totals(&tenant, (pb::SubjectKind::Team, &id), &p, &cal)
                    .await?;
                Ok::<_, ApiError>(pb::TeamRollup {
                    team_id: id,
                    name,
                    rep_count: u32::try_from(members.len()).unwrap_or(u32::MAX),
                    metrics: metric_values(&t),
                })
            }
        };
        let top = rollup(team.team_id.clone(), team.name.clone()).await?;
        let mut subs: Vec<&store::Team> = teams
            .values()
            .filter(|t| t.parent_team_id == r.team_id)
            .collect();
        subs.sort_by(|a, b| a.team_id.cmp(&b.team_id));
        let mut sub_teams = Vec::new();
        for s in subs {
            sub_teams.push(rollup(s.team_id.clone(), s.name.clone()).await?);
        }
        Ok(Response::new(pb::GetTeamRollupResponse {
            team: Some(top),
            sub_teams,
        }))
    }

    type WatchScoresStream = WatchStream;

    async fn watch_scores(
        &self,
        req: Request<pb::WatchScoresRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        if !r.rep_id.is_empty() {
            c.require_rep(&self.pool, &r.rep_id).await?;
        }
        if !r.team_id.is_empty() {
            c.require_team(&self.pool, &r.team_id).await?;
        }
        let mut scope = c.scope(&self.pool).await?;
        let mut scoped_at = std::time::Instant::now();
        let mut rx = self.scores.subscribe();
        let pool = self.pool.clone();
        let tenant = c.tenant_id.clone();
        let team_members: Option<BTreeSet<String>> = if r.team_id.is_empty() {
            None
        } else {
            let mut conn = pool.acquire().await.map_err(ApiError::from)?;
            Some(
                store::team_members(&mut conn, &tenant, &r.team_id)
                    .await
                    .map_err(ApiError::from)?
                    .into_iter()
                    .collect(),
            )
        };
        let (tx, out) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let msg = match rx.recv().await {
                    Ok(m) => m,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "WatchScores subscriber lagged");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&msg) else {
                    continue;
                };
                if v["tenant"] != tenant.as_str() {
                    continue;
                }
                let rep = v["rep"].as_str().unwrap_or_default().to_owned();
                // A manager's subtree follows team moves while the stream runs.
                if !scope.is_tenant() && scoped_at.elapsed() > SCOPE_REFRESH {
                    match c.scope(&pool).await {
                        Ok(s) => scope = s,
                        Err(e) => {
                            let _ = tx.send(Err(Status::from(e))).await;
                            break;
                        }
                    }
                    scoped_at = std::time::Instant::now();
                }
                if !scope.allows(&rep) {
                    continue;
                }
                if (!r.rep_id.is_empty() && rep != r.rep_id)
                    || team_members.as_ref().is_some_and(|m| !m.contains(&rep))
                {
                    continue;
                }
                let row: Option<(Vec<u8>,)> = sqlx::query_as(
                    "SELECT snapshot FROM scores WHERE tenant_id = $1 AND rep_id = $2 AND period_kind = $3 AND period_key = $4",
                )
                .bind(&tenant)
                .bind(&rep)
                .bind(v["kind"].as_str().unwrap_or_default())
                .bind(v["key"].as_str().unwrap_or_default())
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten();
                let Some(snap) = row.and_then(|(b,)| ev::ScoreChanged::decode(b.as_slice()).ok())
                else {
                    continue;
                };
                let resp = pb::WatchScoresResponse {
                    score: Some(score_of(snap)),
                    previous_score: v["previous"].as_str().unwrap_or_default().to_owned(),
                };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn get_goal_calibration(
        &self,
        req: Request<pb::GetGoalCalibrationRequest>,
    ) -> Result<Response<pb::GetGoalCalibrationResponse>, Status> {
        let c = caller(&req)?;
        // A manager calibrates the goals of their reporting subtree; a rep none.
        if c.role == spm_server::auth::Role::Rep {
            c.require_tenant_reader()?;
        }
        let scope = c.scope(&self.pool).await?;
        let r = req.into_inner();
        if !is_metric(&r.metric) {
            return Err(
                ApiError::invalid("metric", format!("unknown metric {:?}", r.metric)).into(),
            );
        }
        let share = |s: &str, field: &str, default: Decimal| -> Result<Decimal, ApiError> {
            if s.is_empty() {
                return Ok(default);
            }
            match spm_core::money::parse_decimal(s) {
                Ok(d) if d >= Decimal::ZERO && d <= Decimal::ONE => Ok(d),
                _ => Err(ApiError::invalid(field, "must be a decimal in [0, 1]")),
            }
        };
        let low = share(&r.low_share, "low_share", Decimal::new(2, 1))?;
        let high = share(&r.high_share, "high_share", Decimal::new(8, 1))?;
        if low > high {
            return Err(ApiError::invalid("low_share", "must not exceed high_share").into());
        }
        let cal = calendar(&self.pool, &c.tenant_id).await?;
        let p = period(&cal, r.period.as_ref(), SCORED)?;
        let mut conn = self.pool.acquire().await.map_err(ApiError::from)?;
        let goals: Vec<store::GoalVersion> = self
            .goals_in_force(&mut conn, &c.tenant_id, &p)
            .await?
            .into_iter()
            .filter(|g| {
                g.subject_kind == "rep" && g.metric == r.metric && scope.allows(&g.subject_id)
            })
            .collect();
        let reps: Vec<String> = goals.iter().map(|g| g.subject_id.clone()).collect();
        let months = months_of(&cal, &p);
        let cells = store::month_cells(&mut conn, &c.tenant_id, &reps, &months)
            .await
            .map_err(ApiError::from)?;
        drop(conn);
        let input: Vec<(String, String, Decimal, Decimal)> = goals
            .iter()
            .map(|g| {
                let mut t = CellTotals::default();
                for m in &months {
                    if let Some(x) = cells.get(&(g.subject_id.clone(), m.clone())) {
                        for (cell, (s, n)) in &x.0 {
                            t.add(cell, *s, *n);
                        }
                    }
                }
                (
                    g.goal_id.to_string(),
                    g.subject_id.clone(),
                    t.metric(&r.metric).0.unwrap_or_default(),
                    g.target,
                )
            })
            .collect();
        let elapsed = round(p.elapsed_fraction(Utc::now()), 4);
        let cal_out = calibration::calibrate(&input, elapsed, low, high);
        let verdict = match cal_out.verdict {
            Verdict::Plausible => pb::CalibrationVerdict::Plausible,
            Verdict::TooHigh => pb::CalibrationVerdict::TooHigh,
            Verdict::TooLow => pb::CalibrationVerdict::TooLow,
            Verdict::TooEarly => pb::CalibrationVerdict::TooEarly,
            Verdict::NoGoals => pb::CalibrationVerdict::NoGoals,
        };
        Ok(Response::new(pb::GetGoalCalibrationResponse {
            metric: r.metric,
            period: Some(period_pb(&p)),
            elapsed: elapsed.to_string(),
            goals: u32::try_from(input.len()).unwrap_or(u32::MAX),
            on_track: u32::try_from(cal_out.on_track).unwrap_or(u32::MAX),
            on_track_share: cal_out.on_track_share.to_string(),
            verdict: verdict as i32,
            median_projected_attainment: cal_out.median.map(|m| m.to_string()).unwrap_or_default(),
            distribution: cal_out
                .distribution
                .iter()
                .map(|(f, t, g)| pb::CalibrationBucket {
                    from_percent: *f,
                    to_percent: *t,
                    goals: *g,
                })
                .collect(),
            projections: cal_out
                .projections
                .iter()
                .map(|x| pb::GoalProjection {
                    goal_id: x.goal_id.clone(),
                    subject_id: x.subject_id.clone(),
                    value: round(x.value, 4).to_string(),
                    target: x.target.normalize().to_string(),
                    projected_attainment: x.projected.to_string(),
                    on_track: x.on_track,
                })
                .collect(),
            explanation: cal_out.explanation,
        }))
    }

    async fn list_process_alerts(
        &self,
        req: Request<pb::ListProcessAlertsRequest>,
    ) -> Result<Response<pb::ListProcessAlertsResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let scope = if r.rep_id.is_empty() {
            c.scope(&self.pool).await?.rep_list()
        } else {
            c.require_rep(&self.pool, &r.rep_id).await?;
            None
        };
        let limit = i64::from(if r.limit == 0 { 100 } else { r.limit.min(1000) });
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
            "SELECT payload FROM process_alerts WHERE tenant_id = $1 AND ($2 = '' OR rep_id = $2)
                AND ($4::text[] IS NULL OR rep_id = ANY($4))
              ORDER BY raised_at DESC LIMIT $3",
        )
        .bind(&c.tenant_id)
        .bind(&r.rep_id)
        .bind(limit)
        .bind(scope)
        .fetch_all(&self.pool)
        .await
        .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListProcessAlertsResponse {
            alerts: rows
                .into_iter()
                .filter_map(|(b,)| ev::ProcessAlertRaised::decode(b.as_slice()).ok())
                .collect(),
        }))
    }
}
