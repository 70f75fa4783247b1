//! `Ledger`: a minimal aggregate for store tests. Each `Note` command appends one `Noted` event
//! with a sequence number the aggregate checks, and optionally a personal field about a subject.

use commguard::store::{Actor, ActorKind, CommandContext, Framework, Store};
use commguard_domain::pii::{Pii, RetentionClass};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Ledger {
    pub count: u64,
}

#[derive(Clone, Debug)]
pub struct Note {
    pub text: String,
    /// A normalised phone or email this note is about; sealed under its subject key.
    pub about: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum LedgerEvent {
    Noted { n: u64, text: String, contact: Option<Pii>, body: Option<Pii> },
}

impl DomainEvent for LedgerEvent {
    fn event_type(&self) -> String {
        "Noted".into()
    }
    fn event_version(&self) -> String {
        "1.0".into()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("ledger error")]
pub struct LedgerError;

impl Aggregate for Ledger {
    const TYPE: &'static str = "ledger";
    type Command = Note;
    type Event = LedgerEvent;
    type Error = LedgerError;
    type Services = ();

    async fn handle(&mut self, command: Note, _: &(), sink: &EventSink<Self>) -> Result<(), LedgerError> {
        let (contact, body) = match &command.about {
            Some(subject) => (
                Some(Pii::subject(subject.clone())),
                Some(Pii::subject_retained(
                    format!("message for {subject}"),
                    subject.clone(),
                    RetentionClass::Messages,
                )),
            ),
            None => (None, None),
        };
        let event = LedgerEvent::Noted { n: self.count + 1, text: command.text, contact, body };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: LedgerEvent) {
        let LedgerEvent::Noted { n, .. } = event;
        assert_eq!(n, self.count + 1, "ledger events apply in order");
        self.count = n;
    }
}

pub fn context(org: &str) -> CommandContext {
    CommandContext::new(Actor { kind: ActorKind::System, id: "test".into() }, "test", chrono::Utc::now()).in_org(org)
}

pub async fn note(store: &Store, ledger: &Framework<Ledger>, id: &str, text: &str, about: Option<&str>) {
    let command = Note { text: text.into(), about: about.map(str::to_owned) };
    store.execute(ledger, id, command, &context("org-test")).await.expect("note appends");
}
