//! Money: stored and computed as integer micro-dollars, shown as JSON numbers with at most six
//! decimals (docs/README.md#conventions). No arithmetic on floats.

/// Micro-dollars as a JSON number of dollars.
pub fn to_dollars(micros: i64) -> f64 {
    // Exact for every amount below 2^53 micro-dollars (about 9 billion dollars).
    micros as f64 / 1_000_000.0
}

/// Dollars as a message shows them, the way the JSON number prints in JavaScript: `10`, `0.0079`,
/// `0.000001` (serde_json would print a whole `f64` as `10.0`).
pub fn dollars_text(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let (whole, fraction) = (micros.unsigned_abs() / 1_000_000, micros.unsigned_abs() % 1_000_000);
    if fraction == 0 {
        return format!("{sign}{whole}");
    }
    let digits = format!("{fraction:06}");
    format!("{sign}{whole}.{}", digits.trim_end_matches('0'))
}

/// The most dollars any money field holds (micro-dollars stay far below `i64::MAX`).
const MAX_DOLLARS: i128 = 9_000_000_000_000;

/// A decimal of dollars written with at most six decimals (`10`, `0.0079`, `1e-6`, `1.50e2`) as
/// micro-dollars, exactly; `None` for anything else — more decimals (`1e-7`, `5e-324`), not a
/// plain decimal, or more than 9·10¹² dollars. Trailing zeros do not count as decimals. This is
/// the one check of money in input: JSON numbers (`from_json`) and the configuration.
pub fn parse_exact(text: &str) -> Option<i64> {
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.strip_prefix('+').unwrap_or(e).parse::<i32>().ok()?),
        None => (text, 0),
    };
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let fraction = fraction.trim_end_matches('0');
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0);
    }
    // value = digits × 10^-decimals
    let decimals = fraction.len() as i64 - i64::from(exponent);
    if decimals > 6 || digits.len() as i64 + (6 - decimals) > 19 {
        return None;
    }
    let micros = digits.parse::<i128>().ok()?.checked_mul(10i128.checked_pow((6 - decimals) as u32)?)?;
    if micros > MAX_DOLLARS * 1_000_000 {
        return None;
    }
    let micros = micros as i64;
    Some(if negative { -micros } else { micros })
}

/// A JSON number of dollars as micro-dollars (`parse_exact` of its decimal form: serde_json
/// writes a float as the shortest decimal that reads back as the same float, so this is the
/// decimal the client sent, up to float precision).
pub fn from_json(number: &serde_json::Number) -> Option<i64> {
    parse_exact(&number.to_string())
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
    fn micros_are_shown_as_dollars() {
        assert_eq!(to_dollars(7_900), 0.0079);
        assert_eq!(to_dollars(100_000_000), 100.0);
        let texts = [
            (0, "0"),
            (10_000_000, "10"),
            (7_900, "0.0079"),
            (1, "0.000001"),
            (1_500_000, "1.5"),
            (-2_500_000, "-2.5"),
        ];
        for (micros, text) in texts {
            assert_eq!(dollars_text(micros), text);
        }
    }

    #[test]
    fn money_input_has_at_most_six_decimals_in_any_notation() {
        let table = [
            ("10", Some(10_000_000)),
            ("0.0079", Some(7_900)),
            ("100.0", Some(100_000_000)),
            ("1.123456", Some(1_123_456)),
            ("1.1234560", Some(1_123_456)),
            ("1e-6", Some(1)),
            ("1.5e2", Some(150_000_000)),
            ("1E+2", Some(100_000_000)),
            ("0", Some(0)),
            ("-0.0", Some(0)),
            ("0e-400", Some(0)),
            ("-2.5", Some(-2_500_000)),
            ("9000000000000", Some(9_000_000_000_000_000_000)),
            ("1e-7", None),
            ("5e-324", None),
            ("4.9e-324", None),
            ("1.1234567", None),
            ("9000000000000.000001", None),
            ("1e13", None),
            ("1e300", None),
            ("", None),
            (".5", None),
            ("1.2.3", None),
            ("abc", None),
            ("NaN", None),
            ("inf", None),
        ];
        for (text, expected) in table {
            assert_eq!(parse_exact(text), expected, "{text}");
        }
        let json = |v: serde_json::Value| match v {
            serde_json::Value::Number(n) => from_json(&n),
            other => panic!("not a number: {other}"),
        };
        assert_eq!(json(serde_json::json!(4.9e-324)), None);
        assert_eq!(json(serde_json::json!(1e-7)), None);
        assert_eq!(json(serde_json::json!(0.000001)), Some(1));
        assert_eq!(json(serde_json::json!(0.1)), Some(100_000));
        assert_eq!(json(serde_json::json!(12)), Some(12_000_000));
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
