//! Tiers and per-agent limit overrides (docs/limits.md#tiers): the effective limit is the agent's
//! override if set, else its tier's value. Spend is integer micro-dollars.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Free,
    #[default]
    Starter,
    Pro,
    Enterprise,
}

impl Tier {
    pub const ALL: [&'static str; 4] = ["free", "starter", "pro", "enterprise"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "free" => Some(Self::Free),
            "starter" => Some(Self::Starter),
            "pro" => Some(Self::Pro),
            "enterprise" => Some(Self::Enterprise),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Starter => "starter",
            Self::Pro => "pro",
            Self::Enterprise => "enterprise",
        }
    }

    /// This tier's limits; `starter` comes from the deployment's `DEFAULT_MAX_*`.
    pub fn limits(self, starter: LimitSet) -> LimitSet {
        const M: i64 = 1_000_000;
        match self {
            Self::Free => LimitSet { per_minute: 5, per_hour: 30, per_day: 100, spend_day: M, spend_month: 10 * M },
            Self::Starter => starter,
            Self::Pro => {
                LimitSet { per_minute: 30, per_hour: 500, per_day: 5_000, spend_day: 100 * M, spend_month: 1_000 * M }
            }
            Self::Enterprise => LimitSet {
                per_minute: 100,
                per_hour: 2_000,
                per_day: 50_000,
                spend_day: 1_000 * M,
                spend_month: 50_000 * M,
            },
        }
    }
}

/// The five limits of an agent (docs/limits.md#tiers), declared once: as values (`LimitSet`), as
/// overrides (`Overrides`, `None` = the tier's value) and as a change of overrides
/// (`OverridesChange`: `None` leaves a field, `Some(None)` clears it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits<T> {
    pub per_minute: T,
    pub per_hour: T,
    pub per_day: T,
    pub spend_day: T,
    pub spend_month: T,
}

impl<T> Limits<T> {
    /// Each limit through `f`.
    pub fn map<U>(self, f: impl Fn(T) -> U) -> Limits<U> {
        Limits {
            per_minute: f(self.per_minute),
            per_hour: f(self.per_hour),
            per_day: f(self.per_day),
            spend_day: f(self.spend_day),
            spend_month: f(self.spend_month),
        }
    }

    /// Each limit of `self` with the same limit of `other`.
    fn zip<U, V>(self, other: Limits<U>, f: impl Fn(T, U) -> V) -> Limits<V> {
        Limits {
            per_minute: f(self.per_minute, other.per_minute),
            per_hour: f(self.per_hour, other.per_hour),
            per_day: f(self.per_day, other.per_day),
            spend_day: f(self.spend_day, other.spend_day),
            spend_month: f(self.spend_month, other.spend_month),
        }
    }
}

/// The five limits' values.
pub type LimitSet = Limits<i64>;

/// Overrides; `None` = the tier's value.
pub type Overrides = Limits<Option<i64>>;

/// A change of overrides: `None` leaves a field, `Some(None)` clears it.
pub type OverridesChange = Limits<Option<Option<i64>>>;

impl Overrides {
    pub fn changed(self, c: OverridesChange) -> Self {
        self.zip(c, |own, change| change.unwrap_or(own))
    }

    pub fn effective(self, tier: LimitSet) -> LimitSet {
        self.zip(tier, |own, tier| own.unwrap_or(tier))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_over_the_tier_and_clearing_returns_to_it() {
        let starter =
            LimitSet { per_minute: 10, per_hour: 100, per_day: 500, spend_day: 10_000_000, spend_month: 100_000_000 };
        let pro = Tier::Pro.limits(starter);
        let set = Overrides::default().changed(OverridesChange { per_minute: Some(Some(7)), ..Default::default() });
        assert_eq!(set.effective(pro).per_minute, 7);
        assert_eq!(set.effective(pro).per_hour, 500);
        let cleared = set.changed(OverridesChange { per_minute: Some(None), ..Default::default() });
        assert_eq!(cleared.effective(Tier::Starter.limits(starter)), starter);
        assert_eq!(Tier::Free.limits(starter).spend_day, 1_000_000);
    }

    #[test]
    fn overrides_keep_their_stored_shape() {
        let overrides = Overrides { per_minute: Some(3), ..Overrides::default() };
        let json = serde_json::to_string(&overrides).unwrap();
        assert_eq!(json, r#"{"perMinute":3,"perHour":null,"perDay":null,"spendDay":null,"spendMonth":null}"#);
        let partial: Overrides = serde_json::from_str(r#"{"perMinute":3}"#).unwrap();
        assert_eq!(partial, overrides);
        let set: LimitSet =
            serde_json::from_str(r#"{"perMinute":1,"perHour":2,"perDay":3,"spendDay":4,"spendMonth":5}"#).unwrap();
        assert_eq!(set.spend_month, 5);
    }
}
