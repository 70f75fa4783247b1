//! `commguard token issue` (docs/cli.md): a bootstrap token for an agent or an organization,
//! issued through the same aggregate commands as the tools (`directory::commands::issue_token`),
//! recorded as `AgentTokenIssued` (`issuedVia: "cli"`) or `OrgTokenIssued` (`issuedVia: "cli"`), with actor `cli`.
//!
//! The command waits until the directory projections show the token, applying them itself when
//! no server is running (or sharing the work with running servers through the projection locks),
//! so the printed token works at once against any instance.

use std::process::ExitCode;
use std::sync::Arc;

use commguard_domain::agent::IssuedVia;
use tokio::sync::Notify;

use super::{catch_up_projection, cli_context, resolve_org};
use crate::app::Runtime;
use crate::directory::{self as dir, commands};
use crate::error::ErrorCode;
use crate::store::{feed, runner};

/// The projections a token must reach before it works.
const DIRECTORY: [&str; 3] = ["orgs", "agents", "tokens"];

pub enum Target {
    Agent(String),
    Org(String),
}

pub async fn issue(rt: &Runtime, target: Target, label: Option<String>, revoke_existing: bool) -> ExitCode {
    let state = rt.state();
    let projections: Vec<_> =
        commguard_projections::all().into_iter().filter(|p| DIRECTORY.contains(&p.name())).collect();
    let head = match feed::head_position(rt.store.pool()).await {
        Ok(head) => head,
        Err(e) => return database_error(e),
    };
    // The target is looked up in the directory views: bring them up to date first.
    for projection in &projections {
        if let Err(e) = catch_up_projection(rt.store.pool(), projection.as_ref(), head).await {
            return database_error(e);
        }
    }
    let stop = Arc::new(Notify::new());
    let runners = runner::spawn_all(rt.store.kept().clone(), projections, rt.store.appended(), stop.clone());
    let code = issue_with_runners(rt, &state, target, label, revoke_existing).await;
    stop.notify_waiters();
    for runner in runners {
        runner.abort();
    }
    code
}

async fn issue_with_runners(
    rt: &Runtime,
    state: &crate::state::AppState,
    target: Target,
    label: Option<String>,
    revoke_existing: bool,
) -> ExitCode {
    // Before the first `serve`, `default` does not exist yet; bootstrapping it is this command's job.
    if let Err(e) = commands::ensure_default_org(state).await {
        eprintln!("commguard: {}", e.message);
        return ExitCode::from(2);
    }
    let target = match target {
        Target::Agent(agent_id) => match dir::agent(&state.pool, &agent_id).await {
            Ok(Some(agent)) => commands::RotateTarget::Agent { agent_id, org_id: agent.org_id },
            Ok(None) => return refused(&format!("Agent \"{agent_id}\" not found")),
            Err(e) => return database_error(e.message),
        },
        Target::Org(wanted) => match resolve_org(rt.store.pool(), &wanted).await {
            Ok(Some(org_id)) => commands::RotateTarget::Org { org_id },
            Ok(None) => return refused(&format!("Organization \"{wanted}\" not found")),
            Err(e) => return database_error(e),
        },
    };
    let mut context = cli_context(&rt.clock);
    context.provenance.pass("target");
    let label = label.or_else(|| Some("cli".into()));
    match commands::issue_token(state, context, target, label, revoke_existing, IssuedVia::Cli).await {
        Ok(issued) => {
            println!("{}", issued["token"].as_str().unwrap_or_default());
            eprintln!(
                "commguard: token {} issued to {} {}; {} revoked",
                issued["tokenId"].as_str().unwrap_or_default(),
                issued["target"]["kind"].as_str().unwrap_or_default(),
                issued["target"]["id"].as_str().unwrap_or_default(),
                issued["revokedCount"]
            );
            ExitCode::SUCCESS
        }
        Err(e) if e.code == ErrorCode::Internal => database_error(e.message),
        Err(e) => refused(&e.message),
    }
}

fn refused(message: &str) -> ExitCode {
    eprintln!("commguard: refused: {message}");
    ExitCode::from(1)
}

fn database_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("commguard: database error: {e}");
    ExitCode::from(2)
}
