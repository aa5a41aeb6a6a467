//! `arbor-fuzz TARGET`: one fuzz target of [`arbor::fuzz::TARGETS`] under
//! AFL++ (`cargo afl fuzz … -- arbor-fuzz TARGET`), or, outside AFL++, one
//! input read from standard input (to replay a crash).

use std::process::ExitCode;

fn main() -> ExitCode {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = arbor::fuzz::target(&name) else {
        eprintln!("usage: arbor-fuzz TARGET\ntargets:");
        for t in arbor::fuzz::TARGETS {
            eprintln!("  {:<12} {}", t.name, t.about);
        }
        return ExitCode::from(2);
    };
    afl::fuzz!(|data: &[u8]| {
        (target.run)(data);
    });
    ExitCode::SUCCESS
}
