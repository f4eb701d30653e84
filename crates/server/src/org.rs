//! The org projection every service keeps from `spm.org.v1`: reps and teams, the latest
//! upsert winning (by occurred_at, then event id) so redelivery and reordering do not
//! matter; every rep upsert also kept as effective-dated membership history; plus the
//! hierarchy queries (team members, manager chain, a manager's reporting subtree).

use std::collections::HashMap;

use spm_proto::events::v1::EventEnvelope;
use spm_proto::events::v1::event_envelope::Payload;
use sqlx::PgConnection;
use uuid::Uuid;

/// `(version, description, sql)` of the org tables, run by [`crate::db::migrate`].
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        3,
        "org reps and teams",
        r#"
CREATE TABLE org_reps (
    tenant_id    text        NOT NULL,
    rep_id       text        NOT NULL,
    display_name text        NOT NULL DEFAULT '',
    email        text        NOT NULL DEFAULT '',
    team_id      text        NOT NULL DEFAULT '',
    manager_id   text        NOT NULL DEFAULT '',
    role         text        NOT NULL DEFAULT '',
    territory    text        NOT NULL DEFAULT '',
    active       boolean     NOT NULL DEFAULT true,
    occurred_at  timestamptz NOT NULL,
    event_id     uuid        NOT NULL,
    PRIMARY KEY (tenant_id, rep_id)
);
CREATE INDEX org_reps_team ON org_reps (tenant_id, team_id);

CREATE TABLE org_teams (
    tenant_id      text        NOT NULL,
    team_id        text        NOT NULL,
    name           text        NOT NULL DEFAULT '',
    parent_team_id text        NOT NULL DEFAULT '',
    manager_id     text        NOT NULL DEFAULT '',
    occurred_at    timestamptz NOT NULL,
    event_id       uuid        NOT NULL,
    PRIMARY KEY (tenant_id, team_id)
);
"#,
    ),
    (
        5,
        "org logins and effective-dated membership",
        r#"
ALTER TABLE org_reps ADD COLUMN login text NOT NULL DEFAULT '';
CREATE INDEX org_reps_login ON org_reps (tenant_id, lower(CASE WHEN login <> '' THEN login ELSE email END));
CREATE INDEX org_reps_manager ON org_reps (tenant_id, manager_id);

-- Every upsert of a rep, effective from its occurred_at: who a manager manages at a moment
-- is read from here, so a move dated in the future takes effect on its date.
CREATE TABLE org_rep_history (
    tenant_id    text        NOT NULL,
    rep_id       text        NOT NULL,
    effective_at timestamptz NOT NULL,
    event_id     uuid        NOT NULL,
    team_id      text        NOT NULL,
    manager_id   text        NOT NULL,
    PRIMARY KEY (tenant_id, rep_id, effective_at, event_id)
);
INSERT INTO org_rep_history (tenant_id, rep_id, effective_at, event_id, team_id, manager_id)
SELECT tenant_id, rep_id, occurred_at, event_id, team_id, manager_id FROM org_reps;
"#,
    ),
];

/// A rep as the org projection knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Rep {
    pub rep_id: String,
    pub display_name: String,
    pub email: String,
    pub team_id: String,
    pub manager_id: String,
    pub role: String,
    pub active: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Team {
    pub team_id: String,
    pub name: String,
    pub parent_team_id: String,
    pub manager_id: String,
}

/// What an org event changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Rep(String),
    Team(String),
}

/// Applies a rep or team upsert. Returns `Ok(None)` for other events or an upsert older
/// than what is stored; `Ok(Some(change))` when the row changed.
pub async fn apply(
    conn: &mut PgConnection,
    event_id: Uuid,
    ev: &EventEnvelope,
) -> Result<Option<Change>, sqlx::Error> {
    let at = ev
        .occurred_at
        .as_ref()
        .and_then(spm_proto::ext::datetime)
        .unwrap_or_default();
    match &ev.payload {
        Some(Payload::RepUpserted(r)) => {
            sqlx::query(
                "INSERT INTO org_rep_history (tenant_id, rep_id, effective_at, event_id, team_id, manager_id)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(&ev.tenant_id)
            .bind(&r.rep_id)
            .bind(at)
            .bind(event_id)
            .bind(&r.team_id)
            .bind(&r.manager_id)
            .execute(&mut *conn)
            .await?;
            let n = sqlx::query(
                "INSERT INTO org_reps (tenant_id, rep_id, display_name, email, team_id, manager_id, role, territory, active,
                                       occurred_at, event_id, login)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (tenant_id, rep_id) DO UPDATE SET
                   display_name = EXCLUDED.display_name, email = EXCLUDED.email, team_id = EXCLUDED.team_id,
                   manager_id = EXCLUDED.manager_id, role = EXCLUDED.role, territory = EXCLUDED.territory,
                   active = EXCLUDED.active, occurred_at = EXCLUDED.occurred_at, event_id = EXCLUDED.event_id,
                   login = EXCLUDED.login
                 WHERE (org_reps.occurred_at, org_reps.event_id) < (EXCLUDED.occurred_at, EXCLUDED.event_id)",
            )
            .bind(&ev.tenant_id)
            .bind(&r.rep_id)
            .bind(&r.display_name)
            .bind(&r.email)
            .bind(&r.team_id)
            .bind(&r.manager_id)
            .bind(&r.role)
            .bind(&r.territory)
            .bind(r.active)
            .bind(at)
            .bind(event_id)
            .bind(&r.login)
            .execute(conn)
            .await?
            .rows_affected();
            Ok((n > 0).then(|| Change::Rep(r.rep_id.clone())))
        }
        Some(Payload::TeamUpserted(t)) => {
            let n = sqlx::query(
                "INSERT INTO org_teams (tenant_id, team_id, name, parent_team_id, manager_id, occurred_at, event_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (tenant_id, team_id) DO UPDATE SET
                   name = EXCLUDED.name, parent_team_id = EXCLUDED.parent_team_id, manager_id = EXCLUDED.manager_id,
                   occurred_at = EXCLUDED.occurred_at, event_id = EXCLUDED.event_id
                 WHERE (org_teams.occurred_at, org_teams.event_id) < (EXCLUDED.occurred_at, EXCLUDED.event_id)",
            )
            .bind(&ev.tenant_id)
            .bind(&t.team_id)
            .bind(&t.name)
            .bind(&t.parent_team_id)
            .bind(&t.manager_id)
            .bind(at)
            .bind(event_id)
            .execute(conn)
            .await?
            .rows_affected();
            Ok((n > 0).then(|| Change::Team(t.team_id.clone())))
        }
        _ => Ok(None),
    }
}

pub async fn reps(
    conn: &mut PgConnection,
    tenant: &str,
    ids: &[String],
) -> Result<HashMap<String, Rep>, sqlx::Error> {
    let rows: Vec<Rep> = sqlx::query_as(
        "SELECT rep_id, display_name, email, team_id, manager_id, role, active FROM org_reps
          WHERE tenant_id = $1 AND rep_id = ANY($2)",
    )
    .bind(tenant)
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.rep_id.clone(), r)).collect())
}

pub async fn teams(
    conn: &mut PgConnection,
    tenant: &str,
) -> Result<HashMap<String, Team>, sqlx::Error> {
    let rows: Vec<Team> = sqlx::query_as(
        "SELECT team_id, name, parent_team_id, manager_id FROM org_teams WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|t| (t.team_id.clone(), t)).collect())
}

/// The reps of a team and all its sub-teams; an empty team id means every rep.
pub async fn team_members(
    conn: &mut PgConnection,
    tenant: &str,
    team: &str,
) -> Result<Vec<String>, sqlx::Error> {
    if team.is_empty() {
        return sqlx::query_scalar(
            "SELECT rep_id FROM org_reps WHERE tenant_id = $1 ORDER BY rep_id",
        )
        .bind(tenant)
        .fetch_all(conn)
        .await;
    }
    sqlx::query_scalar(
        "WITH RECURSIVE sub(team_id) AS (
             SELECT $2::text
             UNION
             SELECT t.team_id FROM org_teams t JOIN sub ON t.parent_team_id = sub.team_id WHERE t.tenant_id = $1
         )
         SELECT r.rep_id FROM org_reps r JOIN sub ON r.team_id = sub.team_id WHERE r.tenant_id = $1 ORDER BY r.rep_id",
    )
    .bind(tenant)
    .bind(team)
    .fetch_all(conn)
    .await
}

/// Teams from `team` up to the root (cycle-safe).
pub fn chain(team: &str, teams: &HashMap<String, Team>) -> Vec<String> {
    let mut out = Vec::new();
    let mut t = team.to_owned();
    while !t.is_empty() && out.len() < 64 && !out.contains(&t) {
        out.push(t.clone());
        t = teams
            .get(&t)
            .map(|x| x.parent_team_id.clone())
            .unwrap_or_default();
    }
    out
}

/// The managers above a rep: its own manager, then that manager's, up to the top
/// (cycle-safe, at most 16 levels).
pub async fn manager_chain(
    conn: &mut PgConnection,
    tenant: &str,
    rep: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = rep.to_owned();
    for _ in 0..16 {
        let m: Option<String> = sqlx::query_scalar(
            "SELECT manager_id FROM org_reps WHERE tenant_id = $1 AND rep_id = $2",
        )
        .bind(tenant)
        .bind(&cur)
        .fetch_optional(&mut *conn)
        .await?;
        match m {
            Some(m) if !m.is_empty() && m != rep && !out.contains(&m) => {
                out.push(m.clone());
                cur = m;
            }
            _ => break,
        }
    }
    Ok(out)
}

/// The reps `manager` manages now: reports (direct and indirect, by each rep's manager) and
/// everyone in the teams they manage and those teams' sub-teams, by the membership in effect
/// now (the latest upsert of each rep whose occurred_at has passed). The manager is not in
/// the list.
pub async fn subtree(
    conn: &mut PgConnection,
    tenant: &str,
    manager: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH RECURSIVE eff AS (
             SELECT DISTINCT ON (rep_id) rep_id, team_id, manager_id
               FROM org_rep_history WHERE tenant_id = $1 AND effective_at <= now()
              ORDER BY rep_id, effective_at DESC, event_id DESC
         ), managed(team_id) AS (
             SELECT team_id FROM org_teams WHERE tenant_id = $1 AND manager_id = $2
             UNION
             SELECT t.team_id FROM org_teams t JOIN managed m ON t.parent_team_id = m.team_id
              WHERE t.tenant_id = $1
         ), sub(rep_id) AS (
             SELECT rep_id FROM eff
              WHERE manager_id = $2 OR team_id IN (SELECT team_id FROM managed)
             UNION
             SELECT e.rep_id FROM eff e JOIN sub s ON e.manager_id = s.rep_id
         )
         SELECT rep_id FROM sub WHERE rep_id <> $2 ORDER BY rep_id",
    )
    .bind(tenant)
    .bind(manager)
    .fetch_all(conn)
    .await
}

/// The teams `manager` manages and their sub-teams.
pub async fn managed_teams(
    conn: &mut PgConnection,
    tenant: &str,
    manager: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH RECURSIVE managed(team_id) AS (
             SELECT team_id FROM org_teams WHERE tenant_id = $1 AND manager_id = $2
             UNION
             SELECT t.team_id FROM org_teams t JOIN managed m ON t.parent_team_id = m.team_id
              WHERE t.tenant_id = $1
         )
         SELECT team_id FROM managed ORDER BY team_id",
    )
    .bind(tenant)
    .bind(manager)
    .fetch_all(conn)
    .await
}
