//! Sessions and sign-ins in progress, in memory: a session id (256 random bits, in an
//! HttpOnly cookie) names the person's token, who they are and the CSRF token of their forms.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

/// A signed-in person.
#[derive(Debug, Clone)]
pub struct Session {
    pub tenant: String,
    pub token: String,
    pub login: String,
    pub role: String,
    pub rep_id: String,
    pub name: String,
    pub managed_teams: Vec<String>,
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
}

/// A sign-in sent to the provider, waiting for its redirect back.
#[derive(Debug, Clone)]
pub struct Pending {
    pub tenant: String,
    pub audience: String,
    pub verifier: String,
    pub challenge: String,
    pub token_endpoint: String,
    pub authorization_endpoint: String,
    pub started: DateTime<Utc>,
}

#[derive(Clone, Default)]
pub struct Sessions {
    live: Arc<Mutex<HashMap<String, Session>>>,
    pending: Arc<Mutex<HashMap<String, Pending>>>,
}

pub fn random_id() -> String {
    let b: [u8; 32] = rand::random();
    hex::encode(b)
}

/// A sign-in must come back within this many seconds.
const PENDING_SECS: i64 = 600;

impl Sessions {
    pub fn start(&self, s: Session) -> String {
        let id = random_id();
        let mut live = self.live.lock().expect("sessions");
        let now = Utc::now();
        live.retain(|_, s| s.expires_at > now);
        live.insert(id.clone(), s);
        id
    }

    /// The live session of `id` (an expired one is forgotten and not returned).
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut live = self.live.lock().expect("sessions");
        match live.get(id) {
            Some(s) if s.expires_at > Utc::now() => Some(s.clone()),
            Some(_) => {
                live.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn end(&self, id: &str) {
        self.live.lock().expect("sessions").remove(id);
    }

    pub fn begin_sign_in(&self, state: String, p: Pending) {
        let mut pending = self.pending.lock().expect("pending");
        let now = Utc::now();
        pending.retain(|_, p| (now - p.started).num_seconds() < PENDING_SECS);
        pending.insert(state, p);
    }

    /// The sign-in of `state`, once.
    pub fn finish_sign_in(&self, state: &str) -> Option<Pending> {
        let p = self.pending.lock().expect("pending").remove(state)?;
        ((Utc::now() - p.started).num_seconds() < PENDING_SECS).then_some(p)
    }
}

/// Compares two strings in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    spm_server::auth::constant_time_eq(a.as_bytes(), b.as_bytes())
}
