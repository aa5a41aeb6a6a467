//! The `arbor` command: the agent and the operator's CLI.
//!
//! Exit codes: 0 in sync (or success), 1 drift found, 2 error.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arbor::grpc::client::Authed;
use arbor::proto::v1 as pb;
use arbor::proto::v1::audit_service_client::AuditServiceClient;
use arbor_agent::config::{AgentConfig, Overrides};
use arbor_agent::maintain;
use arbor_agent::report::{DriftEntry, RunStatus, RunSummary};
use arbor_index::Index;
use clap::{Args, Parser, Subcommand};
use cli::{args::*, client::*, index::*, runs::*, sync::*};

#[macro_use]
mod output;
mod certs;
mod cli;
mod demo;
mod html;

// Builds allocate a key per record on several threads at once; glibc's
// malloc spent a fifth of a PostgreSQL build's CPU time there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Logs to stderr, filtered by `RUST_LOG`; one JSON object per line with
/// `ARBOR_LOG_FORMAT=json` (for log shippers), human lines otherwise.
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("ARBOR_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().with_current_span(true).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// The CLI's client TLS, from `ARBOR_TLS_CA` (the agents' CA) and
/// `ARBOR_TLS_CERT` / `ARBOR_TLS_KEY` (a client identity for mutual TLS).
fn cli_tls() -> Result<()> {
    let read = |var: &str| -> Result<Option<Vec<u8>>> {
        match std::env::var_os(var) {
            None => Ok(None),
            Some(p) => std::fs::read(&p)
                .map(Some)
                .with_context(|| format!("{var}: cannot read {}", Path::new(&p).display())),
        }
    };
    let ca = read("ARBOR_TLS_CA")?;
    let identity = match (read("ARBOR_TLS_CERT")?, read("ARBOR_TLS_KEY")?) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => bail!("set both ARBOR_TLS_CERT and ARBOR_TLS_KEY, or neither"),
    };
    if ca.is_some() || identity.is_some() {
        arbor::grpc::client::set_client_tls(
            ca.as_deref(),
            identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        );
    }
    Ok(())
}

/// An error and its causes on one line, each cause once: library errors
/// often say their cause in their own message too, and `{:#}` would then
/// print it twice.
fn describe(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Agent { .. })
        && let Err(e) = cli_tls()
    {
        eprintln!("arbor: error: {}", describe(&e));
        return ExitCode::from(2);
    }
    // Every outgoing call (to agents, and an agent's to its peers) carries
    // ARBOR_TOKEN when it is set.
    if let Some(token) = std::env::var("ARBOR_TOKEN").ok().filter(|t| !t.is_empty())
        && let Err(e) = arbor::grpc::client::set_bearer_token(&token)
    {
        eprintln!("arbor: error: ARBOR_TOKEN: {e}");
        return ExitCode::from(2);
    }
    let is_agent = matches!(cli.command, Command::Agent { .. });
    init_logging(if is_agent { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("arbor: error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("arbor: error: {}", describe(&e));
            ExitCode::from(2)
        }
    }
}

/// Runs one command. (Long on purpose: the dispatch of every verb, each
/// arm a call into `cli/` or a few lines.)
async fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Agent {
            config,
            listen,
            data_dir,
        } => {
            let overrides = Overrides { listen, data_dir };
            let cfg = AgentConfig::load(&config.config, &overrides)?;
            arbor::node::run(cfg, shutdown_signal(), |addr| {
                // One line on stdout for scripts that start agents on port 0.
                outln!("listening on {addr}");
                let _ = crate::output::stdout().flush();
            })
            .await
            .context("agent stopped with an error")?;
            Ok(0)
        }
        // Offline commands read systems, which may block: off the runtime.
        Command::Config {
            command: ConfigCommand::Check(args),
        } => blocking(move || config_check(&args)).await,
        Command::Config {
            command: ConfigCommand::Reference,
        } => {
            out!("{}", arbor_agent::config::reference::markdown());
            Ok(0)
        }
        Command::Index { command } => blocking(move || index_command(command)).await,
        Command::Compare(args) => compare(args).await,
        Command::Runs { command } => runs(command).await,
        Command::Demo(args) => demo::run(args),
        Command::Sync { command } => sync(command).await,
        Command::Auth {
            command: AuthCommand::HashToken,
        } => {
            let mut token = String::new();
            std::io::stdin()
                .read_line(&mut token)
                .context("read the token from stdin")?;
            let token = token.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!token.is_empty(), "the token on stdin is empty");
            outln!("{}", arbor::grpc::auth::token_hash(token));
            Ok(0)
        }
        Command::Certs {
            command: CertsCommand::Dev { dir, names },
        } => {
            certs::dev(&dir, &names)?;
            outln!(
                "certs: ca.pem, agent.pem/agent.key, operator.pem/operator.key in {} (for trials only)",
                dir.display()
            );
            Ok(0)
        }
        Command::Audit {
            command: AuditCommand::Verify { file, config },
        } => {
            let path = match (file, config) {
                (Some(f), _) => f,
                (None, Some(c)) => AgentConfig::load(&c, &Overrides::default())?.audit_log,
                (None, None) => anyhow::bail!("name the log with --file or the agent's --config"),
            };
            match arbor_agent::audit::verify(&path) {
                Ok(lines) => {
                    outln!(
                        "audit log {}: ok, {lines} lines, chain and head intact",
                        path.display()
                    );
                    Ok(0)
                }
                Err(problem) => {
                    outln!("audit log {}: {problem}", path.display());
                    Ok(1)
                }
            }
        }
        Command::Capture {
            command: CaptureCommand::Drop { index, publication },
        } => blocking(move || capture_drop(&index, publication)).await,
        Command::Keys {
            command:
                KeysCommand::Rotate {
                    agent,
                    dataset,
                    json,
                },
        } => {
            let r = admin_client(&agent)
                .await?
                .rotate_key(pb::RotateKeyRequest { dataset })
                .await
                .map_err(|s| rpc_error(&agent, &s))?
                .into_inner();
            if json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "dataset": r.dataset,
                        "previous_key_id": r.previous_key_id,
                        "key_id": r.key_id,
                        "built": r.built,
                        "records": r.records,
                        "elapsed_ms": r.elapsed_ms,
                        "held_key_ids": r.held_key_ids,
                    })
                );
            } else {
                outln!(
                    "dataset {}: key {} -> {} ({}, {} records, {} ms); holding {}",
                    r.dataset,
                    r.previous_key_id,
                    r.key_id,
                    if r.built {
                        "index built"
                    } else {
                        "index was held"
                    },
                    r.records,
                    r.elapsed_ms,
                    r.held_key_ids.join(", ")
                );
            }
            Ok(0)
        }
    }
}

async fn blocking(f: impl FnOnce() -> Result<u8> + Send + 'static) -> Result<u8> {
    tokio::task::spawn_blocking(f)
        .await
        .context("command task failed")?
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, run until killed.
            std::future::pending::<()>().await;
        }
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}

fn config_check(args: &ConfigArgs) -> Result<u8> {
    let cfg = AgentConfig::load(&args.config, &Overrides::default())?;
    outln!("config {}: ok", args.config.display());
    outln!("  listen   {}", cfg.listen);
    outln!("  data dir {}", cfg.data_dir.display());
    for d in &cfg.datasets {
        maintain::open_source(d)?;
        let keys = arbor_record::DatasetKeys::derive(&d.secret);
        outln!(
            "  dataset {}: {:?}, {} key and {} compared columns, secret from {} (key id {}): system readable",
            d.name,
            d.source,
            d.mapping.key().len(),
            d.mapping.columns().len(),
            d.secret_origin,
            keys.key_id()
        );
    }
    Ok(0)
}
