//! Who caused an event, through what, and which checks ran: the provenance every command carries
//! into the metadata of the events it produces (docs/events.md#envelope).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The metadata key under which the context travels through cqrs-es (whose metadata is a map of
/// strings) to the repository, which expands it into the stored metadata object.
pub(crate) const CONTEXT_KEY: &str = "commguard.context";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActorKind {
    Agent,
    Org,
    SuperAdmin,
    System,
    Provider,
    Cli,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
}

impl ActorKind {
    /// Its serde name (`super-admin`), without serializing: the metadata is written by hand on
    /// every append (`repository::MetadataText`, whose test holds the two alike).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Org => "org",
            Self::SuperAdmin => "super-admin",
            Self::System => "system",
            Self::Provider => "provider",
            Self::Cli => "cli",
        }
    }
}

impl Actor {
    pub fn system(id: impl Into<String>) -> Self {
        Self { kind: ActorKind::System, id: id.into() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckResult {
    Pass,
    Fail,
    Skipped,
}

impl CheckResult {
    /// Its serde name, as `ActorKind::as_str`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Skipped => "skipped",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub check: String,
    pub result: CheckResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Every check run, in order, and the one that refused, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    pub checks: Vec<Check>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<String>,
}

impl Provenance {
    /// `check` passed. Once in the list: a check two layers both ran (the admin gate's input and
    /// the operation's own) passed once as far as the record goes.
    pub fn pass(&mut self, check: &str) {
        let passed = |c: &Check| c.check == check && c.result == CheckResult::Pass && c.detail.is_none();
        if !self.checks.iter().any(passed) {
            self.checks.push(Check { check: check.into(), result: CheckResult::Pass, detail: None });
        }
    }

    /// A pass with what it found (the zones and window quiet hours evaluated).
    pub fn pass_with(&mut self, check: &str, detail: impl Into<String>) {
        self.checks.push(Check { check: check.into(), result: CheckResult::Pass, detail: Some(detail.into()) });
    }

    pub fn fail(&mut self, check: &str, detail: impl Into<String>) {
        self.checks.push(Check { check: check.into(), result: CheckResult::Fail, detail: Some(detail.into()) });
        self.refused_by = Some(check.into());
    }

    pub fn skip(&mut self, check: &str, detail: impl Into<String>) {
        self.checks.push(Check { check: check.into(), result: CheckResult::Skipped, detail: Some(detail.into()) });
    }
}

/// The context of one command. The store stamps it on each event it produces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandContext {
    pub actor: Actor,
    pub org_id: Option<String>,
    pub request_id: Option<String>,
    pub transport: String,
    pub provenance: Provenance,
    /// Read from the service clock when the command was accepted.
    pub occurred_at: DateTime<Utc>,
}

impl CommandContext {
    pub fn new(actor: Actor, transport: impl Into<String>, occurred_at: DateTime<Utc>) -> Self {
        Self {
            actor,
            org_id: None,
            request_id: None,
            transport: transport.into(),
            provenance: Provenance::default(),
            occurred_at,
        }
    }

    pub fn in_org(mut self, org_id: impl Into<String>) -> Self {
        self.org_id = Some(org_id.into());
        self
    }

    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    pub fn with_provenance(mut self, provenance: Provenance) -> Self {
        self.provenance = provenance;
        self
    }

    pub(crate) fn to_metadata(&self) -> HashMap<String, String> {
        let json = serde_json::to_string(self).expect("a command context always serializes");
        HashMap::from([(CONTEXT_KEY.to_string(), json)])
    }

    pub(crate) fn from_metadata(metadata: &Value) -> Option<Self> {
        serde_json::from_str(metadata.get(CONTEXT_KEY)?.as_str()?).ok()
    }
}
