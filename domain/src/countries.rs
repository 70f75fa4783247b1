//! Per-country communication rules (docs/compliance.md#country-rules): consent, A2P registration, DNC
//! registries, calling hours, recording consent, and the regulations that set them.

/// Calling window in local hours: allowed iff `start <= hour < end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hours {
    pub start: u32,
    pub end: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountryRule {
    pub code: &'static str,
    pub name: &'static str,
    pub consent: bool,
    pub a2p: bool,
    pub dnc: bool,
    /// `None`: no country-specific window (quiet hours then use 08–21).
    pub hours: Option<Hours>,
    pub recording_consent: bool,
    pub opt_out: bool,
    pub regulations: &'static [&'static str],
}

const fn rule(
    code: &'static str,
    name: &'static str,
    a2p: bool,
    dnc: bool,
    hours: Option<(u32, u32)>,
    recording_consent: bool,
    regulations: &'static [&'static str],
) -> CountryRule {
    let hours = match hours {
        Some((start, end)) => Some(Hours { start, end }),
        None => None,
    };
    CountryRule { code, name, consent: true, a2p, dnc, hours, recording_consent, opt_out: true, regulations }
}

const GDPR: &[&str] = &["GDPR", "ePrivacy Directive"];

/// The 12 named countries, then the 25 generic EU members.
const RULES: &[CountryRule] = &[
    // US recording consent depends on the state (docs/compliance.md#recording-consent), decided per call, not per country.
    rule("US", "United States", true, true, Some((8, 21)), false, &["TCPA", "CAN-SPAM", "A2P 10DLC", "STIR/SHAKEN"]),
    rule("CA", "Canada", true, true, Some((8, 21)), true, &["CASL", "PIPEDA", "CRTC DNCL"]),
    rule("GB", "United Kingdom", false, true, None, true, &["UK GDPR", "PECR", "TPS"]),
    rule("DE", "Germany", false, true, Some((8, 21)), true, &["GDPR", "UWG", "TTDSG"]),
    rule("FR", "France", false, true, Some((8, 20)), true, &["GDPR", "Bloctel", "Code des postes"]),
    rule(
        "IL",
        "Israel",
        false,
        true,
        Some((8, 21)),
        true,
        &["Privacy Protection Law", "Communications Law", "DNC Registry"],
    ),
    rule(
        "AU",
        "Australia",
        true,
        true,
        Some((9, 20)),
        true,
        &["Spam Act 2003", "Do Not Call Register Act", "Privacy Act"],
    ),
    rule("JP", "Japan", false, false, None, false, &["APPI", "Act on Specified Commercial Transactions"]),
    rule("BR", "Brazil", false, true, Some((8, 21)), true, &["LGPD", "Procon", "Anatel regulations"]),
    rule("IN", "India", true, true, Some((9, 21)), false, &["TRAI DND", "IT Act", "DPDP Act"]),
    rule("SG", "Singapore", false, true, None, false, &["PDPA", "Spam Control Act", "DNC Registry"]),
    rule(
        "AE",
        "United Arab Emirates",
        true,
        false,
        None,
        false,
        &["TRA regulations", "Federal Decree-Law on Data Protection"],
    ),
    rule("AT", "AT", false, true, None, true, GDPR),
    rule("BE", "BE", false, true, None, true, GDPR),
    rule("BG", "BG", false, true, None, true, GDPR),
    rule("HR", "HR", false, true, None, true, GDPR),
    rule("CY", "CY", false, true, None, true, GDPR),
    rule("CZ", "CZ", false, true, None, true, GDPR),
    rule("DK", "DK", false, true, None, true, GDPR),
    rule("EE", "EE", false, true, None, true, GDPR),
    rule("FI", "FI", false, true, None, true, GDPR),
    rule("GR", "GR", false, true, None, true, GDPR),
    rule("HU", "HU", false, true, None, true, GDPR),
    rule("IE", "IE", false, true, None, true, GDPR),
    rule("IT", "IT", false, true, None, true, GDPR),
    rule("LV", "LV", false, true, None, true, GDPR),
    rule("LT", "LT", false, true, None, true, GDPR),
    rule("LU", "LU", false, true, None, true, GDPR),
    rule("MT", "MT", false, true, None, true, GDPR),
    rule("NL", "NL", false, true, None, true, GDPR),
    rule("PL", "PL", false, true, None, true, GDPR),
    rule("PT", "PT", false, true, None, true, GDPR),
    rule("RO", "RO", false, true, None, true, GDPR),
    rule("SK", "SK", false, true, None, true, GDPR),
    rule("SI", "SI", false, true, None, true, GDPR),
    rule("ES", "ES", false, true, None, true, GDPR),
    rule("SE", "SE", false, true, None, true, GDPR),
];

/// Every code without a rule of its own.
pub const DEFAULT_RULE: CountryRule = CountryRule {
    code: "default",
    name: "Default (Unknown Country)",
    consent: true,
    a2p: false,
    dnc: false,
    hours: None,
    recording_consent: false,
    opt_out: true,
    regulations: &[],
};

/// The rule for an ISO 3166-1 alpha-2 code (case-insensitive); unlisted codes get the default.
pub fn rule_for(code: &str) -> &'static CountryRule {
    RULES.iter().find(|r| r.code.eq_ignore_ascii_case(code)).unwrap_or(&DEFAULT_RULE)
}

/// What provisioning an agent in `country` needs (docs/compliance.md#country-rules): blockers refuse, warnings inform.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProvisioningCheck {
    pub blockers: Vec<String>,
    pub warnings: Vec<Warning>,
}

/// A warning as replies carry it (docs/tools.md: `warnings: [{code, message}]`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Warning {
    pub code: &'static str,
    pub message: String,
}

pub fn provisioning_check(country: &str, phone: bool, a2p_registered: bool) -> ProvisioningCheck {
    let rule = rule_for(country);
    let mut check = ProvisioningCheck::default();
    if rule.a2p && phone && !a2p_registered {
        check.blockers.push(format!("{} requires A2P SMS registration before sending business messages", rule.name));
    }
    if let Some(Hours { start, end }) = rule.hours {
        check.warnings.push(Warning {
            code: "calling_hours",
            message: format!("{} restricts calling hours to {start}:00-{end}:00 local time", rule.name),
        });
    }
    if rule.recording_consent {
        check.warnings.push(Warning {
            code: "recording_consent",
            message: format!("{} requires consent to record calls", rule.name),
        });
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirty_seven_countries_and_a_default() {
        assert_eq!(RULES.len(), 37);
        assert_eq!(rule_for("zz"), &DEFAULT_RULE);
        assert_eq!(rule_for("fr").hours, Some(Hours { start: 8, end: 20 }));
    }

    #[test]
    fn a2p_countries_block_phone_provisioning_until_registered() {
        let blocked = provisioning_check("US", true, false);
        assert_eq!(blocked.blockers, ["United States requires A2P SMS registration before sending business messages"]);
        assert!(blocked.warnings.contains(&Warning {
            code: "calling_hours",
            message: "United States restricts calling hours to 8:00-21:00 local time".into()
        }));
        assert!(provisioning_check("US", true, true).blockers.is_empty());
        assert!(provisioning_check("US", false, false).blockers.is_empty());
        assert!(provisioning_check("GB", true, false).blockers.is_empty());
        assert_eq!(provisioning_check("JP", true, false), ProvisioningCheck::default());
    }
}
