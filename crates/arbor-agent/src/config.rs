//! The agent's configuration: a TOML file, then `ARBOR_*` environment
//! variables, then command-line flags.
//!
//! [`ConfigFile`] is the file's shape (every field documented, with its
//! default; unknown fields rejected); [`AgentConfig`] is what the agent runs
//! on, validated. Relative paths in the file are relative to the file.
//! Secrets are read from the environment or a file, never printed.
//!
//! ```toml
//! [agent]
//! listen = "127.0.0.1:7401"      # default
//! data_dir = "/var/lib/arbor"    # required: indexes and run reports
//!
//! [[dataset]]
//! name = "customers"
//! secret_env = "ARBOR_SECRET"    # or secret_file = "...", or (for trials) secret = "..."
//! source = { kind = "sqlite", path = "crm.db", table = "customers" }
//! key = [{ source = "customer_id", name = "id", kind = "integer" }]
//! columns = [
//!   { source = "email", kind = "text" },
//!   { source = "full_name", name = "name", kind = "text" },
//! ]
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arbor_source::Format;
use arbor_source::postgres::{ScanOptions, redact_url};
use arbor_source::relation::Relation;
use arbor_source::{ColumnMapping, Mapping};
use serde::Deserialize;

pub mod reference;

/// Runs (compares, reconciles) at once on one dataset, by default.
pub const DEFAULT_MAX_RUNS_PER_DATASET: usize = 4;

/// A configuration that cannot be used, with where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A value is out of place.
    #[error("invalid config {path}: {field}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field, e.g. `dataset[customers].secret_env`.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

/// Poll capture's default overlap window, seconds.
const DEFAULT_POLL_OVERLAP_SECS: u64 = 60;

fn default_listen() -> String {
    "127.0.0.1:7401".into()
}

fn default_timeout_secs() -> u64 {
    60
}

fn default_concurrency() -> usize {
    64
}

/// The `[agent]` table.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Address the gRPC server listens on. Default `127.0.0.1:7401`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Directory of the indexes and run reports. Required.
    pub data_dir: PathBuf,
    /// Deadline of each incoming request, in seconds. Default 60.
    #[serde(default = "default_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Requests served concurrently per connection. Default 64.
    #[serde(default = "default_concurrency")]
    pub max_concurrent_requests: usize,
    /// Days a delete seen by change capture is remembered for two-way sync
    /// (its tombstone). Default 30; a peer offline longer may copy a row
    /// deleted here back.
    #[serde(default = "default_tombstone_days")]
    pub tombstone_retention_days: u64,
    /// The audit log (JSON lines, hash-chained). Default `<data_dir>/audit.jsonl`.
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// Where to serve Prometheus `GET /metrics` (`127.0.0.1:9464`); default off.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// A second, plaintext port serving only `grpc.health.v1` (no data),
    /// for probes that cannot speak TLS, such as Kubernetes' gRPC probes
    /// (`0.0.0.0:7402`); default off.
    #[serde(default)]
    pub health_listen: Option<String>,
    /// Compare and reconcile runs at once per dataset (more are refused
    /// with ResourceExhausted). Default 4.
    #[serde(default)]
    pub max_runs_per_dataset: Option<usize>,
    /// Days compare reports are kept. Default 90.
    #[serde(default)]
    pub runs_retention_days: Option<u64>,
    /// TLS for the gRPC port and for this agent's calls to peers.
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// Who may call what; present: default deny. Absent: the agent may
    /// only listen on loopback, and write and value calls (ingest, repairs,
    /// value fetches, reindex, job triggers, key rotation) are refused,
    /// unless `insecure = true`.
    #[serde(default)]
    pub auth: Option<AuthSection>,
    /// Without `[agent.auth]`: serve every call to every caller, on any
    /// address, and allow bearer tokens over plaintext. For a trial on one
    /// machine only; logged at WARN on every start. Default false.
    #[serde(default)]
    pub insecure: bool,
}

/// `[agent.auth]`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// The principals.
    #[serde(default, rename = "principal")]
    pub principals: Vec<PrincipalSection>,
}

/// One `[[agent.auth.principal]]`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSection {
    /// Its name (in the audit log).
    pub name: String,
    /// The common name of its client certificate.
    #[serde(default)]
    pub cert_cn: Option<String>,
    /// blake3 of its bearer token, hex (`arbor auth hash-token`).
    #[serde(default)]
    pub token_blake3: Option<String>,
    /// Its roles: peer, auditor, operator, repairer, admin.
    pub roles: Vec<String>,
    /// The datasets it may touch; default all.
    #[serde(default)]
    pub datasets: Option<Vec<String>>,
    /// Calls per second it may make; default no limit.
    #[serde(default)]
    pub max_calls_per_sec: Option<u32>,
}

/// `[agent.tls]`: PEM files, relative to the config file.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The agent's certificate chain (server side).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// Require client certificates signed by this CA (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// The CA that signs peers' certificates (this agent as a client).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The certificate this agent presents to peers that require one;
    /// default: `cert`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Its key; default: `key`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

/// TLS material, loaded.
#[derive(Clone)]
pub struct TlsConfig {
    /// Server certificate chain, PEM.
    pub cert: Vec<u8>,
    /// Server key, PEM.
    pub key: Vec<u8>,
    /// Client CA, PEM (mutual TLS when set).
    pub client_ca: Option<Vec<u8>>,
    /// CA for peers, PEM.
    pub ca: Option<Vec<u8>>,
    /// Client certificate and key, PEM.
    pub client_identity: (Vec<u8>, Vec<u8>),
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("mutual", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

fn default_tombstone_days() -> u64 {
    30
}

/// A database connection and what to read from it (PostgreSQL, MySQL).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// Environment variable holding the connection URL (preferred: URLs
    /// carry passwords). Exactly one of `url_env` and `url`.
    #[serde(default)]
    pub url_env: Option<String>,
    /// The connection URL, `postgres://…` or `mysql://user:password@host:port/db`.
    #[serde(default)]
    pub url: Option<String>,
    /// A table, optionally schema-qualified (`sales.customers`).
    #[serde(default)]
    pub table: Option<String>,
    /// A query whose result columns are mapped like a table's.
    #[serde(default)]
    pub query: Option<String>,
    /// With `table`: an SQL condition rows must meet (`deleted_at IS NULL`).
    #[serde(default)]
    pub filter: Option<String>,
    /// Rows per keyset chunk. Default 50,000.
    #[serde(default)]
    pub chunk_rows: Option<u64>,
    /// Bytes of rows per chunk, about: wide rows make chunks of fewer
    /// rows, so a scan's memory stays bounded whatever the row size
    /// (at least 65,536). Default 16 MiB.
    #[serde(default)]
    pub chunk_bytes: Option<u64>,
    /// Throttle in rows per second; 0 or absent: none.
    #[serde(default)]
    pub max_rows_per_sec: Option<u64>,
    /// Time limit of each statement, seconds. Default 60.
    #[serde(default)]
    pub statement_timeout_secs: Option<u64>,
    /// Connections a full build of a PostgreSQL table reads over, side by
    /// side (1 to 16). Default 2; throttled builds and every other scan
    /// use one.
    #[serde(default)]
    pub build_connections: Option<u32>,
}

/// Where a dataset's records live.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum SourceSection {
    /// A SQLite database file.
    Sqlite {
        /// The database file (must exist; opened read-only).
        path: PathBuf,
        /// A table or view. Exactly one of `table` and `query`.
        #[serde(default)]
        table: Option<String>,
        /// A query whose result columns are mapped like a table's.
        #[serde(default)]
        query: Option<String>,
        /// With `table`: an SQL condition rows must meet.
        #[serde(default)]
        filter: Option<String>,
    },
    /// A PostgreSQL database, read with COPY in keyset chunks.
    Postgres(DatabaseSection),
    /// A MySQL or MariaDB database, read in keyset chunks.
    Mysql(DatabaseSection),
    /// A CSV file, or a directory of `.csv` files, with a header row.
    Csv {
        /// The file or directory.
        path: PathBuf,
        /// The field text that means NULL. Default `\N`.
        #[serde(default)]
        null: Option<String>,
    },
    /// A JSON Lines file, or a directory of `.jsonl` files.
    Jsonl {
        /// The file or directory.
        path: PathBuf,
    },
}

/// A database source, validated.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// Connection URL (with its password: never print it, see `Debug`).
    pub url: String,
    /// Table or query.
    pub relation: Relation,
    /// Chunking, throttle and timeouts.
    pub options: ScanOptions,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", redact_url(&self.url), self.relation)
    }
}

/// A dataset's system, validated.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// A SQLite file.
    Sqlite {
        /// The file.
        path: PathBuf,
        /// Table or query.
        relation: Relation,
    },
    /// A PostgreSQL database.
    Postgres(DatabaseConfig),
    /// A MySQL or MariaDB database.
    Mysql(DatabaseConfig),
    /// CSV or JSONL exports (read-only).
    Files {
        /// File or directory.
        path: PathBuf,
        /// CSV or JSONL.
        format: Format,
        /// CSV's NULL marker (None: the default).
        null: Option<String>,
    },
}

/// How an agent follows its system's changes between full builds.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, tag = "mode", rename_all = "snake_case")]
pub enum CaptureSection {
    /// Only the full build at start and AdminService.Reindex (the default).
    None,
    /// A full scan every `interval_secs` that rewrites only what changed and
    /// removes what vanished.
    Rescan {
        /// Seconds between rescans (from the end of one to the start of the next).
        interval_secs: u64,
    },
    /// Every `interval_secs`, read the rows whose `column` (an updated_at
    /// or version column) is at or after the last value seen; deletes are
    /// caught by a rescan every `rescan_interval_secs`.
    Poll {
        /// The updated_at or version column (need not be mapped).
        column: String,
        /// Seconds between polls. Default 10.
        #[serde(default)]
        interval_secs: Option<u64>,
        /// Seconds between rescans, for deletes. Default 3600.
        #[serde(default)]
        rescan_interval_secs: Option<u64>,
        /// Seconds of overlap: each poll reads again from the last value
        /// seen at least this long ago, so a transaction that commits after
        /// a later one was polled (its `column` older than the last value
        /// seen) is still caught. Rows read again that did not change are
        /// recognised by their digest and write nothing. Default 60.
        #[serde(default)]
        overlap_secs: Option<u64>,
    },
    /// The system (or an integration beside it) pushes its changes with
    /// IngestService.IngestChanges; only datasets in this mode accept them.
    /// A rescan every `rescan_interval_secs`, if set, catches a lost push.
    Push {
        /// Seconds between rescans; default none.
        #[serde(default)]
        rescan_interval_secs: Option<u64>,
    },
    /// PostgreSQL logical replication (pgoutput): every committed insert,
    /// update and delete, within moments of the commit. PostgreSQL tables
    /// only; the server needs `wal_level = logical`.
    Logical {
        /// Replication slot. Default `arbor_<dataset>`.
        #[serde(default)]
        slot: Option<String>,
        /// Publication including the table. Default `arbor_<dataset>`.
        #[serde(default)]
        publication: Option<String>,
        /// Create the slot and publication when missing. Default false:
        /// a DBA usually creates them.
        #[serde(default)]
        create: bool,
        /// Milliseconds between reads of the slot when it was empty. Default 100.
        #[serde(default)]
        interval_ms: Option<u64>,
        /// Changes per read and per index batch. Default 10,000.
        #[serde(default)]
        max_changes: Option<u32>,
    },
}

/// A dataset's change capture, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture {
    /// No capture between full builds.
    None,
    /// Periodic rescans.
    Rescan {
        /// Time between rescans.
        interval: Duration,
    },
    /// Watermark polling plus periodic rescans for deletes.
    Poll {
        /// The watermark column.
        column: String,
        /// Time between polls.
        interval: Duration,
        /// Time between rescans.
        rescan_interval: Duration,
        /// How far back each poll reads again (late commits).
        overlap: Duration,
    },
    /// Changes pushed through IngestService, with optional rescans.
    Push {
        /// Time between rescans, if any.
        rescan_interval: Option<Duration>,
    },
    /// PostgreSQL logical replication.
    Logical(LogicalCapture),
}

/// A dataset's logical replication capture, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalCapture {
    /// The table (as configured, maybe schema-qualified).
    pub table: String,
    /// Whether the dataset has a row filter (changed rows are then read
    /// again through it).
    pub filtered: bool,
    /// Replication slot.
    pub slot: String,
    /// Publication.
    pub publication: String,
    /// Create slot and publication when missing.
    pub create: bool,
    /// Pause after an empty read of the slot.
    pub interval: Duration,
    /// Changes per read.
    pub max_changes: u32,
}

/// The default slot and publication name of a dataset: `arbor_` and the
/// name in lower case, other characters as `_` (slot names allow only
/// `[a-z0-9_]`, at most 63 bytes).
pub fn default_slot_name(dataset: &str) -> String {
    let mut s: String = format!("arbor_{dataset}")
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(63);
    s
}

/// One `[[dataset]]`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetSection {
    /// Name peers and clients use for this dataset. Required, unique.
    pub name: String,
    /// Environment variable holding the dataset secret (preferred).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the dataset secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The secret inline: for trials only, since config files get shared.
    #[serde(default)]
    pub secret: Option<String>,
    /// Environment variable holding the key to rotate to (`arbor keys
    /// rotate`); while set, the agent can serve compares under both keys.
    #[serde(default)]
    pub next_secret_env: Option<String>,
    /// File holding the key to rotate to.
    #[serde(default)]
    pub next_secret_file: Option<PathBuf>,
    /// The key to rotate to, inline (trials only).
    #[serde(default)]
    pub next_secret: Option<String>,
    /// The system.
    pub source: SourceSection,
    /// Key columns, in key order. Required.
    pub key: Vec<ColumnMapping>,
    /// Compared columns. Default none (then only keys are compared).
    #[serde(default)]
    pub columns: Vec<ColumnMapping>,
    /// Change capture. Default `{ mode = "none" }`.
    #[serde(default)]
    pub capture: Option<CaptureSection>,
    /// Serve record values to sync runs (RepairService.FetchRecords), as a
    /// source of truth. Default false: values stay in the agent.
    #[serde(default)]
    pub serve_values: bool,
    /// Accept repair writes into the system (RepairService.ApplyChanges).
    /// Default false: the agent only reads.
    #[serde(default)]
    pub allow_repairs: bool,
    /// The key itself is sensitive (a national id, an email): reports show
    /// keyed hashes of keys instead.
    #[serde(default)]
    pub key_sensitive: bool,
}

/// A peer of a sync job.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncPeerSection {
    /// The peer agent, `http://host:port`.
    pub address: String,
    /// Its dataset; default the job's dataset name.
    #[serde(default)]
    pub dataset: Option<String>,
}

/// One `[[sync]]`: a job this agent runs, its own dataset as the source
/// side and each peer as a target side.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncSection {
    /// Unique job name.
    pub name: String,
    /// The local dataset (the source side).
    pub dataset: String,
    /// The other systems, each synchronised with this one (a pair each).
    pub peers: Vec<SyncPeerSection>,
    /// `report` (list the drift, write nothing), `one_way` (default; this
    /// agent is the source of truth) or `two_way`.
    #[serde(default)]
    pub policy: Option<String>,
    /// one_way: target-only records are `delete`d, `keep`t or `report`ed (default).
    #[serde(default)]
    pub extra: Option<String>,
    /// two_way: `lww:COLUMN`, `priority:source|target`, `ownership` or `manual`.
    #[serde(default)]
    pub rule: Option<String>,
    /// two_way ownership: canonical column → `source` or `target`.
    #[serde(default)]
    pub owners: std::collections::BTreeMap<String, String>,
    /// two_way ownership: the rule for unowned columns. Default `priority:source`.
    #[serde(default)]
    pub fallback: Option<String>,
    /// A five-field cron expression (`0 2 * * *`: nightly at 02:00).
    #[serde(default)]
    pub schedule: Option<String>,
    /// The schedule's time zone (IANA name). Default UTC.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Also run after every change this agent captures on the dataset.
    #[serde(default)]
    pub realtime: bool,
    /// Write. Without it the job only plans and reports.
    #[serde(default)]
    pub execute: bool,
    /// Writes per batch. Default 500.
    #[serde(default)]
    pub batch: Option<usize>,
    /// Throttle in rows per second; default none.
    #[serde(default)]
    pub max_rows_per_sec: Option<u64>,
    /// two_way lww: how many seconds in the future an `lww` time may lie
    /// before the row is reported as a conflict rather than settled by it.
    /// Default 300.
    #[serde(default)]
    pub max_skew_secs: Option<u64>,
    /// Refuse a run that would update or delete more than this share of a
    /// side's records (0 to 1; 1 allows anything; inserts do not count,
    /// sides under 100 records are never refused). Default 0.5.
    #[serde(default)]
    pub max_share: Option<f64>,
}

/// A sync job, validated.
#[derive(Debug, Clone)]
pub struct SyncJobConfig {
    /// Its name.
    pub name: String,
    /// The local dataset.
    pub dataset: String,
    /// (address, dataset) of each peer.
    pub peers: Vec<(String, String)>,
    /// The policy.
    pub policy: arbor_sync::policy::Policy,
    /// The cron expression, as written.
    pub schedule: Option<String>,
    /// Its parsed form.
    pub cron: Option<croner::Cron>,
    /// The schedule's zone.
    pub timezone: chrono_tz::Tz,
    /// Run after captured changes.
    pub realtime: bool,
    /// Write.
    pub execute: bool,
    /// Writes per batch.
    pub batch: usize,
    /// Rows per second, 0 for none.
    pub max_rows_per_sec: u64,
    /// The allowed skew of `lww` times.
    pub max_skew: std::time::Duration,
    /// The largest share of a side's records one run may update or delete.
    pub max_share: f64,
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The `[agent]` table.
    pub agent: AgentSection,
    /// The datasets served.
    #[serde(default, rename = "dataset")]
    pub datasets: Vec<DatasetSection>,
    /// Sync jobs.
    #[serde(default, rename = "sync")]
    pub syncs: Vec<SyncSection>,
}

/// One `[[dataset]]`, validated (`earlier`: the datasets before it); errors
/// name the field.
fn dataset_config(
    d: DatasetSection,
    base: &Path,
    path: &Path,
    earlier: &[DatasetConfig],
) -> Result<DatasetConfig, ConfigError> {
    let invalid = |field: String, problem: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        field,
        problem,
    };
    let field = |f: &str| format!("dataset[{}].{f}", d.name);
    if d.name.is_empty()
        || !d
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(invalid(
            "dataset.name".into(),
            format!("{:?}: use letters, digits, '_' and '-'", d.name),
        ));
    }
    if earlier.iter().any(|x: &DatasetConfig| x.name == d.name) {
        return Err(invalid(field("name"), "appears twice".into()));
    }
    let (secret, secret_origin) = read_secret(
        base,
        &invalid,
        &field,
        "",
        (&d.secret_env, &d.secret_file, &d.secret),
    )?
    .ok_or_else(|| {
        invalid(
            field("secret"),
            "set exactly one of secret_env, secret_file and secret".into(),
        )
    })?;
    let next_secret = read_secret(
        base,
        &invalid,
        &field,
        "next_",
        (&d.next_secret_env, &d.next_secret_file, &d.next_secret),
    )?;
    if next_secret.as_ref().is_some_and(|(n, _)| *n == secret) {
        return Err(invalid(
            field("next_secret"),
            "is the same as the secret: a rotation needs a new key".into(),
        ));
    }
    // Logical capture needs the table itself, before a filter
    // turns it into a query.
    let pg_table = match &d.source {
        SourceSection::Postgres(db) => db.table.clone().map(|t| (t, db.filter.is_some())),
        _ => None,
    };
    let source = source_config(d.source, base, &field).map_err(|(f, p)| invalid(f, p))?;
    if d.key.is_empty() {
        return Err(invalid(
            field("key"),
            "at least one key column is required".into(),
        ));
    }
    let mapping = Mapping::new(d.key, d.columns)
        .map_err(|e| invalid(field("columns"), e.to_string()))?
        .with_sensitive_keys(d.key_sensitive);
    let capture = capture_config(d.capture, &source, pg_table, &d.name, &field)
        .map_err(|(f, p)| invalid(f, p))?;
    if d.allow_repairs && matches!(source, SourceConfig::Files { .. }) {
        return Err(invalid(
            field("allow_repairs"),
            "file sources are read-only; repairs need a database".into(),
        ));
    }
    if d.allow_repairs && mapping.normalises_keys() {
        return Err(invalid(
            field("allow_repairs"),
            "a key column has transforms, so a record's key is not the value stored \
             and a repair could not address the row; repairs need keys as stored"
                .into(),
        ));
    }
    Ok(DatasetConfig {
        name: d.name,
        secret,
        secret_origin,
        next_secret,
        source,
        mapping,
        capture,
        serve_values: d.serve_values,
        allow_repairs: d.allow_repairs,
        key_sensitive: d.key_sensitive,
    })
}

/// A dataset's `source`, paths relative to `base`. `Err`: the field and the
/// problem.
fn source_config(
    source: SourceSection,
    base: &Path,
    field: &dyn Fn(&str) -> String,
) -> Result<SourceConfig, (String, String)> {
    Ok(match source {
        SourceSection::Sqlite {
            path: db,
            table,
            query,
            filter,
        } => SourceConfig::Sqlite {
            path: base.join(db),
            relation: relation(table, query, filter).map_err(|p| (field("source"), p))?,
        },
        SourceSection::Postgres(db) => SourceConfig::Postgres(database(db, field)?),
        SourceSection::Mysql(db) => SourceConfig::Mysql(database(db, field)?),
        SourceSection::Csv { path, null } => SourceConfig::Files {
            path: base.join(path),
            format: Format::Csv,
            null,
        },
        SourceSection::Jsonl { path } => SourceConfig::Files {
            path: base.join(path),
            format: Format::Jsonl,
            null: None,
        },
    })
}

/// A dataset's `capture`, checked against its source (`pg_table`: the
/// PostgreSQL table, and whether a filter narrows it). `Err`: the field
/// and the problem.
fn capture_config(
    capture: Option<CaptureSection>,
    source: &SourceConfig,
    pg_table: Option<(String, bool)>,
    name: &str,
    field: &dyn Fn(&str) -> String,
) -> Result<Capture, (String, String)> {
    Ok(match capture {
        None | Some(CaptureSection::None) => Capture::None,
        Some(CaptureSection::Rescan { interval_secs }) => Capture::Rescan {
            interval: Duration::from_secs(interval_secs.max(1)),
        },
        Some(CaptureSection::Push {
            rescan_interval_secs,
        }) => Capture::Push {
            rescan_interval: rescan_interval_secs.map(|s| Duration::from_secs(s.max(1))),
        },
        Some(CaptureSection::Poll {
            column,
            interval_secs,
            rescan_interval_secs,
            overlap_secs,
        }) => {
            if matches!(source, SourceConfig::Files { .. }) {
                return Err((
                    field("capture"),
                    "poll needs a database source; files use rescan".into(),
                ));
            }
            Capture::Poll {
                column,
                interval: Duration::from_secs(interval_secs.unwrap_or(10).max(1)),
                rescan_interval: Duration::from_secs(rescan_interval_secs.unwrap_or(3600).max(1)),
                overlap: Duration::from_secs(overlap_secs.unwrap_or(DEFAULT_POLL_OVERLAP_SECS)),
            }
        }
        Some(CaptureSection::Logical {
            slot,
            publication,
            create,
            interval_ms,
            max_changes,
        }) => {
            let Some((table, filtered)) = pg_table else {
                return Err((
                    field("capture"),
                    "logical capture needs a PostgreSQL source with a table \
                     (not a query); use poll or rescan"
                        .into(),
                ));
            };
            let slot = slot.unwrap_or_else(|| default_slot_name(name));
            if slot.is_empty()
                || slot.len() > 63
                || !slot
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err((
                    field("capture.slot"),
                    format!("{slot:?} is not a valid slot name (1 to 63 of a-z, 0-9 and _)"),
                ));
            }
            Capture::Logical(LogicalCapture {
                table,
                filtered,
                slot,
                publication: publication.unwrap_or_else(|| default_slot_name(name)),
                create,
                interval: Duration::from_millis(interval_ms.unwrap_or(100).max(1)),
                max_changes: max_changes.unwrap_or(10_000).max(1),
            })
        }
    })
}

/// Validates one `[[sync]]`; errors name the field.
fn sync_job(s: SyncSection, datasets: &[DatasetConfig]) -> Result<SyncJobConfig, (String, String)> {
    let field = |f: &str| format!("sync[{}].{f}", s.name);
    let Some(ds) = datasets.iter().find(|d| d.name == s.dataset) else {
        return Err((
            field("dataset"),
            format!("no dataset {:?} in this file", s.dataset),
        ));
    };
    if s.peers.is_empty() {
        return Err((field("peers"), "at least one peer is required".into()));
    }
    let owners: Vec<(String, String)> = s
        .owners
        .iter()
        .map(|(c, side)| (c.clone(), side.clone()))
        .collect();
    let policy = arbor_sync::policy::parse_policy(
        s.policy.as_deref().unwrap_or("one_way"),
        s.extra.as_deref(),
        s.rule.as_deref(),
        &owners,
        s.fallback.as_deref(),
    )
    .map_err(|(f, e)| (field(f), e))?;
    let cron = match &s.schedule {
        None => None,
        Some(expr) => Some(
            <croner::Cron as std::str::FromStr>::from_str(expr)
                .map_err(|e| (field("schedule"), format!("{expr:?}: {e}")))?,
        ),
    };
    let timezone: chrono_tz::Tz = match &s.timezone {
        None => chrono_tz::UTC,
        Some(z) => z
            .parse()
            .map_err(|_| (field("timezone"), format!("{z:?} is not an IANA time zone")))?,
    };
    if s.realtime && ds.capture == Capture::None {
        return Err((
            field("realtime"),
            format!("dataset {:?} has no change capture to follow", s.dataset),
        ));
    }
    if !s.realtime && cron.is_none() {
        return Err((
            field("schedule"),
            "set a schedule, realtime = true, or both (a job must run at some point)".into(),
        ));
    }
    Ok(SyncJobConfig {
        peers: s
            .peers
            .iter()
            .map(|p| {
                (
                    p.address.clone(),
                    p.dataset.clone().unwrap_or_else(|| s.dataset.clone()),
                )
            })
            .collect(),
        name: s.name,
        dataset: s.dataset,
        policy,
        schedule: s.schedule,
        cron,
        timezone,
        realtime: s.realtime,
        execute: s.execute,
        batch: s
            .batch
            .unwrap_or(arbor_sync::repair::DEFAULT_BATCH)
            .clamp(1, arbor_sync::repair::MAX_BATCH_WRITES),
        max_rows_per_sec: s.max_rows_per_sec.unwrap_or(0),
        max_skew: s.max_skew_secs.map_or(
            arbor_sync::policy::DEFAULT_MAX_SKEW,
            std::time::Duration::from_secs,
        ),
        max_share: match s.max_share {
            None => arbor_sync::repair::DEFAULT_MAX_SHARE,
            Some(share) if (0.0..=1.0).contains(&share) => share,
            Some(share) => {
                return Err((
                    "max_share".into(),
                    format!("{share} is not a share between 0 and 1"),
                ));
            }
        },
    })
}

/// A dataset, validated.
#[derive(Clone)]
pub struct DatasetConfig {
    /// Its name.
    pub name: String,
    /// Its secret (never printed: see the `Debug` impl).
    pub secret: Vec<u8>,
    /// Where the secret came from, for messages.
    pub secret_origin: String,
    /// The other key of a rotation (`next_secret_*`) and where it came from.
    pub next_secret: Option<(Vec<u8>, String)>,
    /// The system.
    pub source: SourceConfig,
    /// Column mapping.
    pub mapping: Mapping,
    /// Change capture.
    pub capture: Capture,
    /// Values may be fetched over RepairService.
    pub serve_values: bool,
    /// Repairs may be written into the system.
    pub allow_repairs: bool,
    /// Reports hash this dataset's keys.
    pub key_sensitive: bool,
}

impl std::fmt::Debug for DatasetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetConfig")
            .field("name", &self.name)
            .field("secret", &format_args!("<from {}>", self.secret_origin))
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The agent's validated configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Per-request deadline.
    pub request_timeout: Duration,
    /// Concurrent requests per connection.
    pub max_concurrent_requests: usize,
    /// Datasets.
    pub datasets: Vec<DatasetConfig>,
    /// Sync jobs.
    pub syncs: Vec<SyncJobConfig>,
    /// How long tombstones are kept.
    pub tombstone_retention: Duration,
    /// The audit log.
    pub audit_log: PathBuf,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the health-only port listens, if anywhere.
    pub health_listen: Option<SocketAddr>,
    /// Runs at once per dataset.
    pub max_runs_per_dataset: usize,
    /// How long compare reports are kept.
    pub runs_retention: Duration,
    /// TLS, if configured.
    pub tls: Option<TlsConfig>,
    /// Principals and roles, if authentication is on.
    pub auth: Option<crate::access::Auth>,
    /// `insecure = true`: no principals, yet every call is served.
    pub insecure: bool,
}

/// Overrides from the environment and flags, applied over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen` or `ARBOR_LISTEN`.
    pub listen: Option<String>,
    /// `--data-dir` or `ARBOR_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
}

impl AgentConfig {
    /// Reads, parses and validates a config file, then applies overrides.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: ConfigFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        AgentConfig::from_file(file, base, path, overrides)
    }

    fn from_file(
        file: ConfigFile,
        base: &Path,
        path: &Path,
        overrides: &Overrides,
    ) -> Result<AgentConfig, ConfigError> {
        let invalid = |field: String, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            problem,
        };
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let listen_text = overrides
            .listen
            .clone()
            .or_else(|| env("ARBOR_LISTEN"))
            .unwrap_or_else(|| file.agent.listen.clone());
        let listen: SocketAddr = listen_text.parse().map_err(|e| {
            invalid(
                "agent.listen".into(),
                format!("{listen_text:?} is not host:port ({e})"),
            )
        })?;
        let data_dir = overrides
            .data_dir
            .clone()
            .or_else(|| env("ARBOR_DATA_DIR").map(PathBuf::from))
            .unwrap_or_else(|| file.agent.data_dir.clone());
        let mut datasets = Vec::new();
        for d in file.datasets {
            let d = dataset_config(d, base, path, &datasets)?;
            datasets.push(d);
        }
        let tls = file
            .agent
            .tls
            .as_ref()
            .map(|t| tls_config(t, base, path))
            .transpose()?;
        let auth = file
            .agent
            .auth
            .as_ref()
            .map(|a| auth_config(a, path))
            .transpose()?;
        let address = |field: &str, value: &Option<String>| match value {
            None => Ok(None),
            Some(a) => a.parse::<SocketAddr>().map(Some).map_err(|e| {
                invalid(
                    format!("agent.{field}"),
                    format!("{a:?} is not an address: {e}"),
                )
            }),
        };
        check_exposure(&file.agent, listen, auth.is_some(), tls.is_some())
            .map_err(|(field, problem)| invalid(field, problem))?;
        let metrics_listen = address("metrics_listen", &file.agent.metrics_listen)?;
        let health_listen = address("health_listen", &file.agent.health_listen)?;
        let mut syncs = Vec::new();
        for s in file.syncs {
            if syncs.iter().any(|j: &SyncJobConfig| j.name == s.name) {
                return Err(invalid(
                    format!("sync[{}]", s.name),
                    "two sync jobs have this name".into(),
                ));
            }
            syncs.push(sync_job(s, &datasets).map_err(|(f, p)| invalid(f, p))?);
        }
        Ok(AgentConfig {
            listen,
            request_timeout: Duration::from_secs(file.agent.request_timeout_secs.max(1)),
            max_concurrent_requests: file.agent.max_concurrent_requests.max(1),
            datasets,
            syncs,
            tombstone_retention: Duration::from_secs(
                file.agent.tombstone_retention_days.max(1) * 86_400,
            ),
            audit_log: file.agent.audit_log.map_or_else(
                || base.join(&data_dir).join("audit.jsonl"),
                |p| base.join(p),
            ),
            data_dir: base.join(data_dir),
            metrics_listen,
            health_listen,
            runs_retention: Duration::from_secs(
                file.agent.runs_retention_days.unwrap_or(90).max(1) * 86_400,
            ),
            max_runs_per_dataset: file
                .agent
                .max_runs_per_dataset
                .unwrap_or(DEFAULT_MAX_RUNS_PER_DATASET)
                .max(1),
            tls,
            auth,
            insecure: file.agent.insecure,
        })
    }
}

/// A config error at `field` of the file at `path`.
fn invalid_at(path: &Path) -> impl Fn(String, String) -> ConfigError + '_ {
    move |field, problem| ConfigError::Invalid {
        path: path.to_path_buf(),
        field,
        problem,
    }
}

/// `[agent.tls]`: the files read (relative to `base`) and checked: the key
/// matches the certificate, the CAs parse.
fn tls_config(t: &TlsSection, base: &Path, path: &Path) -> Result<TlsConfig, ConfigError> {
    let invalid = invalid_at(path);
    let read = |field: &str, p: &Path| {
        let p = base.join(p);
        std::fs::read(&p).map_err(|e| {
            invalid(
                format!("agent.tls.{field}"),
                format!("cannot read {}: {e}", p.display()),
            )
        })
    };
    let cert = read("cert", &t.cert)?;
    let key = read("key", &t.key)?;
    check_identity(&cert, &key).map_err(|e| invalid("agent.tls.key".into(), e))?;
    for (field, path) in [("client_ca", &t.client_ca), ("ca", &t.ca)] {
        if let Some(p) = path {
            certificates(&read(field, p)?).map_err(|e| {
                invalid(
                    format!("agent.tls.{field}"),
                    format!("{}: {e}", p.display()),
                )
            })?;
        }
    }
    if t.client_cert.is_some() || t.client_key.is_some() {
        let cc = read("client_cert", t.client_cert.as_deref().unwrap_or(&t.cert))?;
        let ck = read("client_key", t.client_key.as_deref().unwrap_or(&t.key))?;
        check_identity(&cc, &ck).map_err(|e| invalid("agent.tls.client_key".into(), e))?;
    }
    Ok(TlsConfig {
        cert,
        key,
        client_ca: t
            .client_ca
            .as_deref()
            .map(|p| read("client_ca", p))
            .transpose()?,
        ca: t.ca.as_deref().map(|p| read("ca", p)).transpose()?,
        client_identity: (
            read("client_cert", t.client_cert.as_deref().unwrap_or(&t.cert))?,
            read("client_key", t.client_key.as_deref().unwrap_or(&t.key))?,
        ),
    })
}

/// `[agent.auth]`: each principal recognisable (a certificate CN or a token
/// hash) and its roles known.
fn auth_config(a: &AuthSection, path: &Path) -> Result<crate::access::Auth, ConfigError> {
    let invalid = invalid_at(path);
    let mut principals = Vec::new();
    for (i, p) in a.principals.iter().enumerate() {
        let field = |f: &str| format!("agent.auth.principal[{i}].{f}");
        if p.cert_cn.is_none() && p.token_blake3.is_none() {
            return Err(invalid(
                field("name"),
                format!("{:?} needs cert_cn or token_blake3", p.name),
            ));
        }
        if let Some(h) = &p.token_blake3
            && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid(
                field("token_blake3"),
                "expected 64 hex digits (arbor auth hash-token)".into(),
            ));
        }
        let roles = p
            .roles
            .iter()
            .map(|r| crate::access::Role::parse(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(field("roles"), e))?;
        principals.push(crate::access::Principal {
            name: p.name.clone(),
            cert_cn: p.cert_cn.clone(),
            token_blake3: p.token_blake3.as_ref().map(|h| h.to_lowercase()),
            roles,
            datasets: p.datasets.clone(),
            max_calls_per_sec: p.max_calls_per_sec,
        });
    }
    Ok(crate::access::Auth::new(principals))
}

/// Refuses an agent others could drive: reachable from other machines
/// without principals, or with bearer tokens in plaintext. `Err`: the field
/// and the problem.
fn check_exposure(
    agent: &AgentSection,
    listen: SocketAddr,
    has_auth: bool,
    has_tls: bool,
) -> Result<(), (String, String)> {
    // Safe by default: an agent nobody may authenticate to stays on
    // this machine; tokens never cross a network in plaintext.
    if !has_auth && !agent.insecure && !listen.ip().is_loopback() {
        return Err((
            "agent.listen".into(),
            format!(
                "{listen} is reachable from other machines, but there is no [agent.auth]: \
                 anyone could drive this agent. Add principals ([agent.auth], with \
                 [agent.tls]), listen on 127.0.0.1, or set insecure = true for a trial"
            ),
        ));
    }
    let tokens = agent
        .auth
        .as_ref()
        .is_some_and(|a| a.principals.iter().any(|p| p.token_blake3.is_some()));
    if tokens && !has_tls && !agent.insecure && !listen.ip().is_loopback() {
        return Err((
            "agent.tls".into(),
            format!(
                "principals use bearer tokens and {listen} is reachable from other \
                 machines: tokens would cross the network in plaintext. Configure \
                 [agent.tls] (or set insecure = true for a trial)"
            ),
        ));
    }
    Ok(())
}

/// The certificates of a PEM file: at least one, each a parseable X.509
/// certificate.
fn certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| format!("not PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        x509_parser::parse_x509_certificate(&block.contents)
            .map_err(|e| format!("a CERTIFICATE block is not X.509: {e}"))?;
        out.push(block.contents);
    }
    if out.is_empty() {
        return Err("holds no PEM CERTIFICATE".into());
    }
    Ok(out)
}

/// A certificate chain and its private key: the key must be the one the
/// first certificate names (a mismatch fails every TLS handshake later,
/// after the agent already said it was listening).
fn check_identity(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), String> {
    let chain = certificates(cert_pem).map_err(|e| format!("the certificate {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| format!("the certificate: {e}"))?;
    let key_text =
        std::str::from_utf8(key_pem).map_err(|_| "the key is not PEM text".to_owned())?;
    let key = rcgen::KeyPair::from_pem(key_text)
        .map_err(|e| format!("the key is not a private key in PEM: {e}"))?;
    if rcgen::PublicKeyData::subject_public_key_info(&key) != cert.public_key().raw {
        return Err(format!(
            "the key does not belong to the certificate (subject {})",
            cert.subject()
        ));
    }
    Ok(())
}

/// Exactly one of a table and a query; a filter turns a table into a query.
fn relation(
    table: Option<String>,
    query: Option<String>,
    filter: Option<String>,
) -> Result<Relation, String> {
    match (table, query, filter) {
        (Some(t), None, None) => Ok(Relation::Table(t)),
        (Some(t), None, Some(f)) => Ok(Relation::Query(format!("SELECT * FROM {t} WHERE {f}"))),
        (None, Some(q), None) => Ok(Relation::Query(q)),
        (None, Some(_), Some(_)) => {
            Err("filter goes with table; put the condition in the query".into())
        }
        _ => Err("set exactly one of table and query".into()),
    }
}

/// The most connections a build may read over.
const MAX_BUILD_CONNECTIONS: u32 = 16;

/// Smallest `chunk_bytes`: a chunk smaller than this costs a statement per
/// handful of rows.
const MIN_CHUNK_BYTES: u64 = 64 << 10;

/// Validates a database section; `field` names a field of its dataset.
fn database(
    db: DatabaseSection,
    field: &dyn Fn(&str) -> String,
) -> Result<DatabaseConfig, (String, String)> {
    let url = match (db.url_env, db.url) {
        (Some(var), None) => std::env::var(&var).map_err(|_| {
            (
                field("source.url_env"),
                format!("environment variable {var} is not set"),
            )
        })?,
        (None, Some(u)) => u,
        _ => return Err((field("source"), "set exactly one of url_env and url".into())),
    };
    let defaults = ScanOptions::default();
    let build_connections = match db.build_connections {
        None => defaults.build_connections,
        Some(n @ 1..=MAX_BUILD_CONNECTIONS) => n,
        Some(n) => {
            return Err((
                field("source.build_connections"),
                format!("{n} is out of range: between 1 and {MAX_BUILD_CONNECTIONS}"),
            ));
        }
    };
    let chunk_bytes = match db.chunk_bytes {
        None => defaults.chunk_bytes,
        Some(n) if n >= MIN_CHUNK_BYTES => n,
        Some(n) => {
            return Err((
                field("source.chunk_bytes"),
                format!("{n} is too small: at least {MIN_CHUNK_BYTES}"),
            ));
        }
    };
    Ok(DatabaseConfig {
        url,
        relation: relation(db.table, db.query, db.filter).map_err(|p| (field("source"), p))?,
        options: ScanOptions {
            chunk_rows: db.chunk_rows.unwrap_or(defaults.chunk_rows).max(1),
            chunk_bytes,
            max_rows_per_sec: db.max_rows_per_sec.unwrap_or(0),
            statement_timeout: db
                .statement_timeout_secs
                .map_or(defaults.statement_timeout, |s| {
                    Duration::from_secs(s.max(1))
                }),
            build_connections,
            ..defaults
        },
    })
}

/// Reads a secret from exactly one of its `<prefix>secret_env`,
/// `<prefix>secret_file` and `<prefix>secret` fields; `None` if none is set.
fn read_secret(
    base: &Path,
    invalid: &dyn Fn(String, String) -> ConfigError,
    field: &dyn Fn(&str) -> String,
    prefix: &str,
    (env, file, inline): (&Option<String>, &Option<PathBuf>, &Option<String>),
) -> Result<Option<(Vec<u8>, String)>, ConfigError> {
    let name = |f: &str| field(&format!("{prefix}{f}"));
    let found = match (env, file, inline) {
        (None, None, None) => return Ok(None),
        (Some(var), None, None) => (
            std::env::var(var)
                .map_err(|_| {
                    invalid(
                        name("secret_env"),
                        format!("environment variable {var} is not set"),
                    )
                })?
                .into_bytes(),
            format!("${var}"),
        ),
        (None, Some(f), None) => {
            let f = base.join(f);
            let bytes = std::fs::read(&f).map_err(|e| {
                invalid(
                    name("secret_file"),
                    format!("cannot read {}: {e}", f.display()),
                )
            })?;
            (trim_newline(bytes), f.display().to_string())
        }
        (None, None, Some(s)) => (s.clone().into_bytes(), "the config file".into()),
        _ => {
            return Err(invalid(
                name("secret"),
                format!(
                    "set exactly one of {prefix}secret_env, {prefix}secret_file and {prefix}secret"
                ),
            ));
        }
    };
    if found.0.is_empty() {
        return Err(invalid(name("secret"), "the secret is empty".into()));
    }
    Ok(Some(found))
}

fn trim_newline(mut b: Vec<u8>) -> Vec<u8> {
    while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
        b.pop();
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        AgentConfig::load(&path, &Overrides::default())
    }

    const GOOD: &str = r#"
        [agent]
        data_dir = "data"
        [[dataset]]
        name = "customers"
        secret = "s3cret-value"
        source = { kind = "sqlite", path = "crm.db", table = "customers" }
        key = [{ source = "id", kind = "integer" }]
        columns = [{ source = "mail", name = "email", kind = "text" }]
    "#;

    #[test]
    fn a_good_file_loads_with_defaults() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7401");
        assert_eq!(c.datasets[0].mapping.columns()[0].canonical(), "email");
        let pg = GOOD.replace(
            r#"source = { kind = "sqlite", path = "crm.db", table = "customers" }"#,
            r#"source = { kind = "postgres", url = "postgres://u:pw-123@db/crm", table = "sales.customers", chunk_rows = 10 }"#,
        );
        let c = load(&pg).unwrap();
        assert!(matches!(&c.datasets[0].source,
            SourceConfig::Postgres(db) if db.options.chunk_rows == 10 && db.options.build_connections == 2));
        assert!(matches!(&c.datasets[0].source,
            SourceConfig::Postgres(db) if db.options.chunk_bytes == ScanOptions::default().chunk_bytes));
        let wide = pg.replace("chunk_rows = 10", "chunk_bytes = 1048576");
        assert!(matches!(&load(&wide).unwrap().datasets[0].source,
            SourceConfig::Postgres(db) if db.options.chunk_bytes == 1 << 20));
        let e = load(&pg.replace("chunk_rows = 10", "chunk_bytes = 100"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dataset[customers].source.chunk_bytes") && e.contains("at least 65536"),
            "{e}"
        );
        let three = pg.replace("chunk_rows = 10", "chunk_rows = 10, build_connections = 3");
        assert!(matches!(&load(&three).unwrap().datasets[0].source,
            SourceConfig::Postgres(db) if db.options.build_connections == 3));
        for bad in ["0", "17"] {
            let e = load(&pg.replace("chunk_rows = 10", &format!("build_connections = {bad}")))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("dataset[customers].source.build_connections")
                    && e.contains("between 1 and 16"),
                "{e}"
            );
        }
        assert!(
            !format!("{c:?}").contains("pw-123"),
            "passwords never printed"
        );
        assert!(c.data_dir.ends_with("data"));
        assert!(
            !format!("{c:?}").contains("s3cret-value"),
            "secrets never printed"
        );
    }

    #[test]
    fn mistakes_are_named() {
        let typo = GOOD.replace("data_dir", "datadir");
        let e = load(&typo).unwrap_err().to_string();
        assert!(e.contains("datadir"), "{e}");
        let two_secrets = GOOD.replace(
            "secret = \"s3cret-value\"",
            "secret = \"a\"\nsecret_env = \"X\"",
        );
        let e = load(&two_secrets).unwrap_err().to_string();
        assert!(
            e.contains("dataset[customers].secret") && e.contains("exactly one"),
            "{e}"
        );
        let unset = GOOD.replace(
            "secret = \"s3cret-value\"",
            "secret_env = \"ARBOR_TEST_UNSET_SECRET_VAR\"",
        );
        let e = load(&unset).unwrap_err().to_string();
        assert!(e.contains("ARBOR_TEST_UNSET_SECRET_VAR is not set"), "{e}");
        let bad_kind = GOOD.replace("kind = \"text\"", "kind = \"string\"");
        assert!(load(&bad_kind).unwrap_err().to_string().contains("string"));
        let bad_listen = GOOD.replace("[agent]", "[agent]\nlisten = \"nowhere\"");
        assert!(
            load(&bad_listen)
                .unwrap_err()
                .to_string()
                .contains("agent.listen")
        );
    }

    #[test]
    fn normalised_keys_load_and_refuse_repairs() {
        let folded = GOOD.replace(
            r#"key = [{ source = "id", kind = "integer" }]"#,
            r#"key = [{ source = "id", kind = "text", transform = { unicode = "nfc", trim_end = true, case = "lower" } }]"#,
        );
        let c = load(&folded).unwrap();
        assert!(c.datasets[0].mapping.normalises_keys());
        assert_eq!(
            c.datasets[0].mapping.schema().key()[0].form.as_deref(),
            Some("nfc+trim_end+lower")
        );
        let e = load(&folded.replace("[[dataset]]", "[[dataset]]\nallow_repairs = true"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dataset[customers].allow_repairs") && e.contains("keys as stored"),
            "{e}"
        );
        let e = load(&folded.replace("trim_end = true", "empty_as_null = true"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("only unicode, trim, trim_end and case"), "{e}");
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// Whatever a config file holds, loading it returns a config or an
        /// error naming the field; never a panic. Inputs mix the lines of
        /// a good file, lines with their values replaced, and noise.
        #[test]
        fn any_config_text_is_loaded_or_refused(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(GOOD.lines().map(str::to_owned).collect::<Vec<_>>()),
                    (
                        proptest::sample::select(vec![
                            "listen", "data_dir", "chunk_rows", "chunk_bytes", "secret", "name",
                            "key", "columns", "capture", "transform", "max_skew_secs",
                            "allow_repairs", "build_connections",
                        ]),
                        proptest::sample::select(vec![
                            "0", "-1", "18446744073709551616", "\"\"", "\"x\"", "[]", "{}",
                            "true", "1e999", "{ kind = \"text\" }", "[{ source = \"id\" }]",
                            "{ mode = \"logical\" }", "{ unicode = \"nfd\" }",
                        ]),
                    )
                        .prop_map(|(k, v)| format!("{k} = {v}")),
                    proptest::sample::select(vec![
                        "[agent]".to_owned(), "[[dataset]]".to_owned(), "[[sync]]".to_owned(),
                        "[agent.tls]".to_owned(), "=".to_owned(), "\u{0}".to_owned(),
                    ]),
                    ".{0,20}",
                ],
                0..16,
            ),
        ) {
            let _ = load(&lines.join("\n"));
        }
    }
}
