//! Synchronisation between two agents' datasets, driven from the client:
//! compare, plan under a policy, (dry run or) execute, verify.
//!
//! ```text
//!   compare (digests only) ─▶ drifting keys, with each side's digest
//!        │
//!        ▼  FetchRecords: values of the rows the policy needs, nothing else
//!   plan: per key, writes to the source and/or the target, each carrying
//!        │ the digest that side had, or an unresolved conflict
//!        ▼  batches, throttled, retried on transient errors
//!   ApplyChanges on each side: conditional writes, journalled per batch
//!        │
//!        ▼
//!   compare again: the roots match, or the report says what is left
//! ```
//!
//! Policies:
//!
//! * **report**: the drift is listed; nothing is fetched or written.
//! * **one_way** from the source of truth: missing and changed rows are
//!   written to the target; rows only on the target are deleted, kept or
//!   reported (`--extra`).
//! * **two_way**: a row on one side only is copied to the other, unless the
//!   other side's change capture saw it deleted (a tombstone in its index):
//!   then the delete propagates. A delete is never inferred from absence
//!   alone. A row changed on
//!   both sides is settled by the rule: `lww` (the greater value of a version
//!   or updated_at column wins; a tie is left unresolved), `priority` (one
//!   side wins), `ownership` (per column, its owning side's value; a fallback
//!   rule for unowned columns; the merged row is written wherever it
//!   differs) or `manual` (reported, never guessed).
//!
//! Each batch carries the run id and its number, so a retry after a lost
//! reply or an agent restart is answered from that agent's journal (or
//! finds its writes already applied): nothing is applied twice. Every write
//! is conditional on the digest its side had at plan time, so a row edited
//! between plan and execute is left alone and reported as a conflict.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arbor_record::{Digest, Value};
use arbor_sync::repair::SHARE_MIN_ROWS;
use arbor_sync::{CompareOptions, DriftKind, compare_collect};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::grpc::client::{GrpcPeer, MAX_MESSAGE_BYTES, RetryPolicy, is_transient};
use crate::proto::v1 as pb;
use crate::proto::v1::repair_service_client::RepairServiceClient;
use crate::wire;
use arbor_agent::report::display_key;

pub use arbor_sync::policy::{
    Clock, DEFAULT_MAX_SKEW, DeleteOutcome, Extra, Policy, Rule, Side, parse_policy, parse_rule,
    parse_side, settle, settle_delete,
};

/// Writes per batch when a job, a request or the CLI names none.
pub const DEFAULT_BATCH: usize = arbor_sync::repair::DEFAULT_BATCH;

/// How long a batch is retried while its agent is unreachable, by default
/// (long enough for an agent restart and its reindex).
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(60);

/// A sync job.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Source agent, `http://host:port`.
    pub source: String,
    /// Target agent.
    pub target: String,
    /// Dataset name on the source.
    pub dataset: String,
    /// Dataset name on the target.
    pub target_dataset: String,
    /// The policy.
    pub policy: Policy,
    /// Writes per batch (one transaction on the written side).
    pub batch: usize,
    /// Rows per second, 0 for no throttle.
    pub max_rows_per_sec: u64,
    /// How long a batch is retried while its agent is unreachable.
    pub retry_for: Duration,
    /// Only these canonical keys (settling one conflict); `None`: all.
    pub only_keys: Option<std::collections::HashSet<Vec<u8>>>,
    /// How far in the future an `lww` time may lie before it is reported
    /// rather than trusted.
    pub max_skew: Duration,
    /// The largest share of a side's records one run may update or delete
    /// (updates and deletes; inserts do not count); 1 allows anything.
    pub max_share: f64,
}

/// The default of [`SyncOptions::max_share`]: half of a side's records.
pub const DEFAULT_MAX_SHARE: f64 = arbor_sync::repair::DEFAULT_MAX_SHARE;

/// What a planned action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Make the row hold the values (insert or update).
    Upsert,
    /// Remove the row.
    Delete,
    /// Leave a target-only row (one_way `--extra keep`).
    Keep,
    /// List the drift, write nothing.
    Report,
    /// No rule settled it: a person decides (`sync conflicts`).
    Unresolved,
}

impl ActionKind {
    /// Its name in reports and plan files.
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::Upsert => "upsert",
            ActionKind::Delete => "delete",
            ActionKind::Keep => "keep",
            ActionKind::Report => "report",
            ActionKind::Unresolved => "unresolved",
        }
    }

    /// Whether it writes to a system.
    pub fn writes(self) -> bool {
        matches!(self, ActionKind::Upsert | ActionKind::Delete)
    }
}

impl std::fmt::Display for ActionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// Why an action is planned: the drift behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// Only the source has the key.
    MissingOnTarget,
    /// Only the target has the key (two_way).
    MissingOnSource,
    /// Only the target has the key (one_way).
    OnlyOnTarget,
    /// Both have it, with different values.
    Changed,
    /// The target's capture saw it deleted; the source has it.
    DeletedOnTarget,
    /// The source's capture saw it deleted; the target has it.
    DeletedOnSource,
    /// From a saved plan (the drift is not compared again).
    Planned,
}

impl Why {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Why::MissingOnTarget => "missing_on_target",
            Why::MissingOnSource => "missing_on_source",
            Why::OnlyOnTarget => "only_on_target",
            Why::Changed => "changed",
            Why::DeletedOnTarget => "deleted_on_target",
            Why::DeletedOnSource => "deleted_on_source",
            Why::Planned => "planned",
        }
    }
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// One planned action.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// What it does.
    pub action: ActionKind,
    /// Where it writes.
    pub side: Side,
    /// Why.
    pub drift: Why,
    /// The key, human form.
    pub key: String,
    /// Canonical key bytes, hex.
    pub canonical_key: String,
    /// For `unresolved`: why no rule settled it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The SQL the written side would run (dry run only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    #[serde(skip)]
    key_bytes: Vec<u8>,
    #[serde(skip)]
    expected: Option<Digest>,
    #[serde(skip)]
    values: Option<Vec<Value>>,
}

impl Action {
    fn writes(&self) -> bool {
        self.action.writes()
    }

    /// The write a sink runs for this action.
    fn write(&self) -> Result<arbor_source::sink::Write, SyncError> {
        let key = arbor_record::decode_tuple(&self.key_bytes)
            .map_err(|e| SyncError::Invalid(format!("key {}: {e}", self.key)))?;
        let change = match (self.action, &self.values) {
            (ActionKind::Delete, _) => arbor_source::sink::Change::Delete,
            (_, Some(values)) => arbor_source::sink::Change::Upsert(arbor_record::Record::new(
                key.clone(),
                values.clone(),
            )),
            (_, None) => {
                return Err(SyncError::Invalid(format!(
                    "key {}: an upsert without values",
                    self.key
                )));
            }
        };
        Ok(arbor_source::sink::Write {
            key,
            expected: self.expected,
            change,
        })
    }

    fn wire(&self) -> pb::PlannedWrite {
        pb::PlannedWrite {
            canonical_key: self.key_bytes.clone(),
            delete: self.action == ActionKind::Delete,
            values: self
                .values
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(wire::wire_value)
                .collect(),
            expected_digest: self.expected.map(|d| d.0.to_vec()).unwrap_or_default(),
        }
    }
}

/// A plan saved for review and later execution (`arbor sync plan --out`):
/// exactly these writes run, each still conditional on the digest seen here.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanFile {
    /// Format version (1).
    pub version: u32,
    /// The run id the execution journals under.
    pub run_id: String,
    /// Source agent.
    pub source: String,
    /// Target agent.
    pub target: String,
    /// Dataset on the source.
    pub dataset: String,
    /// Dataset on the target.
    pub target_dataset: String,
    /// Hashing key id (hex) of the compare whose digests the writes expect;
    /// empty in plans written before key rotation existed.
    #[serde(default)]
    pub key_id: String,
    /// The writes.
    pub writes: Vec<PlanEntry>,
}

fn target_side() -> Side {
    Side::Target
}

/// One write of a saved plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanEntry {
    /// `upsert` or `delete`.
    pub action: String,
    /// The side written (default: the target).
    #[serde(default = "target_side")]
    pub side: Side,
    /// The drift kind behind it.
    pub drift: String,
    /// The key, human form.
    pub key: String,
    /// Canonical key bytes, hex.
    pub canonical_key: String,
    /// The written side's row digest at plan time, hex (absent: no row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_digest: Option<String>,
    /// New values, canonical column order (upserts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<arbor_record::TypedValue>>,
}

impl PlanFile {
    /// The plan's writes, for saving.
    pub fn new(opts: &SyncOptions, report: &SyncReport, actions: &[Action]) -> PlanFile {
        PlanFile {
            version: 1,
            run_id: report.run_id.clone(),
            key_id: report.key_id.clone(),
            source: opts.source.clone(),
            target: opts.target.clone(),
            dataset: opts.dataset.clone(),
            target_dataset: opts.target_dataset.clone(),
            writes: actions
                .iter()
                .filter(|a| a.writes())
                .map(|a| PlanEntry {
                    action: a.action.name().to_owned(),
                    side: a.side,
                    drift: a.drift.name().to_owned(),
                    key: a.key.clone(),
                    canonical_key: a.canonical_key.clone(),
                    expected_digest: a.expected.map(|d| hex::encode(d.0)),
                    values: a
                        .values
                        .as_ref()
                        .map(|v| v.iter().map(arbor_record::TypedValue::from_value).collect()),
                })
                .collect(),
        }
    }

    /// The saved writes as actions; errors name the entry.
    pub fn actions(&self) -> Result<Vec<Action>, String> {
        if self.version != 1 {
            return Err(format!(
                "plan version {} (this arbor reads 1)",
                self.version
            ));
        }
        self.writes
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let at = |what: String| format!("writes[{i}] ({}): {what}", e.key);
                let action = match e.action.as_str() {
                    "upsert" => ActionKind::Upsert,
                    "delete" => ActionKind::Delete,
                    other => return Err(at(format!("unknown action {other:?}"))),
                };
                let key_bytes = hex::decode(&e.canonical_key).map_err(|x| at(x.to_string()))?;
                let expected = match &e.expected_digest {
                    None => None,
                    Some(h) => {
                        let b = hex::decode(h).map_err(|x| at(x.to_string()))?;
                        let d: [u8; 32] = b
                            .try_into()
                            .map_err(|_| at("expected_digest is not 32 bytes".into()))?;
                        Some(Digest(d))
                    }
                };
                let values = match &e.values {
                    None if action == ActionKind::Upsert => {
                        return Err(at("an upsert without values".into()));
                    }
                    None => None,
                    Some(v) => Some(
                        v.iter()
                            .map(|t| t.to_value().map_err(|x| at(x.to_string())))
                            .collect::<Result<Vec<_>, _>>()?,
                    ),
                };
                Ok(Action {
                    action,
                    side: e.side,
                    drift: Why::Planned,
                    key: e.key.clone(),
                    canonical_key: e.canonical_key.clone(),
                    reason: None,
                    sql: None,
                    key_bytes,
                    expected,
                    values,
                })
            })
            .collect()
    }
}

/// What a sync run did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SyncReport {
    /// The run id (journal key on the written agents).
    pub run_id: String,
    /// Hashing key id (hex) the compare settled on: the writes' expected
    /// digests are keyed with it (they may not be the agents' first key
    /// during a key rotation).
    pub key_id: String,
    /// Whether writes were executed (false: a plan only).
    pub executed: bool,
    /// Drifting keys found.
    pub drift: u64,
    /// Planned upserts, both sides.
    pub planned_upserts: u64,
    /// Planned deletes.
    pub planned_deletes: u64,
    /// Planned writes to the source (two_way).
    pub planned_to_source: u64,
    /// Planned writes to the target.
    pub planned_to_target: u64,
    /// Target-only records left alone (`keep`/`report`).
    pub kept: u64,
    /// Changed-on-both rows no rule settled (`manual`, lww ties).
    pub unresolved: u64,
    /// Keys of the unresolved rows (human form), at most 100.
    pub unresolved_keys: Vec<String>,
    /// Unresolved rows queued for a person in the source agent (`arbor
    /// sync conflicts`), by one-shot runs that executed.
    #[serde(default)]
    pub queued: u64,
    /// Keys a side no longer had when its values were fetched.
    pub vanished: u64,
    /// Writes applied.
    pub applied: u64,
    /// Writes found already applied (a replay).
    pub already_applied: u64,
    /// Writes skipped because the row changed since the plan.
    pub conflicts: u64,
    /// Batches answered from an agent's journal.
    pub replayed_batches: u64,
    /// Keys of the conflicts (human form), at most 100.
    pub conflict_keys: Vec<String>,
    /// Drift left after the run (the verifying compare).
    pub drift_after: Option<u64>,
    /// Wall time, milliseconds.
    pub elapsed_ms: u64,
    /// Of which: the planning compare.
    pub compare_ms: u64,
    /// Of which: fetching values.
    pub fetch_ms: u64,
    /// Of which: the batches' writes.
    pub write_ms: u64,
    /// Of which: the verifying compare.
    pub verify_ms: u64,
}

impl From<&SyncReport> for pb::SyncReport {
    fn from(r: &SyncReport) -> pb::SyncReport {
        pb::SyncReport {
            run_id: r.run_id.clone(),
            key_id: r.key_id.clone(),
            executed: r.executed,
            drift: r.drift,
            planned_upserts: r.planned_upserts,
            planned_deletes: r.planned_deletes,
            planned_to_source: r.planned_to_source,
            planned_to_target: r.planned_to_target,
            kept: r.kept,
            unresolved: r.unresolved,
            unresolved_keys: r.unresolved_keys.clone(),
            queued: r.queued,
            vanished: r.vanished,
            applied: r.applied,
            already_applied: r.already_applied,
            conflicts: r.conflicts,
            replayed_batches: r.replayed_batches,
            conflict_keys: r.conflict_keys.clone(),
            drift_after: r.drift_after,
            elapsed_ms: r.elapsed_ms,
            compare_ms: r.compare_ms,
            fetch_ms: r.fetch_ms,
            write_ms: r.write_ms,
            verify_ms: r.verify_ms,
        }
    }
}

/// Why a sync run failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The compare failed.
    #[error("compare failed: {0}")]
    Compare(String),
    /// An agent refused or failed a call.
    #[error("{agent}: {message}")]
    Agent {
        /// Which agent.
        agent: String,
        /// Its status message and code.
        message: String,
    },
    /// The job cannot run as configured.
    #[error("{0}")]
    Invalid(String),
}

fn repair_client(
    address: &str,
) -> Result<RepairServiceClient<crate::grpc::client::Authed>, SyncError> {
    let endpoint = crate::grpc::client::endpoint(address).map_err(|message| SyncError::Agent {
        agent: address.to_owned(),
        message,
    })?;
    Ok(
        RepairServiceClient::new(crate::grpc::client::authed(endpoint.connect_lazy()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
}

fn agent_err(agent: &str, s: &tonic::Status) -> SyncError {
    SyncError::Agent {
        agent: agent.to_owned(),
        message: format!("{} ({:?})", s.message(), s.code()),
    }
}

/// Values fetched from one side: by canonical key (`None`: absent), and
/// the canonical names of the value columns.
#[derive(Debug, Default)]
pub struct Fetched {
    rows: HashMap<Vec<u8>, Option<Vec<Value>>>,
    /// Absent rows whose delete that side's change capture saw, and when
    /// (µs since the Unix epoch).
    deleted: HashMap<Vec<u8>, i64>,
    /// Present rows an incremental change last wrote, and when.
    changed: HashMap<Vec<u8>, i64>,
    columns: Vec<String>,
}

impl Fetched {
    fn add(
        &mut self,
        key: Vec<u8>,
        values: Option<Vec<Value>>,
        deleted_at_us: i64,
        changed_at_us: i64,
    ) {
        if changed_at_us > 0 {
            self.changed.insert(key.clone(), changed_at_us);
        }
        if values.is_none() && deleted_at_us > 0 {
            self.deleted.insert(key.clone(), deleted_at_us);
        }
        self.rows.insert(key, values);
    }
}

/// One batch of planned writes for one side.
pub struct Batch<'a> {
    /// The run the journal files it under.
    pub run_id: &'a str,
    /// Its number in the run (for logs).
    pub number: u64,
    /// The writes.
    pub writes: &'a [&'a Action],
    /// Render each write's SQL instead of running it.
    pub dry_run: bool,
    /// The hashing key of the plan's compare; `None`: the side's current one.
    pub key_id: Option<arbor_record::KeyId>,
}

/// What became of one write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Written.
    Applied,
    /// The row already was as planned.
    AlreadyApplied,
    /// The row changed since the plan: left alone.
    Conflict,
    /// A dry run: the SQL it would run.
    Planned(String),
}

/// What one batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Per write, in order.
    pub outcomes: Vec<BatchOutcome>,
    /// Whether every write's outcome came from the journal.
    pub replayed: bool,
}

/// The two sides of a sync run: how the run compares them, reads their
/// values and writes their repairs. [`Sides`] holds each side in this
/// process (no gRPC) or behind an agent.
pub trait SyncSides: Sync {
    /// How errors name a side (its agent).
    fn name(&self, side: Side) -> &str;

    /// Compares the two sides now: the drift, the hashing key id the
    /// compare settled on (hex; its digests are keyed with it), and each
    /// side's record count.
    fn drift(&self) -> impl Future<Output = Result<Compared, SyncError>> + Send;

    /// The values of these keys on `side`, as stored.
    fn fetch(
        &self,
        side: Side,
        keys: Vec<Vec<u8>>,
    ) -> impl Future<Output = Result<Fetched, SyncError>> + Send;

    /// Applies (or renders) one batch on `side`.
    fn apply(
        &self,
        side: Side,
        batch: Batch<'_>,
    ) -> impl Future<Output = Result<Applied, SyncError>> + Send;
}

/// Where one side of a sync run is.
#[derive(Clone)]
pub enum SideAt {
    /// A dataset of this process, through an agent's [`Repairs`] (no
    /// gRPC: an agent's own side of a job or a Reconcile).
    ///
    /// [`Repairs`]: arbor_agent::repair::Repairs
    Local {
        /// The agent's repair machinery.
        repairs: arbor_agent::repair::Repairs,
        /// The dataset.
        dataset: String,
    },
    /// A dataset of an agent reached over gRPC.
    Remote {
        /// The agent, `http://host:port`.
        agent: String,
        /// The dataset.
        dataset: String,
    },
}

impl SideAt {
    fn name(&self) -> &str {
        match self {
            SideAt::Local { dataset, .. } => dataset,
            SideAt::Remote { agent, .. } => agent,
        }
    }
}

/// The two sides of a sync run, each in this process or behind an agent.
pub struct Sides {
    source: SideAt,
    target: SideAt,
    /// How long a remote side is waited for (calls and batches retried).
    retry_for: Duration,
}

impl Sides {
    /// These sides.
    pub fn new(source: SideAt, target: SideAt, retry_for: Duration) -> Sides {
        Sides {
            source,
            target,
            retry_for,
        }
    }

    /// Both sides behind the agents `opts` names.
    pub fn remote(opts: &SyncOptions) -> Sides {
        Sides::new(
            SideAt::Remote {
                agent: opts.source.clone(),
                dataset: opts.dataset.clone(),
            },
            SideAt::Remote {
                agent: opts.target.clone(),
                dataset: opts.target_dataset.clone(),
            },
            opts.retry_for,
        )
    }

    fn at(&self, side: Side) -> &SideAt {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }
}

fn local_err(dataset: &str, e: &arbor_agent::error::OpError) -> SyncError {
    SyncError::Agent {
        agent: format!("(this process) {dataset}"),
        message: arbor_agent::report::error_chain(e),
    }
}

/// The index of a local side's dataset, if it may be compared now.
/// Waits while a local dataset is being indexed (an agent that just
/// started catches up with its system first), as a remote side is waited
/// for through its retries, for at most `retry_for`.
async fn local_index(
    repairs: &arbor_agent::repair::Repairs,
    dataset: &str,
    retry_for: Duration,
) -> Result<std::sync::Arc<arbor_index::Index>, SyncError> {
    let deadline = Instant::now() + retry_for;
    loop {
        match repairs.state().comparable(dataset) {
            Ok(ds) => return Ok(ds.index()),
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(LOCAL_WAIT).await;
            }
            Err(e) => return Err(local_err(dataset, &e)),
        }
    }
}

/// Pause between looks at a local side that is still being indexed.
const LOCAL_WAIT: Duration = Duration::from_millis(100);

fn peer_err(e: impl std::error::Error) -> SyncError {
    SyncError::Compare(arbor_agent::report::error_chain(&e))
}

impl SyncSides for Sides {
    fn name(&self, side: Side) -> &str {
        self.at(side).name()
    }

    async fn drift(&self) -> Result<Compared, SyncError> {
        // A side that restarted mid-run is back only once it caught up with
        // its system: wait for it as long as writes are retried.
        let retry = RetryPolicy::spanning(self.retry_for);
        let remote =
            |agent: &str, dataset: &str| GrpcPeer::new(agent, dataset, retry).map_err(peer_err);
        use arbor_sync::LocalPeer;
        match (&self.source, &self.target) {
            (
                SideAt::Local { repairs, dataset },
                SideAt::Local {
                    repairs: other,
                    dataset: other_dataset,
                },
            ) => {
                let (l, r) = (
                    local_index(repairs, dataset, self.retry_for).await?,
                    local_index(other, other_dataset, self.retry_for).await?,
                );
                let l = LocalPeer::new(&l, dataset.clone()).map_err(peer_err)?;
                let r = LocalPeer::new(&r, other_dataset.clone()).map_err(peer_err)?;
                compared(&l, &r).await
            }
            (
                SideAt::Local { repairs, dataset },
                SideAt::Remote {
                    agent,
                    dataset: theirs,
                },
            ) => {
                let l = local_index(repairs, dataset, self.retry_for).await?;
                let l = LocalPeer::new(&l, dataset.clone()).map_err(peer_err)?;
                compared(&l, &remote(agent, theirs)?).await
            }
            (
                SideAt::Remote {
                    agent,
                    dataset: theirs,
                },
                SideAt::Local { repairs, dataset },
            ) => {
                let r = local_index(repairs, dataset, self.retry_for).await?;
                let r = LocalPeer::new(&r, dataset.clone()).map_err(peer_err)?;
                compared(&remote(agent, theirs)?, &r).await
            }
            (
                SideAt::Remote { agent, dataset },
                SideAt::Remote {
                    agent: other,
                    dataset: other_dataset,
                },
            ) => compared(&remote(agent, dataset)?, &remote(other, other_dataset)?).await,
        }
    }

    async fn fetch(&self, side: Side, keys: Vec<Vec<u8>>) -> Result<Fetched, SyncError> {
        if keys.is_empty() {
            return Ok(Fetched::default());
        }
        match self.at(side).clone() {
            SideAt::Remote { agent, dataset } => fetch_remote(&agent, &dataset, keys).await,
            SideAt::Local { repairs, dataset } => fetch_local(repairs, dataset, keys).await,
        }
    }

    async fn apply(&self, side: Side, batch: Batch<'_>) -> Result<Applied, SyncError> {
        match self.at(side).clone() {
            SideAt::Remote { agent, dataset } => {
                apply_remote(&agent, &dataset, self.retry_for, batch).await
            }
            SideAt::Local { repairs, dataset } => {
                apply_local(repairs, dataset, self.retry_for, batch).await
            }
        }
    }
}

async fn fetch_remote(
    agent: &str,
    dataset: &str,
    keys: Vec<Vec<u8>>,
) -> Result<Fetched, SyncError> {
    let mut out = Fetched::default();
    let mut client = repair_client(agent)?;
    for chunk in keys.chunks(arbor_agent::repair::MAX_FETCH_KEYS) {
        let mut stream = client
            .fetch_records(pb::FetchRecordsRequest {
                dataset: dataset.to_owned(),
                canonical_keys: chunk.to_vec(),
                // Written as the source holds them; transforms shape
                // comparison only.
                stored: true,
            })
            .await
            .map_err(|s| agent_err(agent, &s))?
            .into_inner();
        while let Some(batch) = stream.message().await.map_err(|s| agent_err(agent, &s))? {
            if out.columns.is_empty() {
                out.columns = batch.columns;
            }
            for r in batch.records {
                let values = if r.found {
                    Some(
                        r.values
                            .iter()
                            .map(|v| wire::typed_value("values", v))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|m| SyncError::Agent {
                                agent: agent.to_owned(),
                                message: m.to_string(),
                            })?,
                    )
                } else {
                    None
                };
                out.add(r.canonical_key, values, r.deleted_at_us, r.changed_at_us);
            }
        }
    }
    Ok(out)
}

async fn fetch_local(
    repairs: arbor_agent::repair::Repairs,
    dataset: String,
    keys: Vec<Vec<u8>>,
) -> Result<Fetched, SyncError> {
    tokio::task::spawn_blocking(move || {
        let mut out = Fetched {
            columns: repairs
                .config(&dataset)
                .map_err(|s| local_err(&dataset, &s))?
                .mapping
                .columns()
                .iter()
                .map(|c| c.canonical().to_owned())
                .collect(),
            ..Fetched::default()
        };
        let keys = keys
            .iter()
            .map(|k| arbor_record::decode_tuple(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SyncError::Invalid(e.to_string()))?;
        repairs
            .fetch(&dataset, &keys, true, |rows| {
                for r in rows {
                    out.add(r.canonical_key, r.values, r.deleted_at_us, r.changed_at_us);
                }
                Ok(())
            })
            .map_err(|s| match s {
                Some(s) => local_err(&dataset, &s),
                None => SyncError::Invalid("the fetch stopped".into()),
            })?;
        Ok(out)
    })
    .await
    .map_err(|e| SyncError::Invalid(format!("fetch task failed: {e}")))?
}

async fn apply_remote(
    agent: &str,
    dataset: &str,
    retry_for: Duration,
    batch: Batch<'_>,
) -> Result<Applied, SyncError> {
    let mut client = repair_client(agent)?;
    let request = pb::ApplyChangesRequest {
        dataset: dataset.to_owned(),
        run_id: batch.run_id.to_owned(),
        batch: batch.number,
        writes: batch.writes.iter().map(|a| a.wire()).collect(),
        dry_run: batch.dry_run,
        key_id: batch.key_id.map(|k| k.0.to_vec()).unwrap_or_default(),
    };
    let deadline = Instant::now() + retry_for;
    let mut backoff = Duration::from_millis(100);
    let resp = loop {
        match client.apply_changes(request.clone()).await {
            Ok(r) => break r.into_inner(),
            Err(s) if is_transient(&s) && Instant::now() < deadline => {
                warn!(agent, batch = batch.number, code = ?s.code(), error = %s.message(), "batch failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(s) => return Err(agent_err(agent, &s)),
        }
    };
    Ok(Applied {
        outcomes: resp
            .results
            .into_iter()
            .map(|r| match pb::WriteOutcome::try_from(r.outcome) {
                Ok(pb::WriteOutcome::Applied) => BatchOutcome::Applied,
                Ok(pb::WriteOutcome::AlreadyApplied) => BatchOutcome::AlreadyApplied,
                Ok(pb::WriteOutcome::Planned) => BatchOutcome::Planned(r.sql),
                // Unknown outcomes count as conflicts: never as applied.
                _ => BatchOutcome::Conflict,
            })
            .collect(),
        replayed: resp.replayed,
    })
}

async fn apply_local(
    repairs: arbor_agent::repair::Repairs,
    dataset: String,
    retry_for: Duration,
    batch: Batch<'_>,
) -> Result<Applied, SyncError> {
    // Shared, not copied, by each attempt of the blocking task.
    let writes: std::sync::Arc<Vec<arbor_source::sink::Write>> = std::sync::Arc::new(
        batch
            .writes
            .iter()
            .map(|a| a.write())
            .collect::<Result<Vec<_>, _>>()?,
    );
    let key_id = batch.key_id;
    let (run_id, dry_run) = (batch.run_id.to_owned(), batch.dry_run);
    // A dataset being indexed refuses writes for now: waited for, as a
    // remote side's refusals are retried.
    let deadline = Instant::now() + retry_for;
    loop {
        let (repairs, name, writes, run_id) = (
            repairs.clone(),
            dataset.clone(),
            std::sync::Arc::clone(&writes),
            run_id.clone(),
        );
        let result =
            tokio::task::spawn_blocking(move || -> Result<Applied, arbor_agent::error::OpError> {
                let dataset = name;
                if dry_run {
                    let sql = repairs.render(&dataset, &writes, key_id)?;
                    return Ok(Applied {
                        outcomes: sql.into_iter().map(BatchOutcome::Planned).collect(),
                        replayed: false,
                    });
                }
                let (outcomes, replayed) = repairs.apply(&dataset, &run_id, &writes, key_id)?;
                Ok(Applied {
                    outcomes: outcomes
                        .into_iter()
                        .map(|o| match o {
                            arbor_agent::repair::RepairOutcome::Applied => BatchOutcome::Applied,
                            arbor_agent::repair::RepairOutcome::AlreadyApplied => {
                                BatchOutcome::AlreadyApplied
                            }
                            arbor_agent::repair::RepairOutcome::Conflict => BatchOutcome::Conflict,
                        })
                        .collect(),
                    replayed,
                })
            })
            .await
            .map_err(|e| SyncError::Invalid(format!("repair task failed: {e}")))?;
        match result {
            Ok(applied) => return Ok(applied),
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(LOCAL_WAIT).await;
            }
            Err(e) => return Err(local_err(&dataset, &e)),
        }
    }
}

/// What a compare of the two sides found.
#[derive(Debug, Clone, Default)]
pub struct Compared {
    /// The drift.
    pub drift: Vec<arbor_sync::Drift>,
    /// The hashing key id (hex) the compare settled on.
    pub key_id: String,
    /// Records on each side: source, target.
    pub rows: [u64; 2],
}

/// The drift between two peers, the key id the compare settled on, and
/// each side's record count.
async fn compared<L: arbor_sync::Peer, R: arbor_sync::Peer>(
    left: &L,
    right: &R,
) -> Result<Compared, SyncError> {
    let (drift, stats) = compare_collect(left, right, &CompareOptions::default())
        .await
        .map_err(|e| SyncError::Compare(arbor_agent::report::error_chain(&e)))?;
    let count = |d: &Option<arbor_index::Description>| d.as_ref().map_or(0, |d| d.count());
    Ok(Compared {
        key_id: stats
            .right_description
            .as_ref()
            .map(|d| d.key_id.to_string())
            .unwrap_or_default(),
        rows: [
            count(&stats.left_description),
            count(&stats.right_description),
        ],
        drift,
    })
}

/// The drift of a run: all of it, or only the keys the run settles.
async fn drift_of(opts: &SyncOptions, sides: &impl SyncSides) -> Result<Compared, SyncError> {
    let mut compared = sides.drift().await?;
    if let Some(only) = &opts.only_keys {
        compared.drift.retain(|d| only.contains(&d.key));
    }
    Ok(compared)
}

/// Refuses a plan that would update or delete more than `max_share` of a
/// side's records: a mass change is more often a wrong mapping or a wrong
/// source of truth than real drift. Inserts do not count (filling an empty
/// table is no risk to existing rows); `max_share` 1 allows anything.
fn check_share(actions: &[Action], rows: [u64; 2], max_share: f64) -> Result<(), SyncError> {
    for (side, rows) in [(Side::Source, rows[0]), (Side::Target, rows[1])] {
        let changed = actions
            .iter()
            .filter(|a| {
                a.side == side
                    && (a.action == ActionKind::Delete
                        || (a.action == ActionKind::Upsert && a.expected.is_some()))
            })
            .count() as u64;
        if rows >= SHARE_MIN_ROWS && changed as f64 > max_share * rows as f64 {
            return Err(SyncError::Invalid(format!(
                "the plan would update or delete {changed} of the {rows} records of the {side} \
                 ({:.1} %), more than the allowed share of {:.1} %: check the mapping and the \
                 source of truth, or allow more (--max-share, a job's max_share)",
                100.0 * changed as f64 / rows as f64,
                100.0 * max_share
            )));
        }
    }
    Ok(())
}

/// Compares and plans over gRPC (see [`plan_with`]).
pub async fn plan(
    opts: &SyncOptions,
    dry_run: bool,
) -> Result<(Vec<Action>, SyncReport), SyncError> {
    plan_with(opts, &Sides::remote(opts), dry_run).await
}

/// Compares and plans; fetches the values the plan writes. With `dry_run`
/// each written side renders its SQL.
pub async fn plan_with(
    opts: &SyncOptions,
    sides: &impl SyncSides,
    dry_run: bool,
) -> Result<(Vec<Action>, SyncReport), SyncError> {
    let started = Instant::now();
    let Compared {
        drift,
        key_id,
        rows,
    } = drift_of(opts, sides).await?;
    let mut report = SyncReport {
        run_id: arbor_agent::report::new_run_id(),
        key_id,
        drift: drift.len() as u64,
        compare_ms: started.elapsed().as_millis() as u64,
        ..SyncReport::default()
    };
    let two_way = matches!(opts.policy, Policy::TwoWay(_));
    if opts.policy == Policy::Report {
        let actions = listed(&drift);
        report.kept = actions.len() as u64;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        return Ok((actions, report));
    }
    let (from_source, from_target) = keys_to_fetch(&drift, two_way);
    let fetching = Instant::now();
    let mut source = sides.fetch(Side::Source, from_source).await?;
    let mut target = sides.fetch(Side::Target, from_target).await?;
    report.fetch_ms = fetching.elapsed().as_millis() as u64;
    if two_way
        && !source.columns.is_empty()
        && !target.columns.is_empty()
        && source.columns != target.columns
    {
        return Err(SyncError::Invalid(format!(
            "the two datasets name their columns differently ({:?} vs {:?})",
            source.columns, target.columns
        )));
    }
    let mut actions = decide(opts, &drift, &mut source, &mut target, &mut report);
    check_share(&actions, rows, opts.max_share)?;
    count_planned(&actions, &mut report);
    if dry_run {
        render_sql(opts, sides, &mut actions, report_key_id(&report)?).await?;
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok((actions, report))
}

/// A report plan: every drifting key listed, nothing fetched or written.
fn listed(drift: &[arbor_sync::Drift]) -> Vec<Action> {
    // Listed, never written: no values are fetched either.
    drift
        .iter()
        .map(|d| Action {
            action: ActionKind::Report,
            side: Side::Target,
            drift: match d.kind {
                DriftKind::MissingRight => Why::MissingOnTarget,
                DriftKind::MissingLeft => Why::OnlyOnTarget,
                DriftKind::Changed => Why::Changed,
            },
            key: display_key(&d.key),
            canonical_key: hex::encode(&d.key),
            reason: None,
            sql: None,
            key_bytes: d.key.clone(),
            expected: None,
            values: None,
        })
        .collect()
}

/// The keys whose values each side must hand over: (source, target).
fn keys_to_fetch(drift: &[arbor_sync::Drift], two_way: bool) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut from_source = Vec::new();
    let mut from_target = Vec::new();
    for d in drift {
        match d.kind {
            DriftKind::MissingRight => {
                from_source.push(d.key.clone());
                if two_way {
                    // Was it deleted on the target?
                    from_target.push(d.key.clone());
                }
            }
            DriftKind::MissingLeft if two_way => {
                from_target.push(d.key.clone());
                from_source.push(d.key.clone());
            }
            DriftKind::MissingLeft => {}
            DriftKind::Changed => {
                from_source.push(d.key.clone());
                if two_way {
                    from_target.push(d.key.clone());
                }
            }
        }
    }
    (from_source, from_target)
}

/// The action for each drifting key under the policy, from the values
/// both sides handed over; counts what could not be planned in `report`.
/// (Long on purpose: one match over drift kind and policy, so every rule
/// is read in one place.)
fn decide(
    opts: &SyncOptions,
    drift: &[arbor_sync::Drift],
    source: &mut Fetched,
    target: &mut Fetched,
    report: &mut SyncReport,
) -> Vec<Action> {
    let columns = if source.columns.is_empty() {
        target.columns.clone()
    } else {
        source.columns.clone()
    };
    // One clock for the whole plan: every lww time is judged against it.
    let clock = Clock::now(opts.max_skew);
    let mut actions = Vec::new();
    for d in drift {
        let base = |action: ActionKind, side: Side, drift: Why| Action {
            action,
            side,
            drift,
            key: display_key(&d.key),
            canonical_key: hex::encode(&d.key),
            reason: None,
            sql: None,
            key_bytes: d.key.clone(),
            expected: match side {
                Side::Source => d.left,
                Side::Target => d.right,
            },
            values: None,
        };
        let take = |f: &mut Fetched| f.rows.remove(&d.key).flatten();
        // Two-way: a key one side's capture saw deleted while the other side
        // holds it is settled by the rule (see `settle_delete`): the delete
        // is carried over, the row is copied back, or a person decides.
        if let (Policy::TwoWay(rule), DriftKind::MissingRight | DriftKind::MissingLeft) =
            (&opts.policy, d.kind)
        {
            let (tombs, rows, row_side) = match d.kind {
                DriftKind::MissingRight => (&*target, &*source, Side::Source),
                _ => (&*source, &*target, Side::Target),
            };
            let deleted_on = match row_side {
                Side::Source => Why::DeletedOnTarget,
                Side::Target => Why::DeletedOnSource,
            };
            if let Some(&deleted_at) = tombs.deleted.get(&d.key) {
                let Some(Some(row)) = rows.rows.get(&d.key) else {
                    report.vanished += 1;
                    continue;
                };
                let changed_at = rows.changed.get(&d.key).copied();
                match settle_delete(
                    rule, &columns, row_side, row, changed_at, deleted_at, &clock,
                ) {
                    Ok(DeleteOutcome::Delete) => {
                        actions.push(base(ActionKind::Delete, row_side, deleted_on));
                        continue;
                    }
                    // Copied to the deleting side below, like any one-sided row.
                    Ok(DeleteOutcome::KeepRow) => {}
                    Err(reason) => {
                        report.unresolved += 1;
                        if report.unresolved_keys.len() < 100 {
                            report.unresolved_keys.push(display_key(&d.key));
                        }
                        actions.push(Action {
                            reason: Some(reason.to_string()),
                            ..base(ActionKind::Unresolved, row_side, deleted_on)
                        });
                        continue;
                    }
                }
            }
        }
        match (d.kind, &opts.policy) {
            (_, Policy::Report) => unreachable!("report plans return above"),
            (DriftKind::MissingRight, _) => match take(source) {
                Some(v) => actions.push(Action {
                    values: Some(v),
                    ..base(ActionKind::Upsert, Side::Target, Why::MissingOnTarget)
                }),
                None => report.vanished += 1,
            },
            (DriftKind::MissingLeft, Policy::OneWay(extra)) => actions.push(base(
                match extra {
                    Extra::Delete => ActionKind::Delete,
                    Extra::Keep => ActionKind::Keep,
                    Extra::Report => ActionKind::Report,
                },
                Side::Target,
                Why::OnlyOnTarget,
            )),
            (DriftKind::MissingLeft, Policy::TwoWay(_)) => match take(target) {
                Some(v) => actions.push(Action {
                    values: Some(v),
                    ..base(ActionKind::Upsert, Side::Source, Why::MissingOnSource)
                }),
                None => report.vanished += 1,
            },
            (DriftKind::Changed, Policy::OneWay(_)) => match take(source) {
                Some(v) => actions.push(Action {
                    values: Some(v),
                    ..base(ActionKind::Upsert, Side::Target, Why::Changed)
                }),
                None => report.vanished += 1,
            },
            (DriftKind::Changed, Policy::TwoWay(rule)) => {
                let (Some(s), Some(t)) = (take(source), take(target)) else {
                    report.vanished += 1;
                    continue;
                };
                match settle(rule, &columns, &s, &t, &clock) {
                    Ok((to_source, to_target)) => {
                        if let Some(v) = to_source {
                            actions.push(Action {
                                values: Some(v),
                                ..base(ActionKind::Upsert, Side::Source, Why::Changed)
                            });
                        }
                        if let Some(v) = to_target {
                            actions.push(Action {
                                values: Some(v),
                                ..base(ActionKind::Upsert, Side::Target, Why::Changed)
                            });
                        }
                    }
                    Err(reason) => {
                        report.unresolved += 1;
                        if report.unresolved_keys.len() < 100 {
                            report.unresolved_keys.push(display_key(&d.key));
                        }
                        // Say which side's capture saw a change, rather
                        // than call every difference an edit on both.
                        let reason = match rule {
                            Rule::Manual => manual_reason(
                                source.changed.contains_key(&d.key),
                                target.changed.contains_key(&d.key),
                            ),
                            _ => reason.to_string(),
                        };
                        actions.push(Action {
                            reason: Some(reason),
                            ..base(ActionKind::Unresolved, Side::Target, Why::Changed)
                        });
                    }
                }
            }
        }
    }
    actions
}

/// Counts the planned actions into `report`.
fn count_planned(actions: &[Action], report: &mut SyncReport) {
    for a in actions {
        match a.action {
            ActionKind::Upsert => report.planned_upserts += 1,
            ActionKind::Delete => report.planned_deletes += 1,
            ActionKind::Keep | ActionKind::Report => report.kept += 1,
            _ => {}
        }
        if a.writes() {
            match a.side {
                Side::Source => report.planned_to_source += 1,
                Side::Target => report.planned_to_target += 1,
            }
        }
    }
}

/// A dry run: each written side renders the SQL of its writes.
async fn render_sql(
    opts: &SyncOptions,
    sides: &impl SyncSides,
    actions: &mut [Action],
    key_id: Option<arbor_record::KeyId>,
) -> Result<(), SyncError> {
    for side in [Side::Source, Side::Target] {
        let writing: Vec<usize> = (0..actions.len())
            .filter(|&i| actions[i].writes() && actions[i].side == side)
            .collect();
        if writing.is_empty() {
            continue;
        }
        let chunks: Vec<Vec<usize>> = {
            let refs: Vec<&Action> = writing.iter().map(|&i| &actions[i]).collect();
            let mut at = 0;
            batches(&refs, opts.batch.max(1))?
                .into_iter()
                .map(|b| {
                    let chunk = writing[at..at + b.len()].to_vec();
                    at += b.len();
                    chunk
                })
                .collect()
        };
        for chunk in &chunks {
            let refs: Vec<&Action> = chunk.iter().map(|&i| &actions[i]).collect();
            let applied = sides
                .apply(
                    side,
                    Batch {
                        run_id: "",
                        number: 0,
                        writes: &refs,
                        dry_run: true,
                        key_id,
                    },
                )
                .await?;
            let sql: Vec<Option<String>> = applied
                .outcomes
                .into_iter()
                .map(|o| match o {
                    BatchOutcome::Planned(sql) => Some(sql),
                    _ => None,
                })
                .collect();
            for (&i, sql) in chunk.iter().zip(sql) {
                actions[i].sql = sql;
            }
        }
    }
    Ok(())
}

/// Why `manual` left a differing row: which side's change capture saw it
/// written since that side's index was built.
fn manual_reason(source_changed: bool, target_changed: bool) -> String {
    match (source_changed, target_changed) {
        (true, true) => "manual: changed on both sides".into(),
        (true, false) => {
            "manual: changed on the source side; the target's row is as first indexed".into()
        }
        (false, true) => {
            "manual: changed on the target side; the source's row is as first indexed".into()
        }
        (false, false) => {
            "manual: the rows differ, and neither side's capture saw either written".into()
        }
    }
}

/// Bytes of writes per ApplyChanges request, about: half what a message
/// may hold, so a batch of wide rows never reaches the limit.
const APPLY_BATCH_BYTES: usize = MAX_MESSAGE_BYTES / 2;

/// Bytes a write adds to a request beside its own encoding (its field tag
/// and length), at most.
const WRITE_FRAMING_BYTES: usize = 8;

/// Room a request needs beside its writes (dataset, run id, key id,
/// framing).
const APPLY_REQUEST_OVERHEAD: usize = 64 << 10;

/// Splits writes into batches of at most `max` writes and about
/// [`APPLY_BATCH_BYTES`] each, so rows of any width are repaired without a
/// hand-tuned `--batch`. A write no request can carry is an error naming
/// its key.
fn batches<'a>(writing: &'a [&'a Action], max: usize) -> Result<Vec<&'a [&'a Action]>, SyncError> {
    use prost::Message;
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, a) in writing.iter().enumerate() {
        let size = a.wire().encoded_len() + WRITE_FRAMING_BYTES;
        if size + APPLY_REQUEST_OVERHEAD > MAX_MESSAGE_BYTES {
            return Err(SyncError::Invalid(format!(
                "the write of key {} is {size} bytes, more than one request may carry ({} bytes)",
                a.key, MAX_MESSAGE_BYTES
            )));
        }
        if i > start && (i - start >= max || bytes + size > APPLY_BATCH_BYTES) {
            out.push(&writing[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < writing.len() {
        out.push(&writing[start..]);
    }
    Ok(out)
}

/// Queues an executed two-way run's unresolved rows in the source agent,
/// where `arbor sync conflicts` lists them and `arbor sync resolve` settles
/// them; rows of the pair queued by earlier one-shot runs and now settled
/// leave the queue. Returns how many are queued.
pub async fn queue_unresolved(opts: &SyncOptions, actions: &[Action]) -> Result<u64, SyncError> {
    if !matches!(opts.policy, Policy::TwoWay(_)) {
        return Ok(0);
    }
    let endpoint =
        crate::grpc::client::endpoint(&opts.source).map_err(|message| SyncError::Agent {
            agent: opts.source.clone(),
            message,
        })?;
    let mut client = crate::proto::v1::admin_service_client::AdminServiceClient::new(
        crate::grpc::client::authed(endpoint.connect_lazy()),
    )
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let rows: Vec<pb::UnresolvedRow> = actions
        .iter()
        .filter(|a| a.action == ActionKind::Unresolved)
        .map(|a| pb::UnresolvedRow {
            key: a.key.clone(),
            canonical_key: a.canonical_key.clone(),
            reason: a.reason.clone().unwrap_or_default(),
        })
        .collect();
    let queued = client
        .queue_conflicts(pb::QueueConflictsRequest {
            dataset: opts.dataset.clone(),
            peer: opts.target.clone(),
            peer_dataset: opts.target_dataset.clone(),
            rows,
        })
        .await
        .map_err(|s| agent_err(&opts.source, &s))?
        .into_inner();
    Ok(queued.ids.len() as u64)
}

/// A hex key id as request bytes (empty stays empty: the agent's current key).
fn report_key_id(report: &SyncReport) -> Result<Option<arbor_record::KeyId>, SyncError> {
    if report.key_id.is_empty() {
        return Ok(None);
    }
    hex::decode(&report.key_id)
        .ok()
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(|b| Some(arbor_record::KeyId(b)))
        .ok_or_else(|| {
            SyncError::Invalid(format!("key id {:?} is not 16 hex digits", report.key_id))
        })
}

/// Executes a plan (each side's writes in batches), then compares again.
pub async fn execute(
    opts: &SyncOptions,
    actions: &[Action],
    report: SyncReport,
) -> Result<SyncReport, SyncError> {
    execute_with(opts, &Sides::remote(opts), actions, report).await
}

/// Executes a plan over `sides` (each side's writes in batches), then
/// compares again.
pub async fn execute_with(
    opts: &SyncOptions,
    sides: &impl SyncSides,
    actions: &[Action],
    mut report: SyncReport,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    report.executed = true;
    let key_id = report_key_id(&report)?;
    let mut written = 0u64;
    for side in [Side::Target, Side::Source] {
        let writing: Vec<&Action> = actions
            .iter()
            .filter(|a| a.writes() && a.side == side)
            .collect();
        if writing.is_empty() {
            continue;
        }
        for (n, chunk) in batches(&writing, opts.batch.max(1))?
            .into_iter()
            .enumerate()
        {
            let applied = sides
                .apply(
                    side,
                    Batch {
                        run_id: &report.run_id,
                        number: n as u64,
                        writes: chunk,
                        dry_run: false,
                        key_id,
                    },
                )
                .await?;
            if applied.replayed {
                report.replayed_batches += 1;
            }
            for (a, o) in chunk.iter().zip(&applied.outcomes) {
                match o {
                    BatchOutcome::Applied => report.applied += 1,
                    BatchOutcome::AlreadyApplied => report.already_applied += 1,
                    BatchOutcome::Conflict => {
                        report.conflicts += 1;
                        if report.conflict_keys.len() < 100 {
                            report.conflict_keys.push(a.key.clone());
                        }
                    }
                    BatchOutcome::Planned(_) => {}
                }
            }
            written += chunk.len() as u64;
            if opts.max_rows_per_sec > 0 {
                let due = Duration::from_secs_f64(written as f64 / opts.max_rows_per_sec as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
    report.write_ms = started.elapsed().as_millis() as u64;
    let verifying = Instant::now();
    report.drift_after = Some(drift_of(opts, sides).await?.drift.len() as u64);
    report.verify_ms = verifying.elapsed().as_millis() as u64;
    report.elapsed_ms += started.elapsed().as_millis() as u64;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(key: i64, bytes: usize) -> Action {
        Action {
            action: ActionKind::Upsert,
            side: Side::Target,
            drift: Why::Changed,
            key: key.to_string(),
            canonical_key: String::new(),
            reason: None,
            sql: None,
            key_bytes: arbor_record::tuple_bytes(&[Value::Integer(key.into())]),
            expected: None,
            values: Some(vec![Value::text("x".repeat(bytes))]),
        }
    }

    #[test]
    fn batches_are_bounded_in_writes_and_bytes() {
        let mb = 1 << 20;
        let actions: Vec<Action> = (0..10)
            .map(|i| upsert(i, if i < 6 { 3 * mb } else { 10 }))
            .collect();
        let refs: Vec<&Action> = actions.iter().collect();
        let sizes: Vec<usize> = batches(&refs, 500)
            .unwrap()
            .iter()
            .map(|b| b.len())
            .collect();
        // 3 MiB rows two at a time under 8 MiB; the small ones join the last.
        assert_eq!(sizes, vec![2, 2, 6]);
        let sizes: Vec<usize> = batches(&refs[6..], 3)
            .unwrap()
            .iter()
            .map(|b| b.len())
            .collect();
        assert_eq!(sizes, vec![3, 1]);
        let huge = [upsert(7, 17 * mb)];
        let refs: Vec<&Action> = huge.iter().collect();
        let e = batches(&refs, 500).unwrap_err().to_string();
        assert!(
            e.contains("key 7") && e.contains("more than one request may carry"),
            "{e}"
        );
    }
}
