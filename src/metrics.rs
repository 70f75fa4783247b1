//! This instance's Prometheus metrics (docs/monitoring.md, docs/http.md#rate-limits-and-brute-force): one registry, built with
//! `prometheus-client`, shared through `AppState` and the hardening layers. Counters live in
//! memory, per instance (Prometheus sums instances); the projection lag is measured from Postgres
//! when `/metrics` is read and handed to `render`. The module imports nothing of the crate (only
//! the domain's label types, `Channel` and `LimitType`), so anything may increment it without an
//! import cycle.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use commguard_domain::refusal::LimitType;
use commguard_domain::values::Channel;
use prometheus_client::encoding::text::encode_registry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The content type of the Prometheus text exposition format this module writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Vec<(&'static str, String)>;
type Counters = Family<Labels, Counter>;

pub struct Metrics {
    registry: Registry,
    started: Instant,
    alerts: Counters,
    anomalies: Counters,
    uptime: Gauge<f64, AtomicU64>,
    messages_sent: Counters,
    rate_limit_hits: Counters,
    tool_calls: Counters,
    webhook_rejections: Counters,
    projection_lag: Family<Labels, Gauge>,
    http_rate_limit_hits: Counters,
    feed_pages: Counters,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn one(key: &'static str, value: &str) -> Labels {
    vec![(key, value.to_string())]
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            started: Instant::now(),
            alerts: Counters::default(),
            anomalies: Counters::default(),
            uptime: Gauge::default(),
            messages_sent: Counters::default(),
            rate_limit_hits: Counters::default(),
            tool_calls: Counters::default(),
            webhook_rejections: Counters::default(),
            projection_lag: Family::default(),
            http_rate_limit_hits: Counters::default(),
            feed_pages: Counters::default(),
            registry: Registry::default(),
        };
        // Counters are registered without their `_total` suffix: the encoder appends it.
        registry.register("mcp_alerts", "Alerts raised, by severity", metrics.alerts.clone());
        registry.register("mcp_anomaly_detected", "Anomalies detected, by rule", metrics.anomalies.clone());
        registry.register("mcp_uptime_seconds", "Seconds since this instance started", metrics.uptime.clone());
        registry.register(
            "mcp_messages_sent",
            "Outbound actions a provider accepted, by channel",
            metrics.messages_sent.clone(),
        );
        registry.register(
            "mcp_rate_limit_hits",
            "Tool calls refused by a limit, by limit type",
            metrics.rate_limit_hits.clone(),
        );
        registry.register("commguard_tool_calls", "MCP tool calls, by tool and outcome", metrics.tool_calls.clone());
        registry.register(
            "commguard_webhook_rejections",
            "Provider webhooks rejected, by route and reason",
            metrics.webhook_rejections.clone(),
        );
        registry.register(
            "commguard_projection_lag_events",
            "Events stored but not yet applied, by projection",
            metrics.projection_lag.clone(),
        );
        registry.register(
            "mcp_http_rate_limit_hits",
            "HTTP requests refused by the rate limit, by scope",
            metrics.http_rate_limit_hits.clone(),
        );
        registry.register(
            "commguard_feed_pages",
            "Auditor feed pages answered, by whether their rows were read ahead or on request",
            metrics.feed_pages.clone(),
        );
        // The bounded label values are shown from the start, at zero.
        for severity in ["HIGH", "MEDIUM"] {
            let _ = metrics.alerts.get_or_create(&one("severity", severity));
        }
        for scope in ["per_ip", "global"] {
            let _ = metrics.http_rate_limit_hits.get_or_create(&one("scope", scope));
        }
        for read in ["ahead", "on_request"] {
            let _ = metrics.feed_pages.get_or_create(&one("read", read));
        }
        for channel in [Channel::Sms, Channel::Email, Channel::Voice] {
            let _ = metrics.messages_sent.get_or_create(&one("channel", channel.as_str()));
        }
        for limit in LimitType::ALL {
            let _ = metrics.rate_limit_hits.get_or_create(&one("limit_type", limit.as_str()));
        }
        Self { registry, ..metrics }
    }

    /// The label values this module cannot know shown from the start, at zero, as the bounded ones
    /// are: every tool's `ok` outcome, every anomaly rule, every webhook route and reason. A rate
    /// over a series that does not exist yet reads "no data", not 0.
    pub fn show_at_zero<'a>(
        &self,
        tools: impl IntoIterator<Item = &'a str>,
        rules: &[&str],
        webhook_routes: &[&str],
        webhook_reasons: &[&str],
    ) {
        for tool in tools {
            let _ = self.tool_calls.get_or_create(&vec![("tool", tool.to_string()), ("outcome", "ok".to_string())]);
        }
        for rule in rules {
            let _ = self.anomalies.get_or_create(&one("type", rule));
        }
        for route in webhook_routes {
            for reason in webhook_reasons {
                let _ = self
                    .webhook_rejections
                    .get_or_create(&vec![("route", route.to_string()), ("reason", reason.to_string())]);
            }
        }
    }

    /// An alert was recorded (not one deduplicated away).
    pub fn alert(&self, severity: &str, rule: &str) {
        self.alerts.get_or_create(&one("severity", severity)).inc();
        self.anomalies.get_or_create(&one("type", rule)).inc();
    }

    pub fn message_sent(&self, channel: Channel) {
        self.messages_sent.get_or_create(&one("channel", channel.as_str())).inc();
    }

    pub fn rate_limit_hit(&self, limit: LimitType) {
        self.rate_limit_hits.get_or_create(&one("limit_type", limit.as_str())).inc();
    }

    /// `outcome` is `ok` or the refusal's docs/errors.md code.
    pub fn tool_call(&self, tool: &str, outcome: &str) {
        self.tool_calls.get_or_create(&vec![("tool", tool.to_string()), ("outcome", outcome.to_string())]).inc();
    }

    pub fn webhook_rejected(&self, route: &str, reason: &str) {
        self.webhook_rejections
            .get_or_create(&vec![("route", route.to_string()), ("reason", reason.to_string())])
            .inc();
    }

    /// `scope` is `per_ip` or `global`.
    pub fn http_rate_limit_hit(&self, scope: &str) {
        self.http_rate_limit_hits.get_or_create(&one("scope", scope)).inc();
    }

    /// A feed page was answered; `ahead`: its rows had been read ahead (`store::pages`).
    pub fn feed_page(&self, ahead: bool) {
        self.feed_pages.get_or_create(&one("read", if ahead { "ahead" } else { "on_request" })).inc();
    }

    /// The exposition, with the uptime now and `lag` (projection, events behind the head).
    pub fn render(&self, lag: &[(String, i64)]) -> String {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        for (projection, behind) in lag {
            self.projection_lag.get_or_create(&one("projection", projection)).set(*behind);
        }
        let mut open_metrics = String::new();
        encode_registry(&mut open_metrics, &self.registry).expect("writing to a String cannot fail");
        prometheus_text(&open_metrics)
    }
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition without its `# EOF`: the two
/// differ only in how counters are named. OpenMetrics names a counter's family `x` and its
/// sample `x_total`; in 0.0.4 the `# HELP` and `# TYPE` lines name the sample itself, else a
/// Prometheus parser takes the samples for an untyped metric.
fn prometheus_text(open_metrics: &str) -> String {
    let counters: Vec<&str> =
        open_metrics.lines().filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(open_metrics.len() + 16 * counters.len());
    for line in open_metrics.lines() {
        let header = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(&name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match header {
            Some(renamed) => out.push_str(&renamed),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_carry_their_total_suffix_and_labels() {
        let m = Metrics::new();
        m.tool_call("comms_ping", "ok");
        m.http_rate_limit_hit("global");
        let text = m.render(&[("audit".into(), 3)]);
        assert!(text.contains("commguard_tool_calls_total{tool=\"comms_ping\",outcome=\"ok\"} 1\n"), "{text}");
        assert!(text.contains("mcp_http_rate_limit_hits_total{scope=\"global\"} 1\n"), "{text}");
        assert!(text.contains("mcp_http_rate_limit_hits_total{scope=\"per_ip\"} 0\n"), "{text}");
        assert!(text.contains("commguard_projection_lag_events{projection=\"audit\"} 3\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(text.contains("# TYPE commguard_tool_calls_total counter\n"), "{text}");
        assert!(text.contains("# HELP commguard_tool_calls_total MCP tool calls, by tool and outcome.\n"), "{text}");
        assert!(text.contains("# TYPE mcp_uptime_seconds gauge\n"), "{text}");
    }
}
