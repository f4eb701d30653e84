//! Rescoring: after facts, org, goals or scorecards change, recompute the score snapshot
//! of the affected (rep, period) pairs, store the ones that changed and emit ScoreChanged
//! and GoalMilestoneReached events through the outbox (same transaction).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use prost::Message as _;
use rust_decimal::Decimal;
use spm_bus::Outbox;
use spm_core::period::{Calendar, Period, PeriodKind};
use spm_core::topics;
use spm_proto::common::v1::{self as common, TenantContext};
use spm_proto::events::v1 as ev;
use spm_proto::events::v1::event_envelope::Payload;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::goals::{attainment, crossed};
use crate::domain::metrics::CellTotals;
use crate::domain::scorecard::{self, Assignment, Scorecard};
use crate::store::{self, GoalVersion, Rep, Team};

/// The notification channel score changes are announced on (after commit).
pub const NOTIFY_CHANNEL: &str = "spm_scores";

/// Why a rep is rescored: the span and client event id of the (last) cause.
#[derive(Debug, Clone)]
pub struct Cause {
    pub span: tracing::Span,
    pub causation_id: String,
}

/// One tenant's rescoring job.
pub struct Job {
    pub tenant: String,
    pub context: TenantContext,
    pub calendar: Calendar,
    /// (rep, period kind, period key)
    pub pairs: BTreeSet<(String, PeriodKind, String)>,
    pub causes: HashMap<String, Cause>,
    /// When false (rebuild), nothing is emitted.
    pub emit: bool,
}

impl Job {
    pub fn new(tenant: &str, context: TenantContext, emit: bool) -> Self {
        let calendar =
            Calendar::new(&context.time_zone, context.fiscal_year_start_month).unwrap_or_default();
        Self {
            tenant: tenant.to_owned(),
            context,
            calendar,
            pairs: BTreeSet::new(),
            causes: HashMap::new(),
            emit,
        }
    }

    /// Adds the month of `month_key` and the quarter and year that contain it.
    pub fn add_month(&mut self, rep: &str, month_key: &str) {
        let Ok(month) = self.calendar.parse_key(PeriodKind::Month, month_key) else {
            return;
        };
        for kind in [PeriodKind::Month, PeriodKind::Quarter, PeriodKind::Year] {
            let p = self.calendar.period(kind, month.start);
            self.pairs.insert((rep.to_owned(), kind, p.key));
        }
    }
}

/// The months (keys) a period covers.
pub fn months_of(cal: &Calendar, p: &Period) -> Vec<String> {
    cal.periods_between(
        PeriodKind::Month,
        p.start,
        p.end - chrono::Duration::seconds(1),
    )
    .into_iter()
    .map(|m| m.key)
    .collect()
}

/// The scorecard that applies to `rep`: the nearest team up the hierarchy with one, else
/// one for the rep's role, else the tenant default. Equal candidates: lowest id.
pub fn resolve<'a>(
    cards: &'a [Scorecard],
    rep: &Rep,
    teams: &HashMap<String, Team>,
) -> Option<&'a Scorecard> {
    let mut team = rep.team_id.clone();
    let mut hops = 0;
    while !team.is_empty() && hops < 64 {
        if let Some(c) = cards
            .iter()
            .find(|c| c.assignment == Assignment::Team(team.clone()))
        {
            return Some(c);
        }
        team = teams
            .get(&team)
            .map(|t| t.parent_team_id.clone())
            .unwrap_or_default();
        hops += 1;
    }
    if !rep.role.is_empty()
        && let Some(c) = cards
            .iter()
            .find(|c| c.assignment == Assignment::Role(rep.role.clone()))
    {
        return Some(c);
    }
    cards
        .iter()
        .find(|c| c.assignment == Assignment::TenantDefault)
}

pub use spm_server::org::chain;

fn period_pb(kind: PeriodKind, key: &str) -> common::Period {
    let k = match kind {
        PeriodKind::Week => common::PeriodKind::Week,
        PeriodKind::Month => common::PeriodKind::Month,
        PeriodKind::Quarter => common::PeriodKind::Quarter,
        PeriodKind::Year => common::PeriodKind::Year,
    };
    common::Period {
        kind: k as i32,
        key: key.to_owned(),
    }
}

/// Builds the snapshot of one rep and period.
pub fn snapshot(
    rep: &Rep,
    kind: PeriodKind,
    key: &str,
    card: Option<&Scorecard>,
    totals: &CellTotals,
    goal: &dyn Fn(&str) -> Option<Decimal>,
) -> ev::ScoreChanged {
    let metrics = totals
        .all()
        .into_iter()
        .filter_map(|(m, v, _)| Some((m.to_owned(), v?.to_string())))
        .collect();
    let revenue_attainment = goal("revenue")
        .and_then(|t| attainment(totals.metric("revenue").0.unwrap_or_default(), t))
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut s = ev::ScoreChanged {
        rep_id: rep.rep_id.clone(),
        team_id: rep.team_id.clone(),
        period: Some(period_pb(kind, key)),
        metrics,
        revenue_attainment,
        display_name: rep.display_name.clone(),
        ..Default::default()
    };
    if let Some(card) = card {
        let scored = scorecard::score(card, totals, goal);
        s.scorecard_id.clone_from(&card.scorecard_id);
        s.scorecard_version = card.version;
        s.score = scored.score.to_string();
        s.kpis = scored.kpis;
        s.pillars = scored
            .pillars
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        s.cap = card.cap.normalize().to_string();
    }
    s
}

fn envelope(job: &Job, causation: &str, payload: Payload) -> ev::EventEnvelope {
    let now = spm_proto::ext::timestamp(Utc::now());
    ev::EventEnvelope {
        event_id: Uuid::new_v4().to_string(),
        tenant_id: job.tenant.clone(),
        occurred_at: Some(now),
        recorded_at: Some(now),
        source: "spm-scoring".into(),
        tenant_context: Some(job.context.clone()),
        causation_id: causation.to_owned(),
        payload: Some(payload),
    }
}

/// A rep's target for a metric in a period: its goal for that period, or (quarters and
/// years) the sum of its monthly goals within it. One goal cadence per subject and metric
/// (SetGoal rejects overlapping kinds), so the two never double up.
pub fn target(
    goals: &[GoalVersion],
    rep: &str,
    kind: PeriodKind,
    key: &str,
    metric: &str,
    months: &[String],
) -> Option<Decimal> {
    let mine = |k: &str, p: &str| {
        goals
            .iter()
            .find(|g| {
                g.subject_kind == "rep"
                    && g.subject_id == rep
                    && g.metric == metric
                    && g.period_kind == k
                    && g.period_key == p
            })
            .map(|g| g.target)
    };
    if let Some(t) = mine(kind.as_str(), key) {
        return Some(t);
    }
    if kind == PeriodKind::Month {
        return None;
    }
    let parts: Vec<Decimal> = months.iter().filter_map(|m| mine("month", m)).collect();
    (!parts.is_empty()).then(|| parts.iter().copied().sum())
}

struct Upsert {
    rep: String,
    kind: String,
    key: String,
    team: String,
    score: Option<Decimal>,
    snapshot: Vec<u8>,
}

/// Rescores the job's pairs. Returns the payloads to announce on [`NOTIFY_CHANNEL`].
pub async fn rescore(
    conn: &mut PgConnection,
    job: &Job,
    out: &mut Outbox,
) -> Result<Vec<String>, sqlx::Error> {
    if job.pairs.is_empty() {
        return Ok(Vec::new());
    }
    let now = Utc::now();
    let rep_ids: Vec<String> = job
        .pairs
        .iter()
        .map(|(r, ..)| r.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let reps = store::reps(conn, &job.tenant, &rep_ids).await?;
    let teams = store::teams(conn, &job.tenant).await?;
    let cards = store::scorecards(conn, &job.tenant).await?;

    // Periods, their months, and the goals in force for them.
    let mut periods: BTreeMap<(PeriodKind, String), (Period, Vec<String>)> = BTreeMap::new();
    for (_, kind, key) in &job.pairs {
        if !periods.contains_key(&(*kind, key.clone()))
            && let Ok(p) = job.calendar.parse_key(*kind, key)
        {
            let months = months_of(&job.calendar, &p);
            periods.insert((*kind, key.clone()), (p, months));
        }
    }
    let all_months: Vec<String> = periods
        .values()
        .flat_map(|(_, m)| m.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let period_names: Vec<String> = periods
        .keys()
        .map(|(k, key)| format!("{k}:{key}"))
        .collect();
    // Goals of the periods themselves, and monthly goals that roll up into quarters/years.
    let mut goal_periods = period_names.clone();
    goal_periods.extend(all_months.iter().map(|m| format!("month:{m}")));
    let versions = store::goal_versions(conn, &job.tenant, &goal_periods).await?;
    let mut ends: HashMap<String, DateTime<Utc>> = periods
        .iter()
        .map(|((k, key), (p, _))| (format!("{k}:{key}"), p.end))
        .collect();
    for m in &all_months {
        if let Ok(p) = job.calendar.parse_key(PeriodKind::Month, m) {
            ends.insert(format!("month:{m}"), p.end);
        }
    }
    let goals = store::in_force(&versions, |g| {
        let end = ends
            .get(&format!("{}:{}", g.period_kind, g.period_key))
            .copied()
            .unwrap_or(now);
        now.min(end)
    });
    let cells = store::month_cells(conn, &job.tenant, &rep_ids, &all_months).await?;

    let existing: HashMap<(String, String, String), Vec<u8>> = {
        let rows: Vec<(String, String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT rep_id, period_kind, period_key, snapshot FROM scores WHERE tenant_id = $1 AND rep_id = ANY($2)
               AND (period_kind || ':' || period_key) = ANY($3)",
        )
        .bind(&job.tenant)
        .bind(&rep_ids)
        .bind(&period_names)
        .fetch_all(&mut *conn)
        .await?;
        rows.into_iter()
            .map(|(r, k, p, s)| ((r, k, p), s))
            .collect()
    };
    let milestones_done: HashMap<Uuid, u32> = {
        let ids: Vec<Uuid> = goals.iter().map(|g| g.goal_id).collect();
        let rows: Vec<(Uuid, i32)> = sqlx::query_as(
            "SELECT goal_id, max(milestone) FROM milestones WHERE tenant_id = $1 AND goal_id = ANY($2) GROUP BY goal_id",
        )
        .bind(&job.tenant)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        rows.into_iter()
            .map(|(g, m)| (g, u32::try_from(m).unwrap_or(0)))
            .collect()
    };

    let mut notices = Vec::new();
    let mut upserts: Vec<Upsert> = Vec::new();
    let mut reached: Vec<(Uuid, i32)> = Vec::new();
    let mut team_periods: BTreeSet<(String, PeriodKind, String)> = BTreeSet::new();

    for (rep_id, kind, key) in &job.pairs {
        let Some((_, months)) = periods.get(&(*kind, key.clone())) else {
            continue;
        };
        let rep = reps.get(rep_id).cloned().unwrap_or_else(|| Rep {
            rep_id: rep_id.clone(),
            active: true,
            ..Default::default()
        });
        let mut totals = CellTotals::default();
        for m in months {
            if let Some(t) = cells.get(&(rep_id.clone(), m.clone())) {
                for (cell, (s, n)) in &t.0 {
                    totals.add(cell, *s, *n);
                }
            }
        }
        let rep_goals: Vec<&GoalVersion> = goals
            .iter()
            .filter(|g| {
                g.subject_kind == "rep"
                    && &g.subject_id == rep_id
                    && g.period_kind == kind.as_str()
                    && &g.period_key == key
            })
            .collect();
        let goal = |metric: &str| target(&goals, rep_id, *kind, key, metric, months);
        let card = resolve(&cards, &rep, &teams);
        let snap = snapshot(&rep, *kind, key, card, &totals, &goal);
        let bytes = snap.encode_to_vec();
        let k = (rep_id.clone(), kind.as_str().to_owned(), key.clone());
        let previous = existing.get(&k);
        let cause = job.causes.get(rep_id);
        let causation = cause.map(|c| c.causation_id.clone()).unwrap_or_default();
        let span = cause.map_or_else(tracing::Span::current, |c| c.span.clone());
        if previous != Some(&bytes) {
            let prev_score = previous
                .and_then(|b| ev::ScoreChanged::decode(b.as_slice()).ok())
                .map(|s| s.score)
                .unwrap_or_default();
            let score =
                (!snap.score.is_empty()).then(|| snap.score.parse::<Decimal>().unwrap_or_default());
            upserts.push(Upsert {
                rep: k.0.clone(),
                kind: k.1.clone(),
                key: k.2.clone(),
                team: rep.team_id.clone(),
                score,
                snapshot: bytes,
            });
            if job.emit {
                notices.push(
                    serde_json::json!({
                        "tenant": job.tenant, "rep": rep_id, "team": rep.team_id,
                        "kind": kind.as_str(), "key": key, "previous": prev_score,
                    })
                    .to_string(),
                );
                let mut event = snap.clone();
                event.previous_score = prev_score;
                out.emit(
                    &span,
                    topics::SCORES,
                    spm_core::kafka_key(&job.tenant, rep_id),
                    &envelope(job, &causation, Payload::ScoreChanged(event)),
                );
            }
        }
        // Milestones of the rep's goals.
        for g in &rep_goals {
            let value = totals.metric(&g.metric).0.unwrap_or_default();
            let Some(att) = attainment(value, g.target) else {
                continue;
            };
            let done = milestones_done.get(&g.goal_id).copied().unwrap_or(0);
            for m in crossed(done, att) {
                reached.push((g.goal_id, i32::try_from(m).unwrap_or(0)));
                if job.emit {
                    out.emit(
                        &span,
                        topics::SCORES,
                        spm_core::kafka_key(&job.tenant, rep_id),
                        &envelope(
                            job,
                            &causation,
                            Payload::GoalMilestoneReached(ev::GoalMilestoneReached {
                                goal_id: g.goal_id.to_string(),
                                rep_id: rep_id.clone(),
                                team_id: rep.team_id.clone(),
                                metric: g.metric.clone(),
                                period: Some(period_pb(*kind, key)),
                                milestone_percent: m,
                                value: crate::domain::round(value, 4).to_string(),
                                target: g.target.normalize().to_string(),
                                attainment: att.to_string(),
                            }),
                        ),
                    );
                }
            }
        }
        for t in chain(&rep.team_id, &teams) {
            team_periods.insert((t, *kind, key.clone()));
        }
    }

    // Team goals of the teams above the affected reps.
    for (team, kind, key) in team_periods {
        let team_goals: Vec<&GoalVersion> = goals
            .iter()
            .filter(|g| {
                g.subject_kind == "team"
                    && g.subject_id == team
                    && g.period_kind == kind.as_str()
                    && g.period_key == key
            })
            .collect();
        if team_goals.is_empty() {
            continue;
        }
        let months = periods
            .get(&(kind, key.clone()))
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        let members = store::team_members(conn, &job.tenant, &team).await?;
        let totals = store::totals_of(conn, &job.tenant, &members, &months).await?;
        for g in team_goals {
            let value = totals.metric(&g.metric).0.unwrap_or_default();
            let Some(att) = attainment(value, g.target) else {
                continue;
            };
            let done = milestones_done.get(&g.goal_id).copied().unwrap_or(0);
            for m in crossed(done, att) {
                reached.push((g.goal_id, i32::try_from(m).unwrap_or(0)));
                if job.emit {
                    out.emit(
                        &tracing::Span::current(),
                        topics::SCORES,
                        spm_core::kafka_key(&job.tenant, &format!("team:{team}")),
                        &envelope(
                            job,
                            "",
                            Payload::GoalMilestoneReached(ev::GoalMilestoneReached {
                                goal_id: g.goal_id.to_string(),
                                rep_id: String::new(),
                                team_id: team.clone(),
                                metric: g.metric.clone(),
                                period: Some(period_pb(kind, &key)),
                                milestone_percent: m,
                                value: crate::domain::round(value, 4).to_string(),
                                target: g.target.normalize().to_string(),
                                attainment: att.to_string(),
                            }),
                        ),
                    );
                }
            }
        }
    }

    if !upserts.is_empty() {
        let mut reps_c = Vec::new();
        let mut kinds = Vec::new();
        let mut keys = Vec::new();
        let mut team_c = Vec::new();
        let mut scores = Vec::new();
        let mut snaps = Vec::new();
        for u in upserts {
            reps_c.push(u.rep);
            kinds.push(u.kind);
            keys.push(u.key);
            team_c.push(u.team);
            scores.push(u.score);
            snaps.push(u.snapshot);
        }
        sqlx::query(
            "INSERT INTO scores (tenant_id, rep_id, period_kind, period_key, team_id, score, snapshot)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::numeric[], $7::bytea[])
             ON CONFLICT (tenant_id, rep_id, period_kind, period_key)
             DO UPDATE SET team_id = EXCLUDED.team_id, score = EXCLUDED.score, snapshot = EXCLUDED.snapshot",
        )
        .bind(&job.tenant)
        .bind(&reps_c)
        .bind(&kinds)
        .bind(&keys)
        .bind(&team_c)
        .bind(&scores)
        .bind(&snaps)
        .execute(&mut *conn)
        .await?;
    }
    if !reached.is_empty() {
        let (ids, ms): (Vec<Uuid>, Vec<i32>) = reached.into_iter().unzip();
        sqlx::query(
            "INSERT INTO milestones (tenant_id, goal_id, milestone)
             SELECT $1, * FROM UNNEST($2::uuid[], $3::int[]) ON CONFLICT DO NOTHING",
        )
        .bind(&job.tenant)
        .bind(&ids)
        .bind(&ms)
        .execute(&mut *conn)
        .await?;
    }
    if !notices.is_empty() {
        sqlx::query("SELECT pg_notify($1, n) FROM UNNEST($2::text[]) AS n")
            .bind(NOTIFY_CHANNEL)
            .bind(&notices)
            .execute(&mut *conn)
            .await?;
    }
    Ok(notices)
}

/// Every (rep, month) a tenant (or one rep) has cells for, for rescoring after a scorecard
/// or org change.
pub async fn all_rep_months(
    conn: &mut PgConnection,
    tenant: &str,
    rep: Option<&str>,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT rep_id, period_key FROM cells
          WHERE tenant_id = $1 AND period_kind = 'month' AND ($2::text IS NULL OR rep_id = $2)
          ORDER BY 1, 2",
    )
    .bind(tenant)
    .bind(rep)
    .fetch_all(conn)
    .await
}
