//! Leaderboard ranking.

use rust_decimal::Decimal;

/// Competition ranking ("1224"): sorted by value descending, ties share a rank and the
/// next rank skips; equal values are listed by id for a stable order.
pub fn rank<T: Clone>(mut rows: Vec<(String, Decimal, T)>) -> Vec<(u32, String, Decimal, T)> {
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut out = Vec::with_capacity(rows.len());
    let mut prev: Option<Decimal> = None;
    let mut rank = 0u32;
    for (i, (id, v, extra)) in rows.into_iter().enumerate() {
        if prev != Some(v) {
            rank = u32::try_from(i).unwrap_or(u32::MAX) + 1;
            prev = Some(v);
        }
        out.push((rank, id, v, extra));
    }
    out
}

#[cfg(test)]
mod tests {
    use rust_decimal_macros::dec;

    use super::*;

    #[test]
    fn ties_share_a_rank_and_the_next_skips() {
        let got = rank(vec![
            ("c".into(), dec!(80), ()),
            ("a".into(), dec!(95), ()),
            ("d".into(), dec!(80), ()),
            ("b".into(), dec!(70), ()),
        ]);
        let view: Vec<(u32, &str)> = got.iter().map(|(r, id, ..)| (*r, id.as_str())).collect();
        assert_eq!(view, [(1, "a"), (2, "c"), (2, "d"), (4, "b")]);
    }
}
