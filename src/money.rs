//! Money: stored and computed as integer micro-dollars, shown as JSON numbers with at most six
//! decimals (CONTRACT conventions). No arithmetic on floats.

/// Micro-dollars as a JSON number of dollars.
pub fn to_dollars(micros: i64) -> f64 {
    // Exact for every amount below 2^53 micro-dollars (about 9 billion dollars).
    micros as f64 / 1_000_000.0
}

/// Dollars (a JSON number, at most six decimals) as micro-dollars; `None` if not representable.
pub fn from_dollars(dollars: f64) -> Option<i64> {
    if !dollars.is_finite() || dollars.abs() > 9e12 {
        return None;
    }
    let micros = (dollars * 1_000_000.0).round();
    ((micros / 1_000_000.0 - dollars).abs() < 1e-9).then_some(micros as i64)
}

/// A decimal string of dollars (`"-0.01300"`, as providers report prices) as micro-dollars,
/// rounded half away from zero past six decimals; `None` if it is not a plain decimal.
pub fn parse_decimal(text: &str) -> Option<i64> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !all_digits(whole) || !all_digits(fraction) || whole.len() > 12 {
        return None;
    }
    let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut micros = 0i64;
    for (i, b) in fraction.bytes().take(6).enumerate() {
        micros += i64::from(b - b'0') * 10i64.pow(5 - i as u32);
    }
    if fraction.len() > 6 && fraction.as_bytes()[6] >= b'5' {
        micros += 1;
    }
    let total = whole * 1_000_000 + micros;
    Some(if negative { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_round_trip_through_micros() {
        assert_eq!(from_dollars(0.0079), Some(7_900));
        assert_eq!(to_dollars(7_900), 0.0079);
        assert_eq!(from_dollars(100.0), Some(100_000_000));
        assert_eq!(from_dollars(f64::NAN), None);
    }

    #[test]
    fn decimal_strings_parse_exactly() {
        assert_eq!(parse_decimal("-0.01300"), Some(-13_000));
        assert_eq!(parse_decimal("1.5"), Some(1_500_000));
        assert_eq!(parse_decimal("0.0000005"), Some(1));
        assert_eq!(parse_decimal("abc"), None);
        assert_eq!(parse_decimal(""), None);
    }
}
