//! Money: strict decimal parsing, ISO 4217 currencies with their minor units, the one
//! rounding rule (banker's rounding to the currency's minor unit) and exact allocation.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};

/// Why an amount or currency is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("amount is empty")]
    Empty,
    #[error("{0:?} is not a plain decimal number (digits, an optional '-' and one '.')")]
    Malformed(String),
    #[error("amount has more than 18 digits before the decimal point")]
    TooLarge,
    #[error("{currency} has {max} decimal places at most, got {got}")]
    TooManyDecimals {
        currency: String,
        max: u32,
        got: u32,
    },
    #[error("{0:?} is not an ISO 4217 currency code")]
    UnknownCurrency(String),
    #[error("amount must not be negative")]
    Negative,
}

/// An ISO 4217 currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: [u8; 3],
    minor_units: u8,
}

impl Currency {
    /// Looks `code` up in the ISO 4217 list (upper case, exactly three letters).
    pub fn new(code: &str) -> Result<Self, Error> {
        let found = ISO_4217
            .binary_search_by(|(c, _)| c.as_bytes().cmp(code.as_bytes()))
            .map_err(|_| Error::UnknownCurrency(code.to_owned()))?;
        let (c, minor) = ISO_4217[found];
        let b = c.as_bytes();
        Ok(Self {
            code: [b[0], b[1], b[2]],
            minor_units: minor,
        })
    }

    /// The three-letter code.
    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.code).expect("ISO codes are ASCII")
    }

    /// Decimal places of the currency's minor unit (JPY 0, EUR 2, KWD 3).
    pub fn minor_units(&self) -> u32 {
        u32::from(self.minor_units)
    }

    /// Rounds to the minor unit, half to even: SPM's one rounding rule, applied per line.
    pub fn round(&self, amount: Decimal) -> Decimal {
        let mut r = amount
            .round_dp_with_strategy(self.minor_units(), RoundingStrategy::MidpointNearestEven);
        r.rescale(self.minor_units());
        r
    }

    /// `num / den` rounded half-even to the minor unit, exactly: the quotient is not first
    /// cut to 28 digits, so a true midpoint (29.665) goes to the even cent and a value a
    /// hair off one (29.66500…01, as a repeating quotient may be) does not. The check is
    /// done with products, which are exact while `num` and `den` × the result stay within
    /// 28 significant digits (amounts up to about 10^11 at 4 decimals). `den` must not be 0.
    pub fn round_ratio(&self, num: Decimal, den: Decimal) -> Decimal {
        assert!(!den.is_zero(), "round_ratio by zero");
        let (num, den) = if den.is_sign_negative() {
            (-num, -den)
        } else {
            (num, den)
        };
        let unit = self.unit();
        let half = unit / Decimal::TWO;
        let mut r = self.round(num / den);
        // Move r until num/den lies in [r - half, r + half]; on a bound, the even neighbour.
        loop {
            let lo = (r - half) * den;
            let hi = (r + half) * den;
            if num < lo {
                r -= unit;
            } else if num > hi {
                r += unit;
            } else {
                let even = ((r / unit).trunc() % Decimal::TWO).is_zero();
                if num == lo && !even {
                    r -= unit;
                } else if num == hi && !even {
                    r += unit;
                }
                break;
            }
        }
        r.rescale(self.minor_units());
        r
    }

    /// The largest amount of whole minor units not above `amount` (a cap given with more
    /// decimals than the currency has is never exceeded).
    pub fn floor(&self, amount: Decimal) -> Decimal {
        let mut r =
            amount.round_dp_with_strategy(self.minor_units(), RoundingStrategy::ToNegativeInfinity);
        r.rescale(self.minor_units());
        r
    }

    /// The smallest amount of the currency (0.01 for EUR).
    pub fn unit(&self) -> Decimal {
        Decimal::new(1, self.minor_units())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

/// Parses a plain decimal string: an optional '-', digits, optionally '.' and digits.
/// No exponent, no '+', no spaces, no thousands separators, at most 18 integer digits.
pub fn parse_decimal(s: &str) -> Result<Decimal, Error> {
    if s.is_empty() {
        return Err(Error::Empty);
    }
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return Err(Error::Malformed(s.to_owned()));
    }
    if int.trim_start_matches('0').len() > 18 {
        return Err(Error::TooLarge);
    }
    if frac.is_some_and(|f| f.len() > 18) {
        return Err(Error::Malformed(s.to_owned()));
    }
    Decimal::from_str_exact(s).map_err(|_| Error::Malformed(s.to_owned()))
}

/// An amount in a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    pub amount: Decimal,
    pub currency: Currency,
}

impl Money {
    /// Parses and checks an amount against its currency: decimal places within the minor
    /// unit. The sign is the caller's rule to check.
    pub fn parse(amount: &str, currency: &str) -> Result<Self, Error> {
        let currency = Currency::new(currency)?;
        let amount = parse_decimal(amount)?;
        if amount.scale() > currency.minor_units() {
            return Err(Error::TooManyDecimals {
                currency: currency.code().to_owned(),
                max: currency.minor_units(),
                got: amount.scale(),
            });
        }
        Ok(Self { amount, currency })
    }

    /// Like [`Money::parse`], and the amount must not be negative.
    pub fn parse_non_negative(amount: &str, currency: &str) -> Result<Self, Error> {
        let m = Self::parse(amount, currency)?;
        if m.amount.is_sign_negative() && !m.amount.is_zero() {
            return Err(Error::Negative);
        }
        Ok(m)
    }

    pub fn new(amount: Decimal, currency: Currency) -> Self {
        Self { amount, currency }
    }

    pub fn zero(currency: Currency) -> Self {
        Self::new(currency.round(Decimal::ZERO), currency)
    }

    /// The amount rendered with exactly the currency's minor units ("12.50").
    pub fn amount_string(&self) -> String {
        self.currency.round(self.amount).to_string()
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount_string(), self.currency)
    }
}

/// Splits `total` into parts proportional to `weights`, each rounded to `unit`, summing to
/// `total` exactly (largest remainder: the units lost to rounding go to the parts with the
/// largest remainders, ties to the earlier part). Money is never created or lost.
///
/// `total` must be a whole number of `unit`s; weights must be non-negative with a positive sum.
pub fn allocate(total: Decimal, weights: &[Decimal], unit: Decimal) -> Vec<Decimal> {
    assert!(!weights.is_empty(), "allocate needs at least one weight");
    let sum: Decimal = weights.iter().copied().sum();
    assert!(sum > Decimal::ZERO, "weights must have a positive sum");
    let sign = if total.is_sign_negative() {
        -Decimal::ONE
    } else {
        Decimal::ONE
    };
    let abs = total.abs();
    let total_units = (abs / unit).trunc();
    let mut parts: Vec<(usize, Decimal, Decimal)> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let exact = total_units * *w / sum;
            let floor = exact.trunc();
            (i, floor, exact - floor)
        })
        .collect();
    let assigned: Decimal = parts.iter().map(|p| p.1).sum();
    let mut left = total_units - assigned;
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&a, &b| parts[b].2.cmp(&parts[a].2).then(a.cmp(&b)));
    for i in order {
        if left <= Decimal::ZERO {
            break;
        }
        parts[i].1 += Decimal::ONE;
        left -= Decimal::ONE;
    }
    let scale = unit.scale();
    parts
        .into_iter()
        .map(|(_, units, _)| {
            let mut v = sign * units * unit;
            v.rescale(scale);
            v
        })
        .collect()
}

/// Active ISO 4217 codes and their minor units, sorted by code.
const ISO_4217: &[(&str, u8)] = &[
    ("AED", 2),
    ("AFN", 2),
    ("ALL", 2),
    ("AMD", 2),
    ("ANG", 2),
    ("AOA", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("AWG", 2),
    ("AZN", 2),
    ("BAM", 2),
    ("BBD", 2),
    ("BDT", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BMD", 2),
    ("BND", 2),
    ("BOB", 2),
    ("BOV", 2),
    ("BRL", 2),
    ("BSD", 2),
    ("BTN", 2),
    ("BWP", 2),
    ("BYN", 2),
    ("BZD", 2),
    ("CAD", 2),
    ("CDF", 2),
    ("CHE", 2),
    ("CHF", 2),
    ("CHW", 2),
    ("CLF", 4),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("COU", 2),
    ("CRC", 2),
    ("CUP", 2),
    ("CVE", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("DOP", 2),
    ("DZD", 2),
    ("EGP", 2),
    ("ERN", 2),
    ("ETB", 2),
    ("EUR", 2),
    ("FJD", 2),
    ("FKP", 2),
    ("GBP", 2),
    ("GEL", 2),
    ("GHS", 2),
    ("GIP", 2),
    ("GMD", 2),
    ("GNF", 0),
    ("GTQ", 2),
    ("GYD", 2),
    ("HKD", 2),
    ("HNL", 2),
    ("HTG", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("IRR", 2),
    ("ISK", 0),
    ("JMD", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KGS", 2),
    ("KHR", 2),
    ("KMF", 0),
    ("KPW", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("KYD", 2),
    ("KZT", 2),
    ("LAK", 2),
    ("LBP", 2),
    ("LKR", 2),
    ("LRD", 2),
    ("LSL", 2),
    ("LYD", 3),
    ("MAD", 2),
    ("MDL", 2),
    ("MGA", 2),
    ("MKD", 2),
    ("MMK", 2),
    ("MNT", 2),
    ("MOP", 2),
    ("MRU", 2),
    ("MUR", 2),
    ("MVR", 2),
    ("MWK", 2),
    ("MXN", 2),
    ("MXV", 2),
    ("MYR", 2),
    ("MZN", 2),
    ("NAD", 2),
    ("NGN", 2),
    ("NIO", 2),
    ("NOK", 2),
    ("NPR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PAB", 2),
    ("PEN", 2),
    ("PGK", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("RUB", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SBD", 2),
    ("SCR", 2),
    ("SDG", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("SHP", 2),
    ("SLE", 2),
    ("SOS", 2),
    ("SRD", 2),
    ("SSP", 2),
    ("STN", 2),
    ("SVC", 2),
    ("SYP", 2),
    ("SZL", 2),
    ("THB", 2),
    ("TJS", 2),
    ("TMT", 2),
    ("TND", 3),
    ("TOP", 2),
    ("TRY", 2),
    ("TTD", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("USN", 2),
    ("UYI", 0),
    ("UYU", 2),
    ("UYW", 4),
    ("UZS", 2),
    ("VED", 2),
    ("VES", 2),
    ("VND", 0),
    ("VUV", 0),
    ("WST", 2),
    ("XAF", 0),
    ("XCD", 2),
    ("XCG", 2),
    ("XOF", 0),
    ("XPF", 0),
    ("YER", 2),
    ("ZAR", 2),
    ("ZMW", 2),
    ("ZWG", 2),
];

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    use super::*;

    #[test]
    fn iso_table_is_sorted_for_binary_search() {
        assert!(ISO_4217.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn currencies_know_their_minor_units() {
        assert_eq!(Currency::new("EUR").unwrap().minor_units(), 2);
        assert_eq!(Currency::new("JPY").unwrap().minor_units(), 0);
        assert_eq!(Currency::new("KWD").unwrap().minor_units(), 3);
        assert_eq!(
            Currency::new("eur"),
            Err(Error::UnknownCurrency("eur".into()))
        );
        assert_eq!(
            Currency::new("XXX"),
            Err(Error::UnknownCurrency("XXX".into()))
        );
    }

    #[test]
    fn strict_parsing() {
        let cases: &[(&str, Result<Decimal, Error>)] = &[
            ("12.50", Ok(dec!(12.50))),
            ("-3", Ok(dec!(-3))),
            ("0", Ok(dec!(0))),
            ("", Err(Error::Empty)),
            ("1e3", Err(Error::Malformed("1e3".into()))),
            ("+1", Err(Error::Malformed("+1".into()))),
            (" 1", Err(Error::Malformed(" 1".into()))),
            ("1,000", Err(Error::Malformed("1,000".into()))),
            ("1.", Err(Error::Malformed("1.".into()))),
            (".5", Err(Error::Malformed(".5".into()))),
            ("NaN", Err(Error::Malformed("NaN".into()))),
            ("1234567890123456789", Err(Error::TooLarge)),
        ];
        for (input, want) in cases {
            assert_eq!(&parse_decimal(input), want, "input {input:?}");
        }
    }

    #[test]
    fn money_respects_minor_units_and_sign() {
        assert!(Money::parse("10.5", "EUR").is_ok());
        assert_eq!(
            Money::parse("10.505", "EUR"),
            Err(Error::TooManyDecimals {
                currency: "EUR".into(),
                max: 2,
                got: 3
            })
        );
        assert!(Money::parse("100.5", "JPY").is_err());
        assert_eq!(Money::parse_non_negative("-1", "USD"), Err(Error::Negative));
        assert_eq!(Money::parse("7", "EUR").unwrap().to_string(), "7.00 EUR");
    }

    #[test]
    fn ratios_round_half_even_exactly() {
        let eur = Currency::new("EUR").unwrap();
        // 29.665 as a quotient: a true midpoint, to the even cent.
        assert_eq!(eur.round_ratio(dec!(59.33), dec!(2)), dec!(29.66));
        assert_eq!(eur.round_ratio(dec!(29.675), dec!(1)), dec!(29.68));
        // 2% of 1,483.25 reached through a division that does not terminate.
        let num = dec!(1483.25) * dec!(0.02) * dec!(3);
        assert_eq!(eur.round_ratio(num, dec!(3)), dec!(29.66));
        // 1/3 and 2/3 of a cent, and negatives.
        assert_eq!(eur.round_ratio(dec!(1), dec!(3)), dec!(0.33));
        assert_eq!(eur.round_ratio(dec!(2), dec!(3)), dec!(0.67));
        assert_eq!(eur.round_ratio(dec!(-0.125), dec!(1)), dec!(-0.12));
        assert_eq!(eur.round_ratio(dec!(0.125), dec!(-1)), dec!(-0.12));
        assert_eq!(eur.round_ratio(dec!(8024), dec!(300)), dec!(26.75));
        assert_eq!(eur.floor(dec!(15000.009)), dec!(15000.00));
        assert_eq!(eur.floor(dec!(-0.001)), dec!(-0.01));
    }

    #[test]
    fn rounding_is_half_even() {
        let eur = Currency::new("EUR").unwrap();
        assert_eq!(eur.round(dec!(0.125)), dec!(0.12));
        assert_eq!(eur.round(dec!(0.135)), dec!(0.14));
        assert_eq!(eur.round(dec!(-0.125)), dec!(-0.12));
        assert_eq!(Currency::new("JPY").unwrap().round(dec!(2.5)), dec!(2));
    }

    #[test]
    fn allocation_known_answers() {
        // 100.00 in three equal parts: the first part gets the extra cent.
        assert_eq!(
            allocate(dec!(100.00), &[dec!(1), dec!(1), dec!(1)], dec!(0.01)),
            vec![dec!(33.34), dec!(33.33), dec!(33.33)]
        );
        assert_eq!(
            allocate(dec!(1000), &[dec!(60), dec!(40)], dec!(0.01)),
            vec![dec!(600.00), dec!(400.00)]
        );
        assert_eq!(
            allocate(dec!(-10.00), &[dec!(1), dec!(2)], dec!(0.01)),
            vec![dec!(-3.33), dec!(-6.67)]
        );
    }

    proptest! {
        #[test]
        fn allocation_never_creates_or_loses_money(
            cents in -10_000_000i64..10_000_000,
            weights in prop::collection::vec(1u32..10_000, 1..8),
        ) {
            let total = Decimal::new(cents, 2);
            let w: Vec<Decimal> = weights.iter().map(|&x| Decimal::from(x)).collect();
            let parts = allocate(total, &w, dec!(0.01));
            prop_assert_eq!(parts.iter().copied().sum::<Decimal>(), total);
            // Each part is within one cent of its exact share.
            let sum: Decimal = w.iter().copied().sum();
            for (p, wi) in parts.iter().zip(&w) {
                let exact = total * *wi / sum;
                prop_assert!((*p - exact).abs() < dec!(0.01));
            }
        }
    }
}
