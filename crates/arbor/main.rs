//! The `arbor` command: the agent and the operator's CLI.
//!
//! Exit codes: 0 in sync (or success), 1 drift found, 2 error.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arbor::proto::v1 as pb;
use arbor::proto::v1::audit_service_client::AuditServiceClient;
use arbor_agent::config::{AgentConfig, Overrides};
use arbor_agent::maintain;
use arbor_agent::report::{DriftEntry, RunStatus, RunSummary};
use arbor_index::Index;
use clap::{Args, Parser, Subcommand};

#[macro_use]
mod output;
mod certs;
mod demo;
mod html;

// Builds allocate a key per record on several threads at once; glibc's
// malloc spent a fifth of a PostgreSQL build's CPU time there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Merkle-tree anti-entropy: find and report drift between systems.
#[derive(Parser)]
#[command(name = "arbor", version = arbor::build::LONG_VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an agent beside a system.
    Agent {
        #[command(flatten)]
        config: ConfigArgs,
        /// Listen address (overrides the file and ARBOR_LISTEN).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory (overrides the file and ARBOR_DATA_DIR).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Check a configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Work on an index directly (the agent must not be running).
    Index {
        #[command(subcommand)]
        command: IndexCommand,
    },
    /// Compare a dataset on one agent with a dataset on a peer agent.
    Compare(CompareArgs),
    /// Stored runs of an agent.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Create the demo's two SQLite systems and agent configs.
    Demo(demo::DemoArgs),
    /// One-way synchronisation from a source of truth to a target.
    Sync {
        #[command(subcommand)]
        command: SyncCommand,
    },
    /// Credentials for [agent.auth].
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Certificates for trying TLS.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Hashing keys: rotation to the configured next key.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Change capture state kept in the systems (replication slots).
    Capture {
        #[command(subcommand)]
        command: CaptureCommand,
    },
}

#[derive(Subcommand)]
enum SyncCommand {
    /// Compare and print what a run would write (and the SQL the target
    /// would run); writes nothing.
    Plan(SyncArgs),
    /// Plan, and with --execute apply the plan and verify it.
    Run {
        #[command(flatten)]
        args: SyncArgs,
        /// Write. Without it, `run` is a plan.
        #[arg(long)]
        execute: bool,
    },
    /// An agent's sync jobs: schedule, next and last run.
    Jobs {
        /// The agent, `http://host:port`.
        #[arg(long)]
        agent: String,
        /// One JSON object per job.
        #[arg(long)]
        json: bool,
    },
    /// A sync job's recorded runs, newest first (JSON lines).
    History {
        /// The agent, `http://host:port`.
        #[arg(long)]
        agent: String,
        /// The job's name.
        #[arg(long)]
        job: String,
        /// At most this many runs.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Conflicts an agent's jobs queued (rows no rule settled).
    Conflicts {
        /// The agent, `http://host:port`.
        #[arg(long)]
        agent: String,
    },
    /// Settles a queued conflict by taking one side's row.
    Resolve {
        /// The agent, `http://host:port`.
        #[arg(long)]
        agent: String,
        /// The conflict's id.
        #[arg(long)]
        id: String,
        /// `source` (the agent's own row) or `target` (the peer's).
        #[arg(long)]
        take: String,
    },
    /// Runs one of an agent's sync jobs now and prints the run.
    Trigger {
        /// The agent, `http://host:port`.
        #[arg(long)]
        agent: String,
        /// The job's name.
        #[arg(long)]
        job: String,
    },
}

#[derive(Args)]
struct SyncArgs {
    /// The source-of-truth agent, `http://host:port` (with --plan: the
    /// plan's).
    #[arg(long, required_unless_present = "plan")]
    source: Option<String>,
    /// The target agent (its dataset needs `allow_repairs = true`).
    #[arg(long, required_unless_present = "plan")]
    target: Option<String>,
    /// The dataset (same name on both unless --target-dataset).
    #[arg(long, required_unless_present = "plan")]
    dataset: Option<String>,
    /// The dataset's name on the target.
    #[arg(long)]
    target_dataset: Option<String>,
    /// Seconds to wait for agents that are still indexing.
    #[arg(long, default_value_t = 120)]
    wait: u64,
    /// `one-way` (from --source, the source of truth) or `two-way`.
    #[arg(long, default_value = "one-way")]
    policy: String,
    /// one-way: records only on the target: delete, keep or report.
    #[arg(long, default_value = "report")]
    extra: String,
    /// two-way: `lww:COLUMN`, `priority:source|target`, `ownership` or `manual`.
    #[arg(long)]
    rule: Option<String>,
    /// two-way ownership: `COLUMN=source|target` (canonical names), repeated.
    #[arg(long = "owner")]
    owners: Vec<String>,
    /// two-way ownership: the rule for unowned columns (`lww:COLUMN` or
    /// `priority:source|target`).
    #[arg(long, default_value = "priority:source")]
    fallback: String,
    /// Writes per batch (one target transaction each).
    #[arg(long, default_value_t = arbor::sync::DEFAULT_BATCH)]
    batch: usize,
    /// Throttle in rows per second (0: none).
    #[arg(long, default_value_t = 0)]
    max_rows_per_sec: u64,
    /// Seconds a batch is retried while the target is unreachable.
    #[arg(long, default_value_t = 120)]
    retry_secs: u64,
    /// two-way lww: seconds in the future an lww time may lie before the
    /// row is reported unresolved rather than settled by it.
    #[arg(long, default_value_t = 300)]
    max_skew_secs: u64,
    /// Refuse a plan that would update or delete more than this share of a
    /// side's records (0 to 1; 1 allows anything). Inserts do not count;
    /// sides under 100 records are never refused.
    #[arg(long, default_value_t = arbor::sync::DEFAULT_MAX_SHARE)]
    max_share: f64,
    /// JSON lines: the summary, then one line per action.
    #[arg(long)]
    json: bool,
    /// `plan`: also save the plan (with its values) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// `run`: execute this saved plan instead of planning again (the
    /// agents and datasets come from the file).
    #[arg(long)]
    plan: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AuthCommand {
    /// Reads a token on stdin and prints the token_blake3 to put in a
    /// principal (the config never holds the token itself).
    HashToken,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// A local CA, an agent certificate (server and client, for localhost,
    /// 127.0.0.1 and each --name) and an operator client certificate.
    Dev {
        /// Where to write them.
        #[arg(long)]
        dir: PathBuf,
        /// More names (or IPs) the agent certificate is valid for.
        #[arg(long = "name")]
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Checks the hash chain and head of an audit log: edits, deleted
    /// lines and truncation are errors naming the line (exit 1).
    Verify {
        /// The log file; default: the one the config names.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The agent's config (to find its log).
        #[arg(long, short, env = "ARBOR_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Rotate a dataset to its other configured key (`next_secret_*`):
    /// the agent builds the index under it beside the current one, then
    /// switches; peers on the old key keep comparing meanwhile.
    Rotate {
        /// The agent, e.g. http://127.0.0.1:7400.
        #[arg(long)]
        agent: String,
        /// The dataset.
        #[arg(long)]
        dataset: String,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CaptureCommand {
    /// Drop a logical-capture dataset's replication slot, so the server
    /// stops keeping WAL for it (do this when removing the dataset).
    Drop {
        #[command(flatten)]
        index: IndexArgs,
        /// Drop the dataset's publication too.
        #[arg(long)]
        publication: bool,
    },
}

#[derive(Args)]
struct ConfigArgs {
    /// The agent's TOML configuration.
    #[arg(long, short, env = "ARBOR_CONFIG")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the file and open each dataset's system read-only.
    Check(ConfigArgs),
    /// Print every configuration field with its type and default (Markdown;
    /// the same as docs/config.md).
    Reference,
}

#[derive(Subcommand)]
enum IndexCommand {
    /// Build a dataset's index from its system.
    Build(IndexArgs),
    /// Show a dataset's index.
    Status(IndexArgs),
    /// Recompute every stored node from the records.
    Verify(IndexArgs),
    /// Remove a dataset's index (every key's), e.g. after a schema change;
    /// the next agent start or `index build` builds it from the system.
    Reset(IndexArgs),
}

#[derive(Args)]
struct IndexArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The dataset.
    #[arg(long)]
    dataset: String,
}

#[derive(Args)]
struct OutputArgs {
    /// JSON lines: the summary, then one line per drifting key.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// CSV of the drifting keys.
    #[arg(long)]
    csv: bool,
    /// Most drifting keys to print (0: all). Default: all with --json and
    /// --csv (machine output is complete), 20 in the table.
    #[arg(long)]
    limit: Option<u64>,
    /// Only these kinds: missing_left, missing_right, changed (repeatable).
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// Only changed keys whose differing columns include this one.
    #[arg(long)]
    column: Option<String>,
}

/// Drifting keys a table shows unless `--limit` says otherwise.
const TABLE_ROWS: u64 = 20;

impl OutputArgs {
    /// The keys to print: `--limit`, else all for machine output.
    fn limit(&self) -> u64 {
        self.limit
            .unwrap_or(if self.json || self.csv { 0 } else { TABLE_ROWS })
    }
}

#[derive(Args)]
struct CompareArgs {
    /// The agent that runs the compare (its dataset is the left side).
    #[arg(long, default_value = "http://127.0.0.1:7401")]
    agent: String,
    /// The dataset on that agent.
    #[arg(long)]
    dataset: String,
    /// The peer agent (the right side).
    #[arg(long)]
    peer: String,
    /// The dataset's name on the peer (default: the same).
    #[arg(long)]
    peer_dataset: Option<String>,
    /// Print the cost of the compare too.
    #[arg(long)]
    stats: bool,
    /// Do not name the differing columns of changed keys (saves reading
    /// those rows from both systems; reports list keys and kinds only).
    #[arg(long)]
    skip_column_names: bool,
    /// Seconds to wait for agents that are still indexing, or busy with
    /// as many runs of the dataset as they take at once.
    #[arg(long, default_value_t = 120)]
    wait: u64,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Subcommand)]
enum RunsCommand {
    /// Recent runs, newest first.
    List {
        /// The agent.
        #[arg(long, default_value = "http://127.0.0.1:7401")]
        agent: String,
        /// Only runs of this dataset.
        #[arg(long)]
        dataset: Option<String>,
        /// Most runs.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// What changed between two runs: drift that is new in the second,
    /// resolved since the first, and persisting in both (keys compared).
    Diff {
        /// The agent.
        #[arg(long, default_value = "http://127.0.0.1:7401")]
        agent: String,
        /// The earlier run.
        first: String,
        /// The later run.
        second: String,
        /// JSON: a summary line, then one line per key.
        #[arg(long)]
        json: bool,
        /// Keys listed per group (0: all). Default: all with --json, 20 in
        /// the table.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// A run as one self-contained HTML file (summary, counts per kind and
    /// column, drift over the dataset's recent runs, the first keys).
    Export {
        /// The agent.
        #[arg(long, default_value = "http://127.0.0.1:7401")]
        agent: String,
        /// The run id.
        run_id: String,
        /// Where to write the HTML.
        #[arg(long)]
        html: PathBuf,
        /// Keys listed.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// One run and its drift.
    Show {
        /// The agent.
        #[arg(long, default_value = "http://127.0.0.1:7401")]
        agent: String,
        /// The run id.
        run_id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

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

async fn sync(command: SyncCommand) -> Result<u8> {
    use arbor::sync::SyncOptions;
    let (args, execute, plan_only) = match command {
        SyncCommand::Plan(a) => (a, false, true),
        SyncCommand::Run { args, execute } => (args, execute, false),
        SyncCommand::Jobs { agent, json } => return sync_jobs(&agent, json).await,
        SyncCommand::History { agent, job, limit } => {
            let runs = admin_client(&agent)
                .await?
                .list_sync_runs(pb::ListSyncRunsRequest { job, limit })
                .await
                .map_err(|s| rpc_error(&agent, &s))?
                .into_inner()
                .runs;
            for r in &runs {
                outln!("{r}");
            }
            return Ok(0);
        }
        SyncCommand::Conflicts { agent } => {
            let list = admin_client(&agent)
                .await?
                .list_conflicts(pb::ListConflictsRequest {})
                .await
                .map_err(|s| rpc_error(&agent, &s))?
                .into_inner();
            for c in &list.conflicts {
                outln!("{c}");
            }
            return Ok(if list.conflicts.is_empty() { 0 } else { 1 });
        }
        SyncCommand::Resolve { agent, id, take } => {
            let run = admin_client(&agent)
                .await?
                .resolve_conflict(pb::ResolveConflictRequest { id, take })
                .await
                .map_err(|s| rpc_error(&agent, &s))?
                .into_inner();
            outln!("{}", run.json);
            let report: serde_json::Value = serde_json::from_str(&run.json)?;
            return Ok(if report["drift_after"] == 0 { 0 } else { 1 });
        }
        SyncCommand::Trigger { agent, job } => {
            let mut client = admin_client(&agent).await?;
            let run = client
                .run_sync_job(pb::RunSyncJobRequest { name: job.clone() })
                .await
                .map_err(|s| rpc_error(&agent, &s))?
                .into_inner();
            outln!("{}", run.json);
            let parsed: serde_json::Value = serde_json::from_str(&run.json)?;
            return Ok(if parsed["outcome"] == "completed" {
                0
            } else {
                1
            });
        }
    };
    // A saved plan names its agents, datasets and values.
    let saved = match &args.plan {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read the plan {}", path.display()))?;
            let file: arbor::sync::PlanFile = serde_json::from_str(&text)
                .with_context(|| format!("plan {} is not a plan file", path.display()))?;
            let actions = file
                .actions()
                .map_err(|e| anyhow::anyhow!("plan {}: {e}", path.display()))?;
            if !file.key_id.is_empty() && hex::decode(&file.key_id).map(|k| k.len()) != Ok(8) {
                anyhow::bail!(
                    "plan {}: key_id {:?} is not 16 hex digits",
                    path.display(),
                    file.key_id
                );
            }
            let report = arbor::sync::SyncReport {
                run_id: file.run_id.clone(),
                key_id: file.key_id.clone(),
                planned_upserts: actions
                    .iter()
                    .filter(|a| a.action == arbor::sync::ActionKind::Upsert)
                    .count() as u64,
                planned_deletes: actions
                    .iter()
                    .filter(|a| a.action == arbor::sync::ActionKind::Delete)
                    .count() as u64,
                ..Default::default()
            };
            Some((file, actions, report))
        }
    };
    // Both agents must have indexed their datasets (just started, or
    // catching up after a restart).
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    let (source, target, dataset, target_dataset) = match &saved {
        Some((file, _, _)) => (
            file.source.clone(),
            file.target.clone(),
            file.dataset.clone(),
            file.target_dataset.clone(),
        ),
        None => {
            // Required by the parser unless --plan.
            let dataset = args.dataset.clone().unwrap_or_default();
            (
                args.source.clone().unwrap_or_default(),
                args.target.clone().unwrap_or_default(),
                dataset.clone(),
                args.target_dataset.clone().unwrap_or(dataset),
            )
        }
    };
    wait_serving(&source, deadline).await?;
    wait_serving(&target, deadline).await?;
    if !(0.0..=1.0).contains(&args.max_share) {
        bail!("--max-share {}: a share between 0 and 1", args.max_share);
    }
    let mut owners = Vec::new();
    for o in &args.owners {
        let (col, side) = o
            .split_once('=')
            .with_context(|| format!("--owner {o:?}: expected COLUMN=source|target"))?;
        owners.push((col.to_owned(), side.to_owned()));
    }
    let policy = arbor::sync::parse_policy(
        &args.policy,
        Some(&args.extra),
        args.rule.as_deref(),
        &owners,
        Some(&args.fallback),
    )
    .map_err(|(field, e)| anyhow::anyhow!("--{field}: {e}"))?;
    let opts = SyncOptions {
        source,
        target,
        target_dataset,
        dataset,
        policy,
        batch: args
            .batch
            .clamp(1, arbor_agent::repair::MAX_WRITES_PER_BATCH),
        max_rows_per_sec: args.max_rows_per_sec,
        retry_for: std::time::Duration::from_secs(args.retry_secs),
        only_keys: None,
        max_skew: Duration::from_secs(args.max_skew_secs),
        max_share: args.max_share,
    };
    let (actions, report) = match saved {
        Some((_, actions, report)) => (actions, report),
        None => arbor::sync::plan(&opts, !execute)
            .await
            .context("sync plan failed")?,
    };
    if let Some(out) = &args.out {
        let file = arbor::sync::PlanFile::new(&opts, &report, &actions);
        std::fs::write(out, serde_json::to_vec_pretty(&file)?)
            .with_context(|| format!("write the plan {}", out.display()))?;
    }
    let report = if execute {
        let mut report = arbor::sync::execute(&opts, &actions, report)
            .await
            .context("sync run failed")?;
        // Rows no rule settled wait for a person, as a job's do.
        report.queued = arbor::sync::queue_unresolved(&opts, &actions)
            .await
            .context("queue the unresolved rows")?;
        report
    } else {
        report
    };
    let mut out = crate::output::stdout();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
        for a in &actions {
            writeln!(out, "{}", serde_json::to_string(a)?)?;
        }
    } else {
        if !execute {
            for a in &actions {
                writeln!(
                    out,
                    "{:<10} {:<6} {:<18} {:<24} {}",
                    a.action,
                    match a.side {
                        arbor::sync::Side::Source => "source",
                        arbor::sync::Side::Target => "target",
                    },
                    a.drift,
                    a.key,
                    a.sql.as_deref().or(a.reason.as_deref()).unwrap_or("")
                )?;
            }
        }
        writeln!(
            out,
            "run {}: {} drifting, {} upserts and {} deletes planned ({} to the source, {} to the target), {} kept, {} unresolved{}",
            report.run_id,
            report.drift,
            report.planned_upserts,
            report.planned_deletes,
            report.planned_to_source,
            report.planned_to_target,
            report.kept,
            report.unresolved,
            if report.vanished > 0 {
                format!(", {} vanished from the source", report.vanished)
            } else {
                String::new()
            }
        )?;
        if execute {
            writeln!(
                out,
                "executed: {} applied, {} already applied, {} conflicts (left alone){}; drift after: {}",
                report.applied,
                report.already_applied,
                report.conflicts,
                if report.replayed_batches > 0 {
                    format!(
                        ", {} batches replayed from the journal",
                        report.replayed_batches
                    )
                } else {
                    String::new()
                },
                report
                    .drift_after
                    .map_or_else(|| "?".into(), |d| d.to_string())
            )?;
            for k in &report.conflict_keys {
                writeln!(out, "  conflict: {k} changed on the target since the plan")?;
            }
            if report.queued > 0 {
                writeln!(
                    out,
                    "{} unresolved rows wait for a person: arbor sync conflicts --agent {}",
                    report.queued, opts.source
                )?;
            }
        } else if !plan_only {
            writeln!(out, "dry run: nothing written; pass --execute to apply")?;
        }
    }
    let clean = if execute {
        report.drift_after == Some(0)
    } else {
        report.drift == 0
    };
    Ok(if clean { 0 } else { 1 })
}

/// The dataset an offline command names.
fn dataset_of<'a>(
    cfg: &'a AgentConfig,
    args: &IndexArgs,
) -> Result<&'a arbor_agent::config::DatasetConfig> {
    cfg.datasets
        .iter()
        .find(|d| d.name == args.dataset)
        .with_context(|| {
            format!(
                "no dataset {:?} in {}",
                args.dataset,
                args.config.config.display()
            )
        })
}

fn capture_drop(args: &IndexArgs, publication: bool) -> Result<u8> {
    use arbor_agent::config::{Capture, SourceConfig};
    let cfg = AgentConfig::load(&args.config.config, &Overrides::default())?;
    let d = dataset_of(&cfg, args)?;
    let (Capture::Logical(lc), SourceConfig::Postgres(db)) = (&d.capture, &d.source) else {
        anyhow::bail!("dataset {:?} does not use logical capture", d.name);
    };
    let mut capture = arbor_source::pglogical::LogicalCapture::new(
        db.url.clone(),
        lc.table.clone(),
        lc.filtered,
        d.mapping.clone(),
        arbor_source::pglogical::LogicalOptions {
            slot: lc.slot.clone(),
            publication: lc.publication.clone(),
            create: false,
            statement_timeout: db.options.statement_timeout,
        },
    );
    let existed = capture
        .drop_slot(publication)
        .with_context(|| format!("drop slot {:?} of dataset {:?}", lc.slot, d.name))?;
    if existed {
        outln!("slot {} dropped", lc.slot);
    } else {
        outln!("slot {} did not exist", lc.slot);
    }
    if publication {
        outln!("publication {} dropped (if it existed)", lc.publication);
    }
    Ok(0)
}

/// `arbor index reset`: removes every index of a dataset (the one under
/// its current key and any kept for a rotation). RocksDB's lock refuses it
/// while the agent runs.
fn index_reset(args: &IndexArgs) -> Result<u8> {
    let cfg = AgentConfig::load(&args.config.config, &Overrides::default())?;
    let d = dataset_of(&cfg, args)?;
    let first = maintain::index_path(&cfg, &d.name);
    let mut paths = vec![first.clone()];
    if let Some(dir) = first.parent()
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        let prefix = format!("{}.key-", d.name);
        paths.extend(
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix))
                }),
        );
    }
    let mut removed = 0;
    for path in paths.iter().filter(|p| p.exists()) {
        Index::destroy(path).map_err(|e| {
            let hint = arbor_agent::error::rebuild_hint(&d.name, &e);
            anyhow::Error::new(e).context(format!("remove {}{hint}", path.display()))
        })?;
        outln!("removed {}", path.display());
        removed += 1;
    }
    if removed == 0 {
        outln!(
            "dataset {} has no index under {}",
            d.name,
            cfg.data_dir.display()
        );
    } else {
        outln!(
            "the next agent start (or `arbor index build`) builds the index of {} from its system",
            d.name
        );
    }
    Ok(0)
}

fn index_command(command: IndexCommand) -> Result<u8> {
    let (args, what) = match &command {
        IndexCommand::Build(a) => (a, "build"),
        IndexCommand::Status(a) => (a, "status"),
        IndexCommand::Verify(a) => (a, "verify"),
        // Reset never opens the index: it may not match the config.
        IndexCommand::Reset(a) => return index_reset(a),
    };
    let cfg = AgentConfig::load(&args.config.config, &Overrides::default())?;
    let d = dataset_of(&cfg, args)?;
    let path = maintain::index_path(&cfg, &d.name);
    std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
    let index = Index::open(&path, arbor_agent::keys::index_config(d)).map_err(|e| {
        let hint = arbor_agent::error::rebuild_hint(&d.name, &e);
        anyhow::Error::new(e).context(format!(
            "open the index of {} at {}{hint}",
            d.name,
            path.display()
        ))
    })?;
    match what {
        "build" => {
            let mut source = maintain::open_source(d)?;
            let started = Instant::now();
            // A progress bar on a terminal; otherwise the index logs a line
            // every million records.
            let bar = std::io::stderr().is_terminal().then(|| {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} {elapsed} {human_pos} records ({per_sec})",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                bar
            });
            let progress = |n: u64| {
                if let Some(bar) = &bar {
                    bar.set_position(n);
                }
            };
            let built = maintain::build_from_source_with_progress(
                &index,
                source.as_mut(),
                !d.key_sensitive,
                &progress,
            );
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let stats = built.context("index build")?;
            let secs = started.elapsed().as_secs_f64();
            outln!(
                "indexed {} records of {} in {secs:.2}s ({:.0} records/s), depth {}, {} nodes, peak RSS {}",
                stats.records,
                d.name,
                stats.records as f64 / secs.max(1e-9),
                stats.depth,
                stats.nodes,
                peak_rss().map_or_else(|| "unknown".to_owned(), |m| format!("{m} MiB"))
            );
        }
        "status" => {
            let s = index
                .snapshot()
                .and_then(|s| s.describe())
                .context("read the index")?;
            outln!(
                "dataset {}: {} records, root {}, depth {}, key id {}",
                d.name,
                s.count(),
                hex::encode(s.root.sum.to_le_bytes()),
                s.stored_depth,
                s.key_id
            );
        }
        _ => {
            let r = index.verify().context("verify")?;
            outln!(
                "dataset {}: {} records, {} nodes checked, {} node mismatches, {} bad records",
                d.name,
                r.records,
                r.nodes,
                r.node_mismatches,
                r.bad_records
            );
            for m in &r.mismatches {
                outln!(
                    "  node {}: stored {} records, computed {}",
                    m.prefix,
                    m.stored.count,
                    m.computed.count
                );
            }
            for b in &r.records_with_problems {
                outln!("  record {}: {}", b.key, b.reason);
            }
            if !r.is_ok() {
                return Ok(1);
            }
        }
    }
    Ok(0)
}

/// Peak resident set of this process (Linux `VmHWM`), MiB.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// A failed call to an agent, for the CLI's error line.
fn rpc_error(agent: &str, s: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{agent}: {}", status_text(agent, s))
}

/// A status for a person: its message, its code, the transport's reason
/// when the call never reached the agent, and for a TLS agent a hint (a
/// server refusing a client certificate just closes the connection).
fn status_text(agent: &str, s: &tonic::Status) -> String {
    let mut text = format!("{} ({:?})", s.message(), s.code());
    let mut cause = std::error::Error::source(s);
    let transport = cause.is_some();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    if transport && agent.starts_with("https://") {
        text.push_str(
            " (TLS: ARBOR_TLS_CA must name the agents' CA, and an agent requiring client certificates needs ARBOR_TLS_CERT and ARBOR_TLS_KEY)",
        );
    }
    text
}

async fn admin_client(
    agent: &str,
) -> Result<arbor::proto::v1::admin_service_client::AdminServiceClient<Authed>> {
    Ok(
        arbor::proto::v1::admin_service_client::AdminServiceClient::new(
            arbor::grpc::client::authed(connect(agent).await?),
        ),
    )
}

use arbor::grpc::client::Authed;

/// A channel to an agent (TLS for `https://`, from `ARBOR_TLS_*`).
async fn connect(agent: &str) -> Result<tonic::transport::Channel> {
    arbor::grpc::client::endpoint(agent)
        .map_err(anyhow::Error::msg)?
        .connect()
        .await
        .with_context(|| format!("connect to agent {agent}"))
}

async fn sync_jobs(agent: &str, json: bool) -> Result<u8> {
    let jobs = admin_client(agent)
        .await?
        .list_sync_jobs(pb::ListSyncJobsRequest {})
        .await
        .map_err(|s| rpc_error(agent, &s))?
        .into_inner()
        .jobs;
    let mut out = crate::output::stdout();
    for j in jobs {
        let last: serde_json::Value = if j.last_run_json.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&j.last_run_json)?
        };
        if json {
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "name": j.name, "dataset": j.dataset, "peers": j.peers,
                    "schedule": j.schedule, "timezone": j.timezone, "realtime": j.realtime,
                    "execute": j.execute, "running": j.running, "next_run": j.next_run,
                    "runs": j.runs, "skipped": j.skipped, "last_run": last,
                })
            )?;
        } else {
            writeln!(
                out,
                "{}: {} -> {} | schedule {} ({}){} | {} | next {} | {} runs, {} skipped{} | last: {}",
                j.name,
                j.dataset,
                j.peers.join(", "),
                if j.schedule.is_empty() {
                    "none"
                } else {
                    &j.schedule
                },
                j.timezone,
                if j.realtime { ", realtime" } else { "" },
                if j.execute { "executes" } else { "plans only" },
                if j.next_run.is_empty() {
                    "-"
                } else {
                    &j.next_run
                },
                j.runs,
                j.skipped,
                if j.running { ", running" } else { "" },
                if last.is_null() {
                    "never".to_string()
                } else {
                    format!(
                        "{} {} at {}",
                        last["trigger"], last["outcome"], last["finished_at"]
                    )
                }
            )?;
        }
    }
    Ok(0)
}

async fn audit_client(agent: &str) -> Result<AuditServiceClient<Authed>> {
    let client = AuditServiceClient::new(arbor::grpc::client::authed(connect(agent).await?));
    Ok(client.max_decoding_message_size(arbor::grpc::client::MAX_MESSAGE_BYTES))
}

/// First pause before polling a running compare (short compares end in
/// milliseconds); it doubles up to [`RUN_POLL_MAX`].
const RUN_POLL_FIRST: Duration = Duration::from_millis(20);
/// Longest pause between two polls of a running compare.
const RUN_POLL_MAX: Duration = Duration::from_secs(1);
/// Deadline of one poll of a running compare.
const RUN_POLL_TIMEOUT: Duration = Duration::from_secs(30);
/// Consecutive failed polls before the agent counts as lost.
const RUN_POLL_FAILURES: u32 = 10;

/// Polls a detached run until it is no longer `running`.
async fn wait_for_run(
    client: &mut AuditServiceClient<Authed>,
    agent: &str,
    mut summary: RunSummary,
) -> Result<RunSummary> {
    let mut pause = RUN_POLL_FIRST;
    let mut failures = 0;
    while summary.status == RunStatus::Running {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RUN_POLL_MAX);
        let mut request = tonic::Request::new(pb::GetRunRequest {
            run_id: summary.run_id.clone(),
        });
        request.set_timeout(RUN_POLL_TIMEOUT);
        match client.get_run(request).await {
            Ok(r) => {
                summary = r.into_inner().into();
                failures = 0;
            }
            Err(s) => {
                failures += 1;
                if failures >= RUN_POLL_FAILURES {
                    bail!(
                        "lost {agent} while run {} was running: {} (`arbor runs show {}` \
                         tells how it ended once the agent is back)",
                        summary.run_id,
                        status_text(agent, &s),
                        summary.run_id
                    );
                }
                tracing::info!(reason = %s.message(), "polling the run failed; retrying");
            }
        }
    }
    Ok(summary)
}

/// How long one health check may take before the agent counts as hung.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits while the agent at `addr` answers NOT_SERVING (still indexing).
async fn wait_serving(addr: &str, deadline: Instant) -> Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    loop {
        let endpoint = arbor::grpc::client::endpoint(addr).map_err(|e| anyhow::anyhow!("{e}"))?;
        // A process that accepts connections but never answers (stopped,
        // wedged) must not hang the CLI: each check has its own deadline.
        let check = async {
            match endpoint.connect().await {
                Ok(channel) => match HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                {
                    Ok(r) => Ok(r.into_inner().status),
                    Err(s) => Err(s.message().to_owned()),
                },
                Err(e) => Err(e.to_string()),
            }
        };
        let Ok(state) = tokio::time::timeout(HEALTH_CHECK_TIMEOUT, check).await else {
            bail!(
                "agent {addr} did not answer its health check within {} s (is the process stopped or overloaded?)",
                HEALTH_CHECK_TIMEOUT.as_secs()
            );
        };
        match state {
            Ok(s)
                if s == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
            {
                return Ok(());
            }
            // Unreachable: do not wait; the compare records a failed run
            // naming the agent.
            Err(_) => return Ok(()),
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Ok(_) => bail!("agent {addr} is still indexing after the --wait period"),
        }
    }
}

async fn compare(args: CompareArgs) -> Result<u8> {
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    wait_serving(&args.agent, deadline).await?;
    wait_serving(&args.peer, deadline).await?;
    let mut client = audit_client(&args.agent).await?;
    let request = pb::CompareRequest {
        dataset: args.dataset.clone(),
        peer: args.peer.clone(),
        peer_dataset: args.peer_dataset.clone().unwrap_or_default(),
        skip_column_names: args.skip_column_names,
        // The run carries on in the agent; this polls it, so a compare of
        // any length outlives the agent's per-request timeout.
        detach: true,
        ..Default::default()
    };
    let started: RunSummary = loop {
        match client.compare(request.clone()).await {
            Ok(r) => break r.into_inner().into(),
            // Not indexed yet, or busy (its dataset's run limit): wait in
            // line until --wait runs out.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                ) && Instant::now() < deadline =>
            {
                tracing::info!(reason = %s.message(), "agent not ready or busy; waiting");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(s) => bail!(
                "compare on {}: {}",
                args.agent,
                status_text(&args.agent, &s)
            ),
        }
    };
    let summary = wait_for_run(&mut client, &args.agent, started).await?;
    // A run that failed on the peer side: report the run, exit 2.
    if summary.status == RunStatus::Incomplete {
        print_run(&mut client, &summary, &args.output, args.stats).await?;
        bail!("run {} incomplete: {}", summary.run_id, summary.error);
    }
    if summary.status != RunStatus::Completed {
        print_summary(&summary, args.stats, args.output.json)?;
        bail!(
            "run {} {}: {}",
            summary.run_id,
            summary.status,
            summary.error
        );
    }
    print_run(&mut client, &summary, &args.output, args.stats).await?;
    Ok(if summary.drift() == 0 { 0 } else { 1 })
}

async fn runs(command: RunsCommand) -> Result<u8> {
    match command {
        RunsCommand::List {
            agent,
            dataset,
            limit,
            json,
        } => {
            let mut client = audit_client(&agent).await?;
            let list = client
                .list_runs(pb::ListRunsRequest {
                    limit,
                    dataset: dataset.unwrap_or_default(),
                })
                .await
                .context("list runs")?
                .into_inner();
            if !json {
                outln!(
                    "{:<22} {:<10} {:<24} {:>10} {:>10} {:>10} {:>8}",
                    "RUN",
                    "STATUS",
                    "STARTED",
                    "MISS_LEFT",
                    "MISS_RIGHT",
                    "CHANGED",
                    "MS"
                );
            }
            for r in list.runs {
                let s: RunSummary = r.into();
                if json {
                    outln!("{}", serde_json::to_string(&s)?);
                } else {
                    outln!(
                        "{:<22} {:<10} {:<24} {:>10} {:>10} {:>10} {:>8}",
                        s.run_id,
                        s.status,
                        s.started_at,
                        s.missing_left,
                        s.missing_right,
                        s.changed,
                        s.cost.elapsed_ms
                    );
                }
            }
            Ok(0)
        }
        RunsCommand::Export {
            agent,
            run_id,
            html,
            limit,
        } => {
            let mut client = audit_client(&agent).await?;
            let run: RunSummary = client
                .get_run(pb::GetRunRequest {
                    run_id: run_id.clone(),
                })
                .await
                .map_err(|s| rpc_error(&agent, &s))?
                .into_inner()
                .into();
            let history: Vec<RunSummary> = client
                .list_runs(pb::ListRunsRequest {
                    limit: 30,
                    dataset: run.left.dataset.clone(),
                })
                .await
                .map_err(|s| rpc_error(&agent, &s))?
                .into_inner()
                .runs
                .into_iter()
                .map(Into::into)
                .collect();
            let mut entries = Vec::new();
            let mut stream = client
                .stream_drift(pb::StreamDriftRequest {
                    run_id,
                    limit,
                    ..Default::default()
                })
                .await
                .map_err(|s| rpc_error(&agent, &s))?
                .into_inner();
            while let Some(e) = stream.message().await.map_err(|s| rpc_error(&agent, &s))? {
                entries.push(DriftEntry::from(e));
            }
            std::fs::write(&html, html::render(&run, &history, &entries))
                .with_context(|| format!("write {}", html.display()))?;
            outln!("report of run {} written to {}", run.run_id, html.display());
            Ok(0)
        }
        RunsCommand::Diff {
            agent,
            first,
            second,
            json,
            limit,
        } => {
            let mut client = audit_client(&agent).await?;
            let mut read = async |run: &str| -> Result<BTreeMap<String, DriftEntry>> {
                let mut stream = client
                    .stream_drift(pb::StreamDriftRequest {
                        run_id: run.to_owned(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| rpc_error(&agent, &s))?
                    .into_inner();
                let mut out = BTreeMap::new();
                while let Some(e) = stream.message().await.map_err(|s| rpc_error(&agent, &s))? {
                    let e: DriftEntry = e.into();
                    out.insert(e.canonical_key.clone(), e);
                }
                Ok(out)
            };
            let (a, b) = (read(&first).await?, read(&second).await?);
            let groups = [
                (
                    "new",
                    b.iter()
                        .filter(|(k, _)| !a.contains_key(*k))
                        .map(|(_, e)| e)
                        .collect::<Vec<_>>(),
                ),
                (
                    "resolved",
                    a.iter()
                        .filter(|(k, _)| !b.contains_key(*k))
                        .map(|(_, e)| e)
                        .collect(),
                ),
                (
                    "persisting",
                    b.iter()
                        .filter(|(k, _)| a.contains_key(*k))
                        .map(|(_, e)| e)
                        .collect(),
                ),
            ];
            let mut out = crate::output::stdout();
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({
                        "first": first, "second": second,
                        "new": groups[0].1.len(), "resolved": groups[1].1.len(), "persisting": groups[2].1.len(),
                    })
                )?;
            } else {
                writeln!(
                    out,
                    "{first} -> {second}: {} new, {} resolved, {} persisting",
                    groups[0].1.len(),
                    groups[1].1.len(),
                    groups[2].1.len()
                )?;
            }
            let limit = limit.unwrap_or(if json { 0 } else { TABLE_ROWS as usize });
            for (group, entries) in &groups {
                let shown = if limit == 0 {
                    entries.len()
                } else {
                    limit.min(entries.len())
                };
                for e in &entries[..shown] {
                    if json {
                        writeln!(
                            out,
                            "{}",
                            serde_json::json!({"group": group, "kind": e.kind, "key": e.key, "canonical_key": e.canonical_key, "columns": e.columns})
                        )?;
                    } else {
                        writeln!(out, "  {group:<11} {:<14} {}", e.kind, e.key)?;
                    }
                }
                if !json && shown < entries.len() {
                    writeln!(
                        out,
                        "  {group:<11} … and {} more (use --limit 0 for all)",
                        entries.len() - shown
                    )?;
                }
            }
            Ok(u8::from(!groups[0].1.is_empty()))
        }
        RunsCommand::Show {
            agent,
            run_id,
            output,
        } => {
            let mut client = audit_client(&agent).await?;
            let summary: RunSummary = client
                .get_run(pb::GetRunRequest {
                    run_id: run_id.clone(),
                })
                .await
                .with_context(|| format!("run {run_id}"))?
                .into_inner()
                .into();
            if summary.status == RunStatus::Incomplete {
                print_run(&mut client, &summary, &output, true).await?;
                return Ok(2);
            }
            if summary.status != RunStatus::Completed {
                print_summary(&summary, true, output.json)?;
                return Ok(2);
            }
            print_run(&mut client, &summary, &output, true).await?;
            Ok(if summary.drift() == 0 { 0 } else { 1 })
        }
    }
}

fn print_summary(s: &RunSummary, stats: bool, json: bool) -> Result<()> {
    if json {
        outln!("{}", serde_json::to_string(s)?);
        return Ok(());
    }
    outln!(
        "run {} {} ({} → {})",
        s.run_id,
        s.status,
        s.started_at,
        s.finished_at
    );
    // A side the run never described (it failed first) has no count: say
    // so rather than show 0 records.
    let records = |side: &arbor_agent::report::RunSide| {
        if side.root.is_empty() {
            "not described (the run stopped before)".to_owned()
        } else {
            format!("{} records", side.count)
        }
    };
    outln!(
        "  left  {} / {}: {}",
        s.left.agent,
        s.left.dataset,
        records(&s.left)
    );
    outln!(
        "  right {} / {}: {}",
        s.right.agent,
        s.right.dataset,
        records(&s.right)
    );
    if !s.error.is_empty() {
        outln!("  error: {}", s.error);
    }
    if s.status.found_all_keys() {
        if s.drift() == 0 {
            outln!("  in sync");
        } else {
            outln!(
                "  drift: {} missing on the left, {} missing on the right, {} changed",
                s.missing_left,
                s.missing_right,
                s.changed
            );
        }
    }
    if stats {
        let per = if s.drift() > 0 {
            s.cost.peer_bytes / s.drift()
        } else {
            0
        };
        outln!(
            "  cost: {} ms, {} round trips, {} levels, {} bytes with the peer ({} per drifting key)",
            s.cost.elapsed_ms,
            s.cost.round_trips,
            s.cost.levels,
            s.cost.peer_bytes,
            per
        );
    }
    Ok(())
}

async fn print_run(
    client: &mut AuditServiceClient<Authed>,
    summary: &RunSummary,
    output: &OutputArgs,
    stats: bool,
) -> Result<()> {
    if !output.csv {
        print_summary(summary, stats, output.json)?;
    }
    if summary.drift() == 0 {
        return Ok(());
    }
    let mut stream = client
        .stream_drift(pb::StreamDriftRequest {
            run_id: summary.run_id.clone(),
            limit: output.limit(),
            kinds: output.kinds.clone(),
            column: output.column.clone().unwrap_or_default(),
            ..Default::default()
        })
        .await
        .context("read the run's drift")?
        .into_inner();
    if output.csv {
        outln!("kind,key,columns");
    } else if !output.json {
        outln!();
        outln!("  {:<14} {:<40} COLUMNS", "KIND", "KEY");
    }
    let mut shown = 0u64;
    while let Some(entry) = stream.message().await.context("read the run's drift")? {
        let e: DriftEntry = entry.into();
        shown += 1;
        if output.json {
            outln!("{}", serde_json::to_string(&e)?);
        } else if output.csv {
            outln!(
                "{},{},{}",
                e.kind,
                csv_field(&e.key),
                csv_field(&e.columns.join(";"))
            );
        } else {
            outln!("  {:<14} {:<40} {}", e.kind, e.key, e.columns.join(", "));
        }
    }
    let filtered = !output.kinds.is_empty() || output.column.is_some();
    if !output.json && !output.csv && !filtered && shown < summary.drift() {
        outln!(
            "  … and {} more (use --limit 0 for all)",
            summary.drift() - shown
        );
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
