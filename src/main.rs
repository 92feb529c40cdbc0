//! The `passerelle` command line: parses the arguments and dispatches to `passerelle::cli`,
//! where each command group has its file. Errors are printed one `passerelle: ` line per cause.

use clap::Parser;
use passerelle::cli::{flush_logs, init_logging, run, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.serves());
    let result = run(cli);
    flush_logs();
    match result {
        Ok(code) => code,
        Err(e) => {
            for line in format!("{e:#}").lines() {
                eprintln!("passerelle: {line}");
            }
            ExitCode::from(1)
        }
    }
}
