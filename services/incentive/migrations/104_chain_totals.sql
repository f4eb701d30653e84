-- Each chain's running total (the sum of its postings: the rep's statement total for the
-- period), moved by the same statement that moves its head. A recompute that posts then
-- reads it with the head under the chain's lock instead of summing the chain's postings
-- again (O(1) instead of O(postings) per rep-period and batch).
ALTER TABLE ledger_chains ADD COLUMN total numeric NOT NULL DEFAULT 0;

UPDATE ledger_chains c SET total = s.total
  FROM (SELECT tenant_id, period_kind, period_key, rep_id, sum(amount) AS total
          FROM ledger GROUP BY 1, 2, 3, 4) s
 WHERE c.tenant_id = s.tenant_id AND c.period_kind = s.period_kind
   AND c.period_key = s.period_key AND c.rep_id = s.rep_id;

DROP FUNCTION ledger_lock(text, bigint[], bool[], int[], text[], text[], text[]);

-- As in 101, and the chains' totals beside their heads.
CREATE FUNCTION ledger_lock(p_tenant text, p_keys bigint[], p_shared bool[], p_classes int[],
                            p_reps text[], p_kinds text[], p_periods text[])
RETURNS TABLE (rep_id text, period_kind text, period_key text, length bigint, head bytea,
               total numeric, at timestamptz)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM count(CASE WHEN u.s THEN pg_advisory_xact_lock_shared(u.k) ELSE pg_advisory_xact_lock(u.k) END)
       FROM (SELECT x.k, x.s FROM unnest(p_keys, p_shared, p_classes) AS x(k, s, o) ORDER BY x.o, x.k) AS u;
    RETURN QUERY SELECT NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::bytea, NULL::numeric, clock_timestamp();
    RETURN QUERY
        SELECT c.rep_id, c.period_kind, c.period_key, c.length, c.head, c.total, NULL::timestamptz
          FROM ledger_chains c JOIN unnest(p_reps, p_kinds, p_periods) AS w(rep, kind, key)
            ON c.rep_id = w.rep AND c.period_kind = w.kind AND c.period_key = w.key
         WHERE c.tenant_id = p_tenant;
END
$$;
