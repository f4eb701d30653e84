//! `ScoringAdminService`: goals (versioned, history kept), scorecards (versioned), alert
//! settings; and the process-alert evaluation, also run periodically.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use prost::Message as _;
use rust_decimal::Decimal;
use spm_bus::{KafkaConfig, Outbox};
use spm_core::money::parse_decimal;
use spm_core::period::{Calendar, PeriodKind};
use spm_core::topics;
use spm_core::validation::Violations;
use spm_proto::events::v1 as ev;
use spm_proto::events::v1::event_envelope::Payload;
use spm_proto::scoring::v1 as pb;
use spm_proto::scoring::v1::scoring_admin_service_server::ScoringAdminService;
use spm_server::ApiError;
use spm_server::auth::caller;
use sqlx::PgPool;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::api::{calendar, period, period_pb};
use crate::domain::alerts::{self, Settings};
use crate::domain::goals::{effective_ok, goal_period_kind_ok, overlaps};
use crate::domain::metrics::{is_activity, is_metric};
use crate::domain::scorecard;
use crate::engine::{self, Job};
use crate::store::{self, GoalVersion};

#[derive(Clone)]
pub struct Admin {
    pub pool: PgPool,
    pub kafka: KafkaConfig,
    pub relay: Arc<Notify>,
}

pub fn goal_pb(g: &GoalVersion) -> pb::Goal {
    let kind = g
        .period_kind
        .parse::<PeriodKind>()
        .unwrap_or(PeriodKind::Month);
    pb::Goal {
        goal_id: g.goal_id.to_string(),
        subject_kind: if g.subject_kind == "rep" {
            pb::SubjectKind::Rep
        } else {
            pb::SubjectKind::Team
        } as i32,
        subject_id: g.subject_id.clone(),
        metric: g.metric.clone(),
        period: Some(spm_proto::common::v1::Period {
            kind: match kind {
                PeriodKind::Week => spm_proto::common::v1::PeriodKind::Week,
                PeriodKind::Month => spm_proto::common::v1::PeriodKind::Month,
                PeriodKind::Quarter => spm_proto::common::v1::PeriodKind::Quarter,
                PeriodKind::Year => spm_proto::common::v1::PeriodKind::Year,
            } as i32,
            key: g.period_key.clone(),
        }),
        target: g.target.normalize().to_string(),
        version: u32::try_from(g.version).unwrap_or(0),
        effective_from: Some(spm_proto::ext::timestamp(g.effective_from)),
        created_at: Some(spm_proto::ext::timestamp(g.created_at)),
        superseded_at: g.superseded_at.map(spm_proto::ext::timestamp),
    }
}

async fn tenant_context(
    pool: &PgPool,
    tenant: &str,
) -> Result<spm_proto::common::v1::TenantContext, ApiError> {
    let row: Option<(String, i32, String)> = sqlx::query_as(
        "SELECT time_zone, fiscal_year_start_month, base_currency FROM auth_tenants WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_optional(pool)
    .await?;
    Ok(row
        .map(|(tz, m, cur)| spm_proto::common::v1::TenantContext {
            time_zone: tz,
            fiscal_year_start_month: u32::try_from(m).unwrap_or(1),
            base_currency: cur,
        })
        .unwrap_or_else(|| spm_proto::common::v1::TenantContext {
            time_zone: "UTC".into(),
            fiscal_year_start_month: 1,
            base_currency: String::new(),
        }))
}

impl Admin {
    async fn commit(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        job: &Job,
    ) -> Result<(), ApiError> {
        let mut out = Outbox::new(&self.kafka);
        engine::rescore(&mut tx, job, &mut out).await?;
        out.write(&mut tx).await?;
        tx.commit().await?;
        self.relay.notify_one();
        Ok(())
    }
}

#[tonic::async_trait]
impl ScoringAdminService for Admin {
    async fn set_goal(
        &self,
        req: Request<pb::SetGoalRequest>,
    ) -> Result<Response<pb::SetGoalResponse>, Status> {
        let c = caller(&req)?;
        c.require_configure()?;
        let r = req.into_inner();
        let cal = calendar(&self.pool, &c.tenant_id).await?;
        let mut v = Violations::new();
        let subject_kind = match pb::SubjectKind::try_from(r.subject_kind) {
            Ok(pb::SubjectKind::Rep) => "rep",
            Ok(pb::SubjectKind::Team) => "team",
            _ => {
                v.add("subject_kind", "must be REP or TEAM");
                ""
            }
        };
        v.id("subject_id", &r.subject_id, 128);
        if !is_metric(&r.metric) {
            v.add("metric", format!("unknown metric {:?}", r.metric));
        }
        let p = match period(
            &cal,
            r.period.as_ref(),
            &[PeriodKind::Month, PeriodKind::Quarter, PeriodKind::Year],
        ) {
            Ok(p) if goal_period_kind_ok(p.kind) => Some(p),
            Ok(_) => None,
            Err(ApiError::InvalidArgument(mut vs)) => {
                v.0.append(&mut vs);
                None
            }
            Err(e) => return Err(e.into()),
        };
        let target = match parse_decimal(&r.target) {
            Ok(t) if t >= Decimal::ZERO => Some(t),
            Ok(_) => {
                v.add("target", "must not be negative");
                None
            }
            Err(e) => {
                v.add("target", e.to_string());
                None
            }
        };
        let effective_from = match (r.effective_from.as_ref(), p.as_ref()) {
            (Some(ts), Some(p)) => match spm_proto::ext::datetime(ts) {
                Some(t) if effective_ok(p, t) => Some(t),
                _ => {
                    v.add(
                        "effective_from",
                        "must be a valid time before the end of the goal's period",
                    );
                    None
                }
            },
            (None, Some(p)) => Some(p.start),
            _ => None,
        };
        let (Some(p), Some(target), Some(effective_from)) = (p, target, effective_from) else {
            return Err(ApiError::InvalidArgument(v.0).into());
        };
        let () = v.finish(()).map_err(ApiError::InvalidArgument)?;

        let mut tx = self.pool.begin().await.map_err(ApiError::from)?;
        // Serialize goal changes of a tenant.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("goals:{}", c.tenant_id))
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        let others: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT period_kind, period_key FROM goals
              WHERE tenant_id = $1 AND subject_kind = $2 AND subject_id = $3 AND metric = $4 AND superseded_at IS NULL",
        )
        .bind(&c.tenant_id)
        .bind(subject_kind)
        .bind(&r.subject_id)
        .bind(&r.metric)
        .fetch_all(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        for (k, key) in others {
            let Ok(kind) = k.parse::<PeriodKind>() else {
                continue;
            };
            if let Ok(other) = cal.parse_key(kind, &key)
                && overlaps(&p, &other)
            {
                return Err(ApiError::invalid(
                    "period",
                    format!("overlaps the {k} goal for {key} of the same subject and metric"),
                )
                .into());
            }
        }
        let goal_id = spm_core::derived_id(&[
            &c.tenant_id,
            "goal",
            subject_kind,
            &r.subject_id,
            &r.metric,
            p.kind.as_str(),
            &p.key,
        ]);
        let now = Utc::now();
        let version: i32 = sqlx::query_scalar(
            "SELECT COALESCE(max(version), 0) + 1 FROM goals WHERE tenant_id = $1 AND goal_id = $2",
        )
        .bind(&c.tenant_id)
        .bind(goal_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        let before: Option<(i32, Decimal, DateTime<Utc>)> = sqlx::query_as(
            "SELECT version, target, effective_from FROM goals WHERE tenant_id = $1 AND goal_id = $2 AND superseded_at IS NULL",
        )
        .bind(&c.tenant_id)
        .bind(goal_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        let goal_json = |version: i32, target: Decimal, from: DateTime<Utc>| {
            serde_json::json!({
                "subject_kind": subject_kind, "subject_id": r.subject_id, "metric": r.metric,
                "period_kind": p.kind.as_str(), "period_key": p.key, "version": version,
                "target": spm_core::chain::decimal(target), "effective_from": spm_core::chain::instant(from),
            })
        };
        spm_server::audit::record(
            &mut tx,
            &c,
            spm_server::audit::Action::new("scoring", "goal.set", format!("goal:{goal_id}"))
                .before(before.map(|b| goal_json(b.0, b.1, b.2)))
                .after(goal_json(version, target, effective_from)),
        )
        .await
        .map_err(ApiError::from)?;
        sqlx::query("UPDATE goals SET superseded_at = $3 WHERE tenant_id = $1 AND goal_id = $2 AND superseded_at IS NULL")
            .bind(&c.tenant_id)
            .bind(goal_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        let g: GoalVersion = sqlx::query_as(
            "INSERT INTO goals (tenant_id, goal_id, version, subject_kind, subject_id, metric, period_kind, period_key, target,
                                effective_from, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             RETURNING goal_id, version, subject_kind, subject_id, metric, period_kind, period_key, target, effective_from,
                       created_at, superseded_at",
        )
        .bind(&c.tenant_id)
        .bind(goal_id)
        .bind(version)
        .bind(subject_kind)
        .bind(&r.subject_id)
        .bind(&r.metric)
        .bind(p.kind.as_str())
        .bind(&p.key)
        .bind(target)
        .bind(effective_from)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(ApiError::from)?;

        let ctx = tenant_context(&self.pool, &c.tenant_id).await?;
        let mut job = Job::new(&c.tenant_id, ctx, true);
        let reps = if subject_kind == "rep" {
            vec![r.subject_id.clone()]
        } else {
            store::team_members(&mut tx, &c.tenant_id, &r.subject_id)
                .await
                .map_err(ApiError::from)?
        };
        for rep in reps {
            job.pairs.insert((rep, p.kind, p.key.clone()));
        }
        self.commit(tx, &job).await?;
        Ok(Response::new(pb::SetGoalResponse {
            goal: Some(goal_pb(&g)),
        }))
    }

    async fn list_goals(
        &self,
        req: Request<pb::ListGoalsRequest>,
    ) -> Result<Response<pb::ListGoalsResponse>, Status> {
        let c = caller(&req)?;
        c.require_tenant_reader()?;
        let r = req.into_inner();
        let cal = calendar(&self.pool, &c.tenant_id).await?;
        let p = period(
            &cal,
            r.period.as_ref(),
            &[PeriodKind::Month, PeriodKind::Quarter, PeriodKind::Year],
        )?;
        let mut conn = self.pool.acquire().await.map_err(ApiError::from)?;
        let versions =
            store::goal_versions(&mut conn, &c.tenant_id, &[format!("{}:{}", p.kind, p.key)])
                .await
                .map_err(ApiError::from)?;
        let goals = if r.history {
            versions
        } else {
            versions
                .into_iter()
                .filter(|g| g.superseded_at.is_none())
                .collect()
        };
        Ok(Response::new(pb::ListGoalsResponse {
            goals: goals.iter().map(goal_pb).collect(),
        }))
    }

    async fn put_scorecard(
        &self,
        req: Request<pb::PutScorecardRequest>,
    ) -> Result<Response<pb::PutScorecardResponse>, Status> {
        let c = caller(&req)?;
        c.require_configure()?;
        let r = req.into_inner();
        let proto = r
            .scorecard
            .ok_or_else(|| ApiError::invalid("scorecard", "is required"))?;
        let mut card = scorecard::from_proto(&proto).map_err(|v| {
            ApiError::InvalidArgument(v.into_iter().map(|f| f.under("scorecard")).collect())
        })?;
        let mut tx = self.pool.begin().await.map_err(ApiError::from)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("scorecards:{}", c.tenant_id))
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        let version: i32 = sqlx::query_scalar(
            "SELECT COALESCE(max(version), 0) + 1 FROM scorecards WHERE tenant_id = $1 AND scorecard_id = $2",
        )
        .bind(&c.tenant_id)
        .bind(&card.scorecard_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        card.version = u32::try_from(version).unwrap_or(1);
        let before: Option<sqlx::types::Json<serde_json::Value>> = sqlx::query_scalar(
            "SELECT definition FROM scorecards WHERE tenant_id = $1 AND scorecard_id = $2 AND version = $3",
        )
        .bind(&c.tenant_id)
        .bind(&card.scorecard_id)
        .bind(version - 1)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        spm_server::audit::record(
            &mut tx,
            &c,
            spm_server::audit::Action::new(
                "scoring",
                "scorecard.put",
                format!("scorecard:{}", card.scorecard_id),
            )
            .before(before.map(|b| b.0))
            .after(&card),
        )
        .await
        .map_err(ApiError::from)?;
        sqlx::query("INSERT INTO scorecards (tenant_id, scorecard_id, version, definition) VALUES ($1, $2, $3, $4)")
            .bind(&c.tenant_id)
            .bind(&card.scorecard_id)
            .bind(version)
            .bind(sqlx::types::Json(&card))
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        // Scores of every rep and period follow the new definition.
        let ctx = tenant_context(&self.pool, &c.tenant_id).await?;
        let mut job = Job::new(&c.tenant_id, ctx, true);
        for (rep, month) in engine::all_rep_months(&mut tx, &c.tenant_id, None)
            .await
            .map_err(ApiError::from)?
        {
            job.add_month(&rep, &month);
        }
        self.commit(tx, &job).await?;
        Ok(Response::new(pb::PutScorecardResponse {
            scorecard: Some(scorecard::to_proto(&card)),
        }))
    }

    async fn list_scorecards(
        &self,
        req: Request<pb::ListScorecardsRequest>,
    ) -> Result<Response<pb::ListScorecardsResponse>, Status> {
        let c = caller(&req)?;
        c.require_tenant_reader()?;
        let r = req.into_inner();
        let rows: Vec<(sqlx::types::Json<scorecard::Scorecard>, DateTime<Utc>)> = if r.history {
            sqlx::query_as("SELECT definition, created_at FROM scorecards WHERE tenant_id = $1 ORDER BY scorecard_id, version")
                .bind(&c.tenant_id)
                .fetch_all(&self.pool)
                .await
        } else {
            sqlx::query_as(
                "SELECT DISTINCT ON (scorecard_id) definition, created_at FROM scorecards WHERE tenant_id = $1
                  ORDER BY scorecard_id, version DESC",
            )
            .bind(&c.tenant_id)
            .fetch_all(&self.pool)
            .await
        }
        .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListScorecardsResponse {
            scorecards: rows
                .into_iter()
                .map(|(d, at)| {
                    let mut p = scorecard::to_proto(&d.0);
                    p.created_at = Some(spm_proto::ext::timestamp(at));
                    p
                })
                .collect(),
        }))
    }

    async fn set_alert_settings(
        &self,
        req: Request<pb::SetAlertSettingsRequest>,
    ) -> Result<Response<pb::SetAlertSettingsResponse>, Status> {
        let c = caller(&req)?;
        c.require_configure()?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let mut share = |s: &str, field: &str| match parse_decimal(s) {
            Ok(d) if d > Decimal::ZERO && d <= Decimal::ONE => Some(d),
            _ => {
                v.add(field, "must be a decimal in (0, 1]");
                None
            }
        };
        let (t, m) = (
            share(&r.threshold_share, "threshold_share"),
            share(&r.min_elapsed, "min_elapsed"),
        );
        let (Some(t), Some(m)) = (t, m) else {
            return Err(ApiError::InvalidArgument(v.0).into());
        };
        let mut tx = self.pool.begin().await.map_err(ApiError::from)?;
        let before: Option<(Decimal, Decimal)> = sqlx::query_as(
            "SELECT threshold_share, min_elapsed FROM alert_settings WHERE tenant_id = $1 FOR UPDATE",
        )
        .bind(&c.tenant_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        sqlx::query(
            "INSERT INTO alert_settings (tenant_id, threshold_share, min_elapsed) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id) DO UPDATE SET threshold_share = EXCLUDED.threshold_share, min_elapsed = EXCLUDED.min_elapsed",
        )
        .bind(&c.tenant_id)
        .bind(t)
        .bind(m)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        let settings = |t: Decimal, m: Decimal| serde_json::json!({"threshold_share": spm_core::chain::decimal(t), "min_elapsed": spm_core::chain::decimal(m)});
        spm_server::audit::record(
            &mut tx,
            &c,
            spm_server::audit::Action::new(
                "scoring",
                "alert_settings.set",
                format!("tenant:{}", c.tenant_id),
            )
            .before(before.map(|b| settings(b.0, b.1)))
            .after(settings(t, m)),
        )
        .await
        .map_err(ApiError::from)?;
        tx.commit().await.map_err(ApiError::from)?;
        Ok(Response::new(pb::SetAlertSettingsResponse {
            threshold_share: t.normalize().to_string(),
            min_elapsed: m.normalize().to_string(),
        }))
    }

    async fn evaluate_process_alerts(
        &self,
        req: Request<pb::EvaluateProcessAlertsRequest>,
    ) -> Result<Response<pb::EvaluateProcessAlertsResponse>, Status> {
        let c = caller(&req)?;
        c.require_configure()?;
        let at = match req.into_inner().at {
            None => Utc::now(),
            Some(ts) => spm_proto::ext::datetime(&ts)
                .ok_or_else(|| ApiError::invalid("at", "is not a valid timestamp"))?,
        };
        let raised = evaluate_alerts(&self.pool, &self.kafka, &c.tenant_id, at).await?;
        self.relay.notify_one();
        Ok(Response::new(pb::EvaluateProcessAlertsResponse { raised }))
    }
}

/// Raises process alerts of `tenant` at `now`: for each rep goal on an activity metric in
/// the current month, compares this week's count with the pace the goal needs so far.
pub async fn evaluate_alerts(
    pool: &PgPool,
    kafka: &KafkaConfig,
    tenant: &str,
    now: DateTime<Utc>,
) -> Result<u32, ApiError> {
    let cal: Calendar = calendar(pool, tenant).await?;
    let ctx = tenant_context(pool, tenant).await?;
    let settings: Settings = sqlx::query_as::<_, (Decimal, Decimal)>(
        "SELECT threshold_share, min_elapsed FROM alert_settings WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_optional(pool)
    .await?
    .map(|(t, m)| Settings {
        threshold_share: t,
        min_elapsed: m,
    })
    .unwrap_or_default();
    let month = cal.period(PeriodKind::Month, now);
    let week = cal.period(PeriodKind::Week, now);
    let start = week.start.max(month.start);
    let end = week.end.min(month.end);
    let window_secs = (end - start).num_seconds().max(1);
    let elapsed_secs = (now - start).num_seconds().clamp(0, window_secs);
    let share = Decimal::from(elapsed_secs) / Decimal::from(window_secs);
    let month_secs = (month.end - month.start).num_seconds();

    let mut tx = pool.begin().await?;
    let versions = store::goal_versions(&mut tx, tenant, &[format!("month:{}", month.key)]).await?;
    let goals: Vec<GoalVersion> = store::in_force(&versions, |_| now)
        .into_iter()
        .filter(|g| g.subject_kind == "rep" && is_activity(&g.metric))
        .collect();
    if goals.is_empty() {
        return Ok(0);
    }
    let reps: Vec<String> = goals
        .iter()
        .map(|g| g.subject_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let actuals: std::collections::HashMap<(String, String), Decimal> = sqlx::query_as::<_, (String, String, Decimal)>(
        "SELECT rep_id, cell, sum FROM cells WHERE tenant_id = $1 AND period_kind = 'week' AND period_key = $2 AND rep_id = ANY($3)",
    )
    .bind(tenant)
    .bind(&week.key)
    .bind(&reps)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(r, c, s)| ((r, c), s))
    .collect();
    let rep_rows = store::reps(&mut tx, tenant, &reps).await?;
    let mut out = Outbox::new(kafka);
    let mut raised = 0;
    for g in goals {
        let actual = actuals
            .get(&(g.subject_id.clone(), g.metric.clone()))
            .copied()
            .unwrap_or_default();
        let expected = alerts::expected(g.target, elapsed_secs, month_secs);
        if !alerts::lagging(actual, expected, share, settings) {
            continue;
        }
        let alert_id = Uuid::new_v4();
        let alert = ev::ProcessAlertRaised {
            alert_id: alert_id.to_string(),
            rep_id: g.subject_id.clone(),
            manager_id: rep_rows
                .get(&g.subject_id)
                .map(|r| r.manager_id.clone())
                .unwrap_or_default(),
            metric: g.metric.clone(),
            period: Some(period_pb(&month)),
            window: week.key.clone(),
            actual: actual.normalize().to_string(),
            expected: expected.normalize().to_string(),
            threshold_share: settings.threshold_share.normalize().to_string(),
            goal_target: g.target.normalize().to_string(),
        };
        let inserted = sqlx::query(
            "INSERT INTO process_alerts (tenant_id, alert_id, rep_id, metric, window_key, payload)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(alert_id)
        .bind(&g.subject_id)
        .bind(&g.metric)
        .bind(&week.key)
        .bind(alert.encode_to_vec())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            continue;
        }
        raised += 1;
        let ts = spm_proto::ext::timestamp(now);
        out.emit(
            &tracing::Span::current(),
            topics::SCORES,
            spm_core::kafka_key(tenant, &g.subject_id),
            &ev::EventEnvelope {
                event_id: Uuid::new_v4().to_string(),
                tenant_id: tenant.to_owned(),
                occurred_at: Some(ts),
                recorded_at: Some(ts),
                source: "spm-scoring".into(),
                tenant_context: Some(ctx.clone()),
                causation_id: String::new(),
                payload: Some(Payload::ProcessAlertRaised(alert)),
            },
        );
    }
    out.write(&mut tx).await?;
    tx.commit().await?;
    Ok(raised)
}
