//! Comp admin pages: plans and their versions, a plan version's form (every field's error
//! beside it; simulate the draft against the current plan, or save it), closing and paying
//! periods, and the questions on lines (also a manager's queue). The services decide who
//! may do each; these pages only say it for people.

use std::collections::{BTreeMap, HashMap};

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use spm_proto::common::v1 as cpb;
use spm_proto::incentive::v1 as ipb;
use spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient;
use spm_proto::incentive::v1::incentive_service_client::IncentiveServiceClient;
use tonic::Code;

use crate::pages::{Chrome, bearer, failed, html, lang, posted, session_of, violations};
use crate::session::Session;
use crate::{Lang, Portal};

// ---------------------------------------------------------------------------------------
// Plans

struct PlanRow {
    plan_id: String,
    name: String,
    versions: Vec<VersionRow>,
}

struct VersionRow {
    version: u32,
    effective_from: String,
    created: String,
    kind: String,
    state: String,
    /// "2 of 3 approvals" while awaiting approval.
    approvals: String,
    /// Runs in shadow (has a comparison).
    shadow: bool,
    /// What a comp admin may do with it: (action, label).
    actions: Vec<(&'static str, String)>,
}

/// The moves a version's state allows, as the plans page offers them.
fn actions_of(l: Lang, state: i32) -> Vec<(&'static str, String)> {
    let keys: &[&'static str] = match ipb::PlanState::try_from(state).unwrap_or_default() {
        ipb::PlanState::Draft => &["shadow", "propose", "retire"],
        ipb::PlanState::Shadow => &["propose", "draft", "retire"],
        ipb::PlanState::PendingApproval => &["approve", "reject", "retire"],
        ipb::PlanState::Live => &["retire"],
        _ => &[],
    };
    keys.iter()
        .map(|k| (*k, l.t(&format!("act_{k}")).to_owned()))
        .collect()
}

fn state_name(l: Lang, s: i32) -> String {
    let k = match ipb::PlanState::try_from(s).unwrap_or_default() {
        ipb::PlanState::Draft => "st_draft",
        ipb::PlanState::Shadow => "st_shadow",
        ipb::PlanState::PendingApproval => "st_pending",
        ipb::PlanState::Retired => "st_retired",
        _ => "st_live",
    };
    l.t(k).to_owned()
}

#[derive(Template)]
#[template(path = "plans.html")]
struct PlansPage {
    c: Chrome,
    plans: Vec<PlanRow>,
    notice: String,
}

#[derive(serde::Deserialize, Default)]
pub struct PlansQ {
    #[serde(default)]
    saved: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    moved: String,
}

/// A version's state changed from the plans page: `act` is shadow, propose, approve,
/// draft, reject or retire; `reason` goes with it. Refusals (a move the state does not
/// allow, an approval by its proposer) come back as an error page saying why.
pub async fn plan_state(
    State(p): State<Portal>,
    h: HeaderMap,
    Path((tenant, plan_id, version)): Path<(String, String, u32)>,
    body: String,
) -> Response {
    let (s, l, f) = match posted(&p, &h, &tenant, &body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let path = format!("/t/{tenant}/plans");
    let reason = f
        .get("reason")
        .map(|r| r.trim().to_owned())
        .unwrap_or_default();
    let mut adm = IncentiveAdminServiceClient::new(p.incentive.clone());
    let to = match f.get("act").map(String::as_str) {
        Some("shadow") => ipb::PlanState::Shadow,
        Some("propose") => ipb::PlanState::PendingApproval,
        Some("draft" | "reject") => ipb::PlanState::Draft,
        Some("retire") => ipb::PlanState::Retired,
        Some("approve") => ipb::PlanState::Live,
        _ => {
            return failed(
                &tonic::Status::invalid_argument(
                    "act must be shadow, propose, approve, draft, reject or retire",
                ),
                l,
                Some(&s),
                &path,
            );
        }
    };
    let done = if f.get("act").map(String::as_str) == Some("approve") {
        adm.approve_plan(bearer(
            ipb::ApprovePlanRequest {
                plan_id: plan_id.clone(),
                version,
                reason,
            },
            &s.token,
        ))
        .await
        .map(|_| ())
    } else {
        adm.transition_plan(bearer(
            ipb::TransitionPlanRequest {
                plan_id: plan_id.clone(),
                version,
                to: to as i32,
                reason,
            },
            &s.token,
        ))
        .await
        .map(|_| ())
    };
    match done {
        Ok(()) => {
            let q = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("moved", &plan_id)
                .append_pair("version", &version.to_string())
                .finish();
            Redirect::to(&format!("/t/{tenant}/plans?{q}")).into_response()
        }
        // The service's reason (the state it is in, who must approve, the field to fill)
        // is what to fix.
        Err(e) => {
            let status = match e.code() {
                Code::PermissionDenied => StatusCode::FORBIDDEN,
                Code::FailedPrecondition => StatusCode::CONFLICT,
                Code::InvalidArgument => StatusCode::UNPROCESSABLE_ENTITY,
                Code::NotFound => StatusCode::NOT_FOUND,
                _ => return failed(&e, l, Some(&s), &path),
            };
            let mut body = e.message().to_owned();
            for v in violations(&e) {
                body.push_str(&format!(" ({}: {})", v.0, v.1));
            }
            crate::pages::message(
                status,
                Chrome::new(l, Some(&s), &path),
                l.t("plan_refused"),
                &body,
                Some(&path),
            )
        }
    }
}

async fn all_plans(p: &Portal, s: &Session) -> Result<Vec<ipb::Plan>, tonic::Status> {
    Ok(IncentiveAdminServiceClient::new(p.incentive.clone())
        .list_plans(bearer(ipb::ListPlansRequest { history: true }, &s.token))
        .await?
        .into_inner()
        .plans)
}

fn kind_name(l: Lang, k: i32) -> String {
    if k == cpb::PeriodKind::Quarter as i32 {
        l.t("quarter").to_owned()
    } else {
        l.t("month").to_owned()
    }
}

pub async fn plans(
    State(p): State<Portal>,
    h: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<PlansQ>,
) -> Response {
    let s = match session_of(&p, &h, &tenant) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let l = lang(&h);
    let path = format!("/t/{tenant}/plans");
    let all = match all_plans(&p, &s).await {
        Ok(x) => x,
        Err(e) => return failed(&e, l, Some(&s), &path),
    };
    let mut by_id: BTreeMap<String, PlanRow> = BTreeMap::new();
    for x in all {
        let row = by_id.entry(x.plan_id.clone()).or_insert_with(|| PlanRow {
            plan_id: x.plan_id.clone(),
            name: String::new(),
            versions: Vec::new(),
        });
        row.name.clone_from(&x.name);
        row.versions.push(VersionRow {
            version: x.version,
            effective_from: x.effective_from.clone(),
            created: x
                .created_at
                .as_ref()
                .and_then(spm_proto::ext::datetime)
                .map(|t| l.date(t))
                .unwrap_or_default(),
            kind: kind_name(l, x.period_kind),
            state: state_name(l, x.state),
            approvals: if x.state == ipb::PlanState::PendingApproval as i32 {
                l.t("approvals_of")
                    .replace("{have}", &x.approvals.len().to_string())
                    .replace("{need}", &x.approvals_required.max(1).to_string())
            } else {
                String::new()
            },
            shadow: x.state == ipb::PlanState::Shadow as i32
                || x.state == ipb::PlanState::PendingApproval as i32,
            actions: actions_of(l, x.state),
        });
    }
    for r in by_id.values_mut() {
        r.versions.reverse();
    }
    let notice = if !q.moved.is_empty() {
        l.t("plan_moved")
            .replace("{plan}", &q.moved)
            .replace("{version}", &q.version)
    } else if q.saved.is_empty() {
        String::new()
    } else {
        l.t("plan_saved")
            .replace("{plan}", &q.saved)
            .replace("{version}", &q.version)
    };
    html(
        StatusCode::OK,
        &PlansPage {
            plans: by_id.into_values().collect(),
            notice,
            c: Chrome::new(l, Some(&s), &path),
        },
    )
}

/// One input of a form, with its error beside it.
pub(crate) struct Field {
    pub name: String,
    pub label: String,
    pub value: String,
    /// "text", "select" or "check".
    pub kind: &'static str,
    pub options: Vec<(String, String)>,
    pub hint: String,
    pub error: String,
}

impl Field {
    /// The input's id (names hold dots and brackets).
    pub fn id(&self) -> String {
        format!(
            "f-{}",
            self.name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect::<String>()
        )
    }

    fn text(name: &str, label: String, value: &str) -> Self {
        Self {
            name: name.to_owned(),
            label,
            value: value.to_owned(),
            kind: "text",
            options: Vec::new(),
            hint: String::new(),
            error: String::new(),
        }
    }

    fn select(name: &str, label: String, value: &str, options: Vec<(&str, &str)>) -> Self {
        Self {
            kind: "select",
            options: options
                .into_iter()
                .map(|(v, t)| (v.to_owned(), t.to_owned()))
                .collect(),
            ..Self::text(name, label, value)
        }
    }

    fn check(name: &str, label: String, on: bool) -> Self {
        Self {
            kind: "check",
            ..Self::text(name, label, if on { "on" } else { "" })
        }
    }

    fn hint(mut self, h: &str) -> Self {
        h.clone_into(&mut self.hint);
        self
    }
}

pub(crate) struct Group {
    pub legend: String,
    pub hint: String,
    pub fields: Vec<Field>,
    /// Laid out as a grid (the tiers).
    pub grid: bool,
}

/// The editable part of a plan version, as the form holds it.
#[derive(Debug, Clone, Default)]
struct PlanForm {
    plan_id: String,
    name: String,
    effective_from: String,
    quarter: bool,
    tenant_default: bool,
    team_ids: String,
    rep_ids: String,
    cumulative: bool,
    retroactive: bool,
    quota: String,
    threshold: String,
    per_deal_cap: String,
    period_cap: String,
    tiers: Vec<(String, String)>,
    at_close: String,
    on_collection: String,
    clawback_days: String,
    /// The version the new one starts from (0: a new plan).
    base_version: u32,
}

/// Tier rows the form offers beyond the plan's own.
const SPARE_TIERS: usize = 2;
const MAX_TIERS: usize = 12;

impl PlanForm {
    fn of(p: &ipb::Plan) -> Self {
        let c = p.commission.clone().unwrap_or_default();
        let a = p.assignment.clone().unwrap_or_default();
        let pay = p.payout.clone().unwrap_or_default();
        Self {
            plan_id: p.plan_id.clone(),
            name: p.name.clone(),
            effective_from: p.effective_from.clone(),
            quarter: p.period_kind == cpb::PeriodKind::Quarter as i32,
            tenant_default: a.tenant_default,
            team_ids: a.team_ids.join(", "),
            rep_ids: a.rep_ids.join(", "),
            cumulative: c.basis == ipb::TierBasis::CumulativeAmount as i32,
            retroactive: c.mode == ipb::TierMode::Retroactive as i32,
            quota: c.quota,
            threshold: c.threshold,
            per_deal_cap: c.per_deal_cap,
            period_cap: c.period_cap,
            tiers: c.tiers.into_iter().map(|t| (t.from, t.rate)).collect(),
            at_close: pay.at_close_percent,
            on_collection: pay.on_collection_percent,
            clawback_days: if p.clawback_window_days == 0 {
                String::new()
            } else {
                p.clawback_window_days.to_string()
            },
            base_version: p.version,
        }
    }

    fn new_plan() -> Self {
        Self {
            tiers: vec![("0".into(), String::new())],
            ..Self::default()
        }
    }

    /// From the posted form. Tier rows left empty are dropped, so the rows shown again are
    /// the ones sent and their errors line up.
    fn parse(f: &HashMap<String, String>) -> Self {
        let g = |k: &str| f.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
        let mut tiers = Vec::new();
        for i in 0..MAX_TIERS {
            let from = g(&format!("commission.tiers[{i}].from"));
            let rate = g(&format!("commission.tiers[{i}].rate"));
            if !from.is_empty() || !rate.is_empty() {
                tiers.push((from, rate));
            }
        }
        Self {
            plan_id: g("plan_id"),
            name: g("name"),
            effective_from: g("effective_from"),
            quarter: g("period_kind") == "quarter",
            tenant_default: f.contains_key("assignment.tenant_default"),
            team_ids: g("assignment.team_ids"),
            rep_ids: g("assignment.rep_ids"),
            cumulative: g("commission.basis") == "cumulative",
            retroactive: g("commission.mode") == "retroactive",
            quota: g("commission.quota"),
            threshold: g("commission.threshold"),
            per_deal_cap: g("commission.per_deal_cap"),
            period_cap: g("commission.period_cap"),
            tiers,
            at_close: g("payout.at_close_percent"),
            on_collection: g("payout.on_collection_percent"),
            clawback_days: g("clawback_window_days"),
            base_version: g("base_version").parse().unwrap_or(0),
        }
    }

    /// The plan version this form describes: `base` (the version it started from) with the
    /// form's parts put in. A field the form cannot even read is an error of its own.
    fn to_plan(&self, base: Option<&ipb::Plan>, l: Lang) -> (ipb::Plan, Vec<(String, String)>) {
        let mut errors = Vec::new();
        let ids = |s: &str| -> Vec<String> {
            s.split([',', ' ', '\n'])
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let mut p = base.cloned().unwrap_or_default();
        p.version = 0;
        p.created_at = None;
        p.plan_id.clone_from(&self.plan_id);
        p.name.clone_from(&self.name);
        p.effective_from.clone_from(&self.effective_from);
        p.period_kind = if self.quarter {
            cpb::PeriodKind::Quarter as i32
        } else {
            cpb::PeriodKind::Month as i32
        };
        p.assignment = Some(ipb::PlanAssignment {
            rep_ids: ids(&self.rep_ids),
            team_ids: ids(&self.team_ids),
            tenant_default: self.tenant_default,
        });
        let mut c = p.commission.take().unwrap_or_default();
        c.basis = if self.cumulative {
            ipb::TierBasis::CumulativeAmount as i32
        } else {
            ipb::TierBasis::Attainment as i32
        };
        c.mode = if self.retroactive {
            ipb::TierMode::Retroactive as i32
        } else {
            ipb::TierMode::Marginal as i32
        };
        c.quota.clone_from(&self.quota);
        c.threshold.clone_from(&self.threshold);
        c.per_deal_cap.clone_from(&self.per_deal_cap);
        c.period_cap.clone_from(&self.period_cap);
        c.tiers = self
            .tiers
            .iter()
            .map(|(from, rate)| ipb::Tier {
                from: from.clone(),
                rate: rate.clone(),
            })
            .collect();
        p.commission = Some(c);
        p.payout = if self.at_close.is_empty() && self.on_collection.is_empty() {
            None
        } else {
            Some(ipb::PayoutSplit {
                at_close_percent: self.at_close.clone(),
                on_collection_percent: self.on_collection.clone(),
            })
        };
        p.clawback_window_days = if self.clawback_days.is_empty() {
            0
        } else {
            match self.clawback_days.parse::<u32>() {
                Ok(d) => d,
                Err(_) => {
                    errors.push(("clawback_window_days".into(), l.t("whole_days").to_owned()));
                    0
                }
            }
        };
        (p, errors)
    }

    fn groups(&self, l: Lang) -> Vec<Group> {
        let mut tiers = Vec::new();
        let rows = (self.tiers.len() + SPARE_TIERS).min(MAX_TIERS);
        for i in 0..rows {
            let (from, rate) = self.tiers.get(i).cloned().unwrap_or_default();
            let n = (i + 1).to_string();
            tiers.push(Field::text(
                &format!("commission.tiers[{i}].from"),
                l.t("f_tier_from").replace("{n}", &n),
                &from,
            ));
            tiers.push(Field::text(
                &format!("commission.tiers[{i}].rate"),
                l.t("f_tier_rate").replace("{n}", &n),
                &rate,
            ));
        }
        vec![
            Group {
                legend: l.t("f_plan").into(),
                hint: String::new(),
                grid: false,
                fields: vec![
                    Field::text("plan_id", l.t("f_plan_id").into(), &self.plan_id),
                    Field::text("name", l.t("f_name").into(), &self.name),
                    Field::text(
                        "effective_from",
                        l.t("f_effective_from").into(),
                        &self.effective_from,
                    ),
                    Field::select(
                        "period_kind",
                        l.t("f_period_kind").into(),
                        if self.quarter { "quarter" } else { "month" },
                        vec![("month", l.t("month")), ("quarter", l.t("quarter"))],
                    ),
                    Field::text(
                        "clawback_window_days",
                        l.t("f_clawback").into(),
                        &self.clawback_days,
                    ),
                ],
            },
            Group {
                legend: l.t("f_assignment").into(),
                hint: String::new(),
                grid: false,
                fields: vec![
                    Field::check(
                        "assignment.tenant_default",
                        l.t("f_tenant_default").into(),
                        self.tenant_default,
                    ),
                    Field::text(
                        "assignment.team_ids",
                        l.t("f_team_ids").into(),
                        &self.team_ids,
                    ),
                    Field::text("assignment.rep_ids", l.t("f_rep_ids").into(), &self.rep_ids),
                ],
            },
            Group {
                legend: l.t("f_commission").into(),
                hint: String::new(),
                grid: false,
                fields: vec![
                    Field::select(
                        "commission.basis",
                        l.t("f_basis").into(),
                        if self.cumulative {
                            "cumulative"
                        } else {
                            "attainment"
                        },
                        vec![
                            ("attainment", l.t("basis_attainment")),
                            ("cumulative", l.t("basis_cumulative")),
                        ],
                    ),
                    Field::select(
                        "commission.mode",
                        l.t("f_mode").into(),
                        if self.retroactive {
                            "retroactive"
                        } else {
                            "marginal"
                        },
                        vec![
                            ("marginal", l.t("mode_marginal")),
                            ("retroactive", l.t("mode_retroactive")),
                        ],
                    ),
                    Field::text("commission.quota", l.t("f_quota").into(), &self.quota),
                    Field::text(
                        "commission.threshold",
                        l.t("f_threshold").into(),
                        &self.threshold,
                    ),
                    Field::text(
                        "commission.per_deal_cap",
                        l.t("f_per_deal_cap").into(),
                        &self.per_deal_cap,
                    ),
                    Field::text(
                        "commission.period_cap",
                        l.t("f_period_cap").into(),
                        &self.period_cap,
                    ),
                ],
            },
            Group {
                legend: l.t("f_tiers").into(),
                hint: l.t("f_tiers_hint").into(),
                grid: true,
                fields: tiers,
            },
            Group {
                legend: l.t("f_payout").into(),
                hint: String::new(),
                grid: false,
                fields: vec![
                    Field::text(
                        "payout.at_close_percent",
                        l.t("f_at_close").into(),
                        &self.at_close,
                    )
                    .hint(l.t("eg_50")),
                    Field::text(
                        "payout.on_collection_percent",
                        l.t("f_on_collection").into(),
                        &self.on_collection,
                    )
                    .hint(l.t("eg_50")),
                ],
            },
        ]
    }
}

/// The form input a violation's field belongs to: the input of the same name, else the
/// nearest one that stands for it; None for parts of the plan the form does not show.
fn input_of(field: &str, inputs: &[&str]) -> Option<String> {
    let f = field
        .strip_prefix("plan.")
        .or_else(|| field.strip_prefix("draft."))
        .unwrap_or(field);
    if inputs.contains(&f) {
        return Some(f.to_owned());
    }
    // "assignment.team_ids[2]" → the team ids input.
    if let Some((list, _)) = f.split_once('[')
        && inputs.contains(&list)
    {
        return Some(list.to_owned());
    }
    let stand_in = match f {
        "assignment" => "assignment.tenant_default",
        "commission.tiers" => "commission.tiers[0].from",
        "payout" => "payout.at_close_percent",
        _ => return None,
    };
    inputs.contains(&stand_in).then(|| stand_in.to_owned())
}

#[derive(Template)]
#[template(path = "plan.html")]
struct PlanPage {
    c: Chrome,
    heading: String,
    intro: String,
    groups: Vec<Group>,
    base_version: u32,
    /// (input id, label, error) for the summary at the top.
    summary: Vec<(String, String, String)>,
    /// Errors on parts of the plan the form does not show.
    other_errors: Vec<String>,
    sim: Option<Simulation>,
}

struct Simulation {
    title: String,
    summary: String,
    /// (rep, current, draft, difference, sign).
    rows: Vec<(String, String, String, String, i8)>,
}

impl PlanPage {
    fn new(
        l: Lang,
        s: &Session,
        form: &PlanForm,
        errors: &[(String, String)],
        sim: Option<Simulation>,
    ) -> Self {
        let mut groups = form.groups(l);
        let names: Vec<String> = groups
            .iter()
            .flat_map(|g| g.fields.iter().map(|f| f.name.clone()))
            .collect();
        let inputs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut summary = Vec::new();
        let mut other_errors = Vec::new();
        for (field, why) in errors {
            match input_of(field, &inputs) {
                Some(input) => {
                    for f in groups.iter_mut().flat_map(|g| g.fields.iter_mut()) {
                        if f.name == input {
                            if !f.error.is_empty() {
                                f.error.push_str("; ");
                            }
                            f.error.push_str(why);
                            summary.push((f.id(), f.label.clone(), why.clone()));
                        }
                    }
                }
                None if field.is_empty() => other_errors.push(why.clone()),
                None => other_errors.push(format!("{field}: {why}")),
            }
        }
        let heading = if form.plan_id.is_empty() || form.base_version == 0 {
            l.t("new_plan").to_owned()
        } else {
            l.t("plan_edit").replace("{plan}", &form.plan_id)
        };
        let intro = if form.base_version == 0 {
            String::new()
        } else {
            l.t("plan_based_on")
                .replace("{plan}", &form.plan_id)
                .replace("{version}", &form.base_version.to_string())
        };
        Self {
            heading,
            intro,
            groups,
            base_version: form.base_version,
            summary,
            other_errors,
            sim,
            c: Chrome::new(l, Some(s), &format!("/t/{}/plans", s.tenant)),
        }
    }
}

#[derive(serde::Deserialize, Default)]
pub struct EditQ {
    #[serde(default)]
    plan: String,
}

pub async fn edit_plan(
    State(p): State<Portal>,
    h: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<EditQ>,
) -> Response {
    let s = match session_of(&p, &h, &tenant) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let l = lang(&h);
    let path = format!("/t/{tenant}/plans");
    let form = if q.plan.is_empty() {
        PlanForm::new_plan()
    } else {
        let all = match all_plans(&p, &s).await {
            Ok(x) => x,
            Err(e) => return failed(&e, l, Some(&s), &path),
        };
        match all
            .iter()
            .filter(|x| x.plan_id == q.plan)
            .max_by_key(|x| x.version)
        {
            Some(x) => PlanForm::of(x),
            None => return failed(&tonic::Status::not_found(""), l, Some(&s), &path),
        }
    };
    html(StatusCode::OK, &PlanPage::new(l, &s, &form, &[], None))
}

/// The plan form posted: `action=simulate` runs the draft against the current plan (nothing
/// is saved), `action=save` puts it as the plan's next version.
pub async fn put_plan(
    State(p): State<Portal>,
    h: HeaderMap,
    Path(tenant): Path<String>,
    body: String,
) -> Response {
    let (s, l, f) = match posted(&p, &h, &tenant, &body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let path = format!("/t/{tenant}/plans");
    let pf = PlanForm::parse(&f);
    let base = if pf.base_version == 0 {
        None
    } else {
        match all_plans(&p, &s).await {
            Ok(all) => all
                .into_iter()
                .find(|x| x.plan_id == pf.plan_id && x.version == pf.base_version),
            Err(e) => return failed(&e, l, Some(&s), &path),
        }
    };
    let (plan, errors) = pf.to_plan(base.as_ref(), l);
    if !errors.is_empty() {
        return html(
            StatusCode::UNPROCESSABLE_ENTITY,
            &PlanPage::new(l, &s, &pf, &errors, None),
        );
    }
    let mut adm = IncentiveAdminServiceClient::new(p.incentive.clone());
    let action = f.get("action").map(String::as_str);
    if matches!(action, Some("save" | "draft")) {
        return match adm
            .put_plan(bearer(
                ipb::PutPlanRequest {
                    plan: Some(plan),
                    draft: action == Some("draft"),
                },
                &s.token,
            ))
            .await
        {
            Ok(r) => {
                let saved = r.into_inner().plan.unwrap_or_default();
                let q = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("saved", &saved.plan_id)
                    .append_pair("version", &saved.version.to_string())
                    .finish();
                Redirect::to(&format!("/t/{tenant}/plans?{q}")).into_response()
            }
            Err(e) if e.code() == Code::InvalidArgument => html(
                StatusCode::UNPROCESSABLE_ENTITY,
                &PlanPage::new(l, &s, &pf, &violations(&e), None),
            ),
            Err(e) => failed(&e, l, Some(&s), &path),
        };
    }
    let r = match IncentiveServiceClient::new(p.incentive.clone())
        .simulate_plan(bearer(
            ipb::SimulatePlanRequest {
                draft: Some(plan),
                period: None,
            },
            &s.token,
        ))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) if e.code() == Code::InvalidArgument => {
            return html(
                StatusCode::UNPROCESSABLE_ENTITY,
                &PlanPage::new(l, &s, &pf, &violations(&e), None),
            );
        }
        Err(e) => return failed(&e, l, Some(&s), &path),
    };
    let m = |x: &str| l.money(x, "").trim_end().to_owned();
    let sign = |x: &str| match x.parse::<rust_decimal::Decimal>() {
        Ok(d) if d.is_sign_positive() && !d.is_zero() => 1,
        Ok(d) if d.is_sign_negative() && !d.is_zero() => -1,
        _ => 0,
    };
    let sim = Simulation {
        title: l.t("sim_title").replace(
            "{period}",
            &r.period.as_ref().map(|p| p.key.clone()).unwrap_or_default(),
        ),
        summary: l
            .t("sim_summary")
            .replace("{reps}", &r.reps.to_string())
            .replace("{deals}", &r.deals.to_string())
            .replace("{current}", &m(&r.current_total))
            .replace("{draft}", &m(&r.draft_total))
            .replace("{difference}", &m(&r.difference)),
        rows: r
            .payouts
            .iter()
            .map(|x| {
                (
                    x.rep_id.clone(),
                    m(&x.current),
                    m(&x.draft),
                    m(&x.difference),
                    sign(&x.difference),
                )
            })
            .collect(),
    };
    html(StatusCode::OK, &PlanPage::new(l, &s, &pf, &[], Some(sim)))
}

// ---------------------------------------------------------------------------------------
// Periods

#[derive(Template)]
#[template(path = "periods.html")]
struct PeriodsPage {
    c: Chrome,
    quarter: bool,
    key: String,
    notice: String,
    error: String,
}

/// The month before now ("2026-11" in December): the period most often closed next.
fn last_month() -> String {
    use chrono::Datelike as _;
    let now = chrono::Utc::now().date_naive();
    let first = now.with_day(1).unwrap_or(now);
    let prev = first.pred_opt().unwrap_or(first);
    format!("{}-{:02}", prev.year(), prev.month())
}

pub async fn periods(
    State(p): State<Portal>,
    h: HeaderMap,
    Path(tenant): Path<String>,
) -> Response {
    let s = match session_of(&p, &h, &tenant) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let l = lang(&h);
    html(
        StatusCode::OK,
        &PeriodsPage {
            quarter: false,
            key: last_month(),
            notice: String::new(),
            error: String::new(),
            c: Chrome::new(l, Some(&s), &format!("/t/{tenant}/periods")),
        },
    )
}

pub async fn period_action(
    State(p): State<Portal>,
    h: HeaderMap,
    Path(tenant): Path<String>,
    body: String,
) -> Response {
    let (s, l, f) = match posted(&p, &h, &tenant, &body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let path = format!("/t/{tenant}/periods");
    let key = f
        .get("key")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    let quarter = f.get("kind").map(String::as_str) == Some("quarter");
    let period = Some(cpb::Period {
        kind: if quarter {
            cpb::PeriodKind::Quarter as i32
        } else {
            cpb::PeriodKind::Month as i32
        },
        key: key.clone(),
    });
    let mut page = PeriodsPage {
        quarter,
        key: key.clone(),
        notice: String::new(),
        error: String::new(),
        c: Chrome::new(l, Some(&s), &path),
    };
    let mut adm = IncentiveAdminServiceClient::new(p.incentive.clone());
    let paying = f.get("action").map(String::as_str) == Some("paid");
    let done = if paying {
        adm.mark_period_paid(bearer(ipb::MarkPeriodPaidRequest { period }, &s.token))
            .await
            .map(|r| {
                let r = r.into_inner();
                l.t("paid_msg")
                    .replace("{key}", &key)
                    .replace("{reps}", &r.reps.to_string())
                    .replace("{paid}", l.money(&r.paid, "").trim_end())
            })
    } else {
        adm.close_period(bearer(ipb::ClosePeriodRequest { period }, &s.token))
            .await
            .map(|r| {
                let r = r.into_inner();
                l.t("closed_msg")
                    .replace("{key}", &key)
                    .replace("{reps}", &r.reps.to_string())
                    .replace("{postings}", &r.postings.to_string())
                    .replace("{awards}", &r.awards.to_string())
            })
    };
    match done {
        Ok(notice) => {
            page.notice = notice;
            html(StatusCode::OK, &page)
        }
        Err(e) if e.code() == Code::InvalidArgument => {
            page.error = violations(&e)
                .into_iter()
                .map(|(_, d)| d)
                .collect::<Vec<_>>()
                .join("; ");
            html(StatusCode::UNPROCESSABLE_ENTITY, &page)
        }
        Err(e) if e.code() == Code::FailedPrecondition => {
            page.error = l
                .t(if paying {
                    "paid_refused"
                } else {
                    "close_refused"
                })
                .replace("{key}", &key);
            html(StatusCode::CONFLICT, &page)
        }
        Err(e) => failed(&e, l, Some(&s), &path),
    }
}

// ---------------------------------------------------------------------------------------
// Disputes

struct DisputeItem {
    id: String,
    line_id: String,
    rep_id: String,
    reason: String,
    opened: String,
    status: String,
    open: bool,
    note: String,
    adjustment: String,
    resolved_by: String,
    /// The answer being written again after an error.
    error: String,
    form_note: String,
    form_adjustment: String,
    accept: bool,
}

#[derive(Template)]
#[template(path = "disputes.html")]
struct DisputesPage {
    c: Chrome,
    items: Vec<DisputeItem>,
    notice: String,
    /// Whether this person may answer (comp admins and managers).
    may_resolve: bool,
}

#[derive(serde::Deserialize, Default)]
pub struct DisputesQ {
    #[serde(default)]
    resolved: String,
}

async fn disputes_view(
    p: &Portal,
    s: &Session,
    l: Lang,
    notice: String,
    retry: Option<(&str, &HashMap<String, String>, String)>,
) -> Response {
    let path = format!("/t/{}/disputes", s.tenant);
    let all = match IncentiveServiceClient::new(p.incentive.clone())
        .list_disputes(bearer(
            ipb::ListDisputesRequest {
                rep_id: String::new(),
                open_only: false,
            },
            &s.token,
        ))
        .await
    {
        Ok(r) => r.into_inner().disputes,
        Err(e) => return failed(&e, l, Some(s), &path),
    };
    let mut items: Vec<DisputeItem> = all
        .into_iter()
        .map(|d| {
            let open = d.status == ipb::DisputeStatus::Open as i32;
            let mut it = DisputeItem {
                id: d.dispute_id.clone(),
                line_id: d.line_id.clone(),
                rep_id: d.rep_id.clone(),
                reason: d.reason.clone(),
                opened: d
                    .opened_at
                    .as_ref()
                    .and_then(spm_proto::ext::datetime)
                    .map(|t| l.date(t))
                    .unwrap_or_default(),
                status: l.dispute_status(d.status),
                open,
                note: d.note.clone(),
                adjustment: if d.adjustment.is_empty() {
                    String::new()
                } else {
                    l.money(&d.adjustment, "").trim_end().to_owned()
                },
                resolved_by: d.resolved_by.clone(),
                error: String::new(),
                form_note: String::new(),
                form_adjustment: String::new(),
                accept: true,
            };
            if let Some((id, f, why)) = &retry
                && *id == d.dispute_id
            {
                it.error.clone_from(why);
                it.form_note = f.get("note").cloned().unwrap_or_default();
                it.form_adjustment = f.get("adjustment").cloned().unwrap_or_default();
                it.accept = f.get("outcome").map(String::as_str) != Some("reject");
            }
            it
        })
        .collect();
    // Open questions first, newest first within each.
    items.reverse();
    items.sort_by_key(|d| !d.open);
    let status = if retry.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    html(
        status,
        &DisputesPage {
            items,
            notice,
            may_resolve: matches!(s.role.as_str(), "manager" | "comp_admin" | "admin"),
            c: Chrome::new(l, Some(s), &path),
        },
    )
}

pub async fn disputes(
    State(p): State<Portal>,
    h: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<DisputesQ>,
) -> Response {
    let s = match session_of(&p, &h, &tenant) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let l = lang(&h);
    let notice = if q.resolved.is_empty() {
        String::new()
    } else {
        l.t("resolved_msg").to_owned()
    };
    disputes_view(&p, &s, l, notice, None).await
}

pub async fn resolve(
    State(p): State<Portal>,
    h: HeaderMap,
    Path((tenant, id)): Path<(String, String)>,
    body: String,
) -> Response {
    let (s, l, f) = match posted(&p, &h, &tenant, &body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let accept = f.get("outcome").map(String::as_str) != Some("reject");
    let req = ipb::ResolveDisputeRequest {
        dispute_id: id.clone(),
        outcome: if accept {
            spm_proto::events::v1::DisputeOutcome::Accepted as i32
        } else {
            spm_proto::events::v1::DisputeOutcome::Rejected as i32
        },
        adjustment: if accept {
            f.get("adjustment")
                .map(|a| a.trim().replace([',', ' '], ""))
                .unwrap_or_default()
        } else {
            String::new()
        },
        note: f
            .get("note")
            .map(|n| n.trim().to_owned())
            .unwrap_or_default(),
        resolved_by: String::new(),
    };
    match IncentiveAdminServiceClient::new(p.incentive.clone())
        .resolve_dispute(bearer(req, &s.token))
        .await
    {
        Ok(_) => Redirect::to(&format!("/t/{tenant}/disputes?resolved=1")).into_response(),
        Err(e) if matches!(e.code(), Code::InvalidArgument | Code::FailedPrecondition) => {
            let why = violations(&e)
                .into_iter()
                .map(|(_, d)| d)
                .collect::<Vec<_>>()
                .join("; ");
            disputes_view(&p, &s, l, String::new(), Some((&id, &f, why))).await
        }
        Err(e) => failed(&e, l, Some(&s), &format!("/t/{tenant}/disputes")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_violation_lands_beside_its_input() {
        let inputs = [
            "plan_id",
            "assignment.tenant_default",
            "assignment.team_ids",
            "commission.quota",
            "commission.tiers[0].from",
            "commission.tiers[1].rate",
            "payout.at_close_percent",
        ];
        let at = |f: &str| input_of(f, &inputs);
        assert_eq!(
            at("plan.commission.quota").as_deref(),
            Some("commission.quota")
        );
        assert_eq!(
            at("draft.commission.tiers[1].rate").as_deref(),
            Some("commission.tiers[1].rate")
        );
        assert_eq!(
            at("plan.assignment.team_ids[3]").as_deref(),
            Some("assignment.team_ids")
        );
        assert_eq!(
            at("plan.assignment").as_deref(),
            Some("assignment.tenant_default")
        );
        assert_eq!(
            at("plan.commission.tiers").as_deref(),
            Some("commission.tiers[0].from")
        );
        assert_eq!(
            at("plan.payout").as_deref(),
            Some("payout.at_close_percent")
        );
        // Parts the form does not show go to the summary.
        assert_eq!(at("plan.gates[0].value"), None);
    }

    #[test]
    fn the_form_round_trips_a_plan_and_keeps_what_it_does_not_show() {
        let base = ipb::Plan {
            plan_id: "ae".into(),
            name: "AE".into(),
            version: 3,
            effective_from: "2026-01-01".into(),
            period_kind: cpb::PeriodKind::Quarter as i32,
            assignment: Some(ipb::PlanAssignment {
                team_ids: vec!["east".into(), "west".into()],
                ..Default::default()
            }),
            commission: Some(ipb::Commission {
                quota: "1000".into(),
                tiers: vec![ipb::Tier {
                    from: "0".into(),
                    rate: "0.05".into(),
                }],
                rep_quotas: [("r1".to_owned(), "500".to_owned())].into(),
                ..Default::default()
            }),
            gates: vec![ipb::Gate {
                metric: "collection_rate".into(),
                ..Default::default()
            }],
            clawback_window_days: 90,
            ..Default::default()
        };
        let pf = PlanForm::of(&base);
        // As the browser would post it, with an empty spare tier row and a new tier.
        let mut posted: HashMap<String, String> = HashMap::new();
        for g in pf.groups(Lang::En) {
            for f in g.fields {
                if f.kind != "check" || !f.value.is_empty() {
                    posted.insert(f.name.clone(), f.value.clone());
                }
            }
        }
        posted.insert("commission.tiers[2].from".into(), "1".into());
        posted.insert("commission.tiers[2].rate".into(), "0.08".into());
        posted.insert("base_version".into(), "3".into());
        let back = PlanForm::parse(&posted);
        let (plan, errors) = back.to_plan(Some(&base), Lang::En);
        assert!(errors.is_empty());
        assert_eq!(plan.version, 0);
        assert_eq!(
            plan.gates, base.gates,
            "gates are kept from the base version"
        );
        let c = plan.commission.unwrap();
        assert_eq!(c.rep_quotas, base.commission.clone().unwrap().rep_quotas);
        assert_eq!(
            c.tiers
                .iter()
                .map(|t| (t.from.as_str(), t.rate.as_str()))
                .collect::<Vec<_>>(),
            [("0", "0.05"), ("1", "0.08")],
            "the empty row is dropped"
        );
        assert_eq!(plan.assignment.unwrap().team_ids, ["east", "west"]);
        assert_eq!(plan.period_kind, cpb::PeriodKind::Quarter as i32);
        assert_eq!(plan.clawback_window_days, 90);
        assert_eq!(plan.payout, None);

        posted.insert("clawback_window_days".into(), "ninety".into());
        let (_, errors) = PlanForm::parse(&posted).to_plan(Some(&base), Lang::En);
        assert_eq!(errors[0].0, "clawback_window_days");
    }
}

// ---------------------------------------------------------------------------------------
// A shadow version against the live plans

/// A line: (line key, summary, live, shadow, difference).
type CompareLine = (String, String, String, String, String);
/// A rep: (rep, live, shadow, difference, lines).
type CompareRep = (String, String, String, String, Vec<CompareLine>);

#[derive(Template)]
#[template(path = "compare.html")]
struct ComparePage {
    c: Chrome,
    title: String,
    plan_id: String,
    version: u32,
    state: String,
    period: String,
    currency: String,
    totals: (String, String, String),
    reps: Vec<CompareRep>,
    since: String,
}

#[derive(serde::Deserialize, Default)]
pub struct CompareQ {
    #[serde(default)]
    period: String,
}

/// What a version in shadow would pay against the live plans, for a period (default the
/// current month), per rep and line. Comp admins and the other tenant readers.
pub async fn compare_plan(
    State(p): State<Portal>,
    h: HeaderMap,
    Path((tenant, plan_id, version)): Path<(String, String, u32)>,
    Query(q): Query<CompareQ>,
) -> Response {
    let s = match session_of(&p, &h, &tenant) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let l = lang(&h);
    let path = format!("/t/{tenant}/plans/{plan_id}/{version}/compare");
    let period = if q.period.is_empty() {
        chrono::Utc::now().format("%Y-%m").to_string()
    } else {
        q.period.clone()
    };
    let r = match IncentiveAdminServiceClient::new(p.incentive.clone())
        .compare_plan(bearer(
            ipb::ComparePlanRequest {
                plan_id: plan_id.clone(),
                version,
                period: Some(cpb::Period {
                    kind: cpb::PeriodKind::Unspecified as i32,
                    key: period,
                }),
                rep_id: String::new(),
            },
            &s.token,
        ))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => return failed(&e, l, Some(&s), &path),
    };
    html(
        StatusCode::OK,
        &ComparePage {
            title: l
                .t("compare_title")
                .replace("{plan}", &plan_id)
                .replace("{version}", &r.version.to_string()),
            plan_id,
            version: r.version,
            state: state_name(l, r.state),
            period: r.period.map(|p| p.key).unwrap_or_default(),
            currency: r.currency,
            totals: (r.live_total, r.shadow_total, r.difference),
            reps: r
                .reps
                .into_iter()
                .map(|x| {
                    (
                        x.rep_id,
                        x.live_total,
                        x.shadow_total,
                        x.difference,
                        x.lines
                            .into_iter()
                            .map(|y| (y.line_key, y.summary, y.live, y.shadow, y.difference))
                            .collect(),
                    )
                })
                .collect(),
            since: r
                .shadow_since
                .as_ref()
                .and_then(spm_proto::ext::datetime)
                .map(|t| l.t("in_shadow_since").replace("{since}", &l.date(t)))
                .unwrap_or_default(),
            c: Chrome::new(l, Some(&s), &path),
        },
    )
}
