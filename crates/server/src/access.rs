//! What a caller may see and change, decided here for every service.
//!
//! | role | reads | changes |
//! |---|---|---|
//! | `integration` key | the whole tenant | sends events; opens disputes on behalf of reps |
//! | `admin` key | the whole tenant | everything |
//! | `rep` | own data | own disputes, own notifications and preferences |
//! | `manager` | own data and the reporting subtree ([`crate::org::subtree`]) | resolves disputes of the subtree (never their own) |
//! | `comp_admin` | the whole tenant | plans, goals, scorecards, periods, disputes (never their own) |
//! | `finance`, `auditor` | the whole tenant | nothing |
//!
//! Out of scope is `PERMISSION_DENIED` with the same answer whether or not the rep exists,
//! so nothing leaks; a list or a stream is cut to the scope, never partially answered.
//! Leaderboards show peers outside the scope by the tenant's [`PeerView`]
//! (`crate::auth::peer_view`): ranks and names by default, never values.
//!
//! The gRPC edge ([`crate::grpc::GrpcServer::people_may_call`]) refuses people on every method
//! a service has not opened to them, so a new method is for keys until someone decides.

use std::collections::BTreeSet;

use sqlx::PgPool;

use crate::auth::{Caller, Role};
use crate::error::ApiError;
pub use spm_proto::events::v1::PeerView;

/// The reps a caller may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every rep of the tenant.
    Tenant,
    /// These reps only (a rep: themself; a manager: themself and the subtree).
    Reps(BTreeSet<String>),
}

impl Scope {
    pub fn allows(&self, rep: &str) -> bool {
        match self {
            Self::Tenant => true,
            Self::Reps(r) => r.contains(rep),
        }
    }

    /// Whether this is the whole tenant.
    pub fn is_tenant(&self) -> bool {
        matches!(self, Self::Tenant)
    }

    /// The reps of a limited scope, as a list for `= ANY($n)` (None for the whole tenant).
    pub fn rep_list(&self) -> Option<Vec<String>> {
        match self {
            Self::Tenant => None,
            Self::Reps(r) => Some(r.iter().cloned().collect()),
        }
    }
}

fn denied(m: impl Into<String>) -> ApiError {
    ApiError::PermissionDenied(m.into())
}

impl Caller {
    fn who(&self) -> String {
        match &self.person {
            Some(p) => format!("{} ({})", p.login, self.role.as_str()),
            None => format!("this {} key", self.role.as_str()),
        }
    }

    /// `PERMISSION_DENIED` unless the caller holds an ADMIN key.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            _ => Err(denied(format!(
                "this call needs an ADMIN key of the tenant; {} may not make it",
                self.who()
            ))),
        }
    }

    /// Plans, goals, scorecards, periods: an ADMIN key or a compensation admin.
    pub fn require_configure(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin | Role::CompAdmin => Ok(()),
            _ => Err(denied(format!(
                "this call needs an ADMIN key or a comp_admin; {} may not make it",
                self.who()
            ))),
        }
    }

    /// Tenant-wide reads (plans, calibration, delivery logs): anyone but reps and managers.
    pub fn require_tenant_reader(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Rep | Role::Manager => Err(denied(format!(
                "this call reads the whole tenant; {} may not make it",
                self.who()
            ))),
            _ => Ok(()),
        }
    }

    /// Sending CRM events: API keys only.
    pub fn require_key(&self) -> Result<(), ApiError> {
        if self.role.is_key() {
            Ok(())
        } else {
            Err(denied(format!(
                "this call is for API keys of integrations; {} may not make it",
                self.who()
            )))
        }
    }

    /// Any change: finance and auditors change nothing.
    pub fn require_writer(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Finance | Role::Auditor => {
                Err(denied(format!("{} reads and changes nothing", self.who())))
            }
            _ => Ok(()),
        }
    }

    /// The reps this caller may read. A manager's scope is read from the org projection in
    /// effect now.
    pub async fn scope(&self, pool: &PgPool) -> Result<Scope, ApiError> {
        match self.role {
            Role::Rep => Ok(Scope::Reps(
                self.own_rep().into_iter().map(str::to_owned).collect(),
            )),
            Role::Manager => {
                let Some(me) = self.own_rep() else {
                    return Ok(Scope::Reps(BTreeSet::new()));
                };
                let mut conn = pool.acquire().await?;
                let mut reps: BTreeSet<String> =
                    crate::org::subtree(&mut conn, &self.tenant_id, me)
                        .await?
                        .into_iter()
                        .collect();
                reps.insert(me.to_owned());
                Ok(Scope::Reps(reps))
            }
            _ => Ok(Scope::Tenant),
        }
    }

    /// `PERMISSION_DENIED` unless the caller may read `rep`.
    pub async fn require_rep(&self, pool: &PgPool, rep: &str) -> Result<(), ApiError> {
        match self.role {
            Role::Rep if self.own_rep() == Some(rep) => Ok(()),
            Role::Rep => Err(denied(format!(
                "{} may read only their own data (rep {})",
                self.who(),
                self.own_rep().unwrap_or("-")
            ))),
            Role::Manager if self.own_rep() == Some(rep) => Ok(()),
            Role::Manager => {
                if self.scope(pool).await?.allows(rep) {
                    Ok(())
                } else {
                    Err(denied(format!(
                        "rep {rep:?} is not in the reporting subtree of {}",
                        self.who()
                    )))
                }
            }
            _ => Ok(()),
        }
    }

    /// `PERMISSION_DENIED` unless the caller may read the figures of `team` (a roll-up of all
    /// its members): managers the teams they manage and their sub-teams, reps none.
    pub async fn require_team(&self, pool: &PgPool, team: &str) -> Result<(), ApiError> {
        match self.role {
            Role::Rep => Err(denied(format!("{} may not read team figures", self.who()))),
            Role::Manager => {
                let me = self.own_rep().unwrap_or_default();
                let mut conn = pool.acquire().await?;
                let teams = crate::org::managed_teams(&mut conn, &self.tenant_id, me).await?;
                if teams.iter().any(|t| t == team) {
                    Ok(())
                } else {
                    Err(denied(format!(
                        "team {team:?} is not managed by {}",
                        self.who()
                    )))
                }
            }
            _ => Ok(()),
        }
    }

    /// A person's own inbox, stream and preferences: `recipient` must be their rep id (an
    /// empty one means theirs). Keys may name anyone. Returns the recipient to use.
    pub fn own_recipient(&self, recipient: &str) -> Result<String, ApiError> {
        match (&self.person, self.own_rep()) {
            (None, _) => Ok(recipient.to_owned()),
            (Some(_), Some(me)) if recipient.is_empty() || recipient == me => Ok(me.to_owned()),
            (Some(_), _) => Err(denied(format!(
                "{} may read and change only their own notifications and preferences",
                self.who()
            ))),
        }
    }

    /// Opening a dispute on a line of `line_rep`: keys on anyone's behalf, a person only on
    /// their own lines (finance and auditors never).
    pub fn require_dispute_opener(&self, line_rep: &str) -> Result<(), ApiError> {
        self.require_writer()?;
        match &self.person {
            None => Ok(()),
            Some(_) if self.own_rep() == Some(line_rep) => Ok(()),
            Some(_) => Err(denied(format!(
                "{} may dispute only their own statement lines",
                self.who()
            ))),
        }
    }

    /// Resolving a dispute on a line of `line_rep`: an ADMIN key; a comp admin; a manager
    /// whose subtree holds the rep. Never a person on their own line.
    pub async fn require_dispute_resolver(
        &self,
        pool: &PgPool,
        line_rep: &str,
    ) -> Result<(), ApiError> {
        if self.person.is_some() && self.own_rep() == Some(line_rep) {
            return Err(denied(format!(
                "{} may not resolve a dispute on their own line",
                self.who()
            )));
        }
        match self.role {
            Role::Admin | Role::CompAdmin => Ok(()),
            Role::Manager => {
                if self.scope(pool).await?.allows(line_rep) {
                    Ok(())
                } else {
                    Err(denied(format!(
                        "rep {line_rep:?} is not in the reporting subtree of {}",
                        self.who()
                    )))
                }
            }
            _ => Err(denied(format!(
                "disputes are resolved by an ADMIN key, a comp_admin or the rep's manager; not by {}",
                self.who()
            ))),
        }
    }
}

/// One leaderboard row as a viewer sees it: rows in scope in full; others by `view`.
/// Returns `(rep_id, display_name, team_id, value)`, emptied where hidden.
pub fn leaderboard_row(
    in_scope: bool,
    view: PeerView,
    row: (String, String, String, String),
) -> (String, String, String, String) {
    if in_scope {
        return row;
    }
    let (rep, name, team, value) = row;
    match view {
        PeerView::Full => (rep, name, team, value),
        PeerView::RanksOnly => (String::new(), String::new(), String::new(), String::new()),
        PeerView::Unspecified | PeerView::Names => (rep, name, team, String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Person;

    fn person(role: Role, rep: Option<&str>) -> Caller {
        Caller {
            tenant_id: "t".into(),
            key_id: "person:x".into(),
            role,
            person: Some(Person {
                login: "x@t.com".into(),
                rep_id: rep.map(str::to_owned),
                display_name: String::new(),
            }),
        }
    }

    #[test]
    fn role_gates() {
        let key = Caller::key("t", "k", Role::Integration);
        let admin = Caller::key("t", "k", Role::Admin);
        assert!(key.require_admin().is_err() && admin.require_admin().is_ok());
        assert!(person(Role::CompAdmin, None).require_configure().is_ok());
        assert!(
            person(Role::Manager, Some("m"))
                .require_configure()
                .is_err()
        );
        assert!(person(Role::Auditor, None).require_tenant_reader().is_ok());
        assert!(
            person(Role::Rep, Some("r"))
                .require_tenant_reader()
                .is_err()
        );
        assert!(person(Role::Finance, None).require_writer().is_err());
        assert!(person(Role::CompAdmin, None).require_key().is_err());
        assert!(key.require_key().is_ok());
    }

    #[test]
    fn people_dispute_and_read_only_their_own() {
        let rep = person(Role::Rep, Some("r1"));
        assert!(rep.require_dispute_opener("r1").is_ok());
        assert!(rep.require_dispute_opener("r2").is_err());
        assert!(
            person(Role::Auditor, Some("r1"))
                .require_dispute_opener("r1")
                .is_err()
        );
        assert!(
            Caller::key("t", "k", Role::Integration)
                .require_dispute_opener("r2")
                .is_ok()
        );
        assert_eq!(rep.own_recipient("").unwrap(), "r1");
        assert!(rep.own_recipient("r2").is_err());
        assert!(person(Role::CompAdmin, None).own_recipient("r2").is_err());
        assert_eq!(
            Caller::key("t", "k", Role::Admin)
                .own_recipient("r2")
                .unwrap(),
            "r2"
        );
    }

    #[test]
    fn leaderboard_rows_outside_scope_hide_values_by_default() {
        let row = || ("r2".into(), "Bo".into(), "t1".into(), "97.5".into());
        assert_eq!(leaderboard_row(true, PeerView::RanksOnly, row()), row());
        assert_eq!(
            leaderboard_row(false, PeerView::Unspecified, row()),
            ("r2".into(), "Bo".into(), "t1".into(), String::new())
        );
        assert_eq!(
            leaderboard_row(false, PeerView::RanksOnly, row()),
            Default::default()
        );
        assert_eq!(leaderboard_row(false, PeerView::Full, row()), row());
    }
}
