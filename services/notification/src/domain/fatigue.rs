//! Fatigue control: quiet hours, per-user rate limits and retry backoff.

use std::time::Duration;

use chrono::{DateTime, NaiveTime, TimeZone as _, Utc};
use chrono_tz::Tz;

/// Quiet hours `[start, end)` in local time; a window may wrap midnight (22:00-07:00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quiet {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl Quiet {
    /// Parses "HH:MM" pair; equal or empty values mean no quiet hours.
    pub fn parse(start: &str, end: &str) -> Result<Option<Self>, String> {
        if start.is_empty() && end.is_empty() {
            return Ok(None);
        }
        let t = |s: &str| {
            NaiveTime::parse_from_str(s, "%H:%M").map_err(|_| format!("{s:?} is not HH:MM"))
        };
        let (start, end) = (t(start)?, t(end)?);
        Ok((start != end).then_some(Self { start, end }))
    }

    pub fn contains(&self, t: NaiveTime) -> bool {
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// When a delivery due at `at` may go out: `at`, or the end of the quiet window.
    pub fn release(&self, tz: Tz, at: DateTime<Utc>) -> DateTime<Utc> {
        let local = at.with_timezone(&tz);
        if !self.contains(local.time()) {
            return at;
        }
        let mut day = local.date_naive();
        if self.start > self.end && local.time() >= self.start {
            day = day.succ_opt().unwrap_or(day);
        }
        tz.from_local_datetime(&day.and_time(self.end))
            .earliest()
            .map_or(at, |t| t.with_timezone(&Utc))
    }
}

/// Whether a recipient that already got `sent` deliveries on a channel in the current
/// window goes over `limit` (0: no limit) with one more.
pub fn over_limit(sent: u32, limit: u32) -> bool {
    limit > 0 && sent >= limit
}

/// Delay before attempt `attempt` (2, 3, ...): `base * 2^(attempt-2)`, capped at `max`,
/// with full jitter in its upper half (`jitter` in [0, 1)).
pub fn backoff(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(2).min(16));
    let d = exp.min(max);
    d.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn quiet_hours_defer_to_the_end_in_local_time() {
        let q = Quiet::parse("22:00", "07:00").unwrap().unwrap();
        let sh: Tz = "Asia/Shanghai".parse().unwrap();
        // 15:00 UTC is 23:00 in Shanghai: wait until 07:00 local = 23:00 UTC.
        assert_eq!(
            q.release(sh, utc("2026-11-27T15:00:00Z")),
            utc("2026-11-27T23:00:00Z")
        );
        // 02:00 local (18:00 UTC the day before): same morning.
        assert_eq!(
            q.release(sh, utc("2026-11-26T18:00:00Z")),
            utc("2026-11-26T23:00:00Z")
        );
        // 12:00 local: now.
        assert_eq!(
            q.release(sh, utc("2026-11-27T04:00:00Z")),
            utc("2026-11-27T04:00:00Z")
        );
        let day = Quiet::parse("12:00", "13:00").unwrap().unwrap();
        assert!(day.contains(NaiveTime::from_hms_opt(12, 30, 0).unwrap()));
        assert!(!day.contains(NaiveTime::from_hms_opt(13, 0, 0).unwrap()));
        assert_eq!(Quiet::parse("", "").unwrap(), None);
        assert!(Quiet::parse("25:00", "07:00").is_err());
    }

    #[test]
    fn limits_and_backoff() {
        assert!(!over_limit(9, 10));
        assert!(over_limit(10, 10));
        assert!(!over_limit(1000, 0));
        let b = Duration::from_millis(100);
        let m = Duration::from_secs(10);
        assert_eq!(backoff(2, b, m, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(4, b, m, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(4, b, m, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(30, b, m, 1.0), m);
    }
}
