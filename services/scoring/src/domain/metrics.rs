//! The metrics SPM reports, computed from cell totals of one subject and period.
//!
//! Definitions (all money in the tenant's base currency, reversals netted out):
//! - `revenue`: credited deal amounts closed in the period, less reversals of those deals.
//! - `deals_won`: deals closed in the period and not fully reversed.
//! - `avg_deal_size`: revenue / deals_won.
//! - `amount_due`: credited amounts of deals whose payment is due in the period, less
//!   reversals of those deals.
//! - `collected`: payments received (at any time so far) on deals due in the period.
//! - `collection_rate` (回款率): collected / amount_due. With nothing due it is 1: nothing
//!   is outstanding.
//! - `amount_collected`: payments received during the period (cash basis).
//! - `csat_avg`: mean CSAT score (1..=5) of surveys in the period; undefined without one.
//! - `nps`: (promoters - detractors) / responses x 100; undefined without a response.
//! - activity counts: visits, calls, meetings, emails, demos, contracts_signed,
//!   after_sales_resolved, trainings_completed.

use std::collections::HashMap;

use rust_decimal::Decimal;

use super::facts::ActivityCell;

pub use spm_core::metrics::{NAMES as METRICS, is_metric};

/// Metrics counted per week too (process alerts compare weekly run-rates).
pub fn is_activity(metric: &str) -> bool {
    ActivityCell::ALL.iter().any(|a| a.name() == metric)
}

/// Cell totals of one subject and period: cell name -> (sum, contributing facts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CellTotals(pub HashMap<String, (Decimal, i64)>);

impl CellTotals {
    pub fn add(&mut self, cell: &str, sum: Decimal, n: i64) {
        let e = self.0.entry(cell.to_owned()).or_insert((Decimal::ZERO, 0));
        e.0 += sum;
        e.1 += n;
    }

    fn get(&self, cell: &str) -> (Decimal, i64) {
        self.0.get(cell).copied().unwrap_or((Decimal::ZERO, 0))
    }

    /// The value of `metric` (None when undefined) and how many facts contributed.
    pub fn metric(&self, metric: &str) -> (Option<Decimal>, u64) {
        let n = |x: i64| u64::try_from(x).unwrap_or(0);
        let ratio = |num: &str, den: &str| {
            let (a, an) = self.get(num);
            let (b, bn) = self.get(den);
            (a, b, n(an) + n(bn))
        };
        match metric {
            "avg_deal_size" => {
                let (rev, won, cnt) = ratio("revenue", "deals_won");
                ((won > Decimal::ZERO).then(|| rev / won), cnt)
            }
            "collection_rate" => {
                let (col, due, cnt) = ratio("collected", "amount_due");
                let v = if due > Decimal::ZERO {
                    col / due
                } else {
                    Decimal::ONE
                };
                (Some(v), cnt)
            }
            "csat_avg" => {
                let (sum, c) = self.get("csat");
                ((c > 0).then(|| sum / Decimal::from(c)), n(c))
            }
            "nps" => {
                let (sum, c) = self.get("nps");
                (
                    (c > 0).then(|| sum * Decimal::ONE_HUNDRED / Decimal::from(c)),
                    n(c),
                )
            }
            other => {
                let (sum, c) = self.get(other);
                (Some(sum), n(c))
            }
        }
    }

    /// Every metric, rounded for display (4 decimals, half-even).
    pub fn all(&self) -> Vec<(&'static str, Option<Decimal>, u64)> {
        METRICS
            .iter()
            .map(|m| {
                let (v, n) = self.metric(m);
                (*m, v.map(|v| super::round(v, 4)), n)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal_macros::dec;

    use super::*;

    fn totals(cells: &[(&str, Decimal, i64)]) -> CellTotals {
        let mut t = CellTotals::default();
        for (c, s, n) in cells {
            t.add(c, *s, *n);
        }
        t
    }

    #[test]
    fn known_answers_per_metric() {
        let t = totals(&[
            ("revenue", dec!(3000), 4),
            ("deals_won", dec!(3), 3),
            ("amount_due", dec!(2000), 2),
            ("collected", dec!(1500), 3),
            ("csat", dec!(13), 3),
            ("nps", dec!(1), 4),
            ("visits", dec!(7), 7),
        ]);
        let table = [
            ("revenue", Some(dec!(3000))),
            ("deals_won", Some(dec!(3))),
            ("avg_deal_size", Some(dec!(1000))),
            ("collection_rate", Some(dec!(0.75))),
            ("amount_collected", Some(dec!(0))),
            ("csat_avg", Some(dec!(13) / dec!(3))),
            ("nps", Some(dec!(25))),
            ("visits", Some(dec!(7))),
            ("calls", Some(dec!(0))),
        ];
        for (m, want) in table {
            assert_eq!(t.metric(m).0, want, "{m}");
        }
        assert_eq!(t.metric("visits").1, 7);
        assert_eq!(t.metric("collection_rate").1, 5);
    }

    #[test]
    fn undefined_and_neutral_values() {
        let t = CellTotals::default();
        assert_eq!(t.metric("csat_avg").0, None);
        assert_eq!(t.metric("nps").0, None);
        assert_eq!(t.metric("avg_deal_size").0, None);
        // Nothing due: nothing outstanding.
        assert_eq!(t.metric("collection_rate").0, Some(Decimal::ONE));
    }
}
