//! The ledger's hash chains in Postgres: the locks that order writers and readers of a
//! chain, appending chained postings, sealing a period, verifying everything, exporting a
//! period for auditors, and chaining postings made before chains existed.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use rust_decimal::Decimal;
use spm_core::chain::{self as hc, Break, ChainCheck, GENESIS, Hash, hex, merkle_root};
use spm_core::period::PeriodKind;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::chain::{self as dc, PostingFields, SealFields, chain_name};
use crate::store::LedgerRow;

/// Locks to take: `(key, shared)`, and the chains a writer will append to.
#[derive(Debug, Default, Clone)]
pub struct Locks {
    plans: Vec<(i64, bool)>,
    periods: Vec<(i64, bool)>,
    chains: Vec<(i64, bool)>,
    /// (rep, kind, key) of the chains locked exclusively: their heads are read with them.
    written: Vec<(String, &'static str, String)>,
}

/// What a writer holds: the locks (to the end of its transaction), the moment its postings
/// are made at, and the heads of its chains as its postings move them.
#[derive(Debug, Default)]
pub struct Held {
    pub at: DateTime<Utc>,
    heads: HashMap<(String, String, String), (i64, Hash)>,
    /// The chains' totals (the sum of their postings) as this writer's postings move them.
    totals: HashMap<(String, String, String), Decimal>,
}

impl Held {
    /// The head of a rep-period's chain as this writer holds it ((0, genesis) for a chain
    /// with no posting yet).
    pub fn head(&self, rep: &str, kind: PeriodKind, key: &str) -> (i64, Hash) {
        self.heads
            .get(&(rep.to_owned(), kind.as_str().to_owned(), key.to_owned()))
            .copied()
            .unwrap_or((0, GENESIS))
    }

    /// The total of a rep-period's chain (the statement total of the period) as this
    /// writer holds it: what `ledger_chains` said under the lock plus what it appended
    /// since. Known only for the chains it locked exclusively (the ones it writes).
    pub fn total(&self, rep: &str, kind: PeriodKind, key: &str) -> Option<Decimal> {
        let k = (rep.to_owned(), kind.as_str().to_owned(), key.to_owned());
        self.totals.get(&k).copied()
    }

    /// Holding nothing, at `at`.
    pub fn at(at: DateTime<Utc>) -> Self {
        Self {
            at,
            heads: HashMap::new(),
            totals: HashMap::new(),
        }
    }
}

impl Locks {
    pub fn period(&mut self, tenant: &str, kind: PeriodKind, key: &str, shared: bool) -> &mut Self {
        self.periods
            .push((dc::period_lock(tenant, kind.as_str(), key), shared));
        self
    }

    pub fn chain(
        &mut self,
        tenant: &str,
        rep: &str,
        kind: PeriodKind,
        key: &str,
        shared: bool,
    ) -> &mut Self {
        self.chains
            .push((dc::chain_lock(tenant, rep, kind.as_str(), key), shared));
        if !shared {
            self.written
                .push((rep.to_owned(), kind.as_str(), key.to_owned()));
        }
        self
    }

    /// The tenant's plans: shared by writers that read the plans (to the end of their
    /// transaction), exclusive while a plan version changes state.
    pub fn plans(&mut self, tenant: &str, shared: bool) -> &mut Self {
        self.plans.push((dc::plans_lock(tenant), shared));
        self
    }

    pub fn seals(&mut self, tenant: &str) -> &mut Self {
        self.chains.push((dc::seal_lock(tenant), false));
        self
    }

    /// (keys, shared, class): the plans lock, then period locks, then chains, each class
    /// in key order, so two
    /// transactions never wait for each other in a circle.
    fn ordered(&self) -> (Vec<i64>, Vec<bool>, Vec<i32>) {
        let mut keys: Vec<i64> = Vec::new();
        let mut shared: Vec<bool> = Vec::new();
        let mut order: Vec<i32> = Vec::new();
        for (class, list) in [(0, &self.plans), (1, &self.periods), (2, &self.chains)] {
            let mut m: std::collections::BTreeMap<i64, bool> = std::collections::BTreeMap::new();
            for (k, s) in list {
                let e = m.entry(*k).or_insert(true);
                *e &= *s;
            }
            for (k, s) in m {
                keys.push(k);
                shared.push(s);
                order.push(class);
            }
        }
        (keys, shared, order)
    }

    /// Takes the locks (to the end of the transaction) in one statement; returns the
    /// database's clock after the last was granted. For readers, and for locks without
    /// chains to append to.
    pub async fn take(&self, conn: &mut PgConnection) -> Result<DateTime<Utc>, sqlx::Error> {
        let (keys, shared, order) = self.ordered();
        sqlx::query_scalar(
            "SELECT clock_timestamp() FROM (
               SELECT count(CASE WHEN s THEN pg_advisory_xact_lock_shared(k) ELSE pg_advisory_xact_lock(k) END) AS n
                 FROM (SELECT k, s FROM UNNEST($1::bigint[], $2::bool[], $3::int[]) AS u(k, s, o) ORDER BY o, k) AS l
             ) AS x",
        )
        .bind(&keys)
        .bind(&shared)
        .bind(&order)
        .fetch_one(conn)
        .await
    }

    /// Takes the locks and reads the heads of the chains locked exclusively, in one round
    /// trip (`ledger_lock`): what a writer needs before it appends.
    pub async fn hold(&self, conn: &mut PgConnection, tenant: &str) -> Result<Held, sqlx::Error> {
        let mut held = Held::default();
        self.hold_more(conn, tenant, &mut held).await?;
        Ok(held)
    }

    /// As [`Self::hold`], adding to what `held` holds (same transaction); `held.at`
    /// becomes the later moment.
    pub async fn hold_more(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        held: &mut Held,
    ) -> Result<(), sqlx::Error> {
        type HeadRow = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<Vec<u8>>,
            Option<Decimal>,
            Option<DateTime<Utc>>,
        );
        let (keys, shared, order) = self.ordered();
        let rows: Vec<HeadRow> =
            sqlx::query_as("SELECT * FROM ledger_lock($1, $2, $3, $4, $5, $6, $7)")
                .bind(tenant)
                .bind(&keys)
                .bind(&shared)
                .bind(&order)
                .bind(
                    self.written
                        .iter()
                        .map(|w| w.0.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(self.written.iter().map(|w| w.1).collect::<Vec<_>>())
                .bind(
                    self.written
                        .iter()
                        .map(|w| w.2.as_str())
                        .collect::<Vec<_>>(),
                )
                .fetch_all(conn)
                .await?;
        for r in rows {
            match r {
                (None, _, _, _, _, _, Some(at)) => held.at = held.at.max(hc::micros(at)),
                (Some(rep), Some(kind), Some(key), Some(n), Some(h), Some(t), _) => {
                    // What this transaction appended already is newer than the table.
                    let k = (rep, kind, key);
                    held.totals.entry(k.clone()).or_insert(t);
                    held.heads
                        .entry(k)
                        .or_insert((n, hc::hash_of(&h).unwrap_or(GENESIS)));
                }
                _ => {}
            }
        }
        // The chains locked for writing that have no row yet start at zero.
        for (rep, kind, key) in &self.written {
            held.totals
                .entry((rep.clone(), (*kind).to_owned(), key.clone()))
                .or_insert(Decimal::ZERO);
        }
        Ok(())
    }
}

/// The canonical explanation text of a stored posting.
fn canon(explanation: &serde_json::Value) -> String {
    dc::canonical_json(explanation)
}

/// Chains `rows` (in order) onto their chains' heads as `held` knows them, posted at
/// `held.at`, and appends them. The caller took the chains' locks with [`Locks::hold`].
pub async fn append(
    conn: &mut PgConnection,
    tenant: &str,
    rows: &[LedgerRow],
    held: &mut Held,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let at = held.at;
    let mut seqs = Vec::with_capacity(rows.len());
    let mut prevs = Vec::with_capacity(rows.len());
    let mut hashes = Vec::with_capacity(rows.len());
    let mut moved: Vec<(String, String, String)> = Vec::new();
    for r in rows {
        let k = (
            r.rep_id.clone(),
            r.period_kind.as_str().to_owned(),
            r.period_key.clone(),
        );
        let (n, prev) = held.heads.get(&k).copied().unwrap_or((0, GENESIS));
        let seq = n + 1;
        let h = dc::posting(&fields(tenant, r, seq, &r.explanation, at)).link(&prev);
        seqs.push(seq);
        prevs.push(prev.to_vec());
        hashes.push(h.to_vec());
        moved.push(k.clone());
        *held.totals.entry(k.clone()).or_default() += r.amount;
        held.heads.insert(k, (seq, h));
    }
    moved.sort();
    moved.dedup();
    let heads: Vec<crate::store::HeadRow<'_>> = moved
        .iter()
        .filter_map(|k| {
            let (n, h) = held.heads.get(k)?;
            let t = held.totals.get(k).copied().unwrap_or_default();
            Some((k.0.as_str(), k.1.as_str(), k.2.as_str(), *n, h.to_vec(), t))
        })
        .collect();
    crate::store::insert_chained(conn, tenant, rows, at, &seqs, &prevs, &hashes, &heads).await
}

fn fields<'a>(
    tenant: &'a str,
    r: &'a LedgerRow,
    seq: i64,
    expl: &'a str,
    at: DateTime<Utc>,
) -> PostingFields<'a> {
    PostingFields {
        tenant_id: tenant,
        rep_id: &r.rep_id,
        period_kind: r.period_kind.as_str(),
        period_key: &r.period_key,
        chain_seq: seq,
        posting_id: r.posting_id,
        source_period_key: &r.source_period_key,
        line_key: &r.line_key,
        line_id: r.line_id,
        kind: &r.kind,
        status: &r.status,
        amount: r.amount,
        currency: &r.currency,
        plan_id: &r.plan_id,
        plan_version: r.plan_version,
        deal_id: &r.deal_id,
        summary: &r.summary,
        explanation: expl,
        caused_by: &r.caused_by,
        posted_at: at,
    }
}

/// A seal, as stored and published.
#[derive(Debug, Clone)]
pub struct Seal {
    pub seal_no: i64,
    pub period_kind: String,
    pub period_key: String,
    pub reason: String,
    pub chains: i64,
    pub postings: i64,
    pub root: Hash,
    pub sealed_at: DateTime<Utc>,
    pub prev_hash: Hash,
    pub hash: Hash,
}

/// Seals a period: a Merkle root over the heads of its chains (in rep order, by bytes),
/// chained onto the tenant's previous seal. The caller holds the period's lock
/// exclusively; the seal lock is taken here.
pub async fn seal(
    conn: &mut PgConnection,
    tenant: &str,
    kind: PeriodKind,
    key: &str,
    reason: &str,
) -> Result<Seal, sqlx::Error> {
    let at = hc::micros(Locks::default().seals(tenant).take(&mut *conn).await?);
    let mut heads: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT rep_id, length, head FROM ledger_chains WHERE tenant_id = $1 AND period_kind = $2 AND period_key = $3",
    )
    .bind(tenant)
    .bind(kind.as_str())
    .bind(key)
    .fetch_all(&mut *conn)
    .await?;
    heads.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let leaves: Vec<Hash> = heads
        .iter()
        .map(|(r, n, h)| dc::head_leaf(r, *n, &hc::hash_of(h).unwrap_or(GENESIS)))
        .collect();
    let root = merkle_root(&leaves);
    let last: Option<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT seal_no, hash FROM ledger_seals WHERE tenant_id = $1 ORDER BY seal_no DESC LIMIT 1",
    )
    .bind(tenant)
    .fetch_optional(&mut *conn)
    .await?;
    let (seal_no, prev) = last.map_or((1, GENESIS), |(n, h)| {
        (n + 1, hc::hash_of(&h).unwrap_or(GENESIS))
    });
    let postings: i64 = heads.iter().map(|h| h.1).sum();
    let chains = i64::try_from(heads.len()).unwrap_or(i64::MAX);
    let hash = dc::seal(&SealFields {
        tenant_id: tenant,
        seal_no,
        period_kind: kind.as_str(),
        period_key: key,
        reason,
        chains,
        postings,
        root,
        sealed_at: at,
    })
    .link(&prev);
    sqlx::query(
        "WITH s AS (
           INSERT INTO ledger_seals (tenant_id, seal_no, period_kind, period_key, reason, chains, postings, root, sealed_at, prev_hash, hash)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11))
         INSERT INTO ledger_seal_leaves (tenant_id, seal_no, rep_id, length, head)
         SELECT $1, $2, * FROM UNNEST($12::text[], $13::bigint[], $14::bytea[])",
    )
    .bind(tenant)
    .bind(seal_no)
    .bind(kind.as_str())
    .bind(key)
    .bind(reason)
    .bind(chains)
    .bind(postings)
    .bind(root.to_vec())
    .bind(at)
    .bind(prev.to_vec())
    .bind(hash.to_vec())
    .bind(heads.iter().map(|h| h.0.clone()).collect::<Vec<_>>())
    .bind(heads.iter().map(|h| h.1).collect::<Vec<_>>())
    .bind(heads.iter().map(|h| h.2.clone()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(Seal {
        seal_no,
        period_kind: kind.as_str().to_owned(),
        period_key: key.to_owned(),
        reason: reason.to_owned(),
        chains,
        postings,
        root,
        sealed_at: at,
        prev_hash: prev,
        hash,
    })
}

/// A stored posting, as read for verification and export.
#[derive(sqlx::FromRow)]
pub struct Stored {
    pub posting_id: Uuid,
    pub rep_id: String,
    pub period_kind: String,
    pub period_key: String,
    pub chain_seq: Option<i64>,
    pub source_period_key: String,
    pub line_key: String,
    pub line_id: Uuid,
    pub kind: String,
    pub status: String,
    pub amount: Decimal,
    pub currency: String,
    pub plan_id: String,
    pub plan_version: i32,
    pub deal_id: String,
    pub summary: String,
    pub explanation: serde_json::Value,
    pub caused_by: Vec<String>,
    pub posted_at: DateTime<Utc>,
    pub prev_hash: Option<Vec<u8>>,
    pub hash: Option<Vec<u8>>,
}

const STORED: &str = "posting_id, rep_id, period_kind, period_key, chain_seq, source_period_key, line_key, line_id, kind,
                      status, amount, currency, plan_id, plan_version, deal_id, summary, explanation, caused_by, posted_at,
                      prev_hash, hash";

impl Stored {
    /// Its canonical fields; `explanation` is its canonical JSON.
    pub fn fields<'a>(&'a self, tenant: &'a str, explanation: &'a str) -> PostingFields<'a> {
        PostingFields {
            tenant_id: tenant,
            rep_id: &self.rep_id,
            period_kind: &self.period_kind,
            period_key: &self.period_key,
            chain_seq: self.chain_seq.unwrap_or(0),
            posting_id: self.posting_id,
            source_period_key: &self.source_period_key,
            line_key: &self.line_key,
            line_id: self.line_id,
            kind: &self.kind,
            status: &self.status,
            amount: self.amount,
            currency: &self.currency,
            plan_id: &self.plan_id,
            plan_version: self.plan_version,
            deal_id: &self.deal_id,
            summary: &self.summary,
            explanation,
            caused_by: &self.caused_by,
            posted_at: self.posted_at,
        }
    }
}

/// What verification found.
#[derive(Debug, Default)]
pub struct Verified {
    pub postings: u64,
    pub chains: u64,
    pub seals: u64,
    pub breaks: Vec<Break>,
}

type SealRow = (
    i64,
    String,
    String,
    String,
    i64,
    i64,
    Vec<u8>,
    DateTime<Utc>,
    Vec<u8>,
    Vec<u8>,
);

/// Recomputes every chain of a tenant (of one period when given), every head and every
/// seal; reports the first break of each chain and each bad seal.
pub async fn verify(
    conn: &mut PgConnection,
    tenant: &str,
    period: Option<(PeriodKind, &str)>,
) -> Result<Verified, sqlx::Error> {
    let (pk, pkey) = period.map_or((None, None), |(k, p)| (Some(k.as_str()), Some(p)));
    let seals: Vec<SealRow> = sqlx::query_as(
        "SELECT seal_no, period_kind, period_key, reason, chains, postings, root, sealed_at, prev_hash, hash
           FROM ledger_seals WHERE tenant_id = $1 ORDER BY seal_no",
    )
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?;
    let leaves: Vec<(i64, String, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT seal_no, rep_id, length, head FROM ledger_seal_leaves WHERE tenant_id = $1 ORDER BY seal_no",
    )
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?;
    let mut leaves_of: HashMap<i64, Vec<(String, i64, Vec<u8>)>> = HashMap::new();
    for (n, r, l, h) in leaves {
        leaves_of.entry(n).or_default().push((r, l, h));
    }
    // The posting hashes the seals' leaves name, captured while the chains are walked:
    // None where the chain broke at or before the posting (its hash proves nothing).
    let mut wanted: HashMap<(String, i64), Option<Option<Vec<u8>>>> = HashMap::new();
    for s in &seals {
        if pk.is_some_and(|k| k != s.1) || pkey.is_some_and(|k| k != s.2) {
            continue;
        }
        for (rep, len, _) in leaves_of.get(&s.0).into_iter().flatten() {
            wanted.insert((chain_name(rep, &s.1, &s.2), *len), None);
        }
    }
    let heads: Vec<(String, String, String, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT rep_id, period_kind, period_key, length, head FROM ledger_chains
          WHERE tenant_id = $1 AND ($2::text IS NULL OR period_kind = $2) AND ($3::text IS NULL OR period_key = $3)",
    )
    .bind(tenant)
    .bind(pk)
    .bind(pkey)
    .fetch_all(&mut *conn)
    .await?;
    let heads: HashMap<String, (i64, Vec<u8>)> = heads
        .into_iter()
        .map(|(r, k, p, n, h)| (chain_name(&r, &k, &p), (n, h)))
        .collect();
    let mut check = ChainCheck::new();
    {
        let sql = format!(
            "SELECT {STORED} FROM ledger
              WHERE tenant_id = $1 AND ($2::text IS NULL OR period_kind = $2) AND ($3::text IS NULL OR period_key = $3)
              ORDER BY rep_id, period_kind, period_key, chain_seq NULLS LAST, seq"
        );
        let mut rows = sqlx::query_as::<_, Stored>(&sql)
            .bind(tenant)
            .bind(pk)
            .bind(pkey)
            .fetch(&mut *conn);
        let mut expl = String::new();
        while let Some(r) = rows.try_next().await? {
            let name = chain_name(&r.rep_id, &r.period_kind, &r.period_key);
            expl.clear();
            expl.push_str(&canon(&r.explanation));
            let seq = r.chain_seq.unwrap_or(0);
            check.record(
                &name,
                seq,
                &r.posting_id.to_string(),
                r.prev_hash.as_deref(),
                r.hash.as_deref(),
                &dc::posting(&r.fields(tenant, &expl)),
            );
            if let Some(w) = wanted.get_mut(&(name, seq)) {
                *w = Some(if check.broken() { None } else { r.hash.clone() });
            }
        }
    }
    check.finish(&heads);
    let mut out = Verified {
        postings: check.records,
        chains: u64::try_from(heads.len()).unwrap_or(u64::MAX),
        seals: 0,
        breaks: check.breaks,
    };
    // Seals: each chained onto the one before, each root over its leaves, each leaf the
    // hash its chain had at that length.
    let mut prev = GENESIS;
    for (no, kind, key, reason, chains, postings, root, at, sp, sh) in &seals {
        let name = format!("seal #{no} ({kind} {key}, {reason})");
        let mut bad = |problem: String| {
            out.breaks.push(Break {
                chain: "seals".into(),
                seq: *no,
                id: name.clone(),
                problem,
            });
        };
        let mine = pk.is_none_or(|k| k == kind) && pkey.is_none_or(|k| k == key);
        let root_h = hc::hash_of(root).unwrap_or(GENESIS);
        let fields = SealFields {
            tenant_id: tenant,
            seal_no: *no,
            period_kind: kind,
            period_key: key,
            reason,
            chains: *chains,
            postings: *postings,
            root: root_h,
            sealed_at: *at,
        };
        if sp.as_slice() != prev.as_slice() {
            bad(format!(
                "{name}: its previous hash is not the hash of seal #{}",
                no - 1
            ));
        } else if dc::seal(&fields).link(&prev).as_slice() != sh.as_slice() {
            bad(format!(
                "{name}: its content does not match its hash (the row was changed)"
            ));
        }
        prev = hc::hash_of(sh).unwrap_or(GENESIS);
        if !mine {
            continue;
        }
        out.seals += 1;
        let mut ls = leaves_of.remove(no).unwrap_or_default();
        ls.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let hashes: Vec<Hash> = ls
            .iter()
            .map(|(r, n, h)| dc::head_leaf(r, *n, &hc::hash_of(h).unwrap_or(GENESIS)))
            .collect();
        if i64::try_from(ls.len()).ok() != Some(*chains)
            || ls.iter().map(|l| l.1).sum::<i64>() != *postings
        {
            bad(format!(
                "{name}: covers {chains} chains and {postings} postings, its leaves say otherwise"
            ));
        } else if merkle_root(&hashes) != root_h {
            bad(format!(
                "{name}: its root is not the Merkle root of its leaves"
            ));
        }
        for (rep, len, h) in &ls {
            let chain = chain_name(rep, kind, key);
            match wanted.get(&(chain.clone(), *len)) {
                Some(Some(Some(at_len))) if at_len == h => {}
                Some(Some(Some(_))) => bad(format!(
                    "{name}: {chain} #{len} is not the posting it sealed (changed)"
                )),
                Some(Some(None)) => bad(format!(
                    "{name}: {chain} #{len} does not verify: its chain breaks before it"
                )),
                _ => bad(format!(
                    "{name}: {chain} #{len} is sealed but not in the ledger (deleted)"
                )),
            }
        }
    }
    Ok(out)
}

/// Lines of an export in batches (a closed receiver ends it early).
pub struct Sink {
    tx: tokio::sync::mpsc::Sender<Vec<String>>,
    buf: Vec<String>,
}

impl Sink {
    pub fn new(tx: tokio::sync::mpsc::Sender<Vec<String>>) -> Self {
        Self {
            tx,
            buf: Vec::new(),
        }
    }

    async fn line(&mut self, v: serde_json::Value) {
        self.buf.push(v.to_string());
        if self.buf.len() >= 500 {
            self.flush().await;
        }
    }

    async fn flush(&mut self) {
        if !self.buf.is_empty() {
            let _ = self.tx.send(std::mem::take(&mut self.buf)).await;
        }
    }
}

/// Writes a period's export (JSON lines, `docs/audit.md`): a header, its postings in chain
/// order, its chains' heads, its seals with their leaves.
pub async fn export(
    conn: &mut PgConnection,
    tenant: &str,
    kind: PeriodKind,
    key: &str,
    out: &mut Sink,
) -> Result<(), sqlx::Error> {
    out.line(serde_json::json!({
        "type": "header",
        "format": "spm.ledger.export.v1",
        "tenant_id": tenant,
        "period_kind": kind.as_str(),
        "period_key": key,
        "exported_at": hc::instant(Utc::now()),
    }))
    .await;
    {
        let sql = format!(
            "SELECT {STORED} FROM ledger WHERE tenant_id = $1 AND period_kind = $2 AND period_key = $3
              ORDER BY rep_id, chain_seq NULLS LAST, seq"
        );
        let mut rows = sqlx::query_as::<_, Stored>(&sql)
            .bind(tenant)
            .bind(kind.as_str())
            .bind(key)
            .fetch(&mut *conn);
        while let Some(r) = rows.try_next().await? {
            let expl = canon(&r.explanation);
            let f = r.fields(tenant, &expl);
            out.line(serde_json::json!({
                "type": "posting",
                "tenant_id": f.tenant_id,
                "rep_id": f.rep_id,
                "period_kind": f.period_kind,
                "period_key": f.period_key,
                "chain_seq": f.chain_seq.to_string(),
                "posting_id": f.posting_id.to_string(),
                "source_period_key": f.source_period_key,
                "line_key": f.line_key,
                "line_id": f.line_id.to_string(),
                "kind": f.kind,
                "status": f.status,
                "amount": hc::decimal(f.amount),
                "currency": f.currency,
                "plan_id": f.plan_id,
                "plan_version": f.plan_version.to_string(),
                "deal_id": f.deal_id,
                "summary": f.summary,
                "explanation": f.explanation,
                "caused_by": f.caused_by,
                "posted_at": hc::instant(f.posted_at),
                "prev_hash": r.prev_hash.as_deref().map(hex).unwrap_or_default(),
                "hash": r.hash.as_deref().map(hex).unwrap_or_default(),
            }))
            .await;
        }
    }
    let heads: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT rep_id, length, head FROM ledger_chains WHERE tenant_id = $1 AND period_kind = $2 AND period_key = $3 ORDER BY rep_id",
    )
    .bind(tenant)
    .bind(kind.as_str())
    .bind(key)
    .fetch_all(&mut *conn)
    .await?;
    for (rep, n, h) in heads {
        out.line(serde_json::json!({"type": "head", "rep_id": rep, "length": n.to_string(), "head": hex(&h)}))
            .await;
    }
    let seals: Vec<SealRow> = sqlx::query_as(
        "SELECT seal_no, period_kind, period_key, reason, chains, postings, root, sealed_at, prev_hash, hash
           FROM ledger_seals WHERE tenant_id = $1 AND period_kind = $2 AND period_key = $3 ORDER BY seal_no",
    )
    .bind(tenant)
    .bind(kind.as_str())
    .bind(key)
    .fetch_all(&mut *conn)
    .await?;
    for (no, k, p, reason, chains, postings, root, at, prev, hash) in seals {
        let leaves: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT rep_id, length, head FROM ledger_seal_leaves WHERE tenant_id = $1 AND seal_no = $2",
        )
        .bind(tenant)
        .bind(no)
        .fetch_all(&mut *conn)
        .await?;
        let mut leaves = leaves;
        leaves.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let leaves: Vec<serde_json::Value> = leaves
            .into_iter()
            .map(|(r, n, h)| serde_json::json!({"rep_id": r, "length": n.to_string(), "head": hex(&h)}))
            .collect();
        out.line(serde_json::json!({
            "type": "seal",
            "tenant_id": tenant,
            "seal_no": no.to_string(),
            "period_kind": k,
            "period_key": p,
            "reason": reason,
            "chains": chains.to_string(),
            "postings": postings.to_string(),
            "root": hex(&root),
            "sealed_at": hc::instant(at),
            "leaves": leaves,
            "prev_hash": hex(&prev),
            "hash": hex(&hash),
        }))
        .await;
    }
    out.flush().await;
    Ok(())
}

/// Chains postings made before chains existed, chain by chain in the order they were made
/// (once; later starts find none).
pub async fn adopt(pool: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    let chains: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT DISTINCT tenant_id, rep_id, period_kind, period_key FROM ledger WHERE hash IS NULL",
    )
    .fetch_all(pool)
    .await?;
    let mut n = 0u64;
    for (tenant, rep, kind, key) in chains {
        let mut tx = pool.begin().await?;
        let k: PeriodKind = kind.parse().unwrap_or(PeriodKind::Month);
        Locks::default()
            .chain(&tenant, &rep, k, &key, false)
            .take(&mut tx)
            .await?;
        let rows: Vec<Stored> = sqlx::query_as(&format!(
            "SELECT {STORED} FROM ledger WHERE tenant_id = $1 AND rep_id = $2 AND period_kind = $3 AND period_key = $4 ORDER BY seq"
        ))
        .bind(&tenant)
        .bind(&rep)
        .bind(&kind)
        .bind(&key)
        .fetch_all(&mut *tx)
        .await?;
        if rows.iter().any(|r| r.hash.is_some()) {
            // Chained since (another instance): leave it.
            continue;
        }
        let mut prev = GENESIS;
        let mut seq = 0i64;
        let mut total = Decimal::ZERO;
        for mut r in rows {
            seq += 1;
            total += r.amount;
            r.posted_at = hc::micros(r.posted_at);
            r.chain_seq = Some(seq);
            let expl = canon(&r.explanation);
            let h = dc::posting(&r.fields(&tenant, &expl)).link(&prev);
            sqlx::query(
                "UPDATE ledger SET chain_seq = $2, prev_hash = $3, hash = $4 WHERE posting_id = $1",
            )
            .bind(r.posting_id)
            .bind(seq)
            .bind(prev.to_vec())
            .bind(h.to_vec())
            .execute(&mut *tx)
            .await?;
            prev = h;
            n += 1;
        }
        sqlx::query(
            "INSERT INTO ledger_chains (tenant_id, period_kind, period_key, rep_id, length, head, total) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (tenant_id, period_kind, period_key, rep_id)
             DO UPDATE SET length = EXCLUDED.length, head = EXCLUDED.head, total = EXCLUDED.total",
        )
        .bind(&tenant)
        .bind(&kind)
        .bind(&key)
        .bind(&rep)
        .bind(seq)
        .bind(prev.to_vec())
        .bind(total)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(n)
}
