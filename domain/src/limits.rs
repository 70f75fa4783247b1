//! Tiers and per-agent limit overrides (CONTRACT §9.2): the effective limit is the agent's
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

/// The five limits of an agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitSet {
    pub per_minute: i64,
    pub per_hour: i64,
    pub per_day: i64,
    pub spend_day: i64,
    pub spend_month: i64,
}

/// Overrides; `None` = the tier's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Overrides {
    pub per_minute: Option<i64>,
    pub per_hour: Option<i64>,
    pub per_day: Option<i64>,
    pub spend_day: Option<i64>,
    pub spend_month: Option<i64>,
}

/// A change of overrides: `None` leaves a field, `Some(None)` clears it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverridesChange {
    pub per_minute: Option<Option<i64>>,
    pub per_hour: Option<Option<i64>>,
    pub per_day: Option<Option<i64>>,
    pub spend_day: Option<Option<i64>>,
    pub spend_month: Option<Option<i64>>,
}

impl Overrides {
    pub fn changed(self, c: OverridesChange) -> Self {
        Self {
            per_minute: c.per_minute.unwrap_or(self.per_minute),
            per_hour: c.per_hour.unwrap_or(self.per_hour),
            per_day: c.per_day.unwrap_or(self.per_day),
            spend_day: c.spend_day.unwrap_or(self.spend_day),
            spend_month: c.spend_month.unwrap_or(self.spend_month),
        }
    }

    pub fn effective(self, tier: LimitSet) -> LimitSet {
        LimitSet {
            per_minute: self.per_minute.unwrap_or(tier.per_minute),
            per_hour: self.per_hour.unwrap_or(tier.per_hour),
            per_day: self.per_day.unwrap_or(tier.per_day),
            spend_day: self.spend_day.unwrap_or(tier.spend_day),
            spend_month: self.spend_month.unwrap_or(tier.spend_month),
        }
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
}
