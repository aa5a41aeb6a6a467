//! The command line: every verb, its flags and their defaults (clap).

use crate::*;

/// Merkle-tree anti-entropy: find and report drift between systems.
#[derive(Parser)]
#[command(name = "arbor", version = arbor::build::LONG_VERSION, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
pub(crate) enum SyncCommand {
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
pub(crate) struct SyncArgs {
    /// The source-of-truth agent, `http://host:port` (with --plan: the
    /// plan's).
    #[arg(long, required_unless_present = "plan")]
    pub(crate) source: Option<String>,
    /// The target agent (its dataset needs `allow_repairs = true`).
    #[arg(long, required_unless_present = "plan")]
    pub(crate) target: Option<String>,
    /// The dataset (same name on both unless --target-dataset).
    #[arg(long, required_unless_present = "plan")]
    pub(crate) dataset: Option<String>,
    /// The dataset's name on the target.
    #[arg(long)]
    pub(crate) target_dataset: Option<String>,
    /// Seconds to wait for agents that are still indexing.
    #[arg(long, default_value_t = 120)]
    pub(crate) wait: u64,
    /// `one-way` (from --source, the source of truth) or `two-way`.
    #[arg(long, default_value = "one-way")]
    pub(crate) policy: String,
    /// one-way: records only on the target: delete, keep or report.
    #[arg(long, default_value = "report")]
    pub(crate) extra: String,
    /// two-way: `lww:COLUMN`, `priority:source|target`, `ownership` or `manual`.
    #[arg(long)]
    pub(crate) rule: Option<String>,
    /// two-way ownership: `COLUMN=source|target` (canonical names), repeated.
    #[arg(long = "owner")]
    pub(crate) owners: Vec<String>,
    /// two-way ownership: the rule for unowned columns (`lww:COLUMN` or
    /// `priority:source|target`).
    #[arg(long, default_value = "priority:source")]
    pub(crate) fallback: String,
    /// Writes per batch (one target transaction each).
    #[arg(long, default_value_t = arbor::sync::DEFAULT_BATCH)]
    pub(crate) batch: usize,
    /// Throttle in rows per second (0: none).
    #[arg(long, default_value_t = 0)]
    pub(crate) max_rows_per_sec: u64,
    /// Seconds a batch is retried while the target is unreachable.
    #[arg(long, default_value_t = 120)]
    pub(crate) retry_secs: u64,
    /// two-way lww: seconds in the future an lww time may lie before the
    /// row is reported unresolved rather than settled by it.
    #[arg(long, default_value_t = 300)]
    pub(crate) max_skew_secs: u64,
    /// Refuse a plan that would update or delete more than this share of a
    /// side's records (0 to 1; 1 allows anything). Inserts do not count;
    /// sides under 100 records are never refused.
    #[arg(long, default_value_t = arbor::sync::DEFAULT_MAX_SHARE)]
    pub(crate) max_share: f64,
    /// JSON lines: the summary, then one line per action.
    #[arg(long)]
    pub(crate) json: bool,
    /// `plan`: also save the plan (with its values) to this file.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// `run`: execute this saved plan instead of planning again (the
    /// agents and datasets come from the file).
    #[arg(long)]
    pub(crate) plan: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum AuthCommand {
    /// Reads a token on stdin and prints the token_blake3 to put in a
    /// principal (the config never holds the token itself).
    HashToken,
}

#[derive(Subcommand)]
pub(crate) enum CertsCommand {
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
pub(crate) enum AuditCommand {
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
pub(crate) enum KeysCommand {
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
pub(crate) enum CaptureCommand {
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
pub(crate) struct ConfigArgs {
    /// The agent's TOML configuration.
    #[arg(long, short, env = "ARBOR_CONFIG")]
    pub(crate) config: PathBuf,
}

#[derive(Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate the file and open each dataset's system read-only.
    Check(ConfigArgs),
    /// Print every configuration field with its type and default (Markdown;
    /// the same as docs/config.md).
    Reference,
}

#[derive(Subcommand)]
pub(crate) enum IndexCommand {
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
pub(crate) struct IndexArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// The dataset.
    #[arg(long)]
    pub(crate) dataset: String,
}

#[derive(Args)]
pub(crate) struct OutputArgs {
    /// JSON lines: the summary, then one line per drifting key.
    #[arg(long, conflicts_with = "csv")]
    pub(crate) json: bool,
    /// CSV of the drifting keys.
    #[arg(long)]
    pub(crate) csv: bool,
    /// Most drifting keys to print (0: all). Default: all with --json and
    /// --csv (machine output is complete), 20 in the table.
    #[arg(long)]
    pub(crate) limit: Option<u64>,
    /// Only these kinds: missing_left, missing_right, changed (repeatable).
    #[arg(long = "kind")]
    pub(crate) kinds: Vec<String>,
    /// Only changed keys whose differing columns include this one.
    #[arg(long)]
    pub(crate) column: Option<String>,
}

/// Drifting keys a table shows unless `--limit` says otherwise.
pub(crate) const TABLE_ROWS: u64 = 20;

impl OutputArgs {
    /// The keys to print: `--limit`, else all for machine output.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
            .unwrap_or(if self.json || self.csv { 0 } else { TABLE_ROWS })
    }
}

#[derive(Args)]
pub(crate) struct CompareArgs {
    /// The agent that runs the compare (its dataset is the left side).
    #[arg(long, default_value = "http://127.0.0.1:7401")]
    pub(crate) agent: String,
    /// The dataset on that agent.
    #[arg(long)]
    pub(crate) dataset: String,
    /// The peer agent (the right side).
    #[arg(long)]
    pub(crate) peer: String,
    /// The dataset's name on the peer (default: the same).
    #[arg(long)]
    pub(crate) peer_dataset: Option<String>,
    /// Print the cost of the compare too.
    #[arg(long)]
    pub(crate) stats: bool,
    /// Do not name the differing columns of changed keys (saves reading
    /// those rows from both systems; reports list keys and kinds only).
    #[arg(long)]
    pub(crate) skip_column_names: bool,
    /// Seconds to wait for agents that are still indexing, or busy with
    /// as many runs of the dataset as they take at once.
    #[arg(long, default_value_t = 120)]
    pub(crate) wait: u64,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

#[derive(Subcommand)]
pub(crate) enum RunsCommand {
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
