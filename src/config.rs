//! One validated configuration, read once from the environment (docs/configuration.md). A malformed value
//! is an error naming the variable (the binary exits 2), never a silent default; production
//! refuses unsafe settings.

use std::path::PathBuf;

use ipnet::IpNet;

use crate::crypto::keys::{parse_hex_key, Key};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

impl Environment {
    pub fn is_production(self) -> bool {
        self == Self::Production
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Production => "production",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// A secret value: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("env", &self.env)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("demo_mode", &self.demo_mode)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    pub messages_days: u32,
    pub usage_logs_days: u32,
    pub call_logs_days: u32,
    pub voicemail_days: u32,
    pub otp_days: u32,
    pub revoked_consent_days: u32,
    pub security_log_days: u32,
}

/// Every variable, read once. `Debug` shows where the server listens and in which mode, nothing
/// else: keys, tokens, secrets and the database URL (which may hold a password) never print.
#[derive(Clone)]
pub struct Config {
    pub env: Environment,
    pub host: String,
    pub port: u16,
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    pub pg_bin_dir: Option<PathBuf>,
    pub database_max_connections: u32,
    pub master_token: Option<Secret>,
    pub demo_mode: bool,
    pub test_clock: bool,
    pub webhook_base_url: String,
    pub cors_allowed_origins: Vec<String>,
    pub trust_proxy: bool,
    pub http_rate_limit_per_ip: u32,
    pub http_rate_limit_global: u32,
    pub webhook_rate_limit_per_ip: u32,
    pub brute_force_max_failures: u32,
    pub brute_force_window_seconds: u64,
    pub brute_force_lockout_seconds: u64,
    pub admin_ip_allowlist: Vec<IpNet>,
    pub webhook_ip_allowlist: Vec<IpNet>,
    pub ip_denylist: Vec<IpNet>,
    /// `DATA_ENCRYPTION_KEY`; `None` in development means "generate into the data dir".
    pub data_encryption_key: Option<Key>,
    pub credentials_encryption_key: Option<Key>,
    pub credentials_encryption_key_previous: Option<Key>,
    pub twilio_account_sid: Option<String>,
    pub twilio_auth_token: Option<Secret>,
    pub resend_api_key: Option<Secret>,
    pub resend_webhook_secret: Option<Secret>,
    pub twilio_api_base_url: String,
    pub resend_api_base_url: String,
    pub provider_twilio_disabled: bool,
    pub provider_resend_disabled: bool,
    pub email_default_domain: String,
    pub agentos_callback_url: Option<String>,
    pub callback_signing_secret: Option<Secret>,
    pub default_max_actions_per_minute: u32,
    pub default_max_actions_per_hour: u32,
    pub default_max_actions_per_day: u32,
    /// Micro-dollars.
    pub default_max_spend_per_day: i64,
    pub default_max_spend_per_month: i64,
    pub default_max_calls_per_day_same_number: u32,
    pub billing_markup_percent: f64,
    pub org_default_max_agents: u32,
    pub mcp_max_sessions: u32,
    pub mcp_session_idle_seconds: u64,
    /// How long an instance may stop heartbeating before its outbound intents are reconciled
    /// by others (`ledger::intents`).
    pub outbound_intent_lease_seconds: u64,
    pub anomaly_detector_enabled: bool,
    pub anomaly_check_interval_seconds: u64,
    pub anomaly_volume_min_actions: u32,
    pub data_retention_enabled: bool,
    pub retention_interval_seconds: u64,
    /// How long after start the first retention run comes: 60 s (docs/privacy.md#retention). No variable
    /// sets it (docs/configuration.md has none); in-process tests shorten it to watch a real scheduled run.
    pub retention_first_run: std::time::Duration,
    pub retention: Retention,
    pub webhook_replay_window_seconds: u64,
    pub voice_ai_disclosure: bool,
    pub voice_ai_disclosure_text: String,
    pub recording_announcement_text: String,
    pub voice_relay_url: Option<String>,
    pub sms_keyword_replies: bool,
    pub sms_help_text: String,
    pub log_format: LogFormat,
    /// `RUST_LOG`: the log filter (checked when read).
    pub log_filter: String,
}

/// The variable that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    pub var: String,
    pub reason: String,
}

fn err(var: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError { var: var.into(), reason: reason.into() }
}

/// Reads typed values from a lookup, naming the variable in every error.
struct Reader<F: Fn(&str) -> Option<String>> {
    get: F,
}

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    /// The value, with surrounding whitespace removed; empty counts as unset.
    fn raw(&self, var: &str) -> Option<String> {
        (self.get)(var).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
    }

    fn string(&self, var: &str, default: &str) -> String {
        self.raw(var).unwrap_or_else(|| default.to_string())
    }

    fn bool(&self, var: &str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(var).as_deref() {
            None => Ok(default),
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(_) => Err(err(var, "must be true, false, 1 or 0")),
        }
    }

    fn number<T>(&self, var: &str, default: T, min: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display,
    {
        match self.raw(var) {
            None => Ok(default),
            Some(v) => {
                let n: T = v.parse().map_err(|_| err(var, format!("must be a whole number, got {v:?}")))?;
                if n < min {
                    return Err(err(var, format!("must be at least {min}")));
                }
                Ok(n)
            }
        }
    }

    /// Dollars (≤ 6 decimals) → micro-dollars.
    fn money(&self, var: &str, default_dollars: i64) -> Result<i64, ConfigError> {
        match self.raw(var) {
            None => Ok(default_dollars * 1_000_000),
            Some(v) => parse_micros(&v).ok_or_else(|| err(var, format!("must be an amount in dollars, got {v:?}"))),
        }
    }

    fn key(&self, var: &str) -> Result<Option<Key>, ConfigError> {
        self.raw(var)
            .map(|v| parse_hex_key(&v).ok_or_else(|| err(var, "Encryption key must be 32 bytes (64 hex characters)")))
            .transpose()
    }

    fn ip_list(&self, var: &str) -> Result<Vec<IpNet>, ConfigError> {
        let Some(v) = self.raw(var) else { return Ok(Vec::new()) };
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| parse_ip_or_cidr(s).ok_or_else(|| err(var, format!("not an IP address or CIDR: {s:?}"))))
            .collect()
    }

    /// An optional URL with one of `schemes` and a host.
    fn optional_url(&self, var: &str, schemes: &[&str]) -> Result<Option<String>, ConfigError> {
        let Some(v) = self.raw(var) else { return Ok(None) };
        let host = v.split_once("://").filter(|(scheme, _)| schemes.contains(scheme)).map(|(_, rest)| rest);
        match host.and_then(|rest| rest.split(['/', '?']).next()) {
            Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => Ok(Some(v)),
            _ => {
                let schemes: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
                Err(err(var, format!("must be a {} URL", schemes.join(" or "))))
            }
        }
    }

    /// A domain name: dot-separated labels of letters, digits and hyphens.
    fn domain(&self, var: &str, default: &str) -> Result<String, ConfigError> {
        let v = self.string(var, default);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if v.len() > 253 || !v.split('.').all(label_ok) {
            return Err(err(var, format!("not a domain name: {v:?}")));
        }
        Ok(v.to_ascii_lowercase())
    }

    /// `DATABASE_URL`, if set: a `postgres://` or `postgresql://` URL.
    fn database_url(&self) -> Result<Option<String>, ConfigError> {
        let Some(v) = self.raw("DATABASE_URL") else { return Ok(None) };
        match url::Url::parse(&v) {
            Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") => Ok(Some(v)),
            _ => Err(err("DATABASE_URL", "must be a postgres:// or postgresql:// URL")),
        }
    }

    fn url(&self, var: &str, default: &str) -> Result<String, ConfigError> {
        let v = self.string(var, default);
        match url::Url::parse(&v) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                Ok(v.trim_end_matches('/').to_string())
            }
            _ => Err(err(var, "must be an http:// or https:// URL")),
        }
    }
}

/// Parses `1.5` or `10` dollars into micro-dollars; negative or over 6 decimals is refused (the
/// same check as money in requests, `money::parse_exact`).
pub fn parse_micros(v: &str) -> Option<i64> {
    crate::money::parse_exact(v).filter(|m| *m >= 0)
}

/// An address (one host) or a CIDR block; IPv4-mapped IPv6 is treated as IPv4.
pub fn parse_ip_or_cidr(s: &str) -> Option<IpNet> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(match net {
            IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                Some(v4) => IpNet::new(v4.into(), v6.prefix_len().saturating_sub(96)).ok()?,
                None => net,
            },
            v4 => v4,
        });
    }
    let ip: std::net::IpAddr = s.parse().ok()?;
    let ip = crate::config::canonical_ip(ip);
    Some(IpNet::from(ip))
}

/// IPv4-mapped IPv6 addresses compare as the IPv4 address they carry.
pub fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration from `get` (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let r = Reader { get };
        let env = match r.raw("COMMGUARD_ENV").as_deref() {
            Some("production") => Environment::Production,
            Some("development") => Environment::Development,
            Some(other) => {
                return Err(err("COMMGUARD_ENV", format!("must be production or development, got {other:?}")))
            }
            None if r.raw("NODE_ENV").as_deref() == Some("production") => Environment::Production,
            None => Environment::Development,
        };
        let master = r.raw("MASTER_SECURITY_TOKEN");
        let alias = r.raw("ORCHESTRATOR_SECURITY_TOKEN");
        let master_token = match (master, alias) {
            (Some(a), Some(b)) if a != b => {
                return Err(err("MASTER_SECURITY_TOKEN", "and ORCHESTRATOR_SECURITY_TOKEN are both set and differ"))
            }
            (Some(a), _) | (None, Some(a)) => Some(Secret(a)),
            (None, None) => None,
        };
        let webhook_base_url = r.url("WEBHOOK_BASE_URL", "http://localhost:3100")?;
        let cors_allowed_origins = match r.raw("CORS_ALLOWED_ORIGINS") {
            Some(list) => {
                let mut origins = Vec::new();
                for written in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
                    let origin = as_origin(written).ok_or_else(|| {
                        err(
                            "CORS_ALLOWED_ORIGINS",
                            format!("not an http(s) origin: {:?}", written.trim_end_matches('/')),
                        )
                    })?;
                    origins.push(origin);
                }
                origins
            }
            None => vec![origin_of(&webhook_base_url)],
        };
        let trust_proxy = match r.raw("TRUST_PROXY").as_deref() {
            None | Some("0") => false,
            Some("1") => true,
            Some(_) => return Err(err("TRUST_PROXY", "must be 0 or 1")),
        };
        let log_format = match r.raw("LOG_FORMAT").as_deref() {
            None if env == Environment::Production => LogFormat::Json,
            None => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(_) => return Err(err("LOG_FORMAT", "must be json or text")),
        };
        let log_filter = match r.raw("RUST_LOG") {
            None => "info".to_string(),
            Some(v) => match tracing_subscriber::EnvFilter::try_new(&v) {
                Ok(_) => v,
                Err(e) => return Err(err("RUST_LOG", format!("not a log filter: {e}"))),
            },
        };
        let markup = match r.raw("BILLING_MARKUP_PERCENT") {
            None => 0.0,
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|m| (0.0..=500.0).contains(m))
                .ok_or_else(|| err("BILLING_MARKUP_PERCENT", "must be a number from 0 to 500"))?,
        };
        let config = Self {
            env,
            host: r.string("HOST", "0.0.0.0"),
            port: r.number("PORT", 3100u16, 0)?,
            database_url: r.database_url()?,
            data_dir: PathBuf::from(r.string("COMMGUARD_DATA_DIR", "./var")),
            pg_bin_dir: r.raw("PG_BIN_DIR").map(PathBuf::from),
            database_max_connections: r.number("DATABASE_MAX_CONNECTIONS", 10u32, 1)?,
            master_token,
            demo_mode: r.bool("DEMO_MODE", false)?,
            test_clock: r.bool("COMMGUARD_TEST_CLOCK", false)?,
            webhook_base_url,
            cors_allowed_origins,
            trust_proxy,
            http_rate_limit_per_ip: r.number("HTTP_RATE_LIMIT_PER_IP", 60u32, 1)?,
            http_rate_limit_global: r.number("HTTP_RATE_LIMIT_GLOBAL", 100u32, 1)?,
            webhook_rate_limit_per_ip: r.number("WEBHOOK_RATE_LIMIT_PER_IP", 600u32, 1)?,
            brute_force_max_failures: r.number("BRUTE_FORCE_MAX_FAILURES", 10u32, 1)?,
            brute_force_window_seconds: r.number("BRUTE_FORCE_WINDOW_SECONDS", 900u64, 1)?,
            brute_force_lockout_seconds: r.number("BRUTE_FORCE_LOCKOUT_SECONDS", 900u64, 1)?,
            admin_ip_allowlist: r.ip_list("ADMIN_IP_ALLOWLIST")?,
            webhook_ip_allowlist: r.ip_list("WEBHOOK_IP_ALLOWLIST")?,
            ip_denylist: r.ip_list("IP_DENYLIST")?,
            data_encryption_key: r.key("DATA_ENCRYPTION_KEY")?,
            credentials_encryption_key: r.key("CREDENTIALS_ENCRYPTION_KEY")?,
            credentials_encryption_key_previous: r.key("CREDENTIALS_ENCRYPTION_KEY_PREVIOUS")?,
            twilio_account_sid: r.raw("TWILIO_ACCOUNT_SID"),
            twilio_auth_token: r.raw("TWILIO_AUTH_TOKEN").map(Secret),
            resend_api_key: r.raw("RESEND_API_KEY").map(Secret),
            resend_webhook_secret: r.raw("RESEND_WEBHOOK_SECRET").map(Secret),
            twilio_api_base_url: r.url("TWILIO_API_BASE_URL", "https://api.twilio.com")?,
            resend_api_base_url: r.url("RESEND_API_BASE_URL", "https://api.resend.com")?,
            provider_twilio_disabled: r.bool("PROVIDER_TWILIO_DISABLED", false)?,
            provider_resend_disabled: r.bool("PROVIDER_RESEND_DISABLED", false)?,
            email_default_domain: r.domain("EMAIL_DEFAULT_DOMAIN", "commguard.local")?,
            agentos_callback_url: r.optional_url("AGENTOS_CALLBACK_URL", &["http", "https"])?,
            callback_signing_secret: r.raw("CALLBACK_SIGNING_SECRET").map(Secret),
            default_max_actions_per_minute: r.number("DEFAULT_MAX_ACTIONS_PER_MINUTE", 10u32, 1)?,
            default_max_actions_per_hour: r.number("DEFAULT_MAX_ACTIONS_PER_HOUR", 100u32, 1)?,
            default_max_actions_per_day: r.number("DEFAULT_MAX_ACTIONS_PER_DAY", 500u32, 1)?,
            default_max_spend_per_day: r.money("DEFAULT_MAX_SPEND_PER_DAY", 10)?,
            default_max_spend_per_month: r.money("DEFAULT_MAX_SPEND_PER_MONTH", 100)?,
            default_max_calls_per_day_same_number: r.number("DEFAULT_MAX_CALLS_PER_DAY_SAME_NUMBER", 2u32, 1)?,
            billing_markup_percent: markup,
            org_default_max_agents: r.number("ORG_DEFAULT_MAX_AGENTS", 100u32, 1)?,
            mcp_max_sessions: r.number("MCP_MAX_SESSIONS", 1000u32, 1)?,
            mcp_session_idle_seconds: r.number("MCP_SESSION_IDLE_SECONDS", 1800u64, 1)?,
            outbound_intent_lease_seconds: r.number("OUTBOUND_INTENT_LEASE_SECONDS", 30u64, 1)?,
            anomaly_detector_enabled: r.bool("ANOMALY_DETECTOR_ENABLED", true)?,
            anomaly_check_interval_seconds: r.number("ANOMALY_CHECK_INTERVAL_SECONDS", 60u64, 1)?,
            anomaly_volume_min_actions: r.number("ANOMALY_VOLUME_MIN_ACTIONS", 10u32, 1)?,
            data_retention_enabled: r.bool("DATA_RETENTION_ENABLED", true)?,
            retention_interval_seconds: r.number("RETENTION_INTERVAL_SECONDS", 3600u64, 1)?,
            retention_first_run: std::time::Duration::from_secs(60),
            retention: Retention {
                messages_days: r.number("RETENTION_MESSAGES_DAYS", 90u32, 0)?,
                usage_logs_days: r.number("RETENTION_USAGE_LOGS_DAYS", 365u32, 0)?,
                call_logs_days: r.number("RETENTION_CALL_LOGS_DAYS", 365u32, 0)?,
                voicemail_days: r.number("RETENTION_VOICEMAIL_DAYS", 30u32, 0)?,
                otp_days: r.number("RETENTION_OTP_DAYS", 1u32, 0)?,
                revoked_consent_days: r.number("RETENTION_REVOKED_CONSENT_DAYS", 730u32, 0)?,
                security_log_days: r.number("RETENTION_SECURITY_LOG_DAYS", 90u32, 0)?,
            },
            webhook_replay_window_seconds: r.number("WEBHOOK_REPLAY_WINDOW_SECONDS", 300u64, 1)?,
            voice_ai_disclosure: r.bool("VOICE_AI_DISCLOSURE", true)?,
            voice_ai_disclosure_text: (r.get)("VOICE_AI_DISCLOSURE_TEXT")
                .unwrap_or_else(|| "Please note, this is an AI-generated call. ".into()),
            recording_announcement_text: r.string("RECORDING_ANNOUNCEMENT_TEXT", "This call may be recorded."),
            voice_relay_url: r.optional_url("VOICE_RELAY_URL", &["wss", "ws", "https", "http"])?,
            sms_keyword_replies: r.bool("SMS_KEYWORD_REPLIES", true)?,
            sms_help_text: r.string("SMS_HELP_TEXT", "Reply STOP to unsubscribe. Msg&data rates may apply."),
            log_format,
            log_filter,
        };
        config.refuse_unsafe_production()?;
        Ok(config)
    }

    /// docs/configuration.md: production never starts open, in demo mode, with a settable clock, with
    /// generated keys, or with a plain-http public base.
    fn refuse_unsafe_production(&self) -> Result<(), ConfigError> {
        if self.env != Environment::Production {
            return Ok(());
        }
        if self.master_token.is_none() {
            return Err(err("MASTER_SECURITY_TOKEN", "is required in production"));
        }
        if self.demo_mode {
            return Err(err("DEMO_MODE", "must not be true in production"));
        }
        if self.test_clock {
            return Err(err("COMMGUARD_TEST_CLOCK", "must not be true in production"));
        }
        if self.data_encryption_key.is_none() {
            return Err(err("DATA_ENCRYPTION_KEY", "is required in production"));
        }
        if self.credentials_encryption_key.is_none() {
            return Err(err("CREDENTIALS_ENCRYPTION_KEY", "is required in production"));
        }
        if url::Url::parse(&self.webhook_base_url).map_or(true, |u| u.scheme() != "https") {
            return Err(err("WEBHOOK_BASE_URL", "must be https:// in production"));
        }
        if self.agentos_callback_url.is_some() && self.callback_signing_secret.is_none() {
            return Err(err("CALLBACK_SIGNING_SECRET", "is required in production when AGENTOS_CALLBACK_URL is set"));
        }
        Ok(())
    }

    /// What development runs without, and a short master token in production: said once at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.env == Environment::Production {
            // Production refuses to start without one; a short one still starts, with a warning.
            if self.master_token.as_ref().is_some_and(|t| t.0.len() < 32) {
                out.push("MASTER_SECURITY_TOKEN is shorter than 32 characters".into());
            }
            return out;
        }
        if self.master_token.is_none() {
            out.push(
                "MASTER_SECURITY_TOKEN is unset: requests without credentials act as super-admin (dev-open)".into(),
            );
        } else if self.master_token.as_ref().is_some_and(|t| t.0.len() < 32) {
            out.push("MASTER_SECURITY_TOKEN is shorter than 32 characters".into());
        }
        if self.data_encryption_key.is_none() || self.credentials_encryption_key.is_none() {
            out.push("encryption keys are generated into the data directory; set them explicitly in production".into());
        }
        if self.twilio_auth_token.is_none() {
            out.push("TWILIO_AUTH_TOKEN is unset: Twilio webhooks are accepted unverified".into());
        }
        if self.agentos_callback_url.is_some() && self.callback_signing_secret.is_none() {
            out.push(
                "CALLBACK_SIGNING_SECRET is unset: forwarded inbound messages are signed with an empty secret".into(),
            );
        }
        if self.resend_webhook_secret.is_none() {
            out.push("RESEND_WEBHOOK_SECRET is unset: email webhooks are accepted unverified".into());
        }
        if self.demo_mode {
            out.push("DEMO_MODE is on: authentication, IP lists and HTTP rate limits are skipped".into());
        }
        out
    }

    pub fn telephony_configured(&self) -> bool {
        !self.provider_twilio_disabled && self.twilio_account_sid.is_some() && self.twilio_auth_token.is_some()
    }

    pub fn email_configured(&self) -> bool {
        !self.provider_resend_disabled && self.resend_api_key.is_some()
    }
}

/// `scheme://host[:port]` of a URL.
/// `http(s)://host[:port]`, nothing after it.
/// `written` as a browser sends it in `Origin` (lower-case scheme and host, no default port), if
/// it is an http(s) origin: a scheme and host, maybe a port, nothing else but a trailing `/`.
fn as_origin(written: &str) -> Option<String> {
    let u = url::Url::parse(written).ok()?;
    let bare = u.path() == "/" && u.query().is_none() && u.fragment().is_none();
    let no_user = u.username().is_empty() && u.password().is_none();
    (matches!(u.scheme(), "http" | "https") && u.host().is_some() && bare && no_user)
        .then(|| u.origin().ascii_serialization())
}

/// The origin of an http(s) `url` (checked by `Reader::url`), as a browser sends it in `Origin`.
fn origin_of(url: &str) -> String {
    url::Url::parse(url).map(|u| u.origin().ascii_serialization()).unwrap_or_else(|_| url.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    const KEY: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn defaults_follow_the_contract() {
        let c = read(&[]).unwrap();
        assert_eq!(c.env, Environment::Development);
        assert_eq!((c.host.as_str(), c.port), ("0.0.0.0", 3100));
        assert_eq!(c.data_dir, PathBuf::from("./var"));
        assert_eq!((c.http_rate_limit_per_ip, c.http_rate_limit_global, c.webhook_rate_limit_per_ip), (60, 100, 600));
        assert_eq!(c.cors_allowed_origins, ["http://localhost:3100"]);
        assert_eq!(c.default_max_spend_per_day, 10_000_000);
        assert_eq!(c.retention.revoked_consent_days, 730);
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(!c.trust_proxy && !c.demo_mode);
    }

    #[test]
    fn malformed_values_name_their_variable() {
        for (var, value) in [
            ("PORT", "eighty"),
            ("DEMO_MODE", "yes"),
            ("TRUST_PROXY", "2"),
            ("IP_DENYLIST", "10.0.0.0/33"),
            ("DATA_ENCRYPTION_KEY", "abcd"),
            ("HTTP_RATE_LIMIT_PER_IP", "0"),
            ("DEFAULT_MAX_SPEND_PER_DAY", "1.0000001"),
            ("WEBHOOK_BASE_URL", "ftp://x"),
            ("TRUST_PROXY", "true"),
            ("AGENTOS_CALLBACK_URL", "notaurl"),
            ("AGENTOS_CALLBACK_URL", "https://"),
            ("VOICE_RELAY_URL", "notaurl"),
            ("EMAIL_DEFAULT_DOMAIN", "bad domain"),
            ("EMAIL_DEFAULT_DOMAIN", "-x.example"),
            ("CORS_ALLOWED_ORIGINS", "notaurl"),
            ("CORS_ALLOWED_ORIGINS", "https://a.example, https://b.example/path"),
            ("CORS_ALLOWED_ORIGINS", "https://user@a.example"),
            ("CORS_ALLOWED_ORIGINS", "https://a.example?x=1"),
            ("WEBHOOK_BASE_URL", "https://"),
            ("DATABASE_URL", "notaurl"),
            ("DATABASE_URL", "mysql://db/x"),
            ("RUST_LOG", "error,commguard=[bad"),
        ] {
            let e = read(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, var, "{var}={value}: {e}");
        }
        // Well-formed values of the same variables start.
        let fine = read(&[
            ("AGENTOS_CALLBACK_URL", "https://agents.example/{agentId}/inbound"),
            ("VOICE_RELAY_URL", "wss://relay.example/voice"),
            ("EMAIL_DEFAULT_DOMAIN", "Mail.Example.COM"),
            ("CORS_ALLOWED_ORIGINS", "https://a.example, http://localhost:8080/"),
        ])
        .unwrap();
        assert_eq!(fine.email_default_domain, "mail.example.com");
        assert_eq!(fine.cors_allowed_origins, ["https://a.example", "http://localhost:8080"]);
        // Origins as browsers send them: lower-case host, no default port, no user or path.
        let written = read(&[("CORS_ALLOWED_ORIGINS", "https://App.Example.com:443/, HTTP://localhost:8080")]).unwrap();
        assert_eq!(written.cors_allowed_origins, ["https://app.example.com", "http://localhost:8080"]);
        for (base, origin) in [
            ("https://Hooks.Example.com:8443/base/", "https://hooks.example.com:8443"),
            ("https://hooks.example.com:443/x", "https://hooks.example.com"),
            ("https://u:p@hooks.example.com/", "https://hooks.example.com"),
            ("http://hooks.example.com?x=1", "http://hooks.example.com"),
        ] {
            let fallback = read(&[("WEBHOOK_BASE_URL", base)]).unwrap();
            assert_eq!(fallback.cors_allowed_origins, [origin], "{base}");
        }
        let e = read(&[("CREDENTIALS_ENCRYPTION_KEY", "zz")]).unwrap_err();
        assert!(e.to_string().contains("Encryption key must be 32 bytes (64 hex characters)"));
    }

    #[test]
    fn production_refuses_unsafe_settings() {
        let safe = [
            ("COMMGUARD_ENV", "production"),
            ("MASTER_SECURITY_TOKEN", "m"),
            ("DATA_ENCRYPTION_KEY", KEY),
            ("CREDENTIALS_ENCRYPTION_KEY", KEY),
            ("WEBHOOK_BASE_URL", "https://cg.example"),
        ];
        assert!(read(&safe).is_ok());
        // A master token under 32 characters starts, with the warning, in production too.
        assert_eq!(read(&safe).unwrap().warnings(), ["MASTER_SECURITY_TOKEN is shorter than 32 characters"]);
        let long = [&safe[..1], &[("MASTER_SECURITY_TOKEN", "m".repeat(32).leak() as &str)], &safe[2..]].concat();
        assert!(read(&long).unwrap().warnings().is_empty());
        assert_eq!(read(&[("NODE_ENV", "production")]).unwrap_err().var, "MASTER_SECURITY_TOKEN");
        for (var, value) in
            [("DEMO_MODE", "true"), ("COMMGUARD_TEST_CLOCK", "1"), ("WEBHOOK_BASE_URL", "http://cg.example")]
        {
            let mut vars = safe.to_vec();
            vars.retain(|(k, _)| *k != var);
            vars.push((var, value));
            assert_eq!(read(&vars).unwrap_err().var, var);
        }
        // A scheme is case-insensitive: HTTPS:// is https.
        let upper: Vec<_> = [&safe[..4], &[("WEBHOOK_BASE_URL", "HTTPS://cg.example")]].concat();
        assert!(read(&upper).is_ok());
        let without_key: Vec<_> = safe.iter().copied().filter(|(k, _)| *k != "DATA_ENCRYPTION_KEY").collect();
        assert_eq!(read(&without_key).unwrap_err().var, "DATA_ENCRYPTION_KEY");
        // Forwarding inbound messages signs them: never with an empty secret in production.
        let forwarding = [safe.as_slice(), &[("AGENTOS_CALLBACK_URL", "https://agents.example/{agentId}")]].concat();
        assert_eq!(read(&forwarding).unwrap_err().var, "CALLBACK_SIGNING_SECRET");
        assert!(read(&[forwarding.as_slice(), &[("CALLBACK_SIGNING_SECRET", "s")]].concat()).is_ok());
    }

    #[test]
    fn the_master_token_alias_must_agree() {
        assert!(read(&[("ORCHESTRATOR_SECURITY_TOKEN", "a")]).unwrap().master_token.is_some());
        assert!(read(&[("MASTER_SECURITY_TOKEN", "a"), ("ORCHESTRATOR_SECURITY_TOKEN", "a")]).is_ok());
        assert_eq!(
            read(&[("MASTER_SECURITY_TOKEN", "a"), ("ORCHESTRATOR_SECURITY_TOKEN", "b")]).unwrap_err().var,
            "MASTER_SECURITY_TOKEN"
        );
        const KEY: &str = "a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f";
        let c = read(&[
            ("MASTER_SECURITY_TOKEN", "super-secret"),
            ("DATABASE_URL", "postgres://u:db-password@localhost/x"),
            ("DATA_ENCRYPTION_KEY", KEY),
            ("CREDENTIALS_ENCRYPTION_KEY", KEY),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        // The key's first bytes as Debug would print an array of them (160, 177, …).
        for secret in ["super-secret", "db-password", "160, 177"] {
            assert!(!shown.contains(secret), "secrets never reach Debug output: {shown}");
        }
    }

    #[test]
    fn ip_lists_take_addresses_cidr_and_mapped_ipv6() {
        let c = read(&[("IP_DENYLIST", "1.2.3.4, 10.0.0.0/8,::ffff:5.6.7.8,2001:db8::/32")]).unwrap();
        let shown: Vec<String> = c.ip_denylist.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["1.2.3.4/32", "10.0.0.0/8", "5.6.7.8/32", "2001:db8::/32"]);
    }

    #[test]
    fn money_parses_to_micro_dollars() {
        assert_eq!(parse_micros("10"), Some(10_000_000));
        assert_eq!(parse_micros("0.0079"), Some(7_900));
        assert_eq!(parse_micros("1.123456"), Some(1_123_456));
        assert_eq!(parse_micros("-1"), None);
        assert_eq!(parse_micros("1.1234567"), None);
    }
}
