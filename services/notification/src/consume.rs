//! Notification's event handler: facts from scoring and incentive become notifications
//! with their deliveries, in the consumer loop's transaction; after commit the delivery
//! worker is woken and live subscribers are told (Postgres NOTIFY).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use rust_decimal::Decimal;
use spm_bus::{Handler, HandlerError, Incoming, Outbox};
use spm_proto::events::v1::event_envelope::Payload;
use sqlx::PgConnection;
use tokio::sync::Notify;

use crate::domain::rules::{self, Draft, Org};
use crate::store;

pub const NOTIFY_CHANNEL: &str = "spm_notifications";

pub struct NotificationHandler {
    pub wake: Arc<Notify>,
    pub email: bool,
}

#[async_trait]
impl Handler for NotificationHandler {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &[&Incoming],
        _out: &mut Outbox,
    ) -> Result<(), HandlerError> {
        let mut by_tenant: BTreeMap<&str, Vec<&Incoming>> = BTreeMap::new();
        for inc in batch {
            if spm_server::auth::apply_tenant_event(conn, &inc.envelope).await? {
                continue;
            }
            if spm_server::org::apply(conn, inc.event_id, &inc.envelope)
                .await?
                .is_some()
            {
                continue;
            }
            by_tenant
                .entry(inc.envelope.tenant_id.as_str())
                .or_default()
                .push(inc);
        }
        let now = Utc::now();
        let mut announce = Vec::new();
        for (tenant, events) in by_tenant {
            let settings = store::settings(conn, tenant).await?;
            let tz = store::time_zone(conn, tenant).await?;
            let channels = store::channels(conn, tenant, self.email).await?;
            for inc in events {
                let drafts = self.drafts(conn, tenant, inc, &settings).await?;
                let trace = spm_telemetry::propagation::inject_span(&inc.span);
                for d in drafts {
                    let key = d
                        .fact_key()
                        .unwrap_or_else(|| format!("{}:{}:{}", inc.event_id, d.rule, d.recipient));
                    if let Some(c) = store::create(
                        conn,
                        tenant,
                        &d,
                        &inc.event_id.to_string(),
                        &key,
                        &trace,
                        &settings,
                        tz,
                        &channels,
                        now,
                    )
                    .await?
                    {
                        announce.push(serde_json::json!({"tenant": tenant, "id": c.notification_id, "recipient": c.recipient}).to_string());
                    }
                }
            }
        }
        if !announce.is_empty() {
            sqlx::query("SELECT pg_notify($1, n) FROM UNNEST($2::text[]) AS n")
                .bind(NOTIFY_CHANNEL)
                .bind(&announce)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    fn committed(&self, _batch: &[&Incoming]) {
        self.wake.notify_one();
    }
}

impl NotificationHandler {
    async fn drafts(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        inc: &Incoming,
        settings: &store::Settings,
    ) -> Result<Vec<Draft>, sqlx::Error> {
        let e = &inc.envelope;
        if let Some(Payload::ScoreChanged(s)) = &e.payload {
            return standings(conn, tenant, s, settings).await;
        }
        let rep = match &e.payload {
            Some(Payload::EarningPosted(p)) => p.rep_id.clone(),
            Some(Payload::EarningAdjusted(p)) => p.rep_id.clone(),
            Some(Payload::GoalMilestoneReached(g)) => g.rep_id.clone(),
            Some(Payload::ProcessAlertRaised(a)) => a.rep_id.clone(),
            Some(Payload::AwardGranted(a)) => a.rep_id.clone(),
            Some(Payload::DisputeOpened(d)) => d.rep_id.clone(),
            Some(Payload::DisputeResolved(d)) => d.rep_id.clone(),
            _ => return Ok(Vec::new()),
        };
        let reps = spm_server::org::reps(conn, tenant, std::slice::from_ref(&rep)).await?;
        let r = reps.get(&rep);
        let mut org = Org {
            rep_name: r.map(|r| r.display_name.clone()).unwrap_or_default(),
            rep_manager: r.map(|r| r.manager_id.clone()).unwrap_or_default(),
            team_manager: String::new(),
        };
        if let Some(Payload::GoalMilestoneReached(g)) = &e.payload
            && g.rep_id.is_empty()
        {
            org.team_manager = sqlx::query_scalar(
                "SELECT manager_id FROM org_teams WHERE tenant_id = $1 AND team_id = $2",
            )
            .bind(tenant)
            .bind(&g.team_id)
            .fetch_optional(&mut *conn)
            .await?
            .unwrap_or_default();
        }
        Ok(rules::drafts(e, &org))
    }
}

/// Updates a rep's standing for a month and derives who entered or left the top N.
async fn standings(
    conn: &mut PgConnection,
    tenant: &str,
    s: &spm_proto::events::v1::ScoreChanged,
    settings: &store::Settings,
) -> Result<Vec<Draft>, sqlx::Error> {
    let Some(p) = &s.period else {
        return Ok(Vec::new());
    };
    let Ok(score) = s.score.parse::<Decimal>() else {
        return Ok(Vec::new());
    };
    if p.kind != spm_proto::common::v1::PeriodKind::Month as i32 || settings.top_n <= 0 {
        return Ok(Vec::new());
    }
    sqlx::query(
        "INSERT INTO standings (tenant_id, period_key, rep_id, score) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, period_key, rep_id) DO UPDATE SET score = EXCLUDED.score",
    )
    .bind(tenant)
    .bind(&p.key)
    .bind(&s.rep_id)
    .bind(score)
    .execute(&mut *conn)
    .await?;
    let after: Vec<String> = sqlx::query_scalar(
        "SELECT rep_id FROM standings WHERE tenant_id = $1 AND period_key = $2 AND score > 0 ORDER BY score DESC, rep_id LIMIT $3",
    )
    .bind(tenant)
    .bind(&p.key)
    .bind(i64::from(settings.top_n))
    .fetch_all(&mut *conn)
    .await?;
    let before: Vec<String> =
        sqlx::query_scalar("SELECT reps FROM top_sets WHERE tenant_id = $1 AND period_key = $2")
            .bind(tenant)
            .bind(&p.key)
            .fetch_optional(&mut *conn)
            .await?
            .unwrap_or_default();
    if before == after {
        return Ok(Vec::new());
    }
    sqlx::query(
        "INSERT INTO top_sets (tenant_id, period_key, reps) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id, period_key) DO UPDATE SET reps = EXCLUDED.reps",
    )
    .bind(tenant)
    .bind(&p.key)
    .bind(&after)
    .execute(&mut *conn)
    .await?;
    Ok(rules::standings(
        &before,
        &after,
        usize::try_from(settings.top_n).unwrap_or(5),
        &p.key,
    ))
}
