//! libphonenumber's time zones for a phone number (its `PhoneNumberToTimeZonesMapper`), the
//! candidate zones of docs/compliance.md#quiet-hours.
//!
//! The prefix → zones map is libphonenumber's own, embedded from `data/tz_map.txt` (written by
//! `scripts/gen-tz-map.py` from the pinned `phonenumbers` package). The lookup is the one
//! libphonenumber does:
//!
//! - a number of unknown type (invalid, unassigned, fictional) has no zone: `Etc/Unknown`;
//! - a geographical number — fixed line, fixed line or mobile, or a mobile number of a country
//!   whose mobile numbers are geographical (52 MX, 54 AR, 55 BR, 62 ID, 86 CN) — takes the
//!   zones of the longest prefix of its E.164 digits in the map;
//! - any other number (mobile elsewhere, toll-free, premium, VoIP, ...) takes its calling
//!   code's zones: a Spanish mobile is in `Atlantic/Canary` and `Europe/Madrid`;
//! - no entry: `Etc/Unknown`.
//!
//! The number's type comes from namba, built from the same libphonenumber metadata as the
//! map (a test checks the versions agree).

use std::collections::HashMap;
use std::sync::LazyLock;

use namba::{Format, NumberKind, PhoneNumber};

const MAP: &str = include_str!("../data/tz_map.txt");

/// libphonenumber's (ICU's) zone for "no specific zone".
pub const UNKNOWN: &str = "Etc/Unknown";

/// Calling codes whose mobile numbers are geographically assigned (libphonenumber's
/// `GEO_MOBILE_COUNTRIES`).
const GEO_MOBILE_COUNTRIES: [u16; 5] = [52, 54, 55, 62, 86];

struct Map {
    zones: HashMap<&'static str, &'static str>,
    longest: usize,
}

static ZONES: LazyLock<Map> = LazyLock::new(|| {
    let zones: HashMap<&str, &str> =
        MAP.lines().filter(|line| !line.starts_with('#')).filter_map(|line| line.split_once('|')).collect();
    let longest = zones.keys().map(|prefix| prefix.len()).max().unwrap_or(0);
    Map { zones, longest }
});

/// The phonenumbers version the embedded map was generated from (its header).
pub fn data_version() -> &'static str {
    MAP.lines()
        .filter_map(|line| line.strip_prefix("# phonenumbers "))
        .find_map(|rest| rest.split(';').next())
        .unwrap_or("")
}

/// The zones of the longest prefix among `prefixes` (longest first) found in the map.
fn lookup<'a>(prefixes: impl Iterator<Item = &'a str>) -> Vec<&'static str> {
    prefixes
        .filter_map(|prefix| ZONES.zones.get(prefix))
        .map(|zones| zones.split('&').collect())
        .next()
        .unwrap_or_else(|| vec![UNKNOWN])
}

/// Whether libphonenumber gives numbers of this kind their own prefix's zones.
fn geographical(kind: NumberKind, calling_code: u16) -> bool {
    match kind {
        NumberKind::FixedLine | NumberKind::FixedLineOrMobile => true,
        NumberKind::Mobile => GEO_MOBILE_COUNTRIES.contains(&calling_code),
        _ => false,
    }
}

/// libphonenumber's `time_zones_for_number`: the number's zones in the map's order, or
/// `[Etc/Unknown]`. Never empty.
pub fn for_number(number: &PhoneNumber) -> Vec<&'static str> {
    let kind = number.assess().kind();
    let calling_code = number.calling_code().value();
    if kind == NumberKind::Unknown {
        return vec![UNKNOWN];
    }
    if geographical(kind, calling_code) {
        let e164 = number.format(Format::E164).to_string();
        let digits = e164.trim_start_matches('+');
        let longest = ZONES.longest.min(digits.len());
        return lookup((1..=longest).rev().map(|len| &digits[..len]));
    }
    // Country level. libphonenumber looks up the calling code's digits truncated to at least
    // two (a one-digit code whole): calling codes are prefix-free, so only the code itself can
    // be in the map, but the lookup is reproduced as it is.
    let code = calling_code.to_string();
    let longest = (ZONES.longest + 1).min(code.len());
    lookup((1..=longest).rev().filter(|&len| len >= 2 || len == code.len()).map(|len| &code[..len]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `number|label|type|zones` rows answered by phonenumbers (see the file's header).
    const FIXTURE: &str = include_str!("../data/tz_fixture.txt");

    fn fixture() -> Vec<(&'static str, &'static str, &'static str, Vec<&'static str>)> {
        FIXTURE
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| {
                let columns: Vec<&str> = line.split('|').collect();
                assert_eq!(columns.len(), 4, "{line}");
                (columns[0], columns[1], columns[2], columns[3].split('&').collect())
            })
            .collect()
    }

    fn parse(number: &str) -> PhoneNumber {
        number.parse().unwrap_or_else(|e| panic!("{number}: {e}"))
    }

    /// libphonenumber's `PhoneNumberType` name of a namba kind.
    fn type_name(kind: NumberKind) -> &'static str {
        match kind {
            NumberKind::FixedLine => "FIXED_LINE",
            NumberKind::Mobile => "MOBILE",
            NumberKind::FixedLineOrMobile => "FIXED_LINE_OR_MOBILE",
            NumberKind::TollFree => "TOLL_FREE",
            NumberKind::PremiumRate => "PREMIUM_RATE",
            NumberKind::SharedCost => "SHARED_COST",
            NumberKind::Personal => "PERSONAL_NUMBER",
            NumberKind::Voip => "VOIP",
            NumberKind::Pager => "PAGER",
            NumberKind::UniversalAccess => "UAN",
            NumberKind::Voicemail => "VOICEMAIL",
            NumberKind::Unknown => "UNKNOWN",
            _ => "?",
        }
    }

    #[test]
    fn candidate_zones_equal_libphonenumbers_for_every_fixture_number() {
        let rows = fixture();
        assert!(rows.len() >= 60, "{}", rows.len());
        let mut mismatches = Vec::new();
        for (number, label, expected_type, expected) in &rows {
            let parsed = parse(number);
            let got = for_number(&parsed);
            let kind = type_name(parsed.assess().kind());
            if &got != expected || kind != *expected_type {
                mismatches.push(format!(
                    "{number} ({label}): libphonenumber {expected_type} {expected:?}, commguard {kind} {got:?}"
                ));
            }
        }
        assert!(mismatches.is_empty(), "{} of {} differ:\n{}", mismatches.len(), rows.len(), mismatches.join("\n"));
    }

    #[test]
    fn fixture_covers_every_appendix_a_country_with_fixed_and_mobile_numbers() {
        let rows = fixture();
        let appendix_a = "US CA GB DE FR IL AU JP BR IN SG AE AT BE BG HR CY CZ DK EE FI GR HU IE IT LV LT LU MT \
                          NL PL PT RO SK SI ES SE";
        for country in appendix_a.split_whitespace() {
            let kinds: Vec<&str> = rows
                .iter()
                .filter(|(number, ..)| crate::calling_hours::number_region(&parse(number)).as_deref() == Some(country))
                .map(|(_, _, kind, _)| *kind)
                .collect();
            let fixed = kinds.iter().any(|k| k.starts_with("FIXED_LINE"));
            let mobile = kinds.iter().any(|k| *k == "MOBILE" || *k == "FIXED_LINE_OR_MOBILE");
            assert!(fixed && mobile, "{country}: {kinds:?}");
        }
    }

    #[test]
    fn map_and_parser_come_from_the_same_libphonenumber_data() {
        assert_eq!(data_version(), "9.0.36");
        assert_eq!(namba::DATA_VERSION, format!("libphonenumber-{}", data_version()));
        assert!(FIXTURE.contains(&format!("# phonenumbers {}\n", data_version())));
    }

    #[test]
    fn every_mapped_zone_is_known_to_chrono_tz() {
        assert!(ZONES.zones.len() > 3000);
        assert_eq!(ZONES.longest, 9);
        for (prefix, zones) in &ZONES.zones {
            assert!(prefix.bytes().all(|b| b.is_ascii_digit()), "{prefix}");
            for zone in zones.split('&') {
                assert!(zone.parse::<chrono_tz::Tz>().is_ok(), "{prefix}: {zone}");
            }
        }
    }

    #[test]
    fn lookup_rules() {
        // A Spanish mobile is not geographical: the country's zones, not +346's.
        assert_eq!(ZONES.zones.get("346"), Some(&"Europe/Madrid"));
        assert_eq!(for_number(&parse("+34612345678")), ["Atlantic/Canary", "Europe/Madrid"]);
        // A Brazilian mobile is: its own prefix's zone.
        assert_eq!(for_number(&parse("+5592981234567")), ["America/Manaus"]);
        // Unknown type: no zone at all, even where the calling code has one.
        assert_eq!(for_number(&parse("+15555550100")), [UNKNOWN]);
        // A toll-free number of a calling code absent from the map.
        assert_eq!(for_number(&parse("+80012345678")), [UNKNOWN]);
        // NANP toll-free: every zone of +1.
        assert_eq!(for_number(&parse("+18002345678")).len(), 42);
    }
}
