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
    /// When rebuilding: rep-periods to rescore once at the end, per tenant (with the
    /// tenant's latest context), instead of after every batch. The final scores are the
    /// same (they depend only on the final cells); the work is done once.
    pub deferred: Option<Deferred>,
}

pub type Deferred = std::sync::Arc<
    std::sync::Mutex<
        BTreeMap<
            String,
            (
                spm_proto::common::v1::TenantContext,
                BTreeSet<(String, PeriodKind, String)>,
            ),
        >,
    >,
>;

impl ScoringHandler {
    /// The live handler.
    pub fn live() -> Self {
        Self {
            emit: true,
            deferred: None,
        }
    }
}

#[async_trait]
impl Handler for ScoringHandler {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &[&Incoming],
        out: &mut Outbox,
    ) -> Result<(), HandlerError> {
        let mut by_tenant: BTreeMap<&str, Vec<&Incoming>> = BTreeMap::new();
        for inc in batch {
            if spm_server::auth::apply_tenant_event(conn, &inc.envelope).await? {
                continue;
            }
            by_tenant
                .entry(inc.envelope.tenant_id.as_str())
                .or_default()
                .push(inc);
        }
        for (tenant, events) in by_tenant {
            self.apply_tenant(conn, tenant, &events, out).await?;
        }
        Ok(())
    }
}

impl ScoringHandler {
    async fn apply_tenant(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        events: &[&Incoming],
        out: &mut Outbox,
    ) -> Result<(), HandlerError> {
        let ctx = events
            .iter()
            .rev()
            .find_map(|e| e.envelope.tenant_context.clone())
            .unwrap_or_default();
        let mut job = Job::new(tenant, ctx, self.emit);
        let mut facts: Vec<Fact> = Vec::new();

        for inc in events {
            let e = &inc.envelope;
            match spm_server::org::apply(conn, inc.event_id, e).await? {
                Some(spm_server::org::Change::Rep(rep)) => {
                    // Team, role or name changed: the rep's scores may too.
                    for (r, month) in engine::all_rep_months(conn, tenant, Some(&rep)).await? {
                        job.add_month(&r, &month);
                    }
                    self.cause(&mut job, &rep, inc);
                    continue;
                }
                Some(spm_server::org::Change::Team(team)) => {
                    // The hierarchy decides scorecards: rescore the team's reps.
                    for rep in store::team_members(conn, tenant, &team).await? {
                        for (r, month) in engine::all_rep_months(conn, tenant, Some(&rep)).await? {
                            job.add_month(&r, &month);
                        }
                    }
                    continue;
                }
                None => {}
            }
            match &e.payload {
                Some(Payload::RepUpserted(_) | Payload::TeamUpserted(_)) => {}
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
        if let Some(d) = &self.deferred {
            let mut d = d.lock().expect("deferred");
            let entry = d
                .entry(tenant.to_owned())
                .or_insert_with(|| (job.context.clone(), BTreeSet::new()));
            entry.0 = job.context.clone();
            entry.1.extend(std::mem::take(&mut job.pairs));
            return Ok(());
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
