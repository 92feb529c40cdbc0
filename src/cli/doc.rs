//! Keeps `docs/cli.md` in step with the command line (a test module of `cli`).
//!
//! The reference part of the doc is the `--help` of every command, rendered from the clap
//! definitions themselves: the test renders it again and compares. After a change to the
//! CLI, `PASSERELLE_BLESS=1 cargo test --release --lib cli::doc` rewrites that part
//! (then read the diff). A second test refuses a verb, an argument or an option without a
//! help text: the doc is only as good as those.

use super::Cli;
use clap::CommandFactory;

const BEGIN: &str =
    "<!-- Generated from the clap definitions (src/cli/doc.rs); do not edit by hand: \
PASSERELLE_BLESS=1 cargo test --release --lib cli::doc -->";
const END: &str = "<!-- end of the generated reference -->";

fn doc_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md")
}

/// Every command, depth first, as `(full name, command)`; clap's own `help` verb left out.
fn commands() -> Vec<(String, clap::Command)> {
    fn walk(prefix: &str, cmd: &clap::Command, out: &mut Vec<(String, clap::Command)>) {
        let name = if prefix.is_empty() {
            cmd.get_name().to_string()
        } else {
            format!("{prefix} {}", cmd.get_name())
        };
        out.push((name.clone(), cmd.clone()));
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(&name, sub, out);
        }
    }
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = Vec::new();
    walk("", &cmd, &mut out);
    out
}

/// The generated part of docs/cli.md: one section per command with its `--help`.
fn reference() -> String {
    let mut out = String::new();
    for (name, mut cmd) in commands() {
        let help = cmd.render_long_help().to_string();
        let help: Vec<&str> = help.lines().map(str::trim_end).collect();
        out.push_str(&format!(
            "\n### `{name}`\n\n```text\n{}\n```\n",
            help.join("\n").trim_end()
        ));
    }
    out
}

#[test]
fn every_command_and_option_has_help() {
    let mut missing = Vec::new();
    for (name, cmd) in commands() {
        if cmd.get_about().is_none() && name != "passerelle" {
            missing.push(format!("{name}: no description"));
        }
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{name}: {id}: no help text"));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn docs_cli_md_is_the_generated_reference() {
    let path = doc_path();
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!(
            "{}: the markers {BEGIN:?} and {END:?} are missing",
            path.display()
        );
    };
    let current = &doc[b + BEGIN.len()..e];
    let wanted = format!("\n{}\n", reference());
    if current == wanted {
        return;
    }
    if std::env::var_os("PASSERELLE_BLESS").is_some() {
        let updated = format!("{}{BEGIN}{wanted}{}", &doc[..b], &doc[e..]);
        if let Err(err) = std::fs::write(&path, updated) {
            panic!("{}: {err}", path.display());
        }
        return;
    }
    panic!(
        "{} is out of date with the CLI: run\n  PASSERELLE_BLESS=1 cargo test --release --lib \
         cli::doc\nand commit the result",
        path.display()
    );
}

#[test]
fn every_verb_of_the_contract_is_in_the_reference() {
    let names: Vec<String> = commands().into_iter().map(|(n, _)| n).collect();
    for verb in [
        "passerelle serve",
        "passerelle check-config",
        "passerelle route test",
        "passerelle queue list",
        "passerelle queue show",
        "passerelle queue retry",
        "passerelle queue hold",
        "passerelle queue release",
        "passerelle queue delete",
        "passerelle directory lookup",
        "passerelle directory import",
        "passerelle whitelist show",
        "passerelle pki dev",
    ] {
        assert!(names.iter().any(|n| n == verb), "{verb} missing: {names:?}");
    }
}
