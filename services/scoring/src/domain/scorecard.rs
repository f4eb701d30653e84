//! Scorecards as data: weighted KPIs with a target (the subject's goal or a fixed value)
//! and a curve turning attainment into points; the score is the weighted sum, capped.
//!
//! Rounding: attainment to 4 decimals, KPI points and the score to 2 (half-even).

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use spm_core::money::parse_decimal;
use spm_core::validation::{FieldViolation, Violations};
use spm_proto::events::v1::{KpiScore, Pillar};
use spm_proto::scoring::v1 as pb;

use super::metrics::{CellTotals, is_metric};
use super::round;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Assignment {
    Team(String),
    Role(String),
    TenantDefault,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Target {
    Goal,
    Fixed(Decimal),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Curve {
    LinearCapped {
        cap: Decimal,
    },
    Threshold {
        min: Decimal,
        cap: Decimal,
    },
    /// (from attainment, points), ascending.
    Bands(Vec<(Decimal, Decimal)>),
}

impl Curve {
    /// Points (0..) for `attainment`.
    pub fn points(&self, attainment: Decimal) -> Decimal {
        match self {
            Self::LinearCapped { cap } => {
                attainment.min(*cap).max(Decimal::ZERO) * Decimal::ONE_HUNDRED
            }
            Self::Threshold { min, cap } => {
                if attainment < *min {
                    Decimal::ZERO
                } else {
                    attainment.min(*cap) * Decimal::ONE_HUNDRED
                }
            }
            Self::Bands(bands) => bands
                .iter()
                .rev()
                .find(|(from, _)| attainment >= *from)
                .map_or(Decimal::ZERO, |(_, p)| *p),
        }
    }

    /// How the curve reads, for explanations.
    pub fn describe(&self) -> String {
        match self {
            Self::LinearCapped { cap } => {
                format!("linear, capped at {cap}: min(attainment, {cap}) x 100")
            }
            Self::Threshold { min, cap } => {
                format!("threshold {min}: 0 below, else min(attainment, {cap}) x 100")
            }
            Self::Bands(b) => {
                let parts: Vec<String> = b.iter().map(|(f, p)| format!(">= {f}: {p}")).collect();
                format!("bands ({})", parts.join(", "))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Kpi {
    pub kpi_id: String,
    pub metric: String,
    pub weight: Decimal,
    pub target: Target,
    pub curve: Curve,
    pub pillar: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scorecard {
    pub scorecard_id: String,
    pub name: String,
    pub version: u32,
    pub assignment: Assignment,
    pub kpis: Vec<Kpi>,
    pub cap: Decimal,
}

fn dec(v: &mut Violations, field: &str, s: &str, default: Option<Decimal>) -> Option<Decimal> {
    if s.is_empty() {
        if default.is_none() {
            v.add(field, "is required");
        }
        return default;
    }
    match parse_decimal(s) {
        Ok(d) => Some(d),
        Err(e) => {
            v.add(field, e.to_string());
            None
        }
    }
}

/// Checks a scorecard definition: KPIs with known metrics, weights summing to 100,
/// well-formed curves. The version is set by the caller.
pub fn from_proto(c: &pb::Scorecard) -> Result<Scorecard, Vec<FieldViolation>> {
    let mut v = Violations::new();
    let id_ok = v.id("scorecard_id", &c.scorecard_id, 64);
    v.text("name", &c.name, 200);
    let assignment = match c.assignment.as_ref().and_then(|a| a.kind.as_ref()) {
        Some(pb::scorecard_assignment::Kind::TeamId(t)) if !t.is_empty() => {
            Assignment::Team(t.clone())
        }
        Some(pb::scorecard_assignment::Kind::Role(r)) if !r.is_empty() => {
            Assignment::Role(r.clone())
        }
        Some(pb::scorecard_assignment::Kind::TenantDefault(true)) => Assignment::TenantDefault,
        _ => {
            v.add(
                "assignment",
                "one of team_id, role or tenant_default=true is required",
            );
            Assignment::TenantDefault
        }
    };
    let cap =
        dec(&mut v, "cap", &c.cap, Some(Decimal::ONE_HUNDRED)).unwrap_or(Decimal::ONE_HUNDRED);
    if cap <= Decimal::ZERO {
        v.add("cap", "must be greater than zero");
    }
    if c.kpis.is_empty() {
        v.add("kpis", "at least one KPI is required");
    }
    let mut kpis = Vec::new();
    let mut total = Decimal::ZERO;
    let mut weights_ok = true;
    let mut ids = std::collections::HashSet::new();
    for (i, k) in c.kpis.iter().enumerate() {
        let f = format!("kpis[{i}]");
        if v.id(format!("{f}.kpi_id"), &k.kpi_id, 64) && !ids.insert(k.kpi_id.as_str()) {
            v.add(format!("{f}.kpi_id"), "is used twice");
        }
        if !is_metric(&k.metric) {
            v.add(
                format!("{f}.metric"),
                format!("unknown metric {:?}", k.metric),
            );
        }
        let weight = dec(&mut v, &format!("{f}.weight"), &k.weight, None);
        match weight {
            Some(w) if w > Decimal::ZERO && w <= Decimal::ONE_HUNDRED => total += w,
            Some(_) => {
                v.add(format!("{f}.weight"), "must be in (0, 100]");
                weights_ok = false;
            }
            None => weights_ok = false,
        }
        let target = match k.target.as_ref().and_then(|t| t.kind.as_ref()) {
            Some(pb::kpi_target::Kind::Goal(true)) => Some(Target::Goal),
            Some(pb::kpi_target::Kind::Fixed(s)) => {
                match dec(&mut v, &format!("{f}.target.fixed"), s, None) {
                    Some(d) if d > Decimal::ZERO => Some(Target::Fixed(d)),
                    Some(_) => {
                        v.add(format!("{f}.target.fixed"), "must be greater than zero");
                        None
                    }
                    None => None,
                }
            }
            _ => {
                v.add(
                    format!("{f}.target"),
                    "goal=true or a fixed target is required",
                );
                None
            }
        };
        let curve = curve(&mut v, &format!("{f}.curve"), k.curve.as_ref());
        let pillar = match Pillar::try_from(k.pillar) {
            Ok(p) if p != Pillar::Unspecified => p as i32,
            _ => {
                v.add(
                    format!("{f}.pillar"),
                    "must be RESULTS, BEHAVIOUR or CAPABILITY",
                );
                0
            }
        };
        if let (Some(w), Some(t), Some(cv)) = (weight, target, curve) {
            kpis.push(Kpi {
                kpi_id: k.kpi_id.clone(),
                metric: k.metric.clone(),
                weight: w,
                target: t,
                curve: cv,
                pillar,
            });
        }
    }
    if weights_ok && !c.kpis.is_empty() && total != Decimal::ONE_HUNDRED {
        v.add("kpis", format!("weights must sum to 100, got {total}"));
    }
    let _ = id_ok;
    v.finish(Scorecard {
        scorecard_id: c.scorecard_id.clone(),
        name: c.name.clone(),
        version: 0,
        assignment,
        kpis,
        cap,
    })
}

fn curve(v: &mut Violations, f: &str, c: Option<&pb::Curve>) -> Option<Curve> {
    match c.and_then(|c| c.kind.as_ref()) {
        None => Some(Curve::LinearCapped { cap: Decimal::ONE }),
        Some(pb::curve::Kind::LinearCapped(l)) => {
            let cap = dec(
                v,
                &format!("{f}.linear_capped.cap"),
                &l.cap,
                Some(Decimal::ONE),
            )?;
            if cap <= Decimal::ZERO {
                v.add(
                    format!("{f}.linear_capped.cap"),
                    "must be greater than zero",
                );
                return None;
            }
            Some(Curve::LinearCapped { cap })
        }
        Some(pb::curve::Kind::Threshold(t)) => {
            let min = dec(v, &format!("{f}.threshold.min"), &t.min, None)?;
            let cap = dec(v, &format!("{f}.threshold.cap"), &t.cap, Some(Decimal::ONE))?;
            if min < Decimal::ZERO || cap < min || cap <= Decimal::ZERO {
                v.add(
                    format!("{f}.threshold"),
                    "needs 0 <= min <= cap and cap > 0",
                );
                return None;
            }
            Some(Curve::Threshold { min, cap })
        }
        Some(pb::curve::Kind::Bands(b)) => {
            if b.bands.is_empty() {
                v.add(format!("{f}.bands"), "at least one band is required");
                return None;
            }
            let mut out = Vec::new();
            for (i, band) in b.bands.iter().enumerate() {
                let from = dec(v, &format!("{f}.bands[{i}].from"), &band.from, None)?;
                let points = dec(v, &format!("{f}.bands[{i}].points"), &band.points, None)?;
                if points < Decimal::ZERO || from < Decimal::ZERO {
                    v.add(
                        format!("{f}.bands[{i}]"),
                        "from and points must not be negative",
                    );
                    return None;
                }
                if out
                    .last()
                    .is_some_and(|(prev, _): &(Decimal, Decimal)| from <= *prev)
                {
                    v.add(
                        format!("{f}.bands[{i}].from"),
                        "bands must be in ascending order of `from`",
                    );
                    return None;
                }
                out.push((from, points));
            }
            Some(Curve::Bands(out))
        }
    }
}

/// The wire form of a scorecard.
pub fn to_proto(c: &Scorecard) -> pb::Scorecard {
    use pb::scorecard_assignment::Kind as A;
    pb::Scorecard {
        scorecard_id: c.scorecard_id.clone(),
        name: c.name.clone(),
        version: c.version,
        assignment: Some(pb::ScorecardAssignment {
            kind: Some(match &c.assignment {
                Assignment::Team(t) => A::TeamId(t.clone()),
                Assignment::Role(r) => A::Role(r.clone()),
                Assignment::TenantDefault => A::TenantDefault(true),
            }),
        }),
        kpis: c
            .kpis
            .iter()
            .map(|k| pb::Kpi {
                kpi_id: k.kpi_id.clone(),
                metric: k.metric.clone(),
                weight: k.weight.normalize().to_string(),
                target: Some(pb::KpiTarget {
                    kind: Some(match &k.target {
                        Target::Goal => pb::kpi_target::Kind::Goal(true),
                        Target::Fixed(d) => pb::kpi_target::Kind::Fixed(d.normalize().to_string()),
                    }),
                }),
                curve: Some(pb::Curve {
                    kind: Some(match &k.curve {
                        Curve::LinearCapped { cap } => {
                            pb::curve::Kind::LinearCapped(pb::LinearCapped {
                                cap: cap.normalize().to_string(),
                            })
                        }
                        Curve::Threshold { min, cap } => {
                            pb::curve::Kind::Threshold(pb::Threshold {
                                min: min.normalize().to_string(),
                                cap: cap.normalize().to_string(),
                            })
                        }
                        Curve::Bands(b) => pb::curve::Kind::Bands(pb::Bands {
                            bands: b
                                .iter()
                                .map(|(f, p)| pb::Band {
                                    from: f.normalize().to_string(),
                                    points: p.normalize().to_string(),
                                })
                                .collect(),
                        }),
                    }),
                }),
                pillar: k.pillar,
            })
            .collect(),
        cap: c.cap.normalize().to_string(),
        created_at: None,
    }
}

/// A computed score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scored {
    pub score: Decimal,
    pub kpis: Vec<KpiScore>,
    pub pillars: BTreeMap<String, Decimal>,
}

/// Scores `totals` against `card`; `goal` gives the subject's goal target for a metric.
pub fn score(
    card: &Scorecard,
    totals: &CellTotals,
    goal: &dyn Fn(&str) -> Option<Decimal>,
) -> Scored {
    let mut total = Decimal::ZERO;
    let mut pillars = BTreeMap::new();
    let mut kpis = Vec::with_capacity(card.kpis.len());
    for k in &card.kpis {
        let (value, n) = totals.metric(&k.metric);
        let target = match &k.target {
            Target::Goal => goal(&k.metric),
            Target::Fixed(t) => Some(*t),
        };
        let attainment = match (value, target) {
            (Some(v), Some(t)) if t > Decimal::ZERO => Some(round(v / t, 4)),
            _ => None,
        };
        let points = round(attainment.map_or(Decimal::ZERO, |a| k.curve.points(a)), 2);
        let weighted = points * k.weight / Decimal::ONE_HUNDRED;
        total += weighted;
        let pillar_name = Pillar::try_from(k.pillar).map_or("unspecified", |p| p.as_str_name());
        *pillars
            .entry(pillar_name.to_owned())
            .or_insert(Decimal::ZERO) += weighted;
        kpis.push(KpiScore {
            kpi_id: k.kpi_id.clone(),
            metric: k.metric.clone(),
            value: value.map(|v| round(v, 4).to_string()).unwrap_or_default(),
            target: target
                .map(|t| t.normalize().to_string())
                .unwrap_or_default(),
            attainment: attainment.map(|a| a.to_string()).unwrap_or_default(),
            points: points.to_string(),
            weight: k.weight.normalize().to_string(),
            pillar: k.pillar,
            event_count: u32::try_from(n).unwrap_or(u32::MAX),
        });
    }
    Scored {
        score: round(total.min(card.cap), 2),
        kpis,
        pillars: pillars.into_iter().map(|(k, v)| (k, round(v, 2))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal_macros::dec;

    use super::*;

    #[test]
    fn curves_known_answers() {
        let lin = Curve::LinearCapped { cap: dec!(1.2) };
        assert_eq!(lin.points(dec!(0.85)), dec!(85));
        assert_eq!(lin.points(dec!(1.5)), dec!(120));
        let th = Curve::Threshold {
            min: dec!(0.8),
            cap: dec!(1),
        };
        assert_eq!(th.points(dec!(0.79)), dec!(0));
        assert_eq!(th.points(dec!(0.8)), dec!(80));
        assert_eq!(th.points(dec!(1.3)), dec!(100));
        let bands = Curve::Bands(vec![
            (dec!(0), dec!(0)),
            (dec!(0.5), dec!(40)),
            (dec!(1), dec!(100)),
        ]);
        assert_eq!(bands.points(dec!(0.49)), dec!(0));
        assert_eq!(bands.points(dec!(0.5)), dec!(40));
        assert_eq!(bands.points(dec!(0.99)), dec!(40));
        assert_eq!(bands.points(dec!(2)), dec!(100));
    }

    fn card() -> Scorecard {
        Scorecard {
            scorecard_id: "sc".into(),
            name: "AE".into(),
            version: 1,
            assignment: Assignment::TenantDefault,
            cap: dec!(110),
            kpis: vec![
                Kpi {
                    kpi_id: "rev".into(),
                    metric: "revenue".into(),
                    weight: dec!(60),
                    target: Target::Goal,
                    curve: Curve::LinearCapped { cap: dec!(1.5) },
                    pillar: Pillar::Results as i32,
                },
                Kpi {
                    kpi_id: "col".into(),
                    metric: "collection_rate".into(),
                    weight: dec!(20),
                    target: Target::Fixed(dec!(0.9)),
                    curve: Curve::Threshold {
                        min: dec!(0.7),
                        cap: dec!(1),
                    },
                    pillar: Pillar::Results as i32,
                },
                Kpi {
                    kpi_id: "vis".into(),
                    metric: "visits".into(),
                    weight: dec!(20),
                    target: Target::Fixed(dec!(20)),
                    curve: Curve::LinearCapped { cap: dec!(1) },
                    pillar: Pillar::Behaviour as i32,
                },
            ],
        }
    }

    #[test]
    fn weighted_score_known_answer() {
        let mut t = CellTotals::default();
        t.add("revenue", dec!(12000), 5);
        t.add("amount_due", dec!(10000), 4);
        t.add("collected", dec!(8100), 3);
        t.add("visits", dec!(15), 15);
        // revenue 12000 / goal 10000 = 1.2 -> 120 pts x 0.6 = 72
        // collection 0.81 / 0.9 = 0.9 -> 90 pts x 0.2 = 18
        // visits 15 / 20 = 0.75 -> 75 pts x 0.2 = 15
        let s = score(&card(), &t, &|m| (m == "revenue").then_some(dec!(10000)));
        assert_eq!(s.score, dec!(105));
        assert_eq!(s.kpis[0].attainment, "1.2");
        assert_eq!(s.kpis[1].points, "90");
        assert_eq!(s.kpis[2].event_count, 15);
        assert_eq!(s.pillars["PILLAR_RESULTS"], dec!(90));
        assert_eq!(s.pillars["PILLAR_BEHAVIOUR"], dec!(15));
    }

    #[test]
    fn cap_and_missing_goal() {
        let mut t = CellTotals::default();
        t.add("revenue", dec!(50000), 1);
        t.add("visits", dec!(40), 40);
        // No goal: the revenue KPI scores 0; the rest still counts; cap 110 not reached.
        let s = score(&card(), &t, &|_| None);
        assert_eq!(s.kpis[0].attainment, "");
        assert_eq!(s.score, dec!(40));
        // Huge attainment everywhere is capped at 110.
        let s = score(&card(), &t, &|_| Some(dec!(1)));
        assert_eq!(s.score, dec!(110));
    }

    fn proto_card(weights: &[&str], metric: &str) -> pb::Scorecard {
        pb::Scorecard {
            scorecard_id: "sc".into(),
            name: "x".into(),
            assignment: Some(pb::ScorecardAssignment {
                kind: Some(pb::scorecard_assignment::Kind::TenantDefault(true)),
            }),
            kpis: weights
                .iter()
                .enumerate()
                .map(|(i, w)| pb::Kpi {
                    kpi_id: format!("k{i}"),
                    metric: metric.into(),
                    weight: (*w).into(),
                    target: Some(pb::KpiTarget {
                        kind: Some(pb::kpi_target::Kind::Goal(true)),
                    }),
                    curve: None,
                    pillar: Pillar::Results as i32,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn bad_definitions_are_rejected_with_field_errors() {
        let fields = |c: &pb::Scorecard| -> Vec<String> {
            from_proto(c)
                .unwrap_err()
                .into_iter()
                .map(|v| v.field)
                .collect()
        };
        assert_eq!(fields(&proto_card(&["60", "30"], "revenue")), ["kpis"]);
        assert_eq!(fields(&proto_card(&["100"], "vibes")), ["kpis[0].metric"]);
        assert_eq!(
            fields(&proto_card(&["-5", "105"], "revenue")),
            ["kpis[0].weight", "kpis[1].weight"]
        );
        let mut c = proto_card(&["100"], "revenue");
        c.kpis[0].curve = Some(pb::Curve {
            kind: Some(pb::curve::Kind::Bands(pb::Bands {
                bands: vec![
                    pb::Band {
                        from: "1".into(),
                        points: "100".into(),
                    },
                    pb::Band {
                        from: "0.5".into(),
                        points: "50".into(),
                    },
                ],
            })),
        });
        assert_eq!(fields(&c), ["kpis[0].curve.bands[1].from"]);
        assert!(from_proto(&proto_card(&["50", "50"], "revenue")).is_ok());
    }
}
