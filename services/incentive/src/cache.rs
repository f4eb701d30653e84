//! Statements served from memory until the ledger behind them changes.
//!
//! Every transaction that writes the ledger, period results or period state also sends
//! `pg_notify(CHANNEL, {"tenant": .., "reps": [..]})` (no `reps`: the whole tenant), so
//! every instance forgets exactly what went stale, at commit. A reconnected listener may
//! have missed notifications and forgets everything. A read that overlaps a change is not
//! cached (generation check), and nothing is kept longer than [`TTL`] in any case.
//!
//! Entries are the encoded `GetStatementResponse`: a hit is served by copying bytes into
//! the reply frame (no copy of hundreds of decoded lines, no re-encoding per request), and
//! kept in a third of the memory the decoded form takes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prost::bytes::Bytes;
use sqlx::PgConnection;

/// The NOTIFY channel of ledger changes.
pub const CHANNEL: &str = "spm_incentive_changed";

/// The longest a statement is served from memory (a safety net: changes invalidate at
/// once). Each entry's lifetime is jittered ±20% so that entries loaded together do not
/// all expire together.
pub const TTL: Duration = Duration::from_secs(60);

/// Encoded bytes kept at most (all tenants); the entries closest to expiry go first. A
/// statement larger than an eighth of it is served but not kept.
const MAX_BYTES: usize = 48 << 20;

/// What a statement request asked for: a rep, an explicit period or its default, and
/// whether with the lines' calculation traces.
pub type Key = (String, String, Period);

pub type Period = (Option<(i32, String)>, bool);

struct Entry {
    expires: Instant,
    /// The encoded reply (a hit takes a reference; the bytes are shared).
    reply: Bytes,
}

#[derive(Default)]
struct Inner {
    /// By (tenant, rep), then by the period asked for.
    entries: HashMap<(String, String), HashMap<Period, Entry>>,
    /// Encoded size of every entry.
    bytes: usize,
    /// Bumped on every change of a tenant (any rep).
    tenant_gen: HashMap<String, u64>,
    /// Bumped when everything is forgotten.
    epoch: u64,
}

impl Inner {
    /// Drops the entry closest to expiry; false when there is none.
    fn evict_one(&mut self) -> bool {
        let Some((k, p)) = self
            .entries
            .iter()
            .flat_map(|(k, m)| m.iter().map(move |(p, e)| (k, p, e.expires)))
            .min_by_key(|x| x.2)
            .map(|(k, p, _)| (k.clone(), p.clone()))
        else {
            return false;
        };
        if let Some(m) = self.entries.get_mut(&k) {
            if let Some(e) = m.remove(&p) {
                self.bytes -= e.reply.len();
            }
            if m.is_empty() {
                self.entries.remove(&k);
            }
        }
        true
    }
}

#[derive(Default)]
pub struct Statements {
    inner: Mutex<Inner>,
    /// One load per key at a time: concurrent misses wait for it (no stampede on Postgres
    /// after an invalidation).
    loading: Mutex<HashMap<Key, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

/// Taken before reading the database; an insert with a stale ticket is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64, u64);

impl Statements {
    pub fn get(&self, key: &Key) -> Option<Bytes> {
        let inner = self.inner.lock().expect("statement cache");
        inner
            .entries
            .get(&(key.0.clone(), key.1.clone()))
            .and_then(|m| m.get(&key.2))
            .filter(|e| Instant::now() < e.expires)
            .map(|e| e.reply.clone())
    }

    /// The load lock of `key`; hold it while loading, then call [`Self::loaded`].
    pub fn load_lock(&self, key: &Key) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        self.loading
            .lock()
            .expect("load locks")
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// Forgets the load lock of `key` once nobody else waits on it.
    pub fn loaded(&self, key: &Key, lock: &std::sync::Arc<tokio::sync::Mutex<()>>) {
        let mut loading = self.loading.lock().expect("load locks");
        // The map's reference and the caller's: nobody else is waiting.
        if std::sync::Arc::strong_count(lock) <= 2 {
            loading.remove(key);
        }
    }

    pub fn ticket(&self, tenant: &str) -> Ticket {
        let inner = self.inner.lock().expect("statement cache");
        Ticket(
            inner.epoch,
            inner.tenant_gen.get(tenant).copied().unwrap_or(0),
        )
    }

    /// Keeps `reply` unless the tenant changed since `ticket` was taken.
    pub fn put(&self, key: Key, ticket: Ticket, reply: Bytes) {
        let mut inner = self.inner.lock().expect("statement cache");
        let now = Ticket(
            inner.epoch,
            inner.tenant_gen.get(&key.0).copied().unwrap_or(0),
        );
        if now != ticket {
            return;
        }
        let size = reply.len();
        if size > MAX_BYTES / 8 {
            return;
        }
        while inner.bytes + size > MAX_BYTES && inner.evict_one() {}
        let expires = Instant::now() + TTL.mul_f64(jitter(&key));
        let (tenant, rep, period) = key;
        let old = inner
            .entries
            .entry((tenant, rep))
            .or_default()
            .insert(period, Entry { expires, reply });
        inner.bytes += size;
        inner.bytes -= old.map_or(0, |e| e.reply.len());
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
            inner.bytes = 0;
            return;
        };
        *inner.tenant_gen.entry(tenant.clone()).or_default() += 1;
        match parsed.as_ref().and_then(|v| v["reps"].as_array()) {
            Some(reps) => {
                for rep in reps.iter().filter_map(|r| r.as_str()) {
                    if let Some(m) = inner.entries.remove(&(tenant.clone(), rep.to_owned())) {
                        inner.bytes -= m.values().map(|e| e.reply.len()).sum::<usize>();
                    }
                }
            }
            None => {
                let mut gone = 0;
                inner.entries.retain(|k, m| {
                    let keep = k.0 != tenant;
                    if !keep {
                        gone += m.values().map(|e| e.reply.len()).sum::<usize>();
                    }
                    keep
                });
                inner.bytes -= gone;
            }
        }
    }
}

/// 0.8..1.2, spread by key.
fn jitter(key: &Key) -> f64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    #[allow(clippy::cast_precision_loss)]
    let f = (h.finish() % 401) as f64 / 1000.0;
    0.8 + f
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
        (t.into(), r.into(), (None, false))
    }

    fn st(total: &str) -> Bytes {
        Bytes::copy_from_slice(total.as_bytes())
    }

    fn total(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).expect("utf-8")
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
        assert_eq!(c.get(&key("acme", "r2")).map(total), Some("1".into()));
        assert_eq!(c.get(&key("other", "r1")).map(total), Some("2".into()));
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
        assert_eq!(c.get(&key("acme", "r1")).map(total), Some("fresh".into()));
        // A lost listener (resync) blocks every read in flight.
        let t = c.ticket("acme");
        c.invalidate("");
        c.put(key("acme", "r2"), t, st("stale"));
        assert!(c.get(&key("acme", "r2")).is_none());
    }
}
