//! Statements served from memory until the ledger behind them changes.
//!
//! Every transaction that writes the ledger, period results or period state also sends
//! `pg_notify(CHANNEL, {"tenant": .., "reps": [..]})` (no `reps`: the whole tenant), so
//! every instance forgets exactly what went stale, at commit. A reconnected listener may
//! have missed notifications and forgets everything. A read that overlaps a change is not
//! cached (generation check), and nothing is kept longer than [`TTL`] in any case.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use spm_proto::incentive::v1 as pb;
use sqlx::PgConnection;

/// The NOTIFY channel of ledger changes.
pub const CHANNEL: &str = "spm_incentive_changed";

/// The longest a statement is served from memory.
pub const TTL: Duration = Duration::from_secs(10);

/// Entries kept at most (all tenants); beyond it the cache starts over.
const MAX_ENTRIES: usize = 200_000;

/// What a statement request asked for: a rep and an explicit period, or its default.
pub type Key = (String, String, Option<(i32, String)>);

type Period = Option<(i32, String)>;

#[derive(Default)]
struct Inner {
    /// By (tenant, rep), then by the period asked for.
    entries: HashMap<(String, String), HashMap<Period, (Instant, pb::Statement)>>,
    len: usize,
    /// Bumped on every change of a tenant (any rep).
    tenant_gen: HashMap<String, u64>,
    /// Bumped when everything is forgotten.
    epoch: u64,
}

#[derive(Default)]
pub struct Statements {
    inner: Mutex<Inner>,
}

/// Taken before reading the database; an insert with a stale ticket is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64, u64);

impl Statements {
    pub fn get(&self, key: &Key) -> Option<pb::Statement> {
        let inner = self.inner.lock().expect("statement cache");
        inner
            .entries
            .get(&(key.0.clone(), key.1.clone()))
            .and_then(|m| m.get(&key.2))
            .filter(|(at, _)| at.elapsed() < TTL)
            .map(|(_, s)| s.clone())
    }

    pub fn ticket(&self, tenant: &str) -> Ticket {
        let inner = self.inner.lock().expect("statement cache");
        Ticket(
            inner.epoch,
            inner.tenant_gen.get(tenant).copied().unwrap_or(0),
        )
    }

    /// Keeps `s` unless the tenant changed since `ticket` was taken.
    pub fn put(&self, key: Key, ticket: Ticket, s: pb::Statement) {
        let mut inner = self.inner.lock().expect("statement cache");
        let now = Ticket(
            inner.epoch,
            inner.tenant_gen.get(&key.0).copied().unwrap_or(0),
        );
        if now != ticket {
            return;
        }
        if inner.len >= MAX_ENTRIES {
            inner.entries.clear();
            inner.len = 0;
        }
        let (tenant, rep, period) = key;
        if inner
            .entries
            .entry((tenant, rep))
            .or_default()
            .insert(period, (Instant::now(), s))
            .is_none()
        {
            inner.len += 1;
        }
    }

    /// Applies one NOTIFY payload ("" = forget everything).
    pub fn invalidate(&self, payload: &str) {
        let mut inner = self.inner.lock().expect("statement cache");
        let parsed: Option<serde_json::Value> = serde_json::from_str(payload).ok();
        let tenant = parsed
            .as_ref()
            .and_then(|v| v["tenant"].as_str())
            .map(str::to_owned);
        let Some(tenant) = tenant else {
            inner.epoch += 1;
            inner.entries.clear();
            inner.len = 0;
            return;
        };
        *inner.tenant_gen.entry(tenant.clone()).or_default() += 1;
        match parsed.as_ref().and_then(|v| v["reps"].as_array()) {
            Some(reps) => {
                for rep in reps.iter().filter_map(|r| r.as_str()) {
                    if let Some(m) = inner.entries.remove(&(tenant.clone(), rep.to_owned())) {
                        inner.len -= m.len();
                    }
                }
            }
            None => {
                let mut gone = 0;
                inner.entries.retain(|k, m| {
                    let keep = k.0 != tenant;
                    if !keep {
                        gone += m.len();
                    }
                    keep
                });
                inner.len -= gone;
            }
        }
    }
}

/// Announces, within the writing transaction, that `reps` of `tenant` changed (`None`:
/// the whole tenant). Delivered at commit, to every instance.
pub async fn changed(
    conn: &mut PgConnection,
    tenant: &str,
    reps: Option<&[&str]>,
) -> Result<(), sqlx::Error> {
    let payload = match reps {
        Some(reps) => {
            let mut reps = reps.to_vec();
            reps.sort_unstable();
            reps.dedup();
            serde_json::json!({"tenant": tenant, "reps": reps})
        }
        None => serde_json::json!({"tenant": tenant}),
    };
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str, r: &str) -> Key {
        (t.into(), r.into(), None)
    }

    fn st(total: &str) -> pb::Statement {
        pb::Statement {
            total: total.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_change_forgets_exactly_the_reps_named() {
        let c = Statements::default();
        for r in ["r1", "r2"] {
            let t = c.ticket("acme");
            c.put(key("acme", r), t, st("1"));
        }
        let t = c.ticket("other");
        c.put(key("other", "r1"), t, st("2"));
        c.invalidate(r#"{"tenant":"acme","reps":["r1"]}"#);
        assert!(c.get(&key("acme", "r1")).is_none());
        assert_eq!(c.get(&key("acme", "r2")).map(|s| s.total), Some("1".into()));
        assert_eq!(
            c.get(&key("other", "r1")).map(|s| s.total),
            Some("2".into())
        );
        c.invalidate(r#"{"tenant":"acme"}"#);
        assert!(c.get(&key("acme", "r2")).is_none());
        assert!(c.get(&key("other", "r1")).is_some());
        c.invalidate("");
        assert!(c.get(&key("other", "r1")).is_none());
    }

    #[test]
    fn a_read_overlapping_a_change_is_not_kept() {
        let c = Statements::default();
        let before = c.ticket("acme");
        c.invalidate(r#"{"tenant":"acme","reps":["r9"]}"#);
        c.put(key("acme", "r1"), before, st("stale"));
        assert!(c.get(&key("acme", "r1")).is_none());
        // Another tenant's change does not block it.
        let t = c.ticket("acme");
        c.invalidate(r#"{"tenant":"other"}"#);
        c.put(key("acme", "r1"), t, st("fresh"));
        assert_eq!(
            c.get(&key("acme", "r1")).map(|s| s.total),
            Some("fresh".into())
        );
        // A lost listener (resync) blocks every read in flight.
        let t = c.ticket("acme");
        c.invalidate("");
        c.put(key("acme", "r2"), t, st("stale"));
        assert!(c.get(&key("acme", "r2")).is_none());
    }
}
