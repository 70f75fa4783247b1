//! The command line (docs/cli.md): `serve`, `migrate`, `replay`, `audit verify`, `audit export`
//! (`cli/export.rs`), `token issue` (`cli/token.rs`).
//! Exit codes: 0 ok; 1 a check failed or was refused; 2 usage, configuration or database error.

mod export;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{ArgGroup, Parser, Subcommand};
use commguard_projections::{Projection, Tables};
use sqlx::PgPool;

use crate::app::{self, Runtime, StartError};
use crate::clock::Clock;
use crate::config::Config;
use crate::store::runner::RunnerError;
use crate::store::{runner, verify, Actor, ActorKind, CommandContext};

/// Every command line, for `--help` (clap lists only the first level of subcommands).
const COMMANDS: &str = "\
Commands:
  commguard serve
  commguard migrate
  commguard replay [--projection NAME]
  commguard audit verify [--aggregate TYPE/ID] [--json]
  commguard audit export --subject <phone|email> [--org ORG] [--from TS] [--to TS] [--out FILE]
  commguard token issue (--agent ID | --org ORG) [--label L] [--revoke-existing]

Exit codes: 0 ok; 1 a check failed or was refused; 2 usage, configuration or database error.";

#[derive(Parser)]
#[command(
    name = "commguard",
    version,
    about = "Security and compliance core between AI agents and communication providers",
    after_help = COMMANDS
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations, then serve HTTP and MCP until SIGINT or SIGTERM.
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// Rebuild one projection (or all) from position 0 into shadow tables and swap them in.
    Replay {
        #[arg(long)]
        projection: Option<String>,
    },
    /// Audit tools for compliance auditors: `audit verify`, `audit export`.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Bearer tokens: `token issue`.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every hash chain (or one, `--aggregate TYPE/ID`): sequences, links, hashes, heads.
    Verify {
        #[arg(long, value_name = "TYPE/ID")]
        aggregate: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write every event about a data subject as JSON Lines of docs/events.md#envelope envelopes, in position
    /// order, decrypted or "[erased]"; records `AuditExported`.
    Export {
        /// The subject's phone number (E.164) or email address.
        #[arg(long, value_name = "PHONE|EMAIL", value_parser = subject)]
        subject: String,
        /// Only events of this organization (id or slug).
        #[arg(long, value_name = "ORG")]
        org: Option<String>,
        /// Only events that occurred at or after this RFC 3339 time.
        #[arg(long, value_name = "TS", value_parser = timestamp)]
        from: Option<DateTime<Utc>>,
        /// Only events that occurred at or before this RFC 3339 time.
        #[arg(long, value_name = "TS", value_parser = timestamp)]
        to: Option<DateTime<Utc>>,
        /// Write to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a token to an agent or an organization and print only the token.
    #[command(group(ArgGroup::new("target").required(true).args(["agent", "org"])))]
    Issue {
        /// The agent's id.
        #[arg(long, value_name = "ID")]
        agent: Option<String>,
        /// The organization's id or slug.
        #[arg(long, value_name = "ORG")]
        org: Option<String>,
        /// The token's label (default `cli`).
        #[arg(long, value_name = "L")]
        label: Option<String>,
        /// Revoke the target's active tokens first.
        #[arg(long)]
        revoke_existing: bool,
    },
}

fn subject(raw: &str) -> Result<String, String> {
    crate::contacts::address("subject", raw).map(|a| a.value).map_err(|e| e.message)
}

fn timestamp(raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(raw).map(|t| t.with_timezone(&Utc)).map_err(|e| format!("not an RFC 3339 time: {e}"))
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("commguard: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    app::init_tracing(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("commguard: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(cli.command, config))
}

async fn run(command: Command, config: Config) -> ExitCode {
    let rt = match Runtime::open(config).await {
        Ok(rt) => rt,
        Err(e) => return start_failed(e),
    };
    let code = match command {
        Command::Serve => match app::serve_until_signal(&rt).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => start_failed(e),
        },
        Command::Migrate => {
            eprintln!("commguard: migrations applied");
            ExitCode::SUCCESS
        }
        Command::Replay { projection } => replay(&rt, projection.as_deref()).await,
        Command::Audit { command: AuditCommand::Verify { aggregate, json } } => {
            audit_verify(&rt, aggregate.as_deref(), json).await
        }
        Command::Audit { command: AuditCommand::Export { subject, org, from, to, out } } => {
            export::run(&rt, export::Request { subject, org, from, to, out }).await
        }
        Command::Token { command: TokenCommand::Issue { agent, org, label, revoke_existing } } => {
            let target = match (agent, org) {
                (Some(agent), _) => token::Target::Agent(agent),
                (None, Some(org)) => token::Target::Org(org),
                (None, None) => unreachable!("clap requires --agent or --org"),
            };
            token::issue(&rt, target, label, revoke_existing).await
        }
    };
    rt.shutdown().await;
    code
}

fn start_failed(e: StartError) -> ExitCode {
    eprintln!("commguard: {e}");
    ExitCode::from(2)
}

async fn replay(rt: &Runtime, only: Option<&str>) -> ExitCode {
    let projections = commguard_projections::all();
    let selected: Vec<_> = projections.iter().filter(|p| only.is_none_or(|name| p.name() == name)).collect();
    if selected.is_empty() {
        let names: Vec<_> = projections.iter().map(|p| p.name()).collect();
        eprintln!("commguard: unknown projection {:?} (known: {})", only.unwrap_or_default(), names.join(" "));
        return ExitCode::from(2);
    }
    for projection in selected {
        let mut progress = runner::Progress::new(format!("replay {}", projection.name()));
        match runner::rebuild(rt.store.pool(), projection.as_ref(), &mut progress).await {
            Ok(n) => eprintln!("commguard: projection {} rebuilt from {n} events", projection.name()),
            Err(e) => {
                eprintln!("commguard: replay of {} failed: {e}", projection.name());
                return ExitCode::from(2);
            }
        }
    }
    // A rebuild applies every event, so it brings back the rows retention had purged (usage and
    // call rows, revoked consents): a retention run puts them away again at once.
    match crate::retention::run(&rt.store, &rt.config, rt.clock.now()).await {
        Ok(Some(purged)) if purged.iter().any(|(_, p)| p.rows > 0) => {
            eprintln!("commguard: retention purged the rebuilt rows older than their retention")
        }
        Ok(_) => {}
        Err(e) => {
            eprintln!("commguard: retention after the replay failed: {e}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

async fn audit_verify(rt: &Runtime, aggregate: Option<&str>, json: bool) -> ExitCode {
    let target = match aggregate.map(|a| a.split_once('/')) {
        None => None,
        Some(Some((t, id))) if !t.is_empty() && !id.is_empty() => Some((t, id)),
        Some(_) => {
            eprintln!("commguard: --aggregate takes TYPE/ID");
            return ExitCode::from(2);
        }
    };
    let report = match verify::verify(rt.store.pool(), target).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("commguard: database error: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!("{}", serde_json::to_string(&report).expect("a report always serializes"));
    } else if report.is_ok() {
        println!("OK {} aggregates, {} events", report.aggregates, report.events);
    } else {
        for b in &report.broken {
            println!("BROKEN {}/{} at sequence {}: {}", b.aggregate_type, b.aggregate_id, b.sequence, b.reason);
        }
    }
    if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The context of a command run from the command line: actor `cli`, transport `cli`. The CLI has
/// no authenticated principal (whoever runs it holds the database), so the actor id is `cli`.
fn cli_context(clock: &Clock) -> CommandContext {
    CommandContext::new(Actor { kind: ActorKind::Cli, id: "cli".into() }, "cli", clock.now())
}

/// The id of the organization named by id or slug.
async fn resolve_org(pool: &PgPool, wanted: &str) -> Result<Option<String>, sqlx::Error> {
    commguard_projections::directory::read::org_id_or_slug(pool, wanted).await
}

/// How long the CLI waits for a projection whose checkpoint does not move before giving up.
const STALLED_AFTER: Duration = Duration::from_secs(60);

/// Waits until `projection` has applied every event up to `position`, applying batches itself
/// when no one else holds the projection (no server running), or letting the holder do it. Fails
/// if the checkpoint stops moving (a projection whose batches keep failing).
async fn catch_up_projection(pool: &PgPool, projection: &dyn Projection, position: i64) -> Result<(), RunnerError> {
    let tables = Tables::live(projection.tables());
    let mut last = (i64::MIN, std::time::Instant::now());
    loop {
        let applied: i64 = sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE projection = $1")
            .bind(projection.name())
            .fetch_optional(pool)
            .await?
            .unwrap_or(0);
        if applied >= position {
            return Ok(());
        }
        if applied != last.0 {
            last = (applied, std::time::Instant::now());
        } else if last.1.elapsed() > STALLED_AFTER {
            return Err(RunnerError::Stalled(projection.name().to_string()));
        }
        if runner::catch_up(pool, projection, projection.name(), &tables, runner::BATCH).await? == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
