//! Daily and weekly digests per recipient, in the tenant's time zone.

use chrono::{Datelike as _, Timelike as _, Utc, Weekday};
use sqlx::PgPool;

use crate::domain::rules::Draft;
use crate::store;

/// Sends the digests due now for every tenant (or, forced, for one tenant whatever the
/// hour). Each recipient gets at most one digest per window (day or ISO week).
pub async fn send_due(
    pool: &PgPool,
    only: Option<&str>,
    force: bool,
    email: bool,
) -> Result<u32, sqlx::Error> {
    let tenants: Vec<String> = match only {
        Some(t) => vec![t.to_owned()],
        None => {
            sqlx::query_scalar("SELECT tenant_id FROM settings WHERE digest <> 'off'")
                .fetch_all(pool)
                .await?
        }
    };
    let now = Utc::now();
    let mut sent = 0;
    for tenant in tenants {
        let mut tx = pool.begin().await?;
        let settings = store::settings(&mut tx, &tenant).await?;
        let tz = store::time_zone(&mut tx, &tenant).await?;
        let local = now.with_timezone(&tz);
        let weekly = settings.digest == "weekly";
        if !force {
            if settings.digest == "off"
                || local.hour() < u32::try_from(settings.digest_hour).unwrap_or(18)
            {
                continue;
            }
            if weekly && local.weekday() != Weekday::Mon {
                continue;
            }
        }
        let (window, key) = if weekly {
            let w = local.iso_week();
            (
                chrono::Duration::days(7),
                format!("{}-W{:02}", w.year(), w.week()),
            )
        } else {
            (chrono::Duration::days(1), local.date_naive().to_string())
        };
        let rows: Vec<(String, i64, Vec<String>)> = sqlx::query_as(
            "SELECT recipient, count(*), (array_agg(title ORDER BY created_at DESC))[1:10] FROM notifications
              WHERE tenant_id = $1 AND created_at > $2 AND rule NOT IN ('digest', 'summary')
              GROUP BY recipient ORDER BY recipient",
        )
        .bind(&tenant)
        .bind(now - window)
        .fetch_all(&mut *tx)
        .await?;
        let channels = store::channels(&mut tx, &tenant, email).await?;
        for (recipient, n, titles) in rows {
            let what = if weekly { "weekly" } else { "daily" };
            let draft = Draft {
                recipient: recipient.clone(),
                rule: "digest",
                title: format!("Your {what} digest: {n} updates"),
                body: format!(
                    "{}\nNext: open your statement and scorecard for the details.",
                    titles
                        .iter()
                        .map(|t| format!("- {t}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
                data: serde_json::json!({"window": key, "count": n}),
            };
            if store::create(
                &mut tx,
                &tenant,
                &draft,
                "",
                &format!("digest:{key}:{recipient}"),
                &[],
                &settings,
                tz,
                &channels,
                now,
            )
            .await?
            .is_some()
            {
                sent += 1;
            }
        }
        tx.commit().await?;
    }
    Ok(sent)
}
