//! The reference under `docs/` held to the code it describes. The generated parts of
//! `docs/tools.md` and `docs/events.md` must equal what their generators render from the code
//! now (`UPDATE_DOCS=1 scripts/test.sh docs` rewrites them); every variable the configuration
//! reads is in `docs/configuration.md`; and every `docs/<file>.md#<anchor>` pointer in the code,
//! the docs and the top-level documents names a file and a heading that exist.
//! No server and no database: these tests read files and the code's own tables.

mod events;
mod tools;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use commguard::config::Config;

const BEGIN: &str = "<!-- BEGIN GENERATED: do not edit by hand; `UPDATE_DOCS=1 scripts/test.sh docs` rewrites it -->";
const END: &str = "<!-- END GENERATED -->";

/// A path of the repository.
pub fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Compares the generated part of `relative` with `generated`; with `UPDATE_DOCS=1`, writes it
/// first.
fn check_generated(relative: &str, generated: &str) {
    let path = repo_file(relative);
    let read = || std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{relative}: {e}"));
    let split = |text: &str| -> (usize, usize) {
        let start = text.find(BEGIN).unwrap_or_else(|| panic!("{relative} has no line {BEGIN}")) + BEGIN.len();
        let end = start + text[start..].find(END).unwrap_or_else(|| panic!("{relative} has no line {END}"));
        (start, end)
    };
    let wanted = format!("\n\n{}\n", generated.trim_end());
    if std::env::var("UPDATE_DOCS").is_ok_and(|v| v == "1") {
        let text = read();
        let (start, end) = split(&text);
        std::fs::write(&path, format!("{}{wanted}{}", &text[..start], &text[end..])).expect("write the doc");
    }
    let text = read();
    let (start, end) = split(&text);
    assert!(
        text[start..end] == wanted,
        "{relative} is stale: its generated part differs from what the code says now; run \
         `UPDATE_DOCS=1 scripts/test.sh docs` and commit the result"
    );
}

#[test]
fn tools_md_is_the_tool_table() {
    check_generated("docs/tools.md", &tools::render());
}

#[test]
fn events_md_is_the_domain_events() {
    check_generated("docs/events.md", &events::render());
    let doc = std::fs::read_to_string(repo_file("docs/events.md")).expect("docs/events.md");
    let types = events::event_types();
    assert!(types.len() >= 40, "the parser found the event types ({} found)", types.len());
    for event_type in types {
        assert!(doc.contains(&format!("\n### {event_type}\n")), "docs/events.md has no section for {event_type}");
    }
}

#[test]
fn every_configuration_variable_is_documented() {
    let read = RefCell::new(BTreeSet::new());
    Config::from_lookup(|name| {
        read.borrow_mut().insert(name.to_string());
        None
    })
    .expect("the defaults are a valid configuration");
    let mut variables = read.into_inner();
    assert!(variables.len() > 60, "the lookup saw every variable ({} seen)", variables.len());
    // Read outside `Config`: the log filter (tracing's `EnvFilter`) and `PATH` for PostgreSQL's
    // programs when `PG_BIN_DIR` is unset.
    variables.extend(["RUST_LOG".to_string(), "PATH".to_string()]);
    let doc = std::fs::read_to_string(repo_file("docs/configuration.md")).expect("docs/configuration.md");
    let missing: Vec<&String> = variables.iter().filter(|v| !doc.contains(&format!("`{v}`"))).collect();
    assert!(missing.is_empty(), "docs/configuration.md does not document {missing:?}");
    let example = std::fs::read_to_string(repo_file(".env.example")).expect(".env.example");
    let undocumented: Vec<&str> = example
        .lines()
        .filter_map(|l| l.trim_start_matches('#').trim().split_once('='))
        .map(|(name, _)| name.trim())
        .filter(|name| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .filter(|name| !doc.contains(&format!("`{name}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        ".env.example sets variables docs/configuration.md does not know: {undocumented:?}"
    );
}

/// GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else if path
            .extension()
            .is_some_and(|e| ["rs", "md", "py", "sh", "toml", "js", "sql"].contains(&e.to_str().unwrap_or("")))
        {
            out.push(path);
        }
    }
}

#[test]
fn every_docs_pointer_resolves() {
    let mut files = Vec::new();
    for dir in ["src", "domain", "projections", "tests", "docs", "scripts", "benches", "migrations"] {
        files_under(&repo_file(dir), &mut files);
    }
    files.extend(["README.md", "ARCHITECTURE.md", ".env.example"].map(repo_file));
    let mut pointers = 0;
    let mut dangling = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let in_docs = file.parent().is_some_and(|p| p.ends_with("docs"));
        for (i, _) in text.match_indices(".md") {
            // `docs/<name>.md`, or `<name>.md` between docs; an optional `#anchor` after it.
            let head = &text[..i];
            let name_start =
                head.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')).map_or(0, |p| p + 1);
            let name = &head[name_start..];
            let (doc, linked_from_doc) = if head[..name_start].ends_with("docs/") {
                (format!("docs/{name}.md"), false)
            } else if in_docs && (head[..name_start].ends_with('(') || head[..name_start].ends_with("./")) {
                (format!("docs/{name}.md"), true)
            } else {
                continue;
            };
            if name.is_empty()
                || (linked_from_doc && !repo_file(&doc).exists() && name.chars().any(|c| c.is_uppercase()))
            {
                continue;
            }
            pointers += 1;
            let Ok(target) = std::fs::read_to_string(repo_file(&doc)) else {
                dangling.push(format!("{}: {doc} does not exist", file.display()));
                continue;
            };
            let rest = &text[i + 3..];
            if let Some(fragment) = rest.strip_prefix('#') {
                let fragment: String =
                    fragment.chars().take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_').collect();
                let anchors: BTreeSet<String> =
                    target.lines().filter(|l| l.starts_with('#')).map(|l| anchor(l.trim_start_matches('#'))).collect();
                if !anchors.contains(&fragment) {
                    dangling.push(format!("{}: {doc}#{fragment} names no heading", file.display()));
                }
            }
        }
    }
    assert!(pointers > 0, "the scan found the docs pointers");
    assert!(dangling.is_empty(), "pointers into docs/ that lead nowhere:\n{}", dangling.join("\n"));
}
