//! What the consumer keeps in memory of large rep-periods it recomputes, so that a
//! recompute of a period with 10,000 deals reads what changed, not the 10,000 deals and
//! the 25,000 postings again.
//!
//! Each entry is checked against Postgres before use, inside the recompute's transaction:
//! - a rep-period's **deals** against its mark in `credit_marks`, which every transaction
//!   that stores a credit for the rep-period moves by one (a row lock orders them). An
//!   entry at the mark is current; an entry one behind, when this very batch moved the
//!   mark, is brought up to date with the batch's own credits, read back from Postgres
//!   (so they are decoded exactly as a full read decodes them); anything else is read
//!   again in full.
//! - its **ledger holdings** against the head of
//!   the rep-period's hash chain, which the recompute reads under the chain's lock anyway:
//!   any posting to the chain, from anywhere, moves the head.
//!
//! A transaction that rolls back leaves entries ahead of Postgres: their mark or head then
//! differs and they are read again. In debug builds every entry used is compared with a
//! full read (and every rep-period is kept), so the test suite checks the shortcut on every
//! recompute it makes.

use std::collections::HashMap;
use std::sync::Mutex;

use spm_core::chain::Hash;
use spm_core::period::PeriodKind;

use crate::domain::compute::DealIn;
use crate::domain::ledger::Holdings;

/// (tenant, rep, kind, period key).
pub type Key = (String, String, PeriodKind, String);

/// A rep-period's deals as of a mark.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub mark: i64,
    pub deals: Vec<DealIn>,
}

/// A rep-period's ledger holdings as of a chain head.
#[derive(Debug, Clone)]
pub struct Ledger {
    pub head: (i64, Hash),
    pub held: Holdings,
}

#[derive(Debug, Default)]
struct Entry {
    inputs: Option<Inputs>,
    ledger: Option<Ledger>,
    used: u64,
}

impl Entry {
    fn weight(&self) -> usize {
        self.inputs.as_ref().map_or(0, |i| i.deals.len())
            + self.ledger.as_ref().map_or(0, |l| l.held.len())
    }
}

/// The warm rep-periods of one process.
#[derive(Debug)]
pub struct Warm {
    inner: Mutex<Inner>,
    /// Entries lighter than this (deals + holdings) are not kept: reading them is cheap.
    pub min_weight: usize,
    /// Deals + holdings kept at most; the least recently used go first.
    pub budget: usize,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Key, Entry>,
    tick: u64,
    weight: usize,
}

/// Rep-periods of fewer deals + holdings than this are read from Postgres each time.
pub const MIN_WEIGHT: usize = 1_000;
/// About 40 MB at most.
pub const BUDGET: usize = 200_000;

impl Default for Warm {
    fn default() -> Self {
        Self::new(MIN_WEIGHT, BUDGET)
    }
}

impl Warm {
    /// Keeps rep-periods of at least `min_weight` deals + holdings, `budget` in all (in
    /// debug builds every rep-period is kept, so that the tests check every use).
    pub fn new(min_weight: usize, budget: usize) -> Self {
        Self {
            inner: Mutex::default(),
            min_weight: if cfg!(debug_assertions) {
                0
            } else {
                min_weight
            },
            budget,
        }
    }

    /// Takes a rep-period's entry out (the caller puts back what is current after its
    /// recompute).
    pub fn take(&self, key: &Key) -> (Option<Inputs>, Option<Ledger>) {
        let mut g = self.inner.lock().expect("warm");
        match g.map.remove(key) {
            Some(e) => {
                g.weight -= e.weight();
                (e.inputs, e.ledger)
            }
            None => (None, None),
        }
    }

    /// Keeps a rep-period's entry, if it is worth keeping, evicting the least recently used
    /// entries beyond the budget.
    pub fn put(&self, key: Key, inputs: Option<Inputs>, ledger: Option<Ledger>) {
        let mut g = self.inner.lock().expect("warm");
        g.tick += 1;
        let e = Entry {
            inputs,
            ledger,
            used: g.tick,
        };
        let w = e.weight();
        if w < self.min_weight || w > self.budget || (e.inputs.is_none() && e.ledger.is_none()) {
            return;
        }
        if let Some(old) = g.map.insert(key, e) {
            g.weight -= old.weight();
        }
        g.weight += w;
        while g.weight > self.budget {
            let Some(oldest) = g
                .map
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = g.map.remove(&oldest) {
                g.weight -= e.weight();
            }
        }
    }

    /// Forgets a tenant's entries (a rebuild, a plan change: cheap to read again).
    pub fn forget_tenant(&self, tenant: &str) {
        let mut g = self.inner.lock().expect("warm");
        let gone: Vec<Key> = g.map.keys().filter(|k| k.0 == tenant).cloned().collect();
        for k in gone {
            if let Some(e) = g.map.remove(&k) {
                g.weight -= e.weight();
            }
        }
    }

    /// (entries, weight) kept now.
    pub fn size(&self) -> (usize, usize) {
        let g = self.inner.lock().expect("warm");
        (g.map.len(), g.weight)
    }
}

/// Credits this batch stored, per rep-period they touch: (the mark after them, the credits'
/// event ids).
pub type Fresh = HashMap<(String, PeriodKind, String), (i64, Vec<uuid::Uuid>)>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::compute::Status;
    use rust_decimal::Decimal;

    fn ledger(n: usize) -> Ledger {
        Ledger {
            head: (1, [0; 32]),
            held: (0..n)
                .map(|i| ((format!("k{i}"), Status::Earned), Decimal::ONE))
                .collect(),
        }
    }

    fn key(rep: &str) -> Key {
        ("t".into(), rep.into(), PeriodKind::Month, "2026-11".into())
    }

    #[test]
    fn light_entries_are_not_kept_and_the_budget_evicts_the_least_recent() {
        let w = Warm {
            inner: Mutex::default(),
            min_weight: 10,
            budget: 100,
        };
        w.put(key("light"), None, Some(ledger(5)));
        assert_eq!(w.size(), (0, 0));
        w.put(key("a"), None, Some(ledger(40)));
        w.put(key("b"), None, Some(ledger(40)));
        assert_eq!(w.size(), (2, 80));
        // "a" is used (taken and put back): "b" is now the least recent.
        let (_, l) = w.take(&key("a"));
        w.put(key("a"), None, l);
        w.put(key("c"), None, Some(ledger(40)));
        assert_eq!(w.size(), (2, 80));
        assert!(w.take(&key("b")).1.is_none());
        assert!(w.take(&key("a")).1.is_some());
        assert_eq!(w.size(), (1, 40));
        w.forget_tenant("t");
        assert_eq!(w.size(), (0, 0));
    }
}
