//! What is hashed of a posting, a chain head and a seal (the encoding is in
//! `spm_core::chain`; `docs/audit.md` lists these fields for auditors).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use spm_core::chain::{Hash, Record, hex, leaf_hash};
use uuid::Uuid;

/// The hashed fields of a posting, in their order.
#[derive(Debug, Clone)]
pub struct PostingFields<'a> {
    pub tenant_id: &'a str,
    pub rep_id: &'a str,
    pub period_kind: &'a str,
    pub period_key: &'a str,
    pub chain_seq: i64,
    pub posting_id: Uuid,
    pub source_period_key: &'a str,
    pub line_key: &'a str,
    pub line_id: Uuid,
    pub kind: &'a str,
    pub status: &'a str,
    pub amount: Decimal,
    pub currency: &'a str,
    pub plan_id: &'a str,
    pub plan_version: i32,
    pub deal_id: &'a str,
    pub summary: &'a str,
    /// The explanation as canonical JSON ([`canonical_json`]).
    pub explanation: &'a str,
    pub caused_by: &'a [String],
    pub posted_at: DateTime<Utc>,
}

pub const POSTING: &str = "spm.ledger.posting.v1";
pub const HEAD: &str = "spm.ledger.head.v1";
pub const SEAL: &str = "spm.ledger.seal.v1";

/// The posting's canonical record.
pub fn posting(p: &PostingFields<'_>) -> Record {
    let mut r = Record::new(POSTING);
    r.text(p.tenant_id)
        .text(p.rep_id)
        .text(p.period_kind)
        .text(p.period_key)
        .int(p.chain_seq)
        .text(&p.posting_id.to_string())
        .text(p.source_period_key)
        .text(p.line_key)
        .text(&p.line_id.to_string())
        .text(p.kind)
        .text(p.status)
        .decimal(p.amount)
        .text(p.currency)
        .text(p.plan_id)
        .int(i64::from(p.plan_version))
        .text(p.deal_id)
        .text(p.summary)
        .text(p.explanation)
        .list(p.caused_by)
        .instant(p.posted_at);
    r
}

/// The name of a chain in reports: `rep/kind/period`.
pub fn chain_name(rep: &str, kind: &str, key: &str) -> String {
    format!("{rep}/{kind}/{key}")
}

pub use spm_core::chain::canonical_json;

/// The Merkle leaf of a chain head: `(rep, length, head hash in hex)`.
pub fn head_leaf(rep: &str, length: i64, head: &Hash) -> Hash {
    let mut r = Record::new(HEAD);
    r.text(rep).int(length).text(&hex(head));
    leaf_hash(r.bytes())
}

/// The hashed fields of a seal.
#[derive(Debug, Clone)]
pub struct SealFields<'a> {
    pub tenant_id: &'a str,
    pub seal_no: i64,
    pub period_kind: &'a str,
    pub period_key: &'a str,
    /// `close` or `paid`.
    pub reason: &'a str,
    pub chains: i64,
    pub postings: i64,
    pub root: Hash,
    pub sealed_at: DateTime<Utc>,
}

pub fn seal(s: &SealFields<'_>) -> Record {
    let mut r = Record::new(SEAL);
    r.text(s.tenant_id)
        .int(s.seal_no)
        .text(s.period_kind)
        .text(s.period_key)
        .text(s.reason)
        .int(s.chains)
        .int(s.postings)
        .text(&hex(&s.root))
        .instant(s.sealed_at);
    r
}

/// The advisory lock of a rep's chain for a statement period. Writers hold it exclusively
/// from before they take their posting time until they commit; readers take it shared,
/// then the time: so a statement read at `t` is exactly the postings with
/// `posted_at <= t`, whenever it is asked again.
pub fn chain_lock(tenant: &str, rep: &str, kind: &str, key: &str) -> i64 {
    lock_key(&["chain", tenant, rep, kind, key])
}

/// The advisory lock of a tenant's period: shared by writers and readers, exclusive while
/// the period is closed or paid.
pub fn period_lock(tenant: &str, kind: &str, key: &str) -> i64 {
    lock_key(&["period", tenant, kind, key])
}

/// The advisory lock of a tenant's plans: shared by writers that read them, exclusive
/// while a plan version changes state.
pub fn plans_lock(tenant: &str) -> i64 {
    lock_key(&["plans", tenant])
}

/// The advisory lock of a tenant's chain of seals.
pub fn seal_lock(tenant: &str) -> i64 {
    lock_key(&["seals", tenant])
}

fn lock_key(parts: &[&str]) -> i64 {
    let mut r = Record::new("spm.lock.v1");
    for p in parts {
        r.text(p);
    }
    let h = r.link(&spm_core::chain::GENESIS);
    i64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_hashed() {
        let caused = vec!["e1".to_owned()];
        let base = PostingFields {
            tenant_id: "t",
            rep_id: "r",
            period_kind: "month",
            period_key: "2026-11",
            chain_seq: 1,
            posting_id: Uuid::nil(),
            source_period_key: "2026-11",
            line_key: "deal:d1",
            line_id: Uuid::nil(),
            kind: "commission",
            status: "payable",
            amount: Decimal::new(1250, 2),
            currency: "EUR",
            plan_id: "p",
            plan_version: 1,
            deal_id: "d1",
            summary: "s",
            explanation: "{}",
            caused_by: &caused,
            posted_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        };
        let h = posting(&base).link(&spm_core::chain::GENESIS);
        let mut changed = base.clone();
        changed.amount = Decimal::new(1251, 2);
        assert_ne!(posting(&changed).link(&spm_core::chain::GENESIS), h);
        // 12.50 and 12.5 are the same amount, hashed the same.
        let mut scaled = base.clone();
        scaled.amount = Decimal::new(125, 1);
        assert_eq!(posting(&scaled).link(&spm_core::chain::GENESIS), h);
        let mut later = base.clone();
        later.posted_at += chrono::Duration::microseconds(1);
        assert_ne!(posting(&later).link(&spm_core::chain::GENESIS), h);
        let none: Vec<String> = Vec::new();
        let mut uncaused = base;
        uncaused.caused_by = &none;
        assert_ne!(posting(&uncaused).link(&spm_core::chain::GENESIS), h);
    }

    #[test]
    fn locks_differ_by_chain() {
        assert_ne!(
            chain_lock("t", "r1", "month", "2026-11"),
            chain_lock("t", "r2", "month", "2026-11")
        );
        assert_ne!(
            chain_lock("t", "r", "month", "2026-11"),
            period_lock("t", "month", "2026-11")
        );
        assert_eq!(seal_lock("t"), seal_lock("t"));
    }
}
