//! The command line (CONTRACT §15): `serve`, `migrate`, `replay`, `audit verify`.
//! Exit codes: 0 ok; 1 a check failed or was refused; 2 usage, configuration or database error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::{self, Runtime, StartError};
use crate::config::Config;
use crate::store::{runner, verify};

#[derive(Parser)]
#[command(
    name = "commguard",
    version,
    about = "Security and compliance core between AI agents and communication providers"
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
    /// Audit tools for compliance auditors.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
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
