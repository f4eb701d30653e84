//! The tenant's calendar: which week, month, fiscal quarter and fiscal year an instant falls
//! in, computed in the tenant's time zone. A fiscal year is named after the calendar year in
//! which it ends (fiscal year starting April 2026 = "FY2027").

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Days, LocalResult, Months, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0:?} is not an IANA time zone")]
    UnknownTimeZone(String),
    #[error("fiscal year start month must be 1..=12, got {0}")]
    BadFiscalStart(u32),
    #[error("{0:?} is not a period key of this kind (e.g. 2026-W48, 2026-11, FY2027-Q1, FY2027)")]
    BadKey(String),
}

/// The kinds of period SPM reports on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PeriodKind {
    Week,
    Month,
    Quarter,
    Year,
}

impl PeriodKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Week => "week",
            Self::Month => "month",
            Self::Quarter => "quarter",
            Self::Year => "year",
        }
    }
}

impl FromStr for PeriodKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "week" => Ok(Self::Week),
            "month" => Ok(Self::Month),
            "quarter" => Ok(Self::Quarter),
            "year" => Ok(Self::Year),
            other => Err(format!("unknown period kind {other:?}")),
        }
    }
}

impl fmt::Display for PeriodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One period: its kind, key and the half-open UTC interval `[start, end)` it covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Period {
    pub kind: PeriodKind,
    pub key: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Period {
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.start <= at && at < self.end
    }

    /// How much of the period has passed at `at`, clamped to `0..=1`.
    pub fn elapsed_fraction(&self, at: DateTime<Utc>) -> Decimal {
        if at <= self.start {
            return Decimal::ZERO;
        }
        if at >= self.end {
            return Decimal::ONE;
        }
        let done = (at - self.start).num_seconds();
        let total = (self.end - self.start).num_seconds().max(1);
        Decimal::from(done) / Decimal::from(total)
    }
}

/// A tenant's calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calendar {
    tz: Tz,
    fiscal_start_month: u32,
}

impl Default for Calendar {
    fn default() -> Self {
        Self {
            tz: Tz::UTC,
            fiscal_start_month: 1,
        }
    }
}

impl Calendar {
    pub fn new(time_zone: &str, fiscal_start_month: u32) -> Result<Self, Error> {
        let tz: Tz = time_zone
            .parse()
            .map_err(|_| Error::UnknownTimeZone(time_zone.to_owned()))?;
        if !(1..=12).contains(&fiscal_start_month) {
            return Err(Error::BadFiscalStart(fiscal_start_month));
        }
        Ok(Self {
            tz,
            fiscal_start_month,
        })
    }

    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    pub fn fiscal_start_month(&self) -> u32 {
        self.fiscal_start_month
    }

    /// The tenant-local calendar date of `at`.
    pub fn local_date(&self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.tz).date_naive()
    }

    /// The period of `kind` that contains `at`.
    pub fn period(&self, kind: PeriodKind, at: DateTime<Utc>) -> Period {
        let d = self.local_date(at);
        let (first, last_excl) = match kind {
            PeriodKind::Week => {
                let monday = d - Days::new(u64::from(d.weekday().num_days_from_monday()));
                (monday, monday + Days::new(7))
            }
            PeriodKind::Month => {
                let first = d.with_day(1).expect("day 1 exists");
                (first, first + Months::new(1))
            }
            PeriodKind::Quarter => {
                let fy_first = self.fiscal_year_first_day(d);
                let months_in = month_diff(fy_first, d);
                let first = fy_first + Months::new(months_in / 3 * 3);
                (first, first + Months::new(3))
            }
            PeriodKind::Year => {
                let first = self.fiscal_year_first_day(d);
                (first, first + Months::new(12))
            }
        };
        Period {
            kind,
            key: self.key_of(kind, first),
            start: self.local_midnight(first),
            end: self.local_midnight(last_excl),
        }
    }

    /// The period named by `key` ("2026-W48", "2026-11", "FY2027-Q1", "FY2027").
    pub fn parse_key(&self, kind: PeriodKind, key: &str) -> Result<Period, Error> {
        let bad = || Error::BadKey(key.to_owned());
        let first = match kind {
            PeriodKind::Week => {
                let (y, w) = key.split_once("-W").ok_or_else(bad)?;
                let (y, w) = (
                    y.parse::<i32>().map_err(|_| bad())?,
                    w.parse::<u32>().map_err(|_| bad())?,
                );
                NaiveDate::from_isoywd_opt(y, w, chrono::Weekday::Mon).ok_or_else(bad)?
            }
            PeriodKind::Month => {
                let (y, m) = key.split_once('-').ok_or_else(bad)?;
                if m.len() != 2 {
                    return Err(bad());
                }
                let (y, m) = (
                    y.parse::<i32>().map_err(|_| bad())?,
                    m.parse::<u32>().map_err(|_| bad())?,
                );
                NaiveDate::from_ymd_opt(y, m, 1).ok_or_else(bad)?
            }
            PeriodKind::Quarter => {
                let rest = key.strip_prefix("FY").ok_or_else(bad)?;
                let (y, q) = rest.split_once("-Q").ok_or_else(bad)?;
                let (fy, q) = (
                    y.parse::<i32>().map_err(|_| bad())?,
                    q.parse::<u32>().map_err(|_| bad())?,
                );
                if !(1..=4).contains(&q) {
                    return Err(bad());
                }
                self.fiscal_year_start(fy).ok_or_else(bad)? + Months::new((q - 1) * 3)
            }
            PeriodKind::Year => {
                let fy = key
                    .strip_prefix("FY")
                    .ok_or_else(bad)?
                    .parse::<i32>()
                    .map_err(|_| bad())?;
                self.fiscal_year_start(fy).ok_or_else(bad)?
            }
        };
        let p = self.period(kind, self.local_midnight(first));
        if p.key != key {
            return Err(bad());
        }
        Ok(p)
    }

    /// The periods of `kind` from the one containing `from` up to the one containing `to`.
    pub fn periods_between(
        &self,
        kind: PeriodKind,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<Period> {
        let mut out = Vec::new();
        let mut p = self.period(kind, from);
        while p.start <= to {
            let next = p.end;
            out.push(p);
            p = self.period(kind, next);
        }
        out
    }

    fn fiscal_year_first_day(&self, d: NaiveDate) -> NaiveDate {
        let year = if d.month() >= self.fiscal_start_month {
            d.year()
        } else {
            d.year() - 1
        };
        NaiveDate::from_ymd_opt(year, self.fiscal_start_month, 1).expect("valid month")
    }

    /// First day of fiscal year `fy` (named after the calendar year it ends in).
    fn fiscal_year_start(&self, fy: i32) -> Option<NaiveDate> {
        let year = if self.fiscal_start_month == 1 {
            fy
        } else {
            fy - 1
        };
        NaiveDate::from_ymd_opt(year, self.fiscal_start_month, 1)
    }

    fn key_of(&self, kind: PeriodKind, first: NaiveDate) -> String {
        match kind {
            PeriodKind::Week => {
                let w = first.iso_week();
                format!("{}-W{:02}", w.year(), w.week())
            }
            PeriodKind::Month => format!("{}-{:02}", first.year(), first.month()),
            PeriodKind::Quarter => {
                let fy_first = self.fiscal_year_first_day(first);
                let q = month_diff(fy_first, first) / 3 + 1;
                format!("FY{}-Q{q}", fiscal_year_name(fy_first))
            }
            PeriodKind::Year => format!("FY{}", fiscal_year_name(first)),
        }
    }

    /// Tenant-local midnight at the start of `d`, in UTC. Where a DST jump skips midnight,
    /// the first instant that exists that day.
    fn local_midnight(&self, d: NaiveDate) -> DateTime<Utc> {
        let mut t = d.and_hms_opt(0, 0, 0).expect("midnight");
        for _ in 0..4 {
            match self.tz.from_local_datetime(&t) {
                LocalResult::Single(x) | LocalResult::Ambiguous(x, _) => {
                    return x.with_timezone(&Utc);
                }
                LocalResult::None => t += chrono::Duration::minutes(30),
            }
        }
        Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"))
    }
}

fn fiscal_year_name(fy_first: NaiveDate) -> i32 {
    if fy_first.month() == 1 {
        fy_first.year()
    } else {
        fy_first.year() + 1
    }
}

fn month_diff(from: NaiveDate, to: NaiveDate) -> u32 {
    let m = (to.year() - from.year()) * 12 + to.month() as i32 - from.month() as i32;
    u32::try_from(m).expect("to is not before from")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn calendar_year_known_answers() {
        let cal = Calendar::new("UTC", 1).unwrap();
        let at = utc("2026-11-27T12:00:00Z");
        assert_eq!(cal.period(PeriodKind::Month, at).key, "2026-11");
        assert_eq!(cal.period(PeriodKind::Quarter, at).key, "FY2026-Q4");
        assert_eq!(cal.period(PeriodKind::Year, at).key, "FY2026");
        assert_eq!(cal.period(PeriodKind::Week, at).key, "2026-W48");
        let q = cal.period(PeriodKind::Quarter, at);
        assert_eq!(q.start, utc("2026-10-01T00:00:00Z"));
        assert_eq!(q.end, utc("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn fiscal_year_starting_april() {
        let cal = Calendar::new("UTC", 4).unwrap();
        let cases = [
            ("2026-04-01T00:00:00Z", "FY2027-Q1", "FY2027"),
            ("2026-03-31T23:59:59Z", "FY2026-Q4", "FY2026"),
            ("2026-11-27T00:00:00Z", "FY2027-Q3", "FY2027"),
            ("2027-01-15T00:00:00Z", "FY2027-Q4", "FY2027"),
        ];
        for (at, q, y) in cases {
            assert_eq!(cal.period(PeriodKind::Quarter, utc(at)).key, q, "{at}");
            assert_eq!(cal.period(PeriodKind::Year, utc(at)).key, y, "{at}");
        }
    }

    #[test]
    fn time_zone_moves_the_boundary() {
        // 2026-11-30T17:00Z is already December 1st in Shanghai (UTC+8).
        let sh = Calendar::new("Asia/Shanghai", 1).unwrap();
        let at = utc("2026-11-30T17:00:00Z");
        assert_eq!(sh.period(PeriodKind::Month, at).key, "2026-12");
        assert_eq!(
            Calendar::default().period(PeriodKind::Month, at).key,
            "2026-11"
        );
        assert_eq!(
            sh.period(PeriodKind::Month, at).start,
            utc("2026-11-30T16:00:00Z")
        );
    }

    #[test]
    fn keys_round_trip() {
        let cal = Calendar::new("America/New_York", 2).unwrap();
        let mut at = utc("2025-01-01T00:00:00Z");
        while at < utc("2028-01-01T00:00:00Z") {
            for kind in [
                PeriodKind::Week,
                PeriodKind::Month,
                PeriodKind::Quarter,
                PeriodKind::Year,
            ] {
                let p = cal.period(kind, at);
                assert!(p.contains(at), "{kind} {at}");
                assert_eq!(cal.parse_key(kind, &p.key).unwrap(), p);
            }
            at += chrono::Duration::hours(37);
        }
        assert!(cal.parse_key(PeriodKind::Month, "2026-13").is_err());
        assert!(cal.parse_key(PeriodKind::Quarter, "FY2027-Q5").is_err());
        assert!(cal.parse_key(PeriodKind::Month, "2026-1").is_err());
    }

    #[test]
    fn bad_calendars_are_rejected() {
        assert_eq!(
            Calendar::new("Mars/Olympus", 1),
            Err(Error::UnknownTimeZone("Mars/Olympus".into()))
        );
        assert_eq!(Calendar::new("UTC", 13), Err(Error::BadFiscalStart(13)));
    }

    #[test]
    fn elapsed_fraction_is_clamped() {
        let p = Calendar::default().period(PeriodKind::Month, utc("2026-11-10T00:00:00Z"));
        assert_eq!(
            p.elapsed_fraction(utc("2026-10-01T00:00:00Z")),
            Decimal::ZERO
        );
        assert_eq!(
            p.elapsed_fraction(utc("2026-11-16T00:00:00Z")),
            Decimal::new(5, 1)
        );
        assert_eq!(
            p.elapsed_fraction(utc("2027-01-01T00:00:00Z")),
            Decimal::ONE
        );
    }
}
