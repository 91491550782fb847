//! DynamoDB numbers without loss: a number is decimal text with up to 38
//! significant digits, which an f64 (about 17) cannot hold. [`Number`] keeps
//! the text; f64 is only ever produced when the caller asks for it.

use std::fmt;
use std::str::FromStr;

/// Significant digits a number may have.
pub const MAX_DIGITS: usize = 38;
/// Largest decimal exponent of a number (9.9999999999999999999999999999999999999E+125).
pub const MAX_EXPONENT: i64 = 125;
/// Smallest decimal exponent of a non-zero number (1E-130).
pub const MIN_EXPONENT: i64 = -130;

/// A DynamoDB number, exactly as stored. Compares by decimal value
/// (`"1.0" == "1" == "1e0"`), as DynamoDB does.
#[derive(Debug, Clone)]
pub struct Number(String);

/// Text that is not a number DynamoDB can store.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct NumberError(String);

impl Number {
    /// A number from its decimal text (`"12.50"`, `"-3e-7"`).
    ///
    /// # Errors
    /// When DynamoDB would reject the text: not decimal, NaN or infinite,
    /// more than 38 significant digits, or out of DynamoDB's range.
    pub fn new(text: impl Into<String>) -> Result<Self, NumberError> {
        let text = text.into();
        match problem(&text) {
            Some(p) => Err(NumberError(p)),
            None => Ok(Number(text)),
        }
    }

    /// A number as DynamoDB returned it (already valid).
    pub(crate) fn stored(text: &str) -> Self {
        Number(text.to_owned())
    }

    /// The exact decimal text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The nearest f64: loses digits beyond about 17 significant ones. Only
    /// for callers that ask for floating point.
    pub fn as_f64(&self) -> f64 {
        self.0.parse().unwrap_or(f64::NAN)
    }

    /// The value as an i64 when it is an integer in i64's range, exactly.
    pub fn as_i64(&self) -> Option<i64> {
        let d = decimal(&self.0)?;
        if d.digits.is_empty() {
            return Some(0);
        }
        // An integer has no digit after the decimal point.
        let int_digits = usize::try_from(d.exponent.checked_add(1)?).ok()?;
        if d.digits.len() > int_digits || int_digits > 19 {
            return None;
        }
        let text = format!(
            "{}{}{}",
            if d.negative { "-" } else { "" },
            d.digits,
            "0".repeat(int_digits - d.digits.len())
        );
        text.parse().ok()
    }

    /// The shortest text that reads back as `v`; `None` for NaN, infinities
    /// and values outside DynamoDB's range. An explicit, lossy-by-nature path.
    pub fn from_f64(v: f64) -> Option<Self> {
        if !v.is_finite() {
            return None;
        }
        // Plain notation where it is short, exponent notation otherwise.
        let text = if v == 0.0 || (1e-7..1e21).contains(&v.abs()) {
            format!("{v}")
        } else {
            format!("{v:e}")
        };
        Number::new(text).ok()
    }
}

impl PartialEq for Number {
    fn eq(&self, other: &Self) -> bool {
        canonical(&self.0) == canonical(&other.0)
    }
}

impl Eq for Number {}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Number {
    type Err = NumberError;
    fn from_str(s: &str) -> Result<Self, NumberError> {
        Number::new(s)
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Number {
            fn from(v: $t) -> Self {
                Number(v.to_string())
            }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32, u64);

/// A decimal number as DynamoDB sees it: sign, significant digits (no leading
/// or trailing zeros; empty for zero) and the exponent of the first digit.
#[derive(Debug, PartialEq)]
pub(crate) struct Decimal {
    pub negative: bool,
    pub digits: String,
    pub exponent: i64,
}

/// Parses decimal text (`-12.5e3`, `.5`, `7.`); `None` for anything else
/// (`NaN`, `Infinity`, `0x10`, an empty string).
pub(crate) fn decimal(n: &str) -> Option<Decimal> {
    let (negative, body) = match n.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, n.strip_prefix('+').unwrap_or(n)),
    };
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], body[i + 1..].parse::<i64>().ok()?),
        None => (body, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || !all_digits(frac) || int.len() + frac.len() == 0 {
        return None;
    }
    let all = format!("{int}{frac}");
    let leading = all.bytes().take_while(|b| *b == b'0').count();
    let digits = all[leading..].trim_end_matches('0').to_owned();
    let exponent = exp
        .checked_add(int.len() as i64)?
        .checked_sub(leading as i64 + 1)?;
    Some(Decimal {
        negative,
        digits,
        exponent,
    })
}

/// A number's canonical form (equal for equal values: `"3.50"`, `"3.5"`,
/// `"35e-1"`); the trimmed text itself when it is not decimal.
pub(crate) fn canonical(n: &str) -> String {
    let n = n.trim();
    match decimal(n) {
        Some(d) if d.digits.is_empty() => "0".into(),
        Some(d) => format!(
            "{}{}e{}",
            if d.negative { "-" } else { "" },
            d.digits,
            d.exponent
        ),
        None => n.to_owned(),
    }
}

/// What DynamoDB would reject in the number `n`.
pub(crate) fn problem(n: &str) -> Option<String> {
    let Some(d) = decimal(n) else {
        return Some(format!(
            "{n:?} is not a decimal number (NaN and infinities cannot be stored)"
        ));
    };
    if d.digits.is_empty() {
        return None; // zero
    }
    if d.digits.len() > MAX_DIGITS {
        return Some(format!(
            "{n} has {} significant digits; DynamoDB stores at most {MAX_DIGITS}",
            d.digits.len()
        ));
    }
    if d.exponent > MAX_EXPONENT {
        return Some(format!(
            "{n} is larger in magnitude than DynamoDB's largest number (about 1E+126)"
        ));
    }
    if d.exponent < MIN_EXPONENT {
        return Some(format!(
            "{n} is smaller in magnitude than DynamoDB's smallest non-zero number (1E-130)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENTH: &str = "0.1000000000000000000000000000000000001";

    #[test]
    fn numbers_keep_their_text_and_compare_by_value() {
        let n = Number::new(TENTH).unwrap();
        assert_eq!(n.as_str(), TENTH);
        assert_ne!(n, Number::new("0.1").unwrap());
        assert_eq!(n.as_f64(), 0.1);
        for same in ["1.0", "1", "1e0", "10E-1", "+1", "0001.000"] {
            assert_eq!(Number::new(same).unwrap(), Number::from(1), "{same}");
        }
        assert_eq!(Number::new("-0.0").unwrap(), Number::from(0));
    }

    #[test]
    fn what_dynamodb_rejects_is_refused() {
        for bad in ["NaN", "inf", "", "1.2.3", "0x10", "1e126", "1e-131"] {
            assert!(Number::new(bad).is_err(), "{bad}");
        }
        assert!(Number::new("1".repeat(39)).is_err());
        assert!(Number::new("1".repeat(38)).is_ok());
        assert!(Number::new("9.9999999999999999999999999999999999999E+125").is_ok());
        assert!(Number::new("1E-130").is_ok());
    }

    #[test]
    fn integers_convert_exactly_or_not_at_all() {
        assert_eq!(Number::new("42").unwrap().as_i64(), Some(42));
        assert_eq!(Number::new("4.2e1").unwrap().as_i64(), Some(42));
        assert_eq!(Number::new("-1.00").unwrap().as_i64(), Some(-1));
        assert_eq!(Number::new("0.5").unwrap().as_i64(), None);
        assert_eq!(Number::new("1e19").unwrap().as_i64(), None);
        assert_eq!(
            Number::new("9223372036854775807").unwrap().as_i64(),
            Some(i64::MAX)
        );
    }

    #[test]
    fn floats_are_written_in_their_shortest_exact_form() {
        assert_eq!(Number::from_f64(0.1).unwrap().as_str(), "0.1");
        assert_eq!(Number::from_f64(-2.5).unwrap().as_str(), "-2.5");
        assert_eq!(Number::from_f64(1e300), None);
        assert_eq!(Number::from_f64(1e-200), None);
        assert_eq!(Number::from_f64(1.5e100).unwrap().as_str(), "1.5e100");
        assert_eq!(Number::from_f64(f64::NAN), None);
    }
}
