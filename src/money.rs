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
}
