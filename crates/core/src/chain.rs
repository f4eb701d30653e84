//! Hash chains and Merkle roots: the tamper evidence of the ledger and the audit trail.
//!
//! The encoding is small enough to re-implement in any language (`docs/audit.md` says it
//! in prose; `tests/e2e/verify_export.py` does it in Python):
//!
//! - A **record** is a list of text fields. Its canonical bytes are, for each field in
//!   order, the field's UTF-8 length as 4 bytes big-endian followed by its UTF-8 bytes. The
//!   first field names the record type (`spm.ledger.posting.v1`, ...), so a record of one
//!   kind can never be read as another.
//! - Numbers are written in decimal without leading zeros; money and rates as the shortest
//!   exact decimal ([`decimal`]: `12.5`, `-3`, never `12.50` or an exponent); instants as
//!   RFC 3339 in UTC with exactly six fractional digits ([`instant`]); UUIDs lower-case with
//!   hyphens; a list as its length followed by its items.
//! - A **chain** links records: `hash = SHA-256(prev || canonical bytes)`, where `prev` is
//!   the previous record's hash, or 32 zero bytes for the first record of the chain.
//! - A **Merkle root** over leaves follows RFC 6962 §2.1: leaf hash `SHA-256(0x00 || leaf)`,
//!   node hash `SHA-256(0x01 || left || right)`, the empty tree `SHA-256("")`, and a tree of
//!   n > 1 leaves split after the largest power of two smaller than n.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sha2::{Digest as _, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The `prev` of a chain's first record.
pub const GENESIS: Hash = [0; 32];

/// Builds the canonical bytes of a record, field by field.
#[derive(Debug, Clone, Default)]
pub struct Record {
    bytes: Vec<u8>,
}

impl Record {
    /// A record of type `kind` (its first field).
    pub fn new(kind: &str) -> Self {
        let mut r = Self {
            bytes: Vec::with_capacity(512),
        };
        r.text(kind);
        r
    }

    /// Appends a text field.
    pub fn text(&mut self, s: &str) -> &mut Self {
        let len = u32::try_from(s.len()).expect("a field is shorter than 4 GiB");
        self.bytes.extend_from_slice(&len.to_be_bytes());
        self.bytes.extend_from_slice(s.as_bytes());
        self
    }

    /// Appends an integer field.
    pub fn int(&mut self, n: i64) -> &mut Self {
        self.text(&n.to_string())
    }

    /// Appends a decimal field ([`decimal`]).
    pub fn decimal(&mut self, d: Decimal) -> &mut Self {
        self.text(&decimal(d))
    }

    /// Appends an instant field ([`instant`]).
    pub fn instant(&mut self, t: DateTime<Utc>) -> &mut Self {
        self.text(&instant(t))
    }

    /// Appends a list: its length, then each item.
    pub fn list<S: AsRef<str>>(&mut self, items: &[S]) -> &mut Self {
        self.int(i64::try_from(items.len()).unwrap_or(i64::MAX));
        for i in items {
            self.text(i.as_ref());
        }
        self
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// This record's hash in a chain after `prev`.
    pub fn link(&self, prev: &Hash) -> Hash {
        let mut h = Sha256::new();
        h.update(prev);
        h.update(&self.bytes);
        h.finalize().into()
    }
}

/// The shortest exact decimal: no trailing zeros, no exponent, `0` for zero.
pub fn decimal(d: Decimal) -> String {
    let n = d.normalize();
    if n.is_zero() {
        "0".to_owned()
    } else {
        n.to_string()
    }
}

/// RFC 3339 in UTC with exactly six fractional digits (Postgres keeps microseconds).
pub fn instant(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// `t` cut to whole microseconds, as Postgres stores it.
pub fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// RFC 6962 leaf hash.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

fn node_hash(l: &Hash, r: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// RFC 6962 Merkle tree hash of the leaves' hashes ([`leaf_hash`]), in order.
pub fn merkle_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            // The largest power of two smaller than n.
            let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            node_hash(&merkle_root(&leaves[..k]), &merkle_root(&leaves[k..]))
        }
    }
}

/// A hash in lower-case hex.
pub fn hex(h: &[u8]) -> String {
    ::hex::encode(h)
}

/// A hash from its stored bytes (None unless exactly 32 bytes).
pub fn hash_of(b: &[u8]) -> Option<Hash> {
    b.try_into().ok()
}

/// JSON with object keys sorted (by their UTF-8 bytes), no whitespace, strings escaped as
/// serde_json escapes them: the form an explanation is hashed in, whatever order Postgres
/// gives its keys back in.
pub fn canonical_json(v: &serde_json::Value) -> String {
    let mut out = String::with_capacity(256);
    write_json(v, &mut out);
    out
}

fn write_json(v: &serde_json::Value, out: &mut String) {
    use std::fmt::Write as _;
    match v {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(k, out);
                out.push(':');
                write_json(&m[k], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(x, out);
            }
            out.push(']');
        }
        serde_json::Value::String(s) => write_str(s, out),
        serde_json::Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        serde_json::Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        serde_json::Value::Null => out.push_str("null"),
    }
}

/// A JSON string as serde_json writes it: `"` and `\` escaped, `\b \f \n \r \t`, other
/// control characters as `\u00xx`; everything else as is.
fn write_str(s: &str, out: &mut String) {
    use std::fmt::Write as _;
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x08 => Some("\\b"),
            0x0c => Some("\\f"),
            0..=0x1f => Some(""),
            _ => None,
        };
        if let Some(e) = esc {
            out.push_str(&s[start..i]);
            if e.is_empty() {
                let _ = write!(out, "\\u{b:04x}");
            } else {
                out.push_str(e);
            }
            start = i + 1;
        }
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Where a chain breaks: the first record that does not verify, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The chain (e.g. `rep-1/month/2026-11`, or the tenant for the audit trail).
    pub chain: String,
    /// The record's number in its chain (0 when the break is the chain's head).
    pub seq: i64,
    /// The record's id (posting id, audit event id), empty for a head.
    pub id: String,
    pub problem: String,
}

/// Checks chains record by record, in chain order (all records of a chain together,
/// numbered from 1). Only the first break of each chain is reported: after it, nothing
/// later in that chain can be trusted anyway.
#[derive(Debug, Default)]
pub struct ChainCheck {
    chain: Option<String>,
    next: i64,
    prev: Hash,
    broken: bool,
    pub records: u64,
    pub breaks: Vec<Break>,
    /// (chain, records seen, hash of the last) of every chain seen, in order.
    pub ends: Vec<(String, i64, Hash)>,
}

impl ChainCheck {
    pub fn new() -> Self {
        Self::default()
    }

    fn finish_chain(&mut self) {
        if let Some(c) = self.chain.take() {
            self.ends.push((c, self.next - 1, self.prev));
        }
    }

    /// Whether the current chain has broken (at or before the last record).
    pub fn broken(&self) -> bool {
        self.broken
    }

    /// Checks the next record: its chain, its number, the stored `prev` and `hash`, and
    /// its canonical bytes.
    pub fn record(
        &mut self,
        chain: &str,
        seq: i64,
        id: &str,
        stored_prev: Option<&[u8]>,
        stored_hash: Option<&[u8]>,
        record: &Record,
    ) {
        self.records += 1;
        if self.chain.as_deref() != Some(chain) {
            self.finish_chain();
            self.chain = Some(chain.to_owned());
            self.next = 1;
            self.prev = GENESIS;
            self.broken = false;
        }
        if self.broken {
            self.next = seq + 1;
            return;
        }
        let problem = if seq > self.next {
            Some(if self.next + 1 == seq {
                format!("#{} before it is missing (deleted)", self.next)
            } else {
                format!(
                    "#{}..#{} before it are missing (deleted)",
                    self.next,
                    seq - 1
                )
            })
        } else if seq < self.next {
            Some(format!("a second record numbered #{seq} (inserted)"))
        } else {
            match (stored_prev.and_then(hash_of), stored_hash.and_then(hash_of)) {
                (None, _) | (_, None) => Some("it carries no hash (not chained)".to_owned()),
                (Some(p), Some(h)) => {
                    if p != self.prev {
                        Some(if seq == 1 {
                            "its previous hash is not the genesis hash (inserted or changed)"
                                .to_owned()
                        } else {
                            format!(
                                "its previous hash is not the hash of #{} (a record before it was changed, removed or inserted)",
                                seq - 1
                            )
                        })
                    } else if record.link(&self.prev) != h {
                        Some("its content does not match its hash (the row was changed)".to_owned())
                    } else {
                        self.prev = h;
                        None
                    }
                }
            }
        };
        if let Some(problem) = problem {
            self.broken = true;
            self.breaks.push(Break {
                chain: chain.to_owned(),
                seq,
                id: id.to_owned(),
                problem,
            });
        }
        self.next = seq + 1;
    }

    /// Ends the check; compares every chain's end with its stored head `(length, hash)`,
    /// and reports heads whose chain has no records.
    pub fn finish(&mut self, heads: &std::collections::HashMap<String, (i64, Vec<u8>)>) {
        self.finish_chain();
        let broken: std::collections::HashSet<String> =
            self.breaks.iter().map(|b| b.chain.clone()).collect();
        let mut seen = std::collections::HashSet::new();
        for (chain, len, last) in std::mem::take(&mut self.ends) {
            seen.insert(chain.clone());
            if broken.contains(&chain) {
                continue;
            }
            let problem = match heads.get(&chain) {
                None => Some(format!(
                    "the chain has {len} records but no head (inserted)"
                )),
                Some((n, _)) if *n > len => Some(format!(
                    "the head says {n} records, the chain holds {len}: #{}..#{n} are missing (deleted)",
                    len + 1
                )),
                Some((n, _)) if *n < len => Some(format!(
                    "the head says {n} records, the chain holds {len}: #{}..#{len} were added outside SPM (inserted)",
                    n + 1
                )),
                Some((_, h)) if h.as_slice() != last.as_slice() => {
                    Some("the head's hash is not the last record's hash".to_owned())
                }
                Some(_) => None,
            };
            if let Some(problem) = problem {
                self.breaks.push(Break {
                    chain,
                    seq: 0,
                    id: String::new(),
                    problem,
                });
            }
        }
        let mut missing: Vec<&String> = heads.keys().filter(|c| !seen.contains(*c)).collect();
        missing.sort();
        for c in missing {
            self.breaks.push(Break {
                chain: c.clone(),
                seq: 0,
                id: String::new(),
                problem: format!(
                    "the head says {} records, the chain holds none (deleted)",
                    heads[c].0
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: &[u8]) -> Hash {
        Sha256::digest(b).into()
    }

    #[test]
    fn fields_are_length_prefixed() {
        let mut r = Record::new("t");
        r.text("ab").int(-7).list(&["x", ""]);
        assert_eq!(
            r.bytes(),
            b"\0\0\0\x01t\0\0\0\x02ab\0\0\0\x02-7\0\0\0\x012\0\0\0\x01x\0\0\0\0"
        );
        // A field boundary cannot be moved: ("ab", "c") and ("a", "bc") differ.
        let (mut a, mut b) = (Record::new("t"), Record::new("t"));
        a.text("ab").text("c");
        b.text("a").text("bc");
        assert_ne!(a.link(&GENESIS), b.link(&GENESIS));
    }

    #[test]
    fn link_is_sha256_of_prev_and_bytes() {
        let mut r = Record::new("t");
        r.text("v");
        let prev = [7u8; 32];
        let mut buf = prev.to_vec();
        buf.extend_from_slice(r.bytes());
        assert_eq!(r.link(&prev), sha(&buf));
    }

    #[test]
    fn decimals_and_instants_are_canonical() {
        use std::str::FromStr as _;
        assert_eq!(decimal(Decimal::from_str("12.50").unwrap()), "12.5");
        assert_eq!(decimal(Decimal::from_str("-3.000").unwrap()), "-3");
        assert_eq!(decimal(Decimal::from_str("0.00").unwrap()), "0");
        assert_eq!(decimal(Decimal::from_str("100").unwrap()), "100");
        let t = DateTime::parse_from_rfc3339("2026-12-02T14:41:51.1234567Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(instant(micros(t)), "2026-12-02T14:41:51.123456Z");
        let whole = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(instant(whole), "2026-01-01T00:00:00.000000Z");
    }

    fn chain_of(n: usize) -> Vec<(Record, Hash, Hash)> {
        let mut prev = GENESIS;
        (0..n)
            .map(|i| {
                let mut r = Record::new("t");
                r.int(i64::try_from(i).unwrap());
                let h = r.link(&prev);
                let out = (r, prev, h);
                prev = h;
                out
            })
            .collect()
    }

    fn check(rows: &[(i64, Record, Hash, Hash)], head: (i64, Hash)) -> Vec<Break> {
        let mut c = ChainCheck::new();
        for (seq, r, p, h) in rows {
            c.record("c", *seq, &format!("id{seq}"), Some(p), Some(h), r);
        }
        let heads = [("c".to_owned(), (head.0, head.1.to_vec()))]
            .into_iter()
            .collect();
        c.finish(&heads);
        c.breaks
    }

    #[test]
    fn chain_check_names_the_first_bad_record() {
        let ch = chain_of(5);
        let rows: Vec<(i64, Record, Hash, Hash)> = ch
            .iter()
            .enumerate()
            .map(|(i, (r, p, h))| (i64::try_from(i).unwrap() + 1, r.clone(), *p, *h))
            .collect();
        let head = (5, rows[4].3);
        assert!(check(&rows, head).is_empty());
        // Changed content of #3.
        let mut changed = rows.clone();
        changed[2].1 = Record::new("other");
        let b = check(&changed, head);
        assert_eq!((b.len(), b[0].seq, b[0].id.as_str()), (1, 3, "id3"));
        assert!(b[0].problem.contains("content"), "{b:?}");
        // #2 deleted: named at #3.
        let mut deleted = rows.clone();
        deleted.remove(1);
        let b = check(&deleted, head);
        assert_eq!(b[0].seq, 3);
        assert!(b[0].problem.contains("#2 before it is missing"), "{b:?}");
        // The last deleted: the head says so.
        let b = check(&rows[..4], head);
        assert_eq!((b[0].seq, b.len()), (0, 1));
        assert!(b[0].problem.contains("#5..#5 are missing"), "{b:?}");
        // One appended with a correct link but not in the head.
        let mut r6 = Record::new("t");
        r6.int(99);
        let h6 = r6.link(&rows[4].3);
        let mut appended = rows.clone();
        appended.push((6, r6, rows[4].3, h6));
        let b = check(&appended, head);
        assert!(b[0].problem.contains("added outside SPM"), "{b:?}");
        // A record's hash recomputed after a change breaks the next one's link.
        let mut relinked = rows.clone();
        relinked[1].1 = Record::new("forged");
        relinked[1].3 = relinked[1].1.link(&relinked[1].2);
        let b = check(&relinked, head);
        assert_eq!(b[0].seq, 3);
        assert!(b[0].problem.contains("hash of #2"), "{b:?}");
    }

    #[test]
    fn canonical_json_escapes_strings_as_serde_json_does() {
        for text in [
            "plain",
            "q\"uote",
            "back\\slash",
            "nl\n cr\r tab\t",
            "\u{1}\u{8}\u{c}\u{1f}\u{7f}",
            "中文 ✓ 𝄞",
            "",
        ] {
            let v = serde_json::Value::String(text.to_owned());
            assert_eq!(canonical_json(&v), v.to_string(), "{text:?}");
        }
        let v: serde_json::Value =
            serde_json::from_str(r#"{"n": 1.5, "i": -3, "big": 12345678901234567890, "f": false}"#)
                .unwrap();
        assert_eq!(
            canonical_json(&v),
            r#"{"big":12345678901234567890,"f":false,"i":-3,"n":1.5}"#
        );
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"b": 1, "a": {"z": "x\n\"", "y": [2, {"d": null, "c": true}]}}"#,
        )
        .unwrap();
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"y":[2,{"c":true,"d":null}],"z":"x\n\""},"b":1}"#
        );
    }

    #[test]
    fn merkle_matches_rfc6962_shape() {
        let l: Vec<Hash> = (0u8..7).map(|i| leaf_hash(&[i])).collect();
        assert_eq!(merkle_root(&[]), sha(b""));
        assert_eq!(merkle_root(&l[..1]), l[0]);
        assert_eq!(merkle_root(&l[..2]), node_hash(&l[0], &l[1]));
        // Three leaves: split after two.
        assert_eq!(
            merkle_root(&l[..3]),
            node_hash(&node_hash(&l[0], &l[1]), &l[2])
        );
        // Seven leaves: split after four.
        let left = node_hash(&node_hash(&l[0], &l[1]), &node_hash(&l[2], &l[3]));
        let right = node_hash(&node_hash(&l[4], &l[5]), &l[6]);
        assert_eq!(merkle_root(&l), node_hash(&left, &right));
        // Eight: split after four, not eight.
        let l8: Vec<Hash> = (0u8..8).map(|i| leaf_hash(&[i])).collect();
        let a = node_hash(&node_hash(&l8[0], &l8[1]), &node_hash(&l8[2], &l8[3]));
        let b = node_hash(&node_hash(&l8[4], &l8[5]), &node_hash(&l8[6], &l8[7]));
        assert_eq!(merkle_root(&l8), node_hash(&a, &b));
        // A leaf is never confused with a node: a leaf hash has the 0x00 prefix.
        assert_ne!(leaf_hash(&[]), sha(b""));
    }
}
