#!/usr/bin/env python3
"""Checks an SPM ledger export (`spm audit export`) without SPM: Python's standard library
only, written from docs/audit.md.

    python3 verify_export.py export.jsonl

Prints what it checked and exits 0 when every posting's hash, every chain, every chain head
and every seal (its Merkle root over its leaves, its hash, each leaf against the chain)
verifies; else prints the first break of each chain and exits 1.
"""

import hashlib
import json
import sys

GENESIS = bytes(32)


def field(s):
    b = s.encode("utf-8")
    return len(b).to_bytes(4, "big") + b


def record(kind, fields):
    out = field(kind)
    for f in fields:
        if isinstance(f, list):
            out += field(str(len(f)))
            for x in f:
                out += field(x)
        else:
            out += field(f)
    return out


def link(prev, rec):
    return hashlib.sha256(prev + rec).digest()


def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(leaves):
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(merkle_root(leaves[:k]), merkle_root(leaves[k:]))


POSTING_FIELDS = [
    "tenant_id", "rep_id", "period_kind", "period_key", "chain_seq", "posting_id",
    "source_period_key", "line_key", "line_id", "kind", "status", "amount", "currency",
    "plan_id", "plan_version", "deal_id", "summary", "explanation", "caused_by", "posted_at",
]


def main(path):
    postings, heads, seals = [], {}, []
    header = None
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            x = json.loads(line)
            t = x.get("type")
            if t == "header":
                header = x
            elif t == "posting":
                postings.append(x)
            elif t == "head":
                heads[x["rep_id"]] = (int(x["length"]), x["head"])
            elif t == "seal":
                seals.append(x)
            else:
                print(f"line {n}: unknown type {t!r}")
                return 1
    if header is None or header.get("format") != "spm.ledger.export.v1":
        print("not an spm.ledger.export.v1 file (no header)")
        return 1

    breaks = []
    chains = {}  # rep -> list of postings in file order
    for p in postings:
        chains.setdefault(p["rep_id"], []).append(p)
    hash_at = {}  # (rep, seq) -> hex hash, for the seals
    for rep, ps in chains.items():
        prev = GENESIS
        expect = 1
        for p in ps:
            seq = int(p["chain_seq"])
            where = f"{rep} #{seq} posting {p['posting_id']}"
            if p["period_kind"] != header["period_kind"] or p["period_key"] != header["period_key"]:
                breaks.append(f"{where}: belongs to another period")
                break
            if seq != expect:
                what = "missing (deleted)" if seq > expect else "a second record (inserted)"
                breaks.append(f"{where}: #{expect} {what}")
                break
            if bytes.fromhex(p["prev_hash"] or "00") != prev:
                breaks.append(f"{where}: its previous hash is not the hash of #{seq - 1}")
                break
            rec = record("spm.ledger.posting.v1", [p[k] for k in POSTING_FIELDS])
            h = link(prev, rec)
            if h.hex() != p["hash"]:
                breaks.append(f"{where}: its content does not match its hash (changed)")
                break
            hash_at[(rep, seq)] = p["hash"]
            prev = h
            expect += 1
        else:
            head = heads.get(rep)
            if head is None:
                breaks.append(f"{rep}: postings without a chain head")
            elif head[0] != expect - 1 or head[1] != prev.hex():
                breaks.append(
                    f"{rep}: the head says {head[0]} postings ending {head[1][:12]}, "
                    f"the chain holds {expect - 1} ending {prev.hex()[:12]}"
                )
    for rep in heads:
        if rep not in chains:
            breaks.append(f"{rep}: a chain head without postings (deleted)")

    for s in seals:
        name = f"seal #{s['seal_no']} ({s['reason']})"
        leaves = []
        for l in s["leaves"]:
            data = record("spm.ledger.head.v1", [l["rep_id"], l["length"], l["head"]])
            leaves.append(leaf_hash(data))
            if hash_at.get((l["rep_id"], int(l["length"]))) != l["head"]:
                breaks.append(f"{name}: {l['rep_id']} #{l['length']} is not the posting it sealed")
        root = merkle_root(leaves)
        if root.hex() != s["root"]:
            breaks.append(f"{name}: the root is not the Merkle root of its leaves")
        rec = record("spm.ledger.seal.v1", [
            s["tenant_id"], s["seal_no"], s["period_kind"], s["period_key"], s["reason"],
            s["chains"], s["postings"], s["root"], s["sealed_at"],
        ])
        if link(bytes.fromhex(s["prev_hash"]), rec).hex() != s["hash"]:
            breaks.append(f"{name}: its content does not match its hash (changed)")

    print(
        f"{header['tenant_id']} {header['period_kind']} {header['period_key']}: "
        f"{len(postings)} postings in {len(chains)} chains, {len(seals)} seals"
    )
    if breaks:
        for b in breaks:
            print("BROKEN:", b)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
