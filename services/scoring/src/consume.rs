//! Scoring's event handler, plugged into the shared consumer loop: tenants and keys, org
//! (latest upsert wins), and facts (inserted, their cell deltas added), then the affected
//! rep-periods are rescored, all in the loop's transaction.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use spm_bus::{Handler, HandlerError, Incoming, Outbox};
use spm_core::period::PeriodKind;
use spm_proto::events::v1::event_envelope::Payload;
use sqlx::PgConnection;

use crate::domain::facts::{self, Fact};
use crate::engine::{self, Cause, Job};
use crate::store;

/// The handler. `emit` is false when rebuilding (nothing is announced twice).
pub struct ScoringHandler {
    pub emit: bool,
}

#[async_trait]
impl Handler for ScoringHandler {
    async fn apply(&self, conn: &mut PgConnection, batch: &[&Incoming], out: &mut Outbox) -> Result<(), HandlerError> {
        let mut by_tenant: BTreeMap<&str, Vec<&Incoming>> = BTreeMap::new();
        for inc in batch {
            if spm_server::auth::apply_tenant_event(conn, &inc.envelope).await? {
                continue;
            }
            by_tenant.entry(inc.envelope.tenant_id.as_str()).or_default().push(inc);
        }
        for (tenant, events) in by_tenant {
            self.apply_tenant(conn, tenant, &events, out).await?;
        }
        Ok(())
    }
}

impl ScoringHandler {
    async fn apply_tenant(&self, conn: &mut PgConnection, tenant: &str, events: &[&Incoming], out: &mut Outbox) -> Result<(), HandlerError> {
        let ctx = events
            .iter()
            .rev()
            .find_map(|e| e.envelope.tenant_context.clone())
            .unwrap_or_default();
        let mut job = Job::new(tenant, ctx, self.emit);
        let mut facts: Vec<Fact> = Vec::new();

        for inc in events {
            let e = &inc.envelope;
            let at = e.occurred_at.as_ref().and_then(spm_proto::ext::datetime).unwrap_or_default();
            match &e.payload {
                Some(Payload::RepUpserted(r)) => {
                    let changed = sqlx::query(
                        "INSERT INTO reps (tenant_id, rep_id, display_name, email, team_id, manager_id, role, territory, active,
                                           occurred_at, event_id)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                         ON CONFLICT (tenant_id, rep_id) DO UPDATE SET
                           display_name = EXCLUDED.display_name, email = EXCLUDED.email, team_id = EXCLUDED.team_id,
                           manager_id = EXCLUDED.manager_id, role = EXCLUDED.role, territory = EXCLUDED.territory,
                           active = EXCLUDED.active, occurred_at = EXCLUDED.occurred_at, event_id = EXCLUDED.event_id
                         WHERE (reps.occurred_at, reps.event_id) < (EXCLUDED.occurred_at, EXCLUDED.event_id)",
                    )
                    .bind(tenant)
                    .bind(&r.rep_id)
                    .bind(&r.display_name)
                    .bind(&r.email)
                    .bind(&r.team_id)
                    .bind(&r.manager_id)
                    .bind(&r.role)
                    .bind(&r.territory)
                    .bind(r.active)
                    .bind(at)
                    .bind(inc.event_id)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                    if changed > 0 {
                        // Team, role or name changed: the rep's scores may too.
                        for (rep, month) in engine::all_rep_months(conn, tenant, Some(&r.rep_id)).await? {
                            job.add_month(&rep, &month);
                        }
                        self.cause(&mut job, &r.rep_id, inc);
                    }
                }
                Some(Payload::TeamUpserted(t)) => {
                    let changed = sqlx::query(
                        "INSERT INTO teams (tenant_id, team_id, name, parent_team_id, manager_id, occurred_at, event_id)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT (tenant_id, team_id) DO UPDATE SET
                           name = EXCLUDED.name, parent_team_id = EXCLUDED.parent_team_id, manager_id = EXCLUDED.manager_id,
                           occurred_at = EXCLUDED.occurred_at, event_id = EXCLUDED.event_id
                         WHERE (teams.occurred_at, teams.event_id) < (EXCLUDED.occurred_at, EXCLUDED.event_id)",
                    )
                    .bind(tenant)
                    .bind(&t.team_id)
                    .bind(&t.name)
                    .bind(&t.parent_team_id)
                    .bind(&t.manager_id)
                    .bind(at)
                    .bind(inc.event_id)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                    if changed > 0 {
                        // The hierarchy decides scorecards: rescore the team's reps.
                        let members = store::team_members(conn, tenant, &t.team_id).await?;
                        for rep in members {
                            for (r, month) in engine::all_rep_months(conn, tenant, Some(&rep)).await? {
                                job.add_month(&r, &month);
                            }
                        }
                    }
                }
                _ => {
                    if let Some(f) = facts::fact_of(inc.event_id, e) {
                        self.cause(&mut job, &f.rep_id, inc);
                        facts.push(f);
                    }
                }
            }
        }

        if !facts.is_empty() {
            let pairs: BTreeSet<(String, String)> = facts
                .iter()
                .filter(|f| !f.deal_id.is_empty())
                .map(|f| (f.rep_id.clone(), f.deal_id.clone()))
                .collect();
            let mut known = store::linked_facts(conn, tenant, &pairs).await?;
            let mut deltas = Vec::new();
            for f in &facts {
                let d = facts::apply(f, &known);
                for x in &d {
                    if x.period_kind == PeriodKind::Month {
                        job.add_month(&x.rep_id, &x.period_key);
                    }
                }
                deltas.extend(d);
                if !f.deal_id.is_empty() {
                    known.push(f.clone());
                }
            }
            store::insert_facts(conn, tenant, &facts).await?;
            store::add_cells(conn, tenant, deltas).await?;
        }
        engine::rescore(conn, &job, out).await?;
        Ok(())
    }

    fn cause(&self, job: &mut Job, rep: &str, inc: &Incoming) {
        job.causes.insert(
            rep.to_owned(),
            Cause {
                span: inc.span.clone(),
                causation_id: inc.envelope.causation_id.clone(),
            },
        );
    }
}
