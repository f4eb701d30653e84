//! A plan version's lifecycle: its states, the transitions allowed between them, and the
//! maker-checker rule for going live. Pure rules; the API applies them under the tenant's
//! plans lock.
//!
//! ```text
//!  DRAFT ──shadow──▶ SHADOW ──propose──▶ PENDING_APPROVAL ──approvals──▶ LIVE ──retire──▶ RETIRED
//!    │  ◀──stop────    │                  │    │                            ▲
//!    │                 └──────retire──────┼────┼──▶ RETIRED                 │
//!    ├──propose──────────────────────────▶┘    └──reject/withdraw──▶ DRAFT  │
//!    └──(no approvals required) go live ────────────────────────────────────┘
//! ```
//!
//! A version in SHADOW or PENDING_APPROVAL runs in shadow: computed on the live stream
//! into its own ledger, never paid.

use std::fmt;

/// The state of a plan version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Draft,
    Shadow,
    PendingApproval,
    Live,
    Retired,
}

impl State {
    pub const ALL: [Self; 5] = [
        Self::Draft,
        Self::Shadow,
        Self::PendingApproval,
        Self::Live,
        Self::Retired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "DRAFT",
            Self::Shadow => "SHADOW",
            Self::PendingApproval => "PENDING_APPROVAL",
            Self::Live => "LIVE",
            Self::Retired => "RETIRED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Whether a version in this state follows the stream into its shadow ledger.
    pub fn shadows(self) -> bool {
        matches!(self, Self::Shadow | Self::PendingApproval)
    }

    /// The states this one may move to by [`transition`] (approvals move PENDING_APPROVAL
    /// to LIVE; with no approvals required, DRAFT, SHADOW and PENDING_APPROVAL may go live
    /// directly).
    pub fn next(self, approvals_required: u32) -> Vec<Self> {
        let mut v = match self {
            Self::Draft => vec![Self::Shadow, Self::PendingApproval, Self::Retired],
            Self::Shadow => vec![Self::Draft, Self::PendingApproval, Self::Retired],
            Self::PendingApproval => vec![Self::Draft, Self::Retired],
            Self::Live => vec![Self::Retired],
            Self::Retired => vec![],
        };
        if approvals_required == 0
            && matches!(self, Self::Draft | Self::Shadow | Self::PendingApproval)
        {
            v.push(Self::Live);
        }
        v
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a change of state is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not allowed from the current state (`FAILED_PRECONDITION`, naming it).
    NotAllowed(String),
    /// Not by this person (`PERMISSION_DENIED`).
    NotYou(String),
}

fn list(states: &[State]) -> String {
    match states {
        [] => "nothing: it is final".into(),
        [one] => one.as_str().into(),
        _ => {
            let (last, rest) = states.split_last().expect("two or more");
            format!(
                "{} or {}",
                rest.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                last.as_str()
            )
        }
    }
}

/// Checks a requested transition of version `name` from `from` to `to`.
pub fn transition(
    name: &str,
    from: State,
    to: State,
    approvals_required: u32,
) -> Result<(), Refusal> {
    let next = from.next(approvals_required);
    if next.contains(&to) {
        return Ok(());
    }
    let hint = if to == State::Live {
        format!(
            "; going live needs {approvals_required} approval{} by someone other than its proposer: propose it (PENDING_APPROVAL) and have it approved",
            if approvals_required == 1 { "" } else { "s" }
        )
    } else {
        String::new()
    };
    Err(Refusal::NotAllowed(format!(
        "{name} is {from}: it may go to {}, not {to}{hint}",
        list(&next)
    )))
}

/// What an approval does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approved {
    /// Recorded; `have` of `need` so far.
    Recorded { have: u32, need: u32 },
    /// The last one needed: the version goes live.
    GoesLive,
}

/// Checks an approval of version `name` by `approver`, given its state, author, proposer,
/// the approvals of the current proposal so far and how many the tenant requires.
pub fn approve(
    name: &str,
    state: State,
    author: &str,
    proposer: &str,
    approver: &str,
    so_far: &[String],
    required: u32,
) -> Result<Approved, Refusal> {
    if state != State::PendingApproval {
        return Err(Refusal::NotAllowed(format!(
            "{name} is {state}: only a version PENDING_APPROVAL can be approved"
        )));
    }
    if approver == proposer {
        return Err(Refusal::NotYou(format!(
            "{approver} proposed {name}: someone else must approve it"
        )));
    }
    if approver == author {
        return Err(Refusal::NotYou(format!(
            "{approver} wrote {name}: someone else must approve it"
        )));
    }
    if so_far.iter().any(|a| a == approver) {
        return Err(Refusal::NotAllowed(format!(
            "{approver} has approved {name} already"
        )));
    }
    let have = u32::try_from(so_far.len()).unwrap_or(u32::MAX) + 1;
    let need = required.max(1);
    Ok(if have >= need {
        Approved::GoesLive
    } else {
        Approved::Recorded { have, need }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_and_only_shadow_states_shadow() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("live"), None);
        let shadowing: Vec<State> = State::ALL.into_iter().filter(|s| s.shadows()).collect();
        assert_eq!(shadowing, vec![State::Shadow, State::PendingApproval]);
    }

    #[test]
    fn allowed_transitions_follow_the_diagram() {
        use State::*;
        let allowed = |from, to, n| transition("p v2", from, to, n).is_ok();
        assert!(allowed(Draft, Shadow, 1));
        assert!(allowed(Shadow, Draft, 1));
        assert!(allowed(Shadow, PendingApproval, 1));
        assert!(allowed(Draft, PendingApproval, 1));
        assert!(allowed(PendingApproval, Draft, 1));
        assert!(allowed(Live, Retired, 1));
        assert!(allowed(Draft, Retired, 1));
        // Live only through approvals, unless none are required.
        assert!(!allowed(PendingApproval, Live, 1));
        assert!(!allowed(Shadow, Live, 2));
        assert!(allowed(Shadow, Live, 0));
        assert!(allowed(Draft, Live, 0));
        // Never back out of live or retired.
        for to in State::ALL {
            assert!(!allowed(Retired, to, 0), "RETIRED -> {to}");
            if to != Retired {
                assert!(!allowed(Live, to, 0), "LIVE -> {to}");
            }
        }
        assert!(!allowed(Draft, Draft, 1));
    }

    #[test]
    fn a_refused_transition_names_the_current_state_and_the_way_forward() {
        let Err(Refusal::NotAllowed(m)) = transition("ae v3", State::Shadow, State::Live, 2) else {
            panic!("refused")
        };
        assert!(
            m.starts_with(
                "ae v3 is SHADOW: it may go to DRAFT, PENDING_APPROVAL or RETIRED, not LIVE"
            ),
            "{m}"
        );
        assert!(m.contains("2 approvals"), "{m}");
        let Err(Refusal::NotAllowed(m)) = transition("ae v1", State::Retired, State::Draft, 1)
        else {
            panic!("refused")
        };
        assert_eq!(
            m,
            "ae v1 is RETIRED: it may go to nothing: it is final, not DRAFT"
        );
    }

    #[test]
    fn maker_checker() {
        use State::PendingApproval as P;
        let none: Vec<String> = vec![];
        assert_eq!(
            approve("v", P, "ann", "ann", "bob", &none, 1),
            Ok(Approved::GoesLive)
        );
        assert!(matches!(
            approve("v", P, "ann", "ann", "ann", &none, 1),
            Err(Refusal::NotYou(m)) if m.contains("ann proposed v")
        ));
        // The author is a maker too, when someone else proposed.
        assert!(matches!(
            approve("v", P, "ann", "cy", "ann", &none, 1),
            Err(Refusal::NotYou(m)) if m.contains("ann wrote v")
        ));
        assert_eq!(
            approve("v", P, "ann", "ann", "bob", &none, 2),
            Ok(Approved::Recorded { have: 1, need: 2 })
        );
        let bob = vec!["bob".to_owned()];
        assert!(matches!(
            approve("v", P, "ann", "ann", "bob", &bob, 2),
            Err(Refusal::NotAllowed(m)) if m.contains("already")
        ));
        assert_eq!(
            approve("v", P, "ann", "ann", "cy", &bob, 2),
            Ok(Approved::GoesLive)
        );
        assert!(matches!(
            approve("v", State::Live, "ann", "ann", "cy", &bob, 2),
            Err(Refusal::NotAllowed(m)) if m == "v is LIVE: only a version PENDING_APPROVAL can be approved"
        ));
    }
}
