//! The `arbor` command.
//!
//! The agent and its CLI (`arbor agent`, `arbor compare`, ...) arrive with
//! the gRPC layer; today the binary reports its version and the formats it
//! speaks, so operators can check what a host has installed.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("--version") | Some("version") => {
            println!(
                "arbor {} (canonical encoding v{}, index format {})",
                env!("CARGO_PKG_VERSION"),
                arbor::arbor_record::ENCODING_VERSION,
                arbor::arbor_index::INDEX_FORMAT
            );
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("arbor: unknown command {other:?}; this build knows `version`");
            ExitCode::from(2)
        }
    }
}
