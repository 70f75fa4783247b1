//! `commguard audit export` (docs/cli.md): every event about one data subject, as JSON Lines of
//! docs/events.md#envelope envelopes in position order, opened where every key exists and `"[erased]"` where not.
//!
//! The events are found by the subject's blind index in the audit view (`audit_items.subject_ref`,
//! migration 0018), never by decrypting history. The view is first brought up to the head of the
//! event store (by this process, or by a server that holds the projection), so the export covers
//! everything committed before it started. The export is recorded as `AuditExported` on stream
//! `subject/<subjectRef>` before anything is written: an export that cannot be recorded is not made.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use commguard_domain::records::SubjectEvent;
use commguard_projections::audit::read as audit_read;
use commguard_projections::audit::AuditProjection;

use super::{catch_up_projection, cli_context, resolve_org};
use crate::app::Runtime;
use crate::store::runner::Progress;
use crate::store::{envelope, feed};

/// Events read, opened and written per round trip.
const CHUNK: usize = 500;

pub struct Request {
    /// The normalised identifier (E.164 number or lower-cased email).
    pub subject: String,
    pub org: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub out: Option<PathBuf>,
}

pub async fn run(rt: &Runtime, request: Request) -> ExitCode {
    match export(rt, request).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("commguard: audit export failed: {e}");
            ExitCode::from(2)
        }
    }
}

async fn export(rt: &Runtime, request: Request) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let pool = rt.store.pool();
    let org = match &request.org {
        None => None,
        Some(wanted) => match resolve_org(pool, wanted).await? {
            Some(org) => Some(org),
            None => {
                eprintln!("commguard: organization \"{wanted}\" not found");
                return Ok(ExitCode::from(1));
            }
        },
    };
    let subject_ref = rt.store.keystore().data_keys().blind_index(&request.subject);

    // Everything committed before now, through the audit view.
    let head = feed::head_position(pool).await?;
    catch_up_projection(pool, &AuditProjection, head).await?;
    let positions =
        audit_read::positions_about(pool, &subject_ref, head, org.as_deref(), request.from, request.to).await?;

    // The output opened before the export is recorded (an export that cannot be written is not
    // recorded as made), and recorded before anything is written to it: a disclosure that leaves
    // no trace is never made (principle 2, docs/security.md#principles).
    let mut out: Box<dyn Write> = match &request.out {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut context = cli_context(&rt.clock);
    context.provenance.pass("input");
    if let Some(org) = &org {
        context.provenance.pass("org");
        context = context.in_org(org.clone());
    }
    let event = SubjectEvent::AuditExported { count: positions.len() as u64, requested_by: "cli".into() };
    rt.store.record("subject", &subject_ref, &[event], &context).await?;
    let mut progress = Progress::new("audit export");
    progress.set_total(positions.len() as u64);
    let mut written = 0u64;
    for chunk in positions.chunks(CHUNK) {
        let events = feed::read_positions(pool, chunk).await?;
        for envelope in envelope::envelopes(rt.store.keystore(), events, false).await? {
            serde_json::to_writer(&mut out, &envelope)?;
            out.write_all(b"\n")?;
            written += 1;
        }
        progress.update(written);
    }
    out.flush()?;
    progress.finish();
    let target = request.out.as_ref().map_or("stdout".to_string(), |p| p.display().to_string());
    eprintln!("commguard: exported {written} events about the subject to {target}");
    Ok(ExitCode::SUCCESS)
}
