//! Creating notifications and their deliveries (in the caller's transaction).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::fatigue::{Quiet, over_limit};
use crate::domain::rules::Draft;

/// A tenant's notification settings.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Settings {
    pub quiet_start: String,
    pub quiet_end: String,
    pub rate_limit_per_hour: i32,
    pub digest: String,
    pub digest_hour: i32,
    pub top_n: i32,
    pub disabled_rules: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            quiet_start: String::new(),
            quiet_end: String::new(),
            rate_limit_per_hour: 0,
            digest: "off".into(),
            digest_hour: 18,
            top_n: 5,
            disabled_rules: Vec::new(),
        }
    }
}

pub async fn settings(conn: &mut PgConnection, tenant: &str) -> Result<Settings, sqlx::Error> {
    Ok(sqlx::query_as(
        "SELECT quiet_start, quiet_end, rate_limit_per_hour, digest, digest_hour, top_n, disabled_rules FROM settings WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_optional(conn)
    .await?
    .unwrap_or_default())
}

/// The tenant's time zone (from `spm.tenants.v1`).
pub async fn time_zone(conn: &mut PgConnection, tenant: &str) -> Result<Tz, sqlx::Error> {
    let tz: Option<String> =
        sqlx::query_scalar("SELECT time_zone FROM auth_tenants WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(conn)
            .await?;
    Ok(tz.and_then(|t| t.parse().ok()).unwrap_or(Tz::UTC))
}

/// Where deliveries go.
#[derive(Debug, Clone)]
pub struct Channels {
    /// (webhook id, url, rules)
    pub webhooks: Vec<(Uuid, String, Vec<String>)>,
    /// Whether e-mail is configured.
    pub email: bool,
}

pub async fn channels(
    conn: &mut PgConnection,
    tenant: &str,
    email: bool,
) -> Result<Channels, sqlx::Error> {
    let webhooks = sqlx::query_as("SELECT webhook_id, url, rules FROM webhooks WHERE tenant_id = $1 AND enabled ORDER BY created_at")
        .bind(tenant)
        .fetch_all(conn)
        .await?;
    Ok(Channels { webhooks, email })
}

/// A created notification.
#[derive(Debug, Clone)]
pub struct Created {
    pub notification_id: Uuid,
    pub recipient: String,
    pub deliveries: usize,
}

/// Creates the notification of a draft (once per `dedupe_key`) and its deliveries:
/// in-app at once; webhook and e-mail subject to preferences, quiet hours (deferred to
/// the end of the window) and the per-recipient rate limit (folded into one summary).
#[allow(clippy::too_many_arguments)]
pub async fn create(
    conn: &mut PgConnection,
    tenant: &str,
    draft: &Draft,
    source_event_id: &str,
    dedupe_key: &str,
    trace: &[(String, String)],
    settings: &Settings,
    tz: Tz,
    channels: &Channels,
    now: DateTime<Utc>,
) -> Result<Option<Created>, sqlx::Error> {
    if settings.disabled_rules.iter().any(|r| r == draft.rule) {
        return Ok(None);
    }
    let id = Uuid::new_v4();
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO notifications (tenant_id, notification_id, recipient, rule, title, body, data, source_event_id, dedupe_key, trace)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (tenant_id, dedupe_key) DO NOTHING RETURNING notification_id",
    )
    .bind(tenant)
    .bind(id)
    .bind(&draft.recipient)
    .bind(draft.rule)
    .bind(&draft.title)
    .bind(&draft.body)
    .bind(&draft.data)
    .bind(source_event_id)
    .bind(dedupe_key)
    .bind(serde_json::to_value(trace).unwrap_or(Value::Null))
    .fetch_optional(&mut *conn)
    .await?;
    if inserted.is_none() {
        return Ok(None);
    }
    let prefs: Vec<(String, bool)> = sqlx::query_as(
        "SELECT channel, enabled FROM preferences WHERE tenant_id = $1 AND user_id = $2 AND rule = $3",
    )
    .bind(tenant)
    .bind(&draft.recipient)
    .bind(draft.rule)
    .fetch_all(&mut *conn)
    .await?;
    let on = |ch: &str| prefs.iter().find(|(c, _)| c == ch).is_none_or(|(_, e)| *e);

    let mut n = 0;
    if on("in_app") {
        insert_delivery(
            conn,
            tenant,
            id,
            &draft.recipient,
            "in_app",
            &draft.recipient,
            None,
            "delivered",
            now,
            None,
            false,
        )
        .await?;
        n += 1;
    }
    let quiet = Quiet::parse(&settings.quiet_start, &settings.quiet_end)
        .ok()
        .flatten();
    let due = quiet.map_or(now, |q| q.release(tz, now));
    let status = if due > now { "deferred" } else { "pending" };
    let mut external: Vec<(&str, String, Option<Uuid>)> = Vec::new();
    if on("webhook") {
        for (wid, url, rules) in &channels.webhooks {
            if rules.is_empty() || rules.iter().any(|r| r == draft.rule) {
                external.push(("webhook", url.clone(), Some(*wid)));
            }
        }
    }
    if channels.email && on("email") {
        let email: Option<String> =
            sqlx::query_scalar("SELECT email FROM org_reps WHERE tenant_id = $1 AND rep_id = $2")
                .bind(tenant)
                .bind(&draft.recipient)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some(e) = email.filter(|e| e.contains('@')) {
            external.push(("email", e, None));
        }
    }
    for (channel, target, wid) in external {
        let limit = u32::try_from(settings.rate_limit_per_hour).unwrap_or(0);
        let sent: i64 = if limit > 0 {
            sqlx::query_scalar(
                "SELECT count(*) FROM deliveries WHERE tenant_id = $1 AND recipient = $2 AND channel = $3 AND target = $4
                   AND created_at > $5 - interval '1 hour' AND status <> 'folded' AND NOT is_summary",
            )
            .bind(tenant)
            .bind(&draft.recipient)
            .bind(channel)
            .bind(&target)
            .bind(now)
            .fetch_one(&mut *conn)
            .await?
        } else {
            0
        };
        if over_limit(u32::try_from(sent).unwrap_or(u32::MAX), limit) {
            // Fold into one summary per recipient, channel, target and hour, sent when
            // the hour is over (or after quiet hours).
            let hour = now.format("%Y-%m-%dT%H").to_string();
            let key = format!("{channel}:{target}:{}:{hour}", draft.recipient);
            let window_end =
                chrono::DurationRound::duration_trunc(now, chrono::TimeDelta::hours(1))
                    .unwrap_or(now)
                    + chrono::TimeDelta::hours(1);
            let release = quiet.map_or(window_end, |q| q.release(tz, window_end));
            insert_delivery(
                conn,
                tenant,
                id,
                &draft.recipient,
                channel,
                &target,
                wid,
                "folded",
                release,
                Some(&key),
                false,
            )
            .await?;
            // One summary per key: the first fold creates it (its dedupe key), later ones
            // find it there and do nothing. Two consumer groups (scores, earnings) folding
            // for one person at once: the second waits for the first, then does nothing.
            let created: Option<Uuid> = sqlx::query_scalar(
                "INSERT INTO notifications (tenant_id, notification_id, recipient, rule, title, body, data, dedupe_key)
                 VALUES ($1, $2, $3, 'summary', $4, $5, '{}', $6)
                 ON CONFLICT (tenant_id, dedupe_key) DO NOTHING RETURNING notification_id",
            )
            .bind(tenant)
            .bind(Uuid::new_v4())
            .bind(&draft.recipient)
            .bind("Summary of your recent updates")
            .bind("Several updates arrived in a short time; they are folded into this summary.")
            .bind(format!("summary:{key}"))
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(sid) = created {
                insert_delivery(
                    conn,
                    tenant,
                    sid,
                    &draft.recipient,
                    channel,
                    &target,
                    wid,
                    "pending",
                    release,
                    Some(&key),
                    true,
                )
                .await?;
            }
        } else {
            insert_delivery(
                conn,
                tenant,
                id,
                &draft.recipient,
                channel,
                &target,
                wid,
                status,
                due,
                None,
                false,
            )
            .await?;
        }
        n += 1;
    }
    Ok(Some(Created {
        notification_id: id,
        recipient: draft.recipient.clone(),
        deliveries: n,
    }))
}

#[allow(clippy::too_many_arguments)]
async fn insert_delivery(
    conn: &mut PgConnection,
    tenant: &str,
    notification: Uuid,
    recipient: &str,
    channel: &str,
    target: &str,
    webhook: Option<Uuid>,
    status: &str,
    due: DateTime<Utc>,
    summary_key: Option<&str>,
    is_summary: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO deliveries (delivery_id, tenant_id, notification_id, recipient, channel, target, webhook_id, status,
                                 next_attempt_at, delivered_at, summary_key, is_summary)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, CASE WHEN $8 = 'delivered' THEN clock_timestamp() END, $10, $11)",
    )
    .bind(Uuid::new_v4())
    .bind(tenant)
    .bind(notification)
    .bind(recipient)
    .bind(channel)
    .bind(target)
    .bind(webhook)
    .bind(status)
    .bind(due)
    .bind(summary_key)
    .bind(is_summary)
    .execute(conn)
    .await?;
    Ok(())
}
