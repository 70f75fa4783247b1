//! Refusals, typed (docs/tools.md#the-outbound-pipeline, docs/errors.md, docs/events.md): which check refused, with which docs/errors.md code, under
//! which compliance rule or limit. A refusal is decided once, where its check runs, and carried
//! as it is to the event that records it and to the reply; nothing reads its text back.

use serde::{Deserialize, Serialize};

/// The docs/errors.md error codes, by their wire names. The HTTP status of each is the edge's
/// (`commguard::error::status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    InvalidInput,
    NotFound,
    Conflict,
    QuotaExceeded,
    RateLimited,
    LockedOut,
    ComplianceBlocked,
    ProviderError,
    Unavailable,
    PayloadTooLarge,
    UnsupportedMediaType,
    MethodNotAllowed,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::InvalidInput => "invalid_input",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::QuotaExceeded => "quota_exceeded",
            Self::RateLimited => "rate_limited",
            Self::LockedOut => "locked_out",
            Self::ComplianceBlocked => "compliance_blocked",
            Self::ProviderError => "provider_error",
            Self::Unavailable => "unavailable",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Internal => "internal",
        }
    }
}

/// A code equals its wire name.
impl PartialEq<&str> for ErrorCode {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

/// An aggregate's refusal: worded as the contract words it (`Display`), with its docs/errors.md code, each
/// error enum deciding its codes in one exhaustive match.
pub trait DomainError: std::error::Error {
    fn code(&self) -> ErrorCode;
}

/// The checks of docs/tools.md#the-outbound-pipeline that can refuse, by the names `refusedBy` and the provenance
/// carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Check {
    AgentResolve,
    Role,
    Input,
    OrgBoundary,
    AgentState,
    OrgState,
    /// A compliance refusal outside the outbound pipeline (provisioning's country rules, a
    /// suspended org on provisioning).
    Compliance,
    ContentFilter,
    Dnc,
    Consent,
    QuietHours,
    RecordingConsent,
    /// A conflict with the state of what the action names (already exists, quota reached).
    State,
    /// Provisioning's own checks, in docs/tools.md's order: the country's rules, an agent id
    /// already taken, the org's agent pool full.
    CountryRules,
    Duplicate,
    Capacity,
    Limits,
    Provider,
    Internal,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentResolve => "agent_resolve",
            Self::Role => "role",
            Self::Input => "input",
            Self::OrgBoundary => "org_boundary",
            Self::AgentState => "agent_state",
            Self::OrgState => "org_state",
            Self::Compliance => "compliance",
            Self::ContentFilter => "content_filter",
            Self::Dnc => "dnc",
            Self::Consent => "consent",
            Self::QuietHours => "quiet_hours",
            Self::RecordingConsent => "recording_consent",
            Self::State => "state",
            Self::CountryRules => "country_rules",
            Self::Duplicate => "duplicate",
            Self::Capacity => "capacity",
            Self::Limits => "limits",
            Self::Provider => "provider",
            Self::Internal => "internal",
        }
    }

    /// The check a refusal stands for when the place that decided it named none: the one its
    /// code implies. Places whose code does not say (an org boundary, a suspended org at a
    /// session's open) name their check (`ApiError::at`).
    pub fn of_code(code: ErrorCode) -> Self {
        match code {
            ErrorCode::Forbidden => Self::Role,
            ErrorCode::NotFound => Self::AgentResolve,
            ErrorCode::InvalidInput | ErrorCode::PayloadTooLarge | ErrorCode::UnsupportedMediaType => Self::Input,
            ErrorCode::ComplianceBlocked => Self::Compliance,
            ErrorCode::Conflict | ErrorCode::QuotaExceeded => Self::State,
            ErrorCode::Unavailable | ErrorCode::ProviderError => Self::Provider,
            ErrorCode::RateLimited => Self::Limits,
            ErrorCode::Unauthorized | ErrorCode::LockedOut | ErrorCode::MethodNotAllowed | ErrorCode::Internal => {
                Self::Internal
            }
        }
    }
}

/// The compliance rule a `compliance_blocked` refusal names (`rule` in the reply and the event).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// The org is suspended (docs/compliance.md#sandbox).
    Sandbox,
    CountryRules,
    ContentFilter,
    Dnc,
    ConsentRequired,
    QuietHours,
    RecordingConsent,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sandbox => "sandbox",
            Self::CountryRules => "country_rules",
            Self::ContentFilter => "content_filter",
            Self::Dnc => "dnc",
            Self::ConsentRequired => "consent_required",
            Self::QuietHours => "quiet_hours",
            Self::RecordingConsent => "recording_consent",
        }
    }
}

/// The limit a `rate_limited` refusal names (`limitType`, docs/limits.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitType {
    PerMinute,
    PerHour,
    PerDay,
    DailySpend,
    MonthlySpend,
    OrgSpendDay,
    OrgSpendMonth,
    /// Voice actions to one number in a UTC day.
    ContactFrequency,
}

impl LimitType {
    pub const ALL: [Self; 8] = [
        Self::PerMinute,
        Self::PerHour,
        Self::PerDay,
        Self::DailySpend,
        Self::MonthlySpend,
        Self::OrgSpendDay,
        Self::OrgSpendMonth,
        Self::ContactFrequency,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerMinute => "per-minute",
            Self::PerHour => "per-hour",
            Self::PerDay => "per-day",
            Self::DailySpend => "daily-spend",
            Self::MonthlySpend => "monthly-spend",
            Self::OrgSpendDay => "org_spend_day",
            Self::OrgSpendMonth => "org_spend_month",
            Self::ContactFrequency => "contact-frequency",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == name)
    }

    /// A spend cap (money), rather than a count of actions.
    pub fn is_spend(self) -> bool {
        match self {
            Self::PerMinute | Self::PerHour | Self::PerDay | Self::ContactFrequency => false,
            Self::DailySpend | Self::MonthlySpend | Self::OrgSpendDay | Self::OrgSpendMonth => true,
        }
    }
}

/// One refusal: the check that decided it, its docs/errors.md code, the caller's message, and the rule or
/// limit it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub check: Check,
    pub code: ErrorCode,
    pub reason: String,
    pub rule: Option<Rule>,
    pub limit: Option<LimitType>,
}

impl Refusal {
    pub fn new(check: Check, code: ErrorCode, reason: impl Into<String>) -> Self {
        Self { check, code, reason: reason.into(), rule: None, limit: None }
    }

    pub fn under(mut self, rule: Rule) -> Self {
        self.rule = Some(rule);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_wire_names() {
        for code in [ErrorCode::ComplianceBlocked, ErrorCode::RateLimited, ErrorCode::UnsupportedMediaType] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn limit_types_read_back_their_names() {
        for limit in LimitType::ALL {
            assert_eq!(LimitType::parse(limit.as_str()), Some(limit));
        }
        assert_eq!(LimitType::parse("per-week"), None);
        assert!(LimitType::OrgSpendMonth.is_spend() && !LimitType::PerDay.is_spend());
    }
}
