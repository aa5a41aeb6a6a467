//! Compiles `proto/arbor/v1/*.proto` into Rust with `protox` (a pure-Rust
//! protobuf compiler), so no system `protoc` is needed. Also writes the
//! encoded descriptor set, which the agent serves for gRPC reflection, and
//! records what was built (`ARBOR_GIT_COMMIT`, `ARBOR_BUILD_PROFILE`) for
//! `arbor --version` and the agent's first log line.

use std::path::{Path, PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    build_info();
    let proto_dir = Path::new("proto");
    let files = [
        "proto/arbor/v1/agent.proto",
        "proto/arbor/v1/audit.proto",
        "proto/arbor/v1/repair.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, [proto_dir])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("arbor_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

/// The commit and profile of this build. Outside a git checkout (a source
/// tarball) the commit is `unknown`; `ARBOR_GIT_COMMIT` set by a packager wins.
fn build_info() {
    println!("cargo:rerun-if-env-changed=ARBOR_GIT_COMMIT");
    let commit = std::env::var("ARBOR_GIT_COMMIT").ok().or_else(|| {
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        // Rebuild when HEAD moves: HEAD itself, the branch it names, packed
        // refs. Only files that exist: Cargo reruns for a missing one always.
        if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
            let dir = Path::new(&dir);
            let mut watched = vec![dir.join("HEAD"), dir.join("packed-refs")];
            if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watched.push(dir.join(head));
            }
            for path in watched.iter().filter(|p| p.exists()) {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    println!(
        "cargo:rustc-env=ARBOR_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    // Cargo's PROFILE is `debug` or `release` (custom profiles inherit one).
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=ARBOR_BUILD_PROFILE={profile}");
}
