//! Quiet hours for calls and voice messages (docs/compliance.md#quiet-hours; windows and marketing day rules
//! from docs/compliance.md#country-rules).
//!
//! 1. The candidate zones are libphonenumber's time zones for the number ([`time_zones`]: its
//!    own map and lookup, so a Spanish mobile is in the Canaries and Madrid). A number without a
//!    specific zone (`Etc/Unknown`: invalid or unassigned numbers, calling codes without zones)
//!    counts as being in every zone of its region in tzdata's `zone1970.tab`.
//! 2. `recipientTimezone` replaces the candidates only if it is one of them; otherwise it is
//!    ignored, and the decision's note says so.
//! 3. The window is the region's hours (docs/compliance.md#country-rules) or 08:00–21:00, plus, for marketing calls,
//!    the day rules of France, Israel and Australia.
//! 4. The call is allowed iff the local hour is in the window in **every** candidate zone; a
//!    refusal names the first zone that is not.

use chrono::{DateTime, Datelike, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use namba::PhoneNumber;
use serde::Serialize;

use crate::countries::{rule_for, Hours};
use crate::time_zones;

const ZONE1970: &str = include_str!("../data/zone1970.tab");

/// The window of countries without hours of their own in docs/compliance.md#country-rules.
pub const DEFAULT_HOURS: Hours = Hours { start: 8, end: 21 };

/// The outcome of the quiet-hours check, with what was evaluated (for provenance).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// The candidate zones actually evaluated, in order.
    pub zones: Vec<String>,
    /// The recipient's region (ISO 3166-1 alpha-2), whose window applies.
    pub country: String,
    /// The applicable window, e.g. `08:00-21:00`.
    pub window: String,
    /// `Etc/Unknown` expanded, `recipientTimezone` ignored, ...
    pub note: Option<String>,
    /// Local time (`HH:MM`) in the first zone evaluated.
    pub local_time: String,
    /// `None`: allowed.
    pub refusal: Option<Refusal>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.refusal.is_none()
    }
}

/// Why the call is refused: the first candidate zone outside the window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    /// `Compliance: TCPA: Calls not allowed at this time (22:00 in America/New_York). Allowed: ...`
    pub message: String,
    pub zone: String,
    /// Local time in `zone`, `HH:MM`.
    pub local_time: String,
    pub window: String,
}

/// A marketing day rule of docs/compliance.md#country-rules: on `days`, marketing calls are allowed within `ranges`.
struct Slot {
    days: &'static [Weekday],
    label: &'static str,
    ranges: &'static [(u32, u32)],
}

const MON_FRI: &[Weekday] = &[Weekday::Mon, Weekday::Tue, Weekday::Wed, Weekday::Thu, Weekday::Fri];
const SUN_THU: &[Weekday] = &[Weekday::Sun, Weekday::Mon, Weekday::Tue, Weekday::Wed, Weekday::Thu];
const FRANCE: &[Slot] = &[Slot { days: MON_FRI, label: "Mon-Fri", ranges: &[(10, 13), (14, 20)] }];
const ISRAEL: &[Slot] = &[Slot { days: SUN_THU, label: "Sun-Thu", ranges: &[(8, 21)] }];
const AUSTRALIA: &[Slot] = &[
    Slot { days: MON_FRI, label: "Mon-Fri", ranges: &[(9, 20)] },
    Slot { days: &[Weekday::Sat], label: "Sat", ranges: &[(9, 17)] },
];

/// The marketing day rules of a country; empty: any day.
fn marketing_slots(country: &str) -> &'static [Slot] {
    match country {
        "FR" => FRANCE,
        "IL" => ISRAEL,
        "AU" => AUSTRALIA,
        _ => &[],
    }
}

struct Window {
    hours: Hours,
    /// Empty: every day of the week.
    slots: &'static [Slot],
}

impl Window {
    fn allows(&self, hour: u32, day: Weekday) -> bool {
        let within = |(start, end): (u32, u32)| start <= hour && hour < end;
        within((self.hours.start, self.hours.end))
            && (self.slots.is_empty()
                || self.slots.iter().any(|s| s.days.contains(&day) && s.ranges.iter().copied().any(within)))
    }

    /// `08:00-20:00 (marketing: Mon-Fri 10:00-13:00, 14:00-20:00)`.
    fn describe(&self) -> String {
        let range = |(start, end): (u32, u32)| format!("{start:02}:00-{end:02}:00");
        let base = range((self.hours.start, self.hours.end));
        if self.slots.is_empty() {
            return base;
        }
        let slots: Vec<String> = self
            .slots
            .iter()
            .map(|s| format!("{} {}", s.label, s.ranges.iter().copied().map(range).collect::<Vec<_>>().join(", ")))
            .collect();
        format!("{base} (marketing: {})", slots.join("; "))
    }

    /// `8:00 AM - 9:00 PM`, or `10:00 AM - 1:00 PM, 2:00 PM - 8:00 PM (Mon-Fri)`.
    fn allowed(&self) -> String {
        let range = |(start, end): (u32, u32)| format!("{} - {}", clock12(start), clock12(end));
        if self.slots.is_empty() {
            return range((self.hours.start, self.hours.end));
        }
        let slots: Vec<String> = self
            .slots
            .iter()
            .map(|s| format!("{} ({})", s.ranges.iter().copied().map(range).collect::<Vec<_>>().join(", "), s.label))
            .collect();
        slots.join("; ")
    }
}

/// `8` → `8:00 AM`, `12` → `12:00 PM`, `21` → `9:00 PM`, `0` and `24` → `12:00 AM`.
fn clock12(hour: u32) -> String {
    let hour = hour % 24;
    let (shown, half) = match hour {
        0 => (12, "AM"),
        1..=11 => (hour, "AM"),
        12 => (12, "PM"),
        _ => (hour - 12, "PM"),
    };
    format!("{shown}:00 {half}")
}

/// The number's region: the most specific one namba identifies, else the main region of its
/// calling code (a fictional +1 555 number is `US`).
pub(crate) fn number_region(number: &PhoneNumber) -> Option<String> {
    number.region().or_else(|| number.assess().regions().first().copied()).map(|r| r.as_str().to_string())
}

/// Every zone of `country` in tzdata's `zone1970.tab`, in the table's order (a row belongs to
/// every country of its first column).
pub fn zones_of_country(country: &str) -> Vec<&'static str> {
    ZONE1970
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let mut columns = line.split('\t');
            let countries = columns.next()?;
            let zone = columns.nth(1)?;
            countries.split(',').any(|c| c == country).then_some(zone)
        })
        .collect()
}

/// Decides whether a call or voice message to `number_e164` may be placed at `now`.
///
/// `marketing` is `purpose == "marketing"`: it adds the day rules of docs/compliance.md#country-rules. An unparseable
/// number, a number without a region, or a zone unknown to chrono-tz is an `Err` (the caller
/// fails closed).
pub fn evaluate(
    number_e164: &str,
    recipient_timezone: Option<&str>,
    marketing: bool,
    now: DateTime<Utc>,
) -> Result<Decision, String> {
    let number: PhoneNumber = number_e164.parse().map_err(|e| format!("unparseable number: {e}"))?;
    let country = number_region(&number).ok_or("number has no known region")?;
    let mapped = time_zones::for_number(&number);

    let mut notes = Vec::new();
    let unknown = mapped.is_empty() || mapped.contains(&time_zones::UNKNOWN);
    let mut zones: Vec<String> = if unknown {
        notes.push(format!("no specific time zone for this number (Etc/Unknown): every {country} zone evaluated"));
        zones_of_country(&country).into_iter().map(String::from).collect()
    } else {
        mapped.into_iter().map(String::from).collect()
    };
    if zones.is_empty() {
        return Err(format!("no time zone known for region {country}"));
    }
    if let Some(wanted) = recipient_timezone {
        if zones.iter().any(|z| z == wanted) {
            zones = vec![wanted.to_string()];
        } else {
            notes.push(format!("recipientTimezone {wanted:?} ignored: not a zone of this number"));
        }
    }

    let window = Window {
        hours: rule_for(&country).hours.unwrap_or(DEFAULT_HOURS),
        slots: if marketing { marketing_slots(&country) } else { &[] },
    };
    let described = window.describe();
    let parsed = zones
        .iter()
        .map(|zone| zone.parse::<Tz>().map(|tz| (zone, tz)).map_err(|_| format!("unknown time zone {zone}")))
        .collect::<Result<Vec<_>, _>>()?;
    let local_time =
        parsed.first().map(|(_, tz)| now.with_timezone(tz).format("%H:%M").to_string()).unwrap_or_default();
    let refusal = parsed.into_iter().find_map(|(zone, tz)| {
        let local = now.with_timezone(&tz);
        (!window.allows(local.hour(), local.weekday())).then(|| Refusal {
            message: format!(
                "Compliance: TCPA: Calls not allowed at this time ({}:00 in {zone}). Allowed: {}.",
                local.hour(),
                window.allowed()
            ),
            zone: zone.clone(),
            local_time: local.format("%H:%M").to_string(),
            window: described.clone(),
        })
    });

    let note = (!notes.is_empty()).then(|| notes.join("; "));
    Ok(Decision { zones, country, window: described, note, local_time, refusal })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NY: &str = "+12125551234";
    const LA: &str = "+14155550100";
    const CHICAGO: &str = "+13125550100";
    const HONOLULU: &str = "+18085550100";
    const PHOENIX: &str = "+16025550100";
    const ALASKA: &str = "+19075550100";
    const TOLL_FREE: &str = "+18005550100";
    const FICTIONAL: &str = "+15555550100";
    const TORONTO: &str = "+14165550100";
    const LONDON: &str = "+442079460000";
    const PARIS: &str = "+33142685300";
    const TEL_AVIV: &str = "+97235551234";
    const SYDNEY: &str = "+61291234567";
    const BERLIN: &str = "+4930123456";
    const TOKYO: &str = "+81312345678";
    const SPAIN_MOBILE: &str = "+34612345678";
    const SPAIN_UNASSIGNED: &str = "+34212345678";
    const MADRID: &str = "+34912345678";
    const LAS_PALMAS: &str = "+34928123456";

    fn at(utc: &str) -> DateTime<Utc> {
        utc.parse().unwrap_or_else(|e| panic!("{utc}: {e}"))
    }

    /// `(number, recipientTimezone, marketing, UTC instant, None = allowed | Some((zone, local time)))`.
    type Case = (&'static str, Option<&'static str>, bool, &'static str, Option<(&'static str, &'static str)>);

    fn check(cases: &[Case]) {
        for &(number, tz, marketing, utc, expected) in cases {
            let decision = evaluate(number, tz, marketing, at(utc)).unwrap_or_else(|e| panic!("{number}: {e}"));
            let got = decision.refusal.as_ref().map(|r| (r.zone.as_str(), r.local_time.as_str()));
            assert_eq!(got, expected, "{number} tz={tz:?} marketing={marketing} at {utc}: {decision:?}");
        }
    }

    const NYZ: &str = "America/New_York";

    #[test]
    fn new_york_edges_in_winter_summer_and_around_the_2026_dst_changes() {
        check(&[
            // Winter, EST (UTC-5).
            (NY, None, false, "2026-01-15T12:59:00Z", Some((NYZ, "07:59"))),
            (NY, None, false, "2026-01-15T13:00:00Z", None),
            (NY, None, false, "2026-01-16T01:59:00Z", None),
            (NY, None, false, "2026-01-16T02:00:00Z", Some((NYZ, "21:00"))),
            // Summer, EDT (UTC-4).
            (NY, None, false, "2026-07-15T11:59:00Z", Some((NYZ, "07:59"))),
            (NY, None, false, "2026-07-15T12:00:00Z", None),
            (NY, None, false, "2026-07-16T00:59:00Z", None),
            (NY, None, false, "2026-07-16T01:00:00Z", Some((NYZ, "21:00"))),
            // Saturday 7 March, still EST.
            (NY, None, false, "2026-03-07T12:59:00Z", Some((NYZ, "07:59"))),
            (NY, None, false, "2026-03-07T13:00:00Z", None),
            (NY, None, false, "2026-03-08T01:59:00Z", None),
            (NY, None, false, "2026-03-08T02:00:00Z", Some((NYZ, "21:00"))),
            // Sunday 8 March: EDT from 07:00 UTC, so 12:00 UTC is already 08:00.
            (NY, None, false, "2026-03-08T11:59:00Z", Some((NYZ, "07:59"))),
            (NY, None, false, "2026-03-08T12:00:00Z", None),
            (NY, None, false, "2026-03-09T00:59:00Z", None),
            (NY, None, false, "2026-03-09T01:00:00Z", Some((NYZ, "21:00"))),
            // Saturday 31 October, still EDT.
            (NY, None, false, "2026-10-31T11:59:00Z", Some((NYZ, "07:59"))),
            (NY, None, false, "2026-10-31T12:00:00Z", None),
            (NY, None, false, "2026-11-01T00:59:00Z", None),
            (NY, None, false, "2026-11-01T01:00:00Z", Some((NYZ, "21:00"))),
            // Sunday 1 November: EST from 06:00 UTC, so 12:00 UTC is only 07:00.
            (NY, None, false, "2026-11-01T12:00:00Z", Some((NYZ, "07:00"))),
            (NY, None, false, "2026-11-01T12:59:00Z", Some((NYZ, "07:59"))),
            (NY, None, false, "2026-11-01T13:00:00Z", None),
            (NY, None, false, "2026-11-02T01:59:00Z", None),
            (NY, None, false, "2026-11-02T02:00:00Z", Some((NYZ, "21:00"))),
            // US marketing has no day rule: a Sunday is fine.
            (NY, None, true, "2026-03-08T15:00:00Z", None),
        ]);
    }

    #[test]
    fn exact_refusal_for_new_york() {
        let decision = evaluate(NY, None, false, at("2026-01-16T03:00:00Z")).expect("valid number");
        assert_eq!(decision.zones, [NYZ]);
        assert_eq!(decision.country, "US");
        assert_eq!(decision.window, "08:00-21:00");
        assert_eq!(decision.note, None);
        assert!(!decision.allowed());
        let refusal = decision.refusal.expect("refused at 22:00");
        assert_eq!(
            refusal.message,
            "Compliance: TCPA: Calls not allowed at this time (22:00 in America/New_York). Allowed: 8:00 AM - 9:00 PM."
        );
        assert_eq!(
            (refusal.zone.as_str(), refusal.local_time.as_str(), refusal.window.as_str()),
            (NYZ, "22:00", "08:00-21:00")
        );
        assert!(evaluate(NY, None, false, at("2026-01-15T18:00:00Z")).expect("valid").allowed());
    }

    #[test]
    fn other_us_zones() {
        let la = "America/Los_Angeles";
        let chicago = "America/Chicago";
        let honolulu = "Pacific/Honolulu";
        let phoenix = "America/Phoenix";
        check(&[
            (LA, None, false, "2026-01-15T15:59:00Z", Some((la, "07:59"))),
            (LA, None, false, "2026-01-15T16:00:00Z", None),
            (LA, None, false, "2026-07-15T14:59:00Z", Some((la, "07:59"))),
            (LA, None, false, "2026-07-15T15:00:00Z", None),
            (LA, None, false, "2026-07-16T03:59:00Z", None),
            (LA, None, false, "2026-07-16T04:00:00Z", Some((la, "21:00"))),
            (LA, None, false, "2026-03-07T15:00:00Z", Some((la, "07:00"))),
            (LA, None, false, "2026-03-08T15:00:00Z", None),
            (CHICAGO, None, false, "2026-01-15T13:59:00Z", Some((chicago, "07:59"))),
            (CHICAGO, None, false, "2026-01-15T14:00:00Z", None),
            (CHICAGO, None, false, "2026-07-16T01:59:00Z", None),
            (CHICAGO, None, false, "2026-07-16T02:00:00Z", Some((chicago, "21:00"))),
            (CHICAGO, None, false, "2026-10-31T13:00:00Z", None),
            (CHICAGO, None, false, "2026-11-01T13:00:00Z", Some((chicago, "07:00"))),
            // Hawaii has no DST: the same UTC edges all year.
            (HONOLULU, None, false, "2026-01-15T17:59:00Z", Some((honolulu, "07:59"))),
            (HONOLULU, None, false, "2026-01-15T18:00:00Z", None),
            (HONOLULU, None, false, "2026-03-09T17:59:00Z", Some((honolulu, "07:59"))),
            (HONOLULU, None, false, "2026-07-15T17:59:00Z", Some((honolulu, "07:59"))),
            (HONOLULU, None, false, "2026-07-15T18:00:00Z", None),
            (HONOLULU, None, false, "2026-07-16T06:59:00Z", None),
            (HONOLULU, None, false, "2026-07-16T07:00:00Z", Some((honolulu, "21:00"))),
            // Arizona: MST all year.
            (PHOENIX, None, false, "2026-01-15T14:59:00Z", Some((phoenix, "07:59"))),
            (PHOENIX, None, false, "2026-01-15T15:00:00Z", None),
            (PHOENIX, None, false, "2026-07-15T14:59:00Z", Some((phoenix, "07:59"))),
            (PHOENIX, None, false, "2026-07-15T15:00:00Z", None),
            (PHOENIX, None, false, "2026-07-16T03:59:00Z", None),
            (PHOENIX, None, false, "2026-07-16T04:00:00Z", Some((phoenix, "21:00"))),
        ]);
    }

    #[test]
    fn every_candidate_zone_must_be_in_window() {
        let adak = "America/Adak";
        let anchorage = "America/Anchorage";
        check(&[
            // Alaska: Adak (HST/HDT) and Anchorage (AKST/AKDT).
            (ALASKA, None, false, "2026-01-15T17:30:00Z", Some((adak, "07:30"))),
            (ALASKA, None, false, "2026-01-15T18:00:00Z", None),
            (ALASKA, None, false, "2026-01-16T05:59:00Z", None),
            (ALASKA, None, false, "2026-01-16T06:00:00Z", Some((anchorage, "21:00"))),
            (ALASKA, None, false, "2026-07-15T16:30:00Z", Some((adak, "07:30"))),
            (ALASKA, None, false, "2026-07-15T17:00:00Z", None),
            // Toll-free is not geographical: libphonenumber gives every zone of +1, 42 from Guam
            // (UTC+10) to Pago Pago (UTC-11) and St John's (-3:30).
            (TOLL_FREE, None, false, "2026-07-15T16:00:00Z", Some((adak, "07:00"))),
            (TOLL_FREE, None, false, "2026-07-15T23:00:00Z", None),
            (TOLL_FREE, None, false, "2026-01-15T21:59:00Z", Some(("Pacific/Guam", "07:59"))),
            (TOLL_FREE, None, false, "2026-01-15T22:00:00Z", None),
            (TOLL_FREE, None, false, "2026-01-16T00:30:00Z", Some(("America/St_Johns", "21:00"))),
            // Fictional 555: Etc/Unknown, so every US zone of zone1970.tab (Phoenix is on MST).
            (FICTIONAL, None, false, "2026-07-15T14:00:00Z", Some(("America/Phoenix", "07:00"))),
            (FICTIONAL, None, false, "2026-07-15T19:00:00Z", None),
            (FICTIONAL, None, false, "2026-07-16T00:59:00Z", None),
            (FICTIONAL, None, false, "2026-07-16T01:00:00Z", Some((NYZ, "21:00"))),
        ]);
        let toll_free = evaluate(TOLL_FREE, None, false, at("2026-07-15T23:00:00Z")).expect("valid");
        assert_eq!(toll_free.zones.len(), 42);
        assert_eq!(toll_free.note, None);
        let fictional = evaluate(FICTIONAL, None, false, at("2026-07-15T19:00:00Z")).expect("valid");
        assert_eq!(fictional.zones, zones_of_country("US"));
        assert_eq!(fictional.zones.len(), 29);
        assert_eq!(fictional.country, "US");
        assert!(fictional.note.as_deref().is_some_and(|n| n.contains("Etc/Unknown")), "{fictional:?}");
    }

    #[test]
    fn spanish_mobile_is_checked_in_the_canaries_too() {
        let canary = "Atlantic/Canary";
        let madrid = "Europe/Madrid";
        check(&[
            // 08:30 in Madrid is 07:30 in the Canaries, summer (CEST/WEST) and winter (CET/WET).
            (SPAIN_MOBILE, None, false, "2026-07-15T06:30:00Z", Some((canary, "07:30"))),
            (SPAIN_MOBILE, None, false, "2026-01-15T07:30:00Z", Some((canary, "07:30"))),
            (SPAIN_MOBILE, None, false, "2026-07-15T06:59:00Z", Some((canary, "07:59"))),
            (SPAIN_MOBILE, None, false, "2026-07-15T07:00:00Z", None),
            // 21:30 in Madrid is only 20:30 in the Canaries: Madrid refuses.
            (SPAIN_MOBILE, None, false, "2026-07-15T18:59:00Z", None),
            (SPAIN_MOBILE, None, false, "2026-07-15T19:30:00Z", Some((madrid, "21:30"))),
            // A recipientTimezone that is a candidate is used alone.
            (SPAIN_MOBILE, Some(madrid), false, "2026-07-15T06:30:00Z", None),
            // Fixed lines are geographical: Madrid alone, the Canaries alone.
            (MADRID, None, false, "2026-07-15T06:30:00Z", None),
            (LAS_PALMAS, None, false, "2026-07-15T06:30:00Z", Some((canary, "07:30"))),
        ]);
        let decision = evaluate(SPAIN_MOBILE, None, false, at("2026-07-15T06:30:00Z")).expect("valid");
        assert_eq!(decision.zones, [canary, madrid]);
        assert_eq!((decision.country.as_str(), decision.local_time.as_str()), ("ES", "07:30"));
        assert_eq!(decision.note, None);
        let refusal = decision.refusal.expect("refused in the Canaries");
        assert_eq!((refusal.zone.as_str(), refusal.local_time.as_str()), (canary, "07:30"));
        assert_eq!(
            refusal.message,
            "Compliance: TCPA: Calls not allowed at this time (7:00 in Atlantic/Canary). Allowed: 8:00 AM - 9:00 PM."
        );
    }

    #[test]
    fn etc_unknown_expands_to_every_zone_of_the_region() {
        // An unassigned Spanish number: libphonenumber gives Etc/Unknown, so every ES zone of
        // zone1970.tab (Madrid, Ceuta, the Canaries) is evaluated.
        let number: PhoneNumber = SPAIN_UNASSIGNED.parse().expect("parses");
        assert_eq!(time_zones::for_number(&number), [time_zones::UNKNOWN]);
        let decision = evaluate(SPAIN_UNASSIGNED, None, false, at("2026-07-15T06:30:00Z")).expect("valid");
        assert_eq!(decision.zones, ["Europe/Madrid", "Africa/Ceuta", "Atlantic/Canary"]);
        assert_eq!(decision.zones, zones_of_country("ES"));
        assert!(decision.note.as_deref().is_some_and(|n| n.contains("Etc/Unknown")), "{decision:?}");
        let refusal = decision.refusal.expect("refused in the Canaries");
        assert_eq!((refusal.zone.as_str(), refusal.local_time.as_str()), ("Atlantic/Canary", "07:30"));
        assert!(evaluate(SPAIN_UNASSIGNED, None, false, at("2026-07-15T07:00:00Z")).expect("valid").allowed());
        // A number with zones of its own is never expanded.
        let mobile = evaluate(SPAIN_MOBILE, None, false, at("2026-07-15T12:00:00Z")).expect("valid");
        assert_eq!(mobile.zones, ["Atlantic/Canary", "Europe/Madrid"]);
    }

    #[test]
    fn recipient_timezone_is_used_only_when_a_candidate() {
        check(&[
            (ALASKA, Some("America/Anchorage"), false, "2026-01-15T17:30:00Z", None),
            (ALASKA, Some("America/Adak"), false, "2026-01-15T17:30:00Z", Some(("America/Adak", "07:30"))),
            (TOLL_FREE, Some("America/New_York"), false, "2026-07-15T16:00:00Z", None),
            (FICTIONAL, Some("America/Chicago"), false, "2026-07-15T14:00:00Z", None),
            (NY, Some("Europe/Paris"), false, "2026-01-15T12:00:00Z", Some((NYZ, "07:00"))),
            (NY, Some("America/Los_Angeles"), false, "2026-01-16T03:00:00Z", Some((NYZ, "22:00"))),
        ]);
        let used = evaluate(ALASKA, Some("America/Anchorage"), false, at("2026-01-15T17:30:00Z")).expect("valid");
        assert_eq!((used.zones, used.note), (vec!["America/Anchorage".to_string()], None));
        let ignored = evaluate(NY, Some("Europe/Paris"), false, at("2026-01-15T18:00:00Z")).expect("valid");
        assert_eq!(ignored.zones, [NYZ]);
        assert_eq!(
            ignored.note.as_deref(),
            Some(r#"recipientTimezone "Europe/Paris" ignored: not a zone of this number"#)
        );
        assert!(ignored.allowed());
    }

    #[test]
    fn london_default_window_across_the_2026_eu_changes() {
        let london = "Europe/London";
        check(&[
            (LONDON, None, false, "2026-01-15T07:59:00Z", Some((london, "07:59"))),
            (LONDON, None, false, "2026-01-15T08:00:00Z", None),
            (LONDON, None, false, "2026-01-15T20:59:00Z", None),
            (LONDON, None, false, "2026-01-15T21:00:00Z", Some((london, "21:00"))),
            (LONDON, None, false, "2026-03-28T07:30:00Z", Some((london, "07:30"))),
            (LONDON, None, false, "2026-03-29T20:30:00Z", Some((london, "21:30"))),
            (LONDON, None, false, "2026-03-30T07:30:00Z", None),
            (LONDON, None, false, "2026-10-24T20:30:00Z", Some((london, "21:30"))),
            (LONDON, None, false, "2026-10-25T07:30:00Z", Some((london, "07:30"))),
            (LONDON, None, false, "2026-10-26T20:30:00Z", None),
            // No day rule in the UK: a Sunday marketing call is fine.
            (LONDON, None, true, "2026-07-19T12:00:00Z", None),
        ]);
        let decision = evaluate(LONDON, None, false, at("2026-01-15T12:00:00Z")).expect("valid");
        assert_eq!((decision.country.as_str(), decision.window.as_str()), ("GB", "08:00-21:00"));
    }

    #[test]
    fn country_windows() {
        check(&[
            (TORONTO, None, false, "2026-01-15T12:59:00Z", Some(("America/Toronto", "07:59"))),
            (TORONTO, None, false, "2026-01-15T13:00:00Z", None),
            (BERLIN, None, false, "2026-07-15T18:59:00Z", None),
            (BERLIN, None, false, "2026-07-15T19:00:00Z", Some(("Europe/Berlin", "21:00"))),
            (TOKYO, None, false, "2026-07-15T11:59:00Z", None),
            (TOKYO, None, false, "2026-07-15T12:00:00Z", Some(("Asia/Tokyo", "21:00"))),
        ]);
        let toronto = evaluate(TORONTO, None, false, at("2026-01-15T13:00:00Z")).expect("valid");
        assert_eq!(
            (toronto.country.as_str(), toronto.zones.as_slice()),
            ("CA", ["America/Toronto".to_string()].as_slice())
        );
    }

    #[test]
    fn france_marketing_day_rule() {
        let paris = "Europe/Paris";
        check(&[
            // Saturday 18 July, 12:00 CEST.
            (PARIS, None, true, "2026-07-18T10:00:00Z", Some((paris, "12:00"))),
            (PARIS, None, false, "2026-07-18T10:00:00Z", None),
            // Tuesday 14 July.
            (PARIS, None, true, "2026-07-14T07:59:00Z", Some((paris, "09:59"))),
            (PARIS, None, false, "2026-07-14T07:59:00Z", None),
            (PARIS, None, true, "2026-07-14T08:00:00Z", None),
            (PARIS, None, true, "2026-07-14T10:59:00Z", None),
            (PARIS, None, true, "2026-07-14T11:30:00Z", Some((paris, "13:30"))),
            (PARIS, None, false, "2026-07-14T11:30:00Z", None),
            (PARIS, None, true, "2026-07-14T12:00:00Z", None),
            (PARIS, None, true, "2026-07-14T17:59:00Z", None),
            (PARIS, None, true, "2026-07-14T18:00:00Z", Some((paris, "20:00"))),
            (PARIS, None, false, "2026-07-14T18:00:00Z", Some((paris, "20:00"))),
            (PARIS, None, false, "2026-07-14T05:59:00Z", Some((paris, "07:59"))),
            (PARIS, None, false, "2026-07-14T06:00:00Z", None),
            // Tuesday 13 January, CET.
            (PARIS, None, true, "2026-01-13T08:59:00Z", Some((paris, "09:59"))),
            (PARIS, None, true, "2026-01-13T09:00:00Z", None),
        ]);
        let lunch = evaluate(PARIS, None, true, at("2026-07-14T11:30:00Z")).expect("valid");
        assert_eq!(lunch.window, "08:00-20:00 (marketing: Mon-Fri 10:00-13:00, 14:00-20:00)");
        assert_eq!(
            lunch.refusal.map(|r| r.message).as_deref(),
            Some(
                "Compliance: TCPA: Calls not allowed at this time (13:00 in Europe/Paris). \
                 Allowed: 10:00 AM - 1:00 PM, 2:00 PM - 8:00 PM (Mon-Fri)."
            )
        );
        let evening = evaluate(PARIS, None, false, at("2026-07-14T18:00:00Z")).expect("valid");
        assert_eq!(evening.window, "08:00-20:00");
        assert!(evening.refusal.is_some_and(|r| r.message.ends_with("Allowed: 8:00 AM - 8:00 PM.")));
    }

    #[test]
    fn israel_marketing_day_rule() {
        let jerusalem = "Asia/Jerusalem";
        check(&[
            (TEL_AVIV, None, true, "2026-07-17T09:00:00Z", Some((jerusalem, "12:00"))),
            (TEL_AVIV, None, false, "2026-07-17T09:00:00Z", None),
            (TEL_AVIV, None, true, "2026-07-18T09:00:00Z", Some((jerusalem, "12:00"))),
            (TEL_AVIV, None, true, "2026-07-19T09:00:00Z", None),
            (TEL_AVIV, None, true, "2026-07-16T17:59:00Z", None),
            (TEL_AVIV, None, true, "2026-07-16T18:00:00Z", Some((jerusalem, "21:00"))),
            (TEL_AVIV, None, false, "2026-01-15T05:59:00Z", Some((jerusalem, "07:59"))),
            (TEL_AVIV, None, false, "2026-01-15T06:00:00Z", None),
        ]);
        let friday = evaluate(TEL_AVIV, None, true, at("2026-07-17T09:00:00Z")).expect("valid");
        assert_eq!(friday.window, "08:00-21:00 (marketing: Sun-Thu 08:00-21:00)");
        assert!(friday.refusal.is_some_and(|r| r.message.ends_with("Allowed: 8:00 AM - 9:00 PM (Sun-Thu).")));
    }

    #[test]
    fn australia_window_and_marketing_day_rule() {
        let sydney = "Australia/Sydney";
        check(&[
            // July: AEST (UTC+10). Saturday 18 July.
            (SYDNEY, None, true, "2026-07-18T06:30:00Z", None),
            (SYDNEY, None, true, "2026-07-18T07:30:00Z", Some((sydney, "17:30"))),
            (SYDNEY, None, false, "2026-07-18T07:30:00Z", None),
            // Sunday 19 July.
            (SYDNEY, None, true, "2026-07-19T02:00:00Z", Some((sydney, "12:00"))),
            (SYDNEY, None, false, "2026-07-19T02:00:00Z", None),
            // Monday 20 July.
            (SYDNEY, None, false, "2026-07-19T22:59:00Z", Some((sydney, "08:59"))),
            (SYDNEY, None, true, "2026-07-19T23:00:00Z", None),
            (SYDNEY, None, true, "2026-07-20T09:59:00Z", None),
            (SYDNEY, None, false, "2026-07-20T10:00:00Z", Some((sydney, "20:00"))),
            // January: AEDT (UTC+11). Thursday 15 January.
            (SYDNEY, None, false, "2026-01-14T21:59:00Z", Some((sydney, "08:59"))),
            (SYDNEY, None, false, "2026-01-14T22:00:00Z", None),
        ]);
        let saturday = evaluate(SYDNEY, None, true, at("2026-07-18T07:30:00Z")).expect("valid");
        assert_eq!(saturday.window, "09:00-20:00 (marketing: Mon-Fri 09:00-20:00; Sat 09:00-17:00)");
        assert_eq!(
            saturday.refusal.map(|r| r.message).as_deref(),
            Some(
                "Compliance: TCPA: Calls not allowed at this time (17:00 in Australia/Sydney). \
                 Allowed: 9:00 AM - 8:00 PM (Mon-Fri); 9:00 AM - 5:00 PM (Sat)."
            )
        );
    }

    #[test]
    fn unusable_numbers_are_errors() {
        let now = at("2026-01-15T18:00:00Z");
        for number in ["", "abc", "12125551234x", "+999123456", "+80012345678"] {
            assert!(evaluate(number, None, false, now).is_err(), "{number}");
        }
    }

    #[test]
    fn twelve_hour_clock() {
        for (hour, text) in [
            (0, "12:00 AM"),
            (8, "8:00 AM"),
            (11, "11:00 AM"),
            (12, "12:00 PM"),
            (13, "1:00 PM"),
            (21, "9:00 PM"),
            (24, "12:00 AM"),
        ] {
            assert_eq!(clock12(hour), text);
        }
    }

    #[test]
    fn zone1970_zones_are_known_to_chrono_tz() {
        let zones: Vec<&str> =
            ZONE1970.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split('\t').nth(2)).collect();
        assert!(zones.len() > 300);
        for zone in zones {
            assert!(zone.parse::<Tz>().is_ok(), "{zone}");
        }
        assert_eq!(zones_of_country("GB"), ["Europe/London"]);
        assert!(zones_of_country("CA").contains(&"America/Phoenix"));
        assert!(zones_of_country("ZZ").is_empty());
    }
}
