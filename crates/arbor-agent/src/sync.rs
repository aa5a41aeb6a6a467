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

mod execute;
mod plan;
mod sides;

pub use execute::{WRITE_FRAMING_BYTES, execute_with};
pub use plan::plan_with;
pub use sides::{
    Applied, Batch, BatchOutcome, Compared, Fetched, InProcess, Remote, SideAt, Sides, SyncSides,
};

use std::time::Duration;

use arbor_record::{Digest, Value};
use serde::{Deserialize, Serialize};

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
    /// Canonical key bytes.
    #[serde(skip)]
    pub key_bytes: Vec<u8>,
    /// The digest the written side had at plan time (`None`: absent).
    #[serde(skip)]
    pub expected: Option<Digest>,
    /// The row's values for an upsert.
    #[serde(skip)]
    pub values: Option<Vec<Value>>,
    /// When the change it carries was made where it comes from (µs since
    /// the Unix epoch; see [`arbor_source::sink::Write::made_at_us`]).
    #[serde(skip)]
    pub made_at_us: Option<i64>,
}

impl Action {
    /// Whether it writes (upsert or delete).
    pub fn writes(&self) -> bool {
        self.action.writes()
    }

    /// The write a sink runs for this action.
    pub fn write(&self) -> Result<arbor_source::sink::Write, SyncError> {
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
            made_at_us: self.made_at_us,
        })
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
    /// When the change was made where it comes from, µs since the Unix
    /// epoch (absent: not known, or a plan saved before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made_at_us: Option<i64>,
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
                    made_at_us: a.made_at_us,
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
                    made_at_us: e.made_at_us,
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
