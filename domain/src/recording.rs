//! Call-recording consent (docs/compliance.md#recording-consent): recording a call needs an active
//! `recording` consent when the recipient's or the agent's number is in an all-party
//! jurisdiction.
//!
//! All-party jurisdictions: the US states CA, CT, FL, IL, MD, MA, MI, MT, NV, NH, OR, PA, WA,
//! told by the NANPA geographic area code (libphonenumber's geocoding, via namba), with every
//! US number that maps to no state counting as all-party; and the countries whose docs/compliance.md#country-rules
//! "Rec. consent" is Y (`countries::rule_for(..).recording_consent`). All others are one-party.

use namba::{Location, PhoneNumber};

use crate::calling_hours::number_region;
use crate::countries::rule_for;

/// The US states and DC, by USPS code.
const STATES: &[(&str, &str)] = &[
    ("AL", "Alabama"),
    ("AK", "Alaska"),
    ("AZ", "Arizona"),
    ("AR", "Arkansas"),
    ("CA", "California"),
    ("CO", "Colorado"),
    ("CT", "Connecticut"),
    ("DE", "Delaware"),
    ("DC", "District of Columbia"),
    ("FL", "Florida"),
    ("GA", "Georgia"),
    ("HI", "Hawaii"),
    ("ID", "Idaho"),
    ("IL", "Illinois"),
    ("IN", "Indiana"),
    ("IA", "Iowa"),
    ("KS", "Kansas"),
    ("KY", "Kentucky"),
    ("LA", "Louisiana"),
    ("ME", "Maine"),
    ("MD", "Maryland"),
    ("MA", "Massachusetts"),
    ("MI", "Michigan"),
    ("MN", "Minnesota"),
    ("MS", "Mississippi"),
    ("MO", "Missouri"),
    ("MT", "Montana"),
    ("NE", "Nebraska"),
    ("NV", "Nevada"),
    ("NH", "New Hampshire"),
    ("NJ", "New Jersey"),
    ("NM", "New Mexico"),
    ("NY", "New York"),
    ("NC", "North Carolina"),
    ("ND", "North Dakota"),
    ("OH", "Ohio"),
    ("OK", "Oklahoma"),
    ("OR", "Oregon"),
    ("PA", "Pennsylvania"),
    ("RI", "Rhode Island"),
    ("SC", "South Carolina"),
    ("SD", "South Dakota"),
    ("TN", "Tennessee"),
    ("TX", "Texas"),
    ("UT", "Utah"),
    ("VT", "Vermont"),
    ("VA", "Virginia"),
    ("WA", "Washington"),
    ("WV", "West Virginia"),
    ("WI", "Wisconsin"),
    ("WY", "Wyoming"),
];

/// docs/compliance.md#recording-consent: the all-party US states.
pub const ALL_PARTY_STATES: &[&str] = &["CA", "CT", "FL", "IL", "MD", "MA", "MI", "MT", "NV", "NH", "OR", "PA", "WA"];

/// A US number with no state: toll-free, fictional 555, unmapped ranges.
pub const UNMAPPED_US: &str = "United States (unmapped number)";

/// A number that cannot be parsed: treated as all-party, so that recording fails closed.
pub const UNPARSEABLE: &str = "Unknown jurisdiction (unparseable number)";

/// The state (USPS code, full name) of a libphonenumber location: a full state name
/// ("California", "Washington State") or "City, ST" ("San Francisco, CA"). "Washington D.C."
/// is the District of Columbia, not Washington state.
fn us_state(location: &str) -> Option<(&'static str, &'static str)> {
    let location = location.trim();
    let code = match location {
        "Washington State" => "WA",
        "Washington D.C." | "Washington DC" | "Washington, D.C." => "DC",
        _ => match STATES.iter().find(|(_, name)| name.eq_ignore_ascii_case(location)) {
            Some((code, _)) => code,
            None => location.rsplit_once(", ").map(|(_, code)| code.trim_end_matches('.'))?,
        },
    };
    STATES.iter().copied().find(|(c, _)| c.eq_ignore_ascii_case(code))
}

/// The all-party jurisdiction of a number, by display name ("California", "Washington",
/// "Canada", "United Kingdom", ... the country name of `countries.rs`), or `None` for a
/// one-party jurisdiction.
///
/// US numbers with no state (toll-free, 555, unmapped) are [`UNMAPPED_US`]; an unparseable
/// number is [`UNPARSEABLE`], both all-party.
pub fn all_party_jurisdiction(number_e164: &str) -> Option<String> {
    let Ok(number) = number_e164.parse::<PhoneNumber>() else {
        return Some(UNPARSEABLE.to_string());
    };
    let Some(region) = number_region(&number) else {
        return Some(UNPARSEABLE.to_string());
    };
    if region == "US" {
        return match Location::for_number(&number).and_then(|l| us_state(l.as_str())) {
            Some((code, name)) => ALL_PARTY_STATES.contains(&code).then(|| name.to_string()),
            None => Some(UNMAPPED_US.to_string()),
        };
    }
    let rule = rule_for(&region);
    rule.recording_consent.then(|| rule.name.to_string())
}

/// The refusal when recording lacks the consent `jurisdiction` requires.
pub fn consent_required_message(jurisdiction: &str) -> String {
    format!("Compliance: Recording consent required: {jurisdiction} requires all-party consent to record calls.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_party_states_by_area_code() {
        for (number, state) in [
            ("+14155550100", "California"),
            ("+13105550100", "California"),
            ("+12035550100", "Connecticut"),
            ("+13055550100", "Florida"),
            ("+13125550100", "Illinois"),
            ("+14105550100", "Maryland"),
            ("+16175550100", "Massachusetts"),
            ("+13135550100", "Michigan"),
            ("+14065550100", "Montana"),
            ("+17025550100", "Nevada"),
            ("+16035550100", "New Hampshire"),
            ("+15035550100", "Oregon"),
            ("+12155550100", "Pennsylvania"),
            ("+12065550100", "Washington"),
            ("+15095550100", "Washington"),
        ] {
            assert_eq!(all_party_jurisdiction(number).as_deref(), Some(state), "{number}");
        }
    }

    #[test]
    fn one_party_states_and_countries() {
        for number in [
            "+12125551234",  // New York, NY
            "+12145550100",  // Texas
            "+12025550100",  // Washington D.C.
            "+14045550100",  // Georgia
            "+13035550100",  // Colorado
            "+81312345678",  // Japan
            "+919876543210", // India
            "+6561234567",   // Singapore
            "+17875550100",  // Puerto Rico: a region of its own, without docs/compliance.md#country-rules rule
        ] {
            assert_eq!(all_party_jurisdiction(number), None, "{number}");
        }
    }

    #[test]
    fn unmapped_us_numbers_and_all_party_countries() {
        for (number, jurisdiction) in [
            ("+18005550100", UNMAPPED_US),
            ("+18885550100", UNMAPPED_US),
            ("+15555550100", UNMAPPED_US),
            ("+14165550100", "Canada"),
            ("+16045550100", "Canada"),
            ("+442079460000", "United Kingdom"),
            ("+447700900123", "United Kingdom"),
            ("+4930123456", "Germany"),
            ("+33142685300", "France"),
            ("+97235551234", "Israel"),
            ("+61291234567", "Australia"),
            ("+5511912345678", "Brazil"),
            ("+390612345678", "IT"),
            ("not a number", UNPARSEABLE),
            ("+80012345678", UNPARSEABLE),
        ] {
            assert_eq!(all_party_jurisdiction(number).as_deref(), Some(jurisdiction), "{number}");
        }
    }

    #[test]
    fn locations_to_states() {
        for (location, state) in [
            ("California", Some("CA")),
            ("San Francisco, CA", Some("CA")),
            ("Chicago, IL", Some("IL")),
            ("Washington State", Some("WA")),
            ("Seattle, WA", Some("WA")),
            ("Washington D.C.", Some("DC")),
            ("Washington, DC", Some("DC")),
            ("New York", Some("NY")),
            ("New York, NY", Some("NY")),
            ("St. Louis, MO", Some("MO")),
            ("Ontario", None),
            ("Toronto, ON", None),
            ("", None),
        ] {
            assert_eq!(us_state(location).map(|(code, _)| code), state, "{location}");
        }
        assert!(ALL_PARTY_STATES.iter().all(|code| STATES.iter().any(|(c, _)| c == code)));
        assert_eq!(STATES.len(), 51);
    }

    #[test]
    fn refusal_text() {
        assert_eq!(
            consent_required_message("California"),
            "Compliance: Recording consent required: California requires all-party consent to record calls."
        );
    }
}
