//! Plan versions through their lifecycle (the rules are [`crate::domain::lifecycle`]):
//! putting a version, moving it between states, approvals, the tenant's policy, and the
//! comparison of a shadow version's ledger with the live one.
//!
//! Every change takes the tenant's plans lock exclusively, so that no writer reads the
//! plans while they change ([`Ctx::lock_plans`]), and recomputes what the change moves:
//! a version going live (or a live one retiring) recomputes the open periods of its kind
//! and posts the differences as adjustments; a version starting to shadow catches its
//! shadow ledger up on them.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use spm_bus::Outbox;
use spm_core::period::PeriodKind;
use spm_proto::incentive::v1 as pb;
use spm_server::ApiError;
use spm_server::auth::Caller;
use sqlx::PgConnection;
use sqlx::types::Json;

use crate::api::{Api, kind_of, money_s, period_key};
use crate::domain::lifecycle::{self, Approved, Refusal, State};
use crate::domain::plan::{self, Plan};
use crate::engine::{self, Ctx, Mode, Report};
use crate::store;

/// A stored version with its lifecycle.
#[derive(sqlx::FromRow)]
struct Version {
    definition: Json<Plan>,
    state: String,
    created_by: String,
    proposed_by: String,
    proposal_no: i32,
    shadow_since: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "definition, state, created_by, proposed_by, proposal_no, shadow_since, created_at";

impl Version {
    fn state(&self) -> State {
        State::parse(&self.state).unwrap_or(State::Live)
    }

    fn name(&self) -> String {
        format!(
            "{} v{}",
            self.definition.0.plan_id, self.definition.0.version
        )
    }

    fn key(&self) -> (&str, i32) {
        (
            &self.definition.0.plan_id,
            i32::try_from(self.definition.0.version).unwrap_or(0),
        )
    }
}

fn state_pb(s: State) -> pb::PlanState {
    match s {
        State::Draft => pb::PlanState::Draft,
        State::Shadow => pb::PlanState::Shadow,
        State::PendingApproval => pb::PlanState::PendingApproval,
        State::Live => pb::PlanState::Live,
        State::Retired => pb::PlanState::Retired,
    }
}

fn state_of_pb(v: i32) -> Option<State> {
    Some(match pb::PlanState::try_from(v).ok()? {
        pb::PlanState::Unspecified => return None,
        pb::PlanState::Draft => State::Draft,
        pb::PlanState::Shadow => State::Shadow,
        pb::PlanState::PendingApproval => State::PendingApproval,
        pb::PlanState::Live => State::Live,
        pb::PlanState::Retired => State::Retired,
    })
}

fn refused(r: Refusal) -> ApiError {
    match r {
        Refusal::NotAllowed(m) => ApiError::FailedPrecondition(m),
        Refusal::NotYou(m) => ApiError::PermissionDenied(m),
    }
}

/// The tenant's number of approvals a version needs to go live (0 without a policy).
async fn policy(conn: &mut PgConnection, tenant: &str) -> Result<u32, sqlx::Error> {
    let n: Option<i32> =
        sqlx::query_scalar("SELECT approvals_required FROM plan_policies WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(conn)
            .await?;
    Ok(n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0))
}

/// A version (0: the latest), locked for update when `lock`.
async fn version(
    conn: &mut PgConnection,
    tenant: &str,
    plan_id: &str,
    version: u32,
    lock: bool,
) -> Result<Version, ApiError> {
    if plan_id.is_empty() {
        return Err(ApiError::invalid("plan_id", "is required"));
    }
    let v: Option<Version> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM plans WHERE tenant_id = $1 AND plan_id = $2 AND ($3 = 0 OR version = $3)
          ORDER BY version DESC LIMIT 1{}",
        if lock { " FOR UPDATE" } else { "" }
    ))
    .bind(tenant)
    .bind(plan_id)
    .bind(i32::try_from(version).unwrap_or(-1))
    .fetch_optional(conn)
    .await?;
    v.ok_or_else(|| {
        ApiError::NotFound(if version == 0 {
            format!("no plan {plan_id}")
        } else {
            format!("no version {version} of plan {plan_id}")
        })
    })
}

/// The approvers of a version's current proposal, in order.
async fn approvals(
    conn: &mut PgConnection,
    tenant: &str,
    (plan_id, version): (&str, i32),
    proposal: i32,
) -> Result<Vec<(String, String, String, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT approver, role, reason, at FROM plan_approvals
          WHERE tenant_id = $1 AND plan_id = $2 AND version = $3 AND proposal_no = $4 ORDER BY at, approver",
    )
    .bind(tenant)
    .bind(plan_id)
    .bind(version)
    .bind(proposal)
    .fetch_all(conn)
    .await
}

/// The proto of a version with its lifecycle fields.
async fn version_pb(
    conn: &mut PgConnection,
    tenant: &str,
    v: &Version,
    required: u32,
) -> Result<pb::Plan, sqlx::Error> {
    let mut p = plan::to_proto(&v.definition.0);
    p.created_at = Some(spm_proto::ext::timestamp(v.created_at));
    p.state = state_pb(v.state()) as i32;
    p.created_by = v.created_by.clone();
    p.proposed_by = v.proposed_by.clone();
    p.approvals = if v.state() == State::PendingApproval {
        approvals(conn, tenant, v.key(), v.proposal_no)
            .await?
            .into_iter()
            .map(|a| a.0)
            .collect()
    } else {
        Vec::new()
    };
    p.approvals_required = required;
    p.shadow_since = v.shadow_since.map(spm_proto::ext::timestamp);
    Ok(p)
}

/// Records a transition of a version.
async fn record_transition(
    conn: &mut PgConnection,
    c: &Caller,
    (plan_id, version): (&str, i32),
    from: &str,
    to: State,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO plan_transitions (tenant_id, plan_id, version, from_state, to_state, actor, role, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&c.tenant_id)
    .bind(plan_id)
    .bind(version)
    .bind(from)
    .bind(to.as_str())
    .bind(c.actor())
    .bind(c.role.as_str())
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// What a change recomputed.
#[derive(Debug, Default, Clone, Copy)]
struct Recomputed {
    rep_periods: usize,
    report: Report,
}

/// Recomputes every rep with deal credits in the open periods of `kind` under `ctx` (its
/// shadows only when `ctx.shadow_only`), in one [`engine::recompute_many`].
async fn recompute_open(
    conn: &mut PgConnection,
    ctx: &Ctx,
    kind: PeriodKind,
    out: &mut Outbox,
) -> Result<Recomputed, sqlx::Error> {
    let col = if kind == PeriodKind::Quarter {
        "quarter_key"
    } else {
        "month_key"
    };
    let keys: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT DISTINCT c.{col} FROM credits c
           LEFT JOIN periods p ON p.tenant_id = c.tenant_id AND p.period_kind = $2 AND p.period_key = c.{col}
          WHERE c.tenant_id = $1 AND c.kind = 'deal' AND p.closed_at IS NULL ORDER BY 1"
    ))
    .bind(&ctx.tenant)
    .bind(kind.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let mut pairs: Vec<(String, PeriodKind, String)> = Vec::new();
    for key in keys {
        let reps = store::reps_of_period(conn, &ctx.tenant, kind, &key).await?;
        pairs.extend(reps.into_iter().map(|r| (r, kind, key.clone())));
    }
    let report =
        engine::recompute_many(conn, ctx, &pairs, &HashMap::new(), Mode::Normal, out).await?;
    Ok(Recomputed {
        rep_periods: pairs.len(),
        report,
    })
}

/// What moving a version from `from` to `to` recomputes, after the move is stored: the
/// live open periods when the live plans change, the version's shadow ledger when it
/// starts to shadow, nothing otherwise.
async fn follow(
    conn: &mut PgConnection,
    tenant: &str,
    v: &Version,
    from: State,
    to: State,
    out: &mut Outbox,
) -> Result<Recomputed, sqlx::Error> {
    let kind = v.definition.0.period_kind;
    if from == State::Live || to == State::Live {
        let ctx = Ctx::for_tenant(conn, tenant).await?;
        return recompute_open(conn, &ctx, kind, out).await;
    }
    if to.shadows() && !from.shadows() {
        let mut ctx = Ctx::for_tenant(conn, tenant).await?;
        ctx.shadows
            .retain(|s| s.plan_id == v.key().0 && s.version == v.definition.0.version);
        ctx.shadow_only = true;
        return recompute_open(conn, &ctx, kind, out).await;
    }
    Ok(Recomputed::default())
}

/// Stores a move of a locked version to `to` (the caller checked it is allowed).
async fn set_state(
    conn: &mut PgConnection,
    c: &Caller,
    v: &Version,
    to: State,
    reason: &str,
) -> Result<(), sqlx::Error> {
    let from = v.state();
    let (plan_id, version) = v.key();
    sqlx::query(
        "UPDATE plans SET state = $4, state_at = now(),
                proposed_by = CASE WHEN $4 = 'PENDING_APPROVAL' THEN $5 ELSE proposed_by END,
                proposal_no = proposal_no + CASE WHEN $4 = 'PENDING_APPROVAL' THEN 1 ELSE 0 END,
                shadow_since = CASE WHEN $6 THEN now() ELSE shadow_since END
          WHERE tenant_id = $1 AND plan_id = $2 AND version = $3",
    )
    .bind(&c.tenant_id)
    .bind(plan_id)
    .bind(version)
    .bind(to.as_str())
    .bind(c.actor())
    .bind(to.shadows() && !from.shadows())
    .execute(&mut *conn)
    .await?;
    record_transition(conn, c, (plan_id, version), from.as_str(), to, reason).await
}

fn audit_after(
    v: &Version,
    to: State,
    r: &Recomputed,
    extra: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "plan_id": v.key().0,
        "version": v.key().1,
        "state": to.as_str(),
        "rep_periods_recomputed": r.rep_periods,
        "postings": r.report.postings,
        "shadow_postings": r.report.shadow_postings,
        "detail": extra,
    })
}

impl Api {
    /// `PutPlan`: a new version, LIVE at once (open periods follow it) unless put as a
    /// draft; the tenant's policy may require the draft.
    pub(crate) async fn put_plan_as(
        &self,
        c: &Caller,
        r: pb::PutPlanRequest,
    ) -> Result<pb::Plan, ApiError> {
        c.require_configure()?;
        let proto = r
            .plan
            .ok_or_else(|| ApiError::invalid("plan", "is required"))?;
        let mut p = plan::from_proto(&proto).map_err(|v| {
            ApiError::InvalidArgument(v.into_iter().map(|f| f.under("plan")).collect())
        })?;
        let mut tx = self.pool.begin().await?;
        crate::chain::Locks::default()
            .plans(&c.tenant_id, false)
            .take(&mut tx)
            .await?;
        let required = policy(&mut tx, &c.tenant_id).await?;
        if !r.draft && required > 0 {
            return Err(ApiError::FailedPrecondition(format!(
                "this tenant requires {required} approval{} before a plan version goes live: put it as a draft (draft: true), then propose it for approval",
                if required == 1 { "" } else { "s" }
            )));
        }
        let state = if r.draft { State::Draft } else { State::Live };
        let version: i32 = sqlx::query_scalar(
            "SELECT COALESCE(max(version), 0) + 1 FROM plans WHERE tenant_id = $1 AND plan_id = $2",
        )
        .bind(&c.tenant_id)
        .bind(&p.plan_id)
        .fetch_one(&mut *tx)
        .await?;
        p.version = u32::try_from(version).unwrap_or(1);
        sqlx::query(
            "INSERT INTO plans (tenant_id, plan_id, version, definition, state, created_by)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&c.tenant_id)
        .bind(&p.plan_id)
        .bind(version)
        .bind(Json(&p))
        .bind(state.as_str())
        .bind(c.actor())
        .execute(&mut *tx)
        .await?;
        record_transition(&mut tx, c, (&p.plan_id, version), "", state, "put").await?;
        let v = self::version(&mut tx, &c.tenant_id, &p.plan_id, p.version, false).await?;
        let mut out = Outbox::new(&self.kafka);
        let done = if state == State::Live {
            follow(
                &mut tx,
                &c.tenant_id,
                &v,
                State::Draft,
                State::Live,
                &mut out,
            )
            .await?
        } else {
            Recomputed::default()
        };
        let before: Option<Json<Plan>> = sqlx::query_scalar(
            "SELECT definition FROM plans WHERE tenant_id = $1 AND plan_id = $2 AND version = $3",
        )
        .bind(&c.tenant_id)
        .bind(&p.plan_id)
        .bind(version - 1)
        .fetch_optional(&mut *tx)
        .await?;
        spm_server::audit::record(
            &mut tx,
            c,
            spm_server::audit::Action::new("incentive", "plan.put", format!("plan:{}", p.plan_id))
                .before(before.map(|b| b.0))
                .after(serde_json::json!({
                    "plan": &p,
                    "state": state.as_str(),
                    "rep_periods_recomputed": done.rep_periods,
                    "postings": done.report.postings,
                })),
        )
        .await?;
        let reply = version_pb(&mut tx, &c.tenant_id, &v, required).await?;
        self.changed(c, tx, out).await?;
        Ok(reply)
    }

    /// Commits a plan change: caches of the tenant's statements and context go.
    async fn changed(
        &self,
        c: &Caller,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        out: Outbox,
    ) -> Result<(), ApiError> {
        crate::cache::changed(&mut tx, &c.tenant_id, None).await?;
        self.commit(&c.tenant_id, tx, out).await?;
        self.forget_ctx(&c.tenant_id);
        Ok(())
    }

    /// `TransitionPlan`.
    pub(crate) async fn transition_plan_as(
        &self,
        c: &Caller,
        r: pb::TransitionPlanRequest,
    ) -> Result<pb::TransitionPlanResponse, ApiError> {
        c.require_configure()?;
        let to = state_of_pb(r.to).ok_or_else(|| {
            ApiError::invalid(
                "to",
                "must be DRAFT, SHADOW, PENDING_APPROVAL, LIVE or RETIRED",
            )
        })?;
        if r.version == 0 {
            return Err(ApiError::invalid(
                "version",
                "is required (the version to move)",
            ));
        }
        let reason = r.reason.trim();
        if to == State::Retired && reason.is_empty() {
            return Err(ApiError::invalid(
                "reason",
                "is required to retire a version",
            ));
        }
        let mut tx = self.pool.begin().await?;
        crate::chain::Locks::default()
            .plans(&c.tenant_id, false)
            .take(&mut tx)
            .await?;
        let v = version(&mut tx, &c.tenant_id, &r.plan_id, r.version, true).await?;
        let required = policy(&mut tx, &c.tenant_id).await?;
        let from = v.state();
        lifecycle::transition(&v.name(), from, to, required).map_err(refused)?;
        if from == State::PendingApproval && to == State::Draft && reason.is_empty() {
            return Err(ApiError::invalid(
                "reason",
                "is required to send a proposal back to DRAFT (say what to change)",
            ));
        }
        set_state(&mut tx, c, &v, to, reason).await?;
        let mut out = Outbox::new(&self.kafka);
        let done = follow(&mut tx, &c.tenant_id, &v, from, to, &mut out).await?;
        spm_server::audit::record(
            &mut tx,
            c,
            spm_server::audit::Action::new(
                "incentive",
                "plan.transition",
                format!("plan:{}", r.plan_id),
            )
            .before(serde_json::json!({"version": r.version, "state": from.as_str()}))
            .after(audit_after(
                &v,
                to,
                &done,
                serde_json::json!({"reason": reason}),
            )),
        )
        .await?;
        let now = version(&mut tx, &c.tenant_id, &r.plan_id, r.version, false).await?;
        let plan = version_pb(&mut tx, &c.tenant_id, &now, required).await?;
        self.changed(c, tx, out).await?;
        tracing::info!(tenant = %c.tenant_id, plan = %v.name(), %from, %to, rep_periods = done.rep_periods, "plan version moved");
        Ok(pb::TransitionPlanResponse {
            plan: Some(plan),
            rep_periods_recomputed: u32::try_from(done.rep_periods).unwrap_or(u32::MAX),
            postings: done.report.postings,
            shadow_postings: done.report.shadow_postings,
        })
    }

    /// `ApprovePlan`: approvals of one version are serialized by the plans lock, so
    /// exactly one of them takes it live.
    pub(crate) async fn approve_plan_as(
        &self,
        c: &Caller,
        r: pb::ApprovePlanRequest,
    ) -> Result<pb::ApprovePlanResponse, ApiError> {
        c.require_configure()?;
        if c.person.is_none() {
            return Err(ApiError::PermissionDenied(
                "a plan version is approved by a person signed in with the company's identity, not by an API key".into(),
            ));
        }
        if r.version == 0 {
            return Err(ApiError::invalid(
                "version",
                "is required (the version to approve)",
            ));
        }
        let mut tx = self.pool.begin().await?;
        crate::chain::Locks::default()
            .plans(&c.tenant_id, false)
            .take(&mut tx)
            .await?;
        let v = version(&mut tx, &c.tenant_id, &r.plan_id, r.version, true).await?;
        let required = policy(&mut tx, &c.tenant_id).await?;
        let so_far: Vec<String> = approvals(&mut tx, &c.tenant_id, v.key(), v.proposal_no)
            .await?
            .into_iter()
            .map(|a| a.0)
            .collect();
        let me = c.actor();
        let verdict = lifecycle::approve(
            &v.name(),
            v.state(),
            &v.created_by,
            &v.proposed_by,
            &me,
            &so_far,
            required,
        )
        .map_err(refused)?;
        sqlx::query(
            "INSERT INTO plan_approvals (tenant_id, plan_id, version, proposal_no, approver, role, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&c.tenant_id)
        .bind(v.key().0)
        .bind(v.key().1)
        .bind(v.proposal_no)
        .bind(&me)
        .bind(c.role.as_str())
        .bind(r.reason.trim())
        .execute(&mut *tx)
        .await?;
        let mut out = Outbox::new(&self.kafka);
        let (went_live, have, need, done) = match verdict {
            Approved::Recorded { have, need } => (false, have, need, Recomputed::default()),
            Approved::GoesLive => {
                let mut by = so_far.clone();
                by.push(me.clone());
                set_state(
                    &mut tx,
                    c,
                    &v,
                    State::Live,
                    &format!("approved by {}", by.join(", ")),
                )
                .await?;
                let done = follow(
                    &mut tx,
                    &c.tenant_id,
                    &v,
                    State::PendingApproval,
                    State::Live,
                    &mut out,
                )
                .await?;
                let n = u32::try_from(by.len()).unwrap_or(u32::MAX);
                (true, n, required.max(1), done)
            }
        };
        spm_server::audit::record(
            &mut tx,
            c,
            spm_server::audit::Action::new("incentive", "plan.approve", format!("plan:{}", r.plan_id))
                .before(serde_json::json!({"version": r.version, "state": v.state().as_str(), "approvals": so_far}))
                .after(audit_after(
                    &v,
                    if went_live { State::Live } else { v.state() },
                    &done,
                    serde_json::json!({"approvals": have, "required": need, "reason": r.reason.trim()}),
                )),
        )
        .await?;
        let now = version(&mut tx, &c.tenant_id, &r.plan_id, r.version, false).await?;
        let plan = version_pb(&mut tx, &c.tenant_id, &now, required).await?;
        self.changed(c, tx, out).await?;
        tracing::info!(tenant = %c.tenant_id, plan = %v.name(), approver = %me, went_live, "plan version approved");
        Ok(pb::ApprovePlanResponse {
            plan: Some(plan),
            went_live,
            approvals: have,
            approvals_required: need,
            rep_periods_recomputed: u32::try_from(done.rep_periods).unwrap_or(u32::MAX),
            postings: done.report.postings,
        })
    }

    /// `GetPlan`.
    pub(crate) async fn get_plan_as(
        &self,
        c: &Caller,
        r: pb::GetPlanRequest,
    ) -> Result<pb::GetPlanResponse, ApiError> {
        c.require_tenant_reader()?;
        let mut conn = self.pool.acquire().await?;
        let v = version(&mut conn, &c.tenant_id, &r.plan_id, r.version, false).await?;
        let required = policy(&mut conn, &c.tenant_id).await?;
        let plan = version_pb(&mut conn, &c.tenant_id, &v, required).await?;
        let transitions: Vec<(String, String, String, String, String, DateTime<Utc>)> =
            sqlx::query_as(
                "SELECT from_state, to_state, actor, role, reason, at FROM plan_transitions
                  WHERE tenant_id = $1 AND plan_id = $2 AND version = $3 ORDER BY seq",
            )
            .bind(&c.tenant_id)
            .bind(v.key().0)
            .bind(v.key().1)
            .fetch_all(&mut *conn)
            .await?;
        let approvals = approvals(&mut conn, &c.tenant_id, v.key(), v.proposal_no).await?;
        let st = |s: &str| State::parse(s).map_or(0, |s| state_pb(s) as i32);
        Ok(pb::GetPlanResponse {
            plan: Some(plan),
            transitions: transitions
                .into_iter()
                .map(|(from, to, actor, role, reason, at)| pb::PlanTransition {
                    from: st(&from),
                    to: st(&to),
                    actor,
                    role,
                    reason,
                    at: Some(spm_proto::ext::timestamp(at)),
                })
                .collect(),
            approvals: if v.state() == State::PendingApproval {
                approvals
                    .into_iter()
                    .map(|(approver, role, reason, at)| pb::PlanApproval {
                        approver,
                        role,
                        reason,
                        at: Some(spm_proto::ext::timestamp(at)),
                    })
                    .collect()
            } else {
                Vec::new()
            },
        })
    }

    /// `ListPlans`: with history every version; otherwise each plan's latest LIVE version
    /// and every later version not RETIRED (the latest version of a plan without any).
    pub(crate) async fn list_plans_as(
        &self,
        c: &Caller,
        history: bool,
    ) -> Result<Vec<pb::Plan>, ApiError> {
        c.require_tenant_reader()?;
        let mut conn = self.pool.acquire().await?;
        let rows: Vec<Version> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM plans WHERE tenant_id = $1 ORDER BY plan_id, version"
        ))
        .bind(&c.tenant_id)
        .fetch_all(&mut *conn)
        .await?;
        let required = policy(&mut conn, &c.tenant_id).await?;
        let mut by_plan: BTreeMap<&str, Vec<&Version>> = BTreeMap::new();
        for v in &rows {
            by_plan.entry(v.key().0).or_default().push(v);
        }
        let mut out = Vec::new();
        for versions in by_plan.values() {
            let shown: Vec<&&Version> = if history {
                versions.iter().collect()
            } else {
                let live = versions.iter().rposition(|v| v.state() == State::Live);
                let mut s: Vec<&&Version> = versions
                    .iter()
                    .enumerate()
                    .filter(|(i, v)| {
                        Some(*i) == live
                            || (live.is_none_or(|l| *i > l) && v.state() != State::Retired)
                    })
                    .map(|(_, v)| v)
                    .collect();
                if s.is_empty() {
                    s.extend(versions.last());
                }
                s
            };
            for v in shown {
                out.push(version_pb(&mut conn, &c.tenant_id, v, required).await?);
            }
        }
        Ok(out)
    }

    /// `GetPlanPolicy` / `SetPlanPolicy` (`set`: the new number).
    pub(crate) async fn plan_policy_as(
        &self,
        c: &Caller,
        set: Option<u32>,
    ) -> Result<u32, ApiError> {
        let Some(n) = set else {
            c.require_tenant_reader()?;
            let mut conn = self.pool.acquire().await?;
            return Ok(policy(&mut conn, &c.tenant_id).await?);
        };
        // Who may change the four-eyes rule: admins only (a comp admin could otherwise
        // lift it for their own change).
        c.require_admin()?;
        if n > 5 {
            return Err(ApiError::invalid("approvals_required", "must be 0 to 5"));
        }
        let mut tx = self.pool.begin().await?;
        crate::chain::Locks::default()
            .plans(&c.tenant_id, false)
            .take(&mut tx)
            .await?;
        let before = policy(&mut tx, &c.tenant_id).await?;
        sqlx::query(
            "INSERT INTO plan_policies (tenant_id, approvals_required) VALUES ($1, $2)
             ON CONFLICT (tenant_id) DO UPDATE SET approvals_required = EXCLUDED.approvals_required, updated_at = now()",
        )
        .bind(&c.tenant_id)
        .bind(i32::try_from(n).unwrap_or(0))
        .execute(&mut *tx)
        .await?;
        spm_server::audit::record(
            &mut tx,
            c,
            spm_server::audit::Action::new("incentive", "plan.policy.set", "plan-policy")
                .before(serde_json::json!({"approvals_required": before}))
                .after(serde_json::json!({"approvals_required": n})),
        )
        .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// `ComparePlan`: per rep and line, the live ledger's net amounts for the period (by
    /// the period they are about, adjustments posted later included) against the shadow
    /// version's.
    pub(crate) async fn compare_plan_as(
        &self,
        c: &Caller,
        r: pb::ComparePlanRequest,
    ) -> Result<pb::ComparePlanResponse, ApiError> {
        c.require_tenant_reader()?;
        let mut conn = self.pool.acquire().await?;
        let v = if r.version == 0 {
            let v: Option<Version> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM plans WHERE tenant_id = $1 AND plan_id = $2
                   AND state IN ('SHADOW', 'PENDING_APPROVAL') ORDER BY version DESC LIMIT 1"
            ))
            .bind(&c.tenant_id)
            .bind(&r.plan_id)
            .fetch_optional(&mut *conn)
            .await?;
            match v {
                Some(v) => v,
                None => {
                    // Say which: no such plan, or none of its versions in shadow.
                    let latest = version(&mut conn, &c.tenant_id, &r.plan_id, 0, false).await?;
                    return Err(ApiError::FailedPrecondition(format!(
                        "no version of {} is in shadow (its latest, v{}, is {}): move one to SHADOW first",
                        r.plan_id,
                        latest.key().1,
                        latest.state()
                    )));
                }
            }
        } else {
            version(&mut conn, &c.tenant_id, &r.plan_id, r.version, false).await?
        };
        if !v.state().shadows() {
            return Err(ApiError::FailedPrecondition(format!(
                "{} is {}: only a version in SHADOW or PENDING_APPROVAL has a shadow ledger that follows the stream",
                v.name(),
                v.state()
            )));
        }
        let ctx = self.ctx(&c.tenant_id).await?;
        let p = r
            .period
            .as_ref()
            .filter(|p| !p.key.is_empty())
            .ok_or_else(|| ApiError::invalid("period.key", "is required"))?;
        let kind = kind_of(Some(p), v.definition.0.period_kind)?;
        if kind != v.definition.0.period_kind {
            return Err(ApiError::invalid(
                "period.kind",
                format!(
                    "{} pays by {}: compare one of its periods",
                    v.name(),
                    v.definition.0.period_kind.as_str()
                ),
            ));
        }
        let key = period_key(&ctx, Some(p), kind)?;
        let closed_at: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT closed_at FROM periods WHERE tenant_id = $1 AND period_kind = $2 AND period_key = $3",
        )
        .bind(&c.tenant_id)
        .bind(kind.as_str())
        .bind(&key)
        .fetch_optional(&mut *conn)
        .await?
        .flatten();
        if let (Some(closed), Some(since)) = (closed_at, v.shadow_since)
            && closed < since
        {
            return Err(ApiError::FailedPrecondition(format!(
                "{key} closed at {closed} before {} started to shadow ({since}): its shadow ledger has nothing for it; SimulatePlan answers for past periods",
                v.name()
            )));
        }
        let rep = r.rep_id.trim();
        // (rep, line_key) -> (kind, deal, summary, live, shadow)
        type Line = (String, String, String, Decimal, Decimal);
        let mut lines: BTreeMap<(String, String), Line> = BTreeMap::new();
        let live: Vec<(String, String, String, String, String, Decimal)> = sqlx::query_as(
            "SELECT rep_id, line_key, kind, deal_id, (array_agg(summary ORDER BY seq DESC))[1], sum(amount)
               FROM ledger WHERE tenant_id = $1 AND period_kind = $2 AND source_period_key = $3
                AND ($4 = '' OR rep_id = $4)
              GROUP BY 1, 2, 3, 4",
        )
        .bind(&c.tenant_id)
        .bind(kind.as_str())
        .bind(&key)
        .bind(rep)
        .fetch_all(&mut *conn)
        .await?;
        for (rep, lk, k, deal, summary, amount) in live {
            let e =
                lines
                    .entry((rep, lk))
                    .or_insert((k, deal, summary, Decimal::ZERO, Decimal::ZERO));
            e.3 += amount;
        }
        let shadow: Vec<(String, String, String, String, String, Decimal)> = sqlx::query_as(
            "SELECT rep_id, line_key, kind, deal_id, (array_agg(summary ORDER BY seq DESC))[1], sum(amount)
               FROM shadow_ledger WHERE tenant_id = $1 AND plan_id = $2 AND plan_version = $3
                AND period_kind = $4 AND period_key = $5 AND ($6 = '' OR rep_id = $6)
              GROUP BY 1, 2, 3, 4",
        )
        .bind(&c.tenant_id)
        .bind(v.key().0)
        .bind(v.key().1)
        .bind(kind.as_str())
        .bind(&key)
        .bind(rep)
        .fetch_all(&mut *conn)
        .await?;
        for (rep, lk, k, deal, summary, amount) in shadow {
            let e = lines.entry((rep, lk)).or_insert((
                k,
                deal,
                String::new(),
                Decimal::ZERO,
                Decimal::ZERO,
            ));
            e.2 = summary;
            e.4 += amount;
        }
        let mut reps: BTreeMap<String, pb::RepComparison> = BTreeMap::new();
        let mut sums: BTreeMap<String, (Decimal, Decimal)> = BTreeMap::new();
        let (mut live_total, mut shadow_total) = (Decimal::ZERO, Decimal::ZERO);
        for ((rep, line_key), (k, deal_id, summary, l, mut s)) in lines {
            // Resolved disputes' adjustments stand under any plan (no recompute touches
            // them): the shadow would pay them too.
            if line_key.starts_with("dispute:") {
                s = l;
            }
            if l.is_zero() && s.is_zero() {
                continue;
            }
            live_total += l;
            shadow_total += s;
            let t = sums.entry(rep.clone()).or_default();
            t.0 += l;
            t.1 += s;
            reps.entry(rep.clone())
                .or_insert_with(|| pb::RepComparison {
                    rep_id: rep,
                    ..Default::default()
                })
                .lines
                .push(pb::LineComparison {
                    line_key,
                    kind: k,
                    deal_id,
                    summary,
                    live: money_s(&ctx, l),
                    shadow: money_s(&ctx, s),
                    difference: money_s(&ctx, s - l),
                });
        }
        for (rep, (l, s)) in sums {
            if let Some(x) = reps.get_mut(&rep) {
                x.live_total = money_s(&ctx, l);
                x.shadow_total = money_s(&ctx, s);
                x.difference = money_s(&ctx, s - l);
            }
        }
        Ok(pb::ComparePlanResponse {
            plan_id: v.key().0.to_owned(),
            version: v.definition.0.version,
            state: state_pb(v.state()) as i32,
            period: Some(ctx.period_pb(kind, &key)),
            currency: ctx.currency.code().to_owned(),
            live_total: money_s(&ctx, live_total),
            shadow_total: money_s(&ctx, shadow_total),
            difference: money_s(&ctx, shadow_total - live_total),
            reps: reps.into_values().collect(),
            shadow_since: v.shadow_since.map(spm_proto::ext::timestamp),
            as_of: Some(spm_proto::ext::timestamp(Utc::now())),
        })
    }
}
