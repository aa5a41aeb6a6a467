//! One-way synchronisation from a source of truth to a target, driven from
//! the client: compare, plan, (dry run or) execute, verify.
//!
//! ```text
//!   compare (digests only) ─▶ plan: per drifting key an upsert or delete,
//!        │                    with the digest the target row had
//!        ▼
//!   FetchRecords from the source (values, only what the plan writes)
//!        │
//!        ▼  batches, throttled, retried on transient errors
//!   ApplyChanges on the target: conditional writes, journalled per batch
//!        │
//!        ▼
//!   compare again: the roots match, or the report says what is left
//! ```
//!
//! Each batch carries the run id and its number, so a retry after a lost
//! reply or an agent restart is answered from the target's journal (or
//! finds its writes already applied): nothing is applied twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arbor_record::{Digest, Value};
use arbor_sync::{CompareOptions, DriftKind, compare_collect};
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tracing::warn;

use crate::client::{GrpcPeer, MAX_MESSAGE_BYTES, RetryPolicy, is_transient};
use crate::convert;
use crate::proto::v1 as pb;
use crate::proto::v1::repair_service_client::RepairServiceClient;
use crate::report::display_key;

/// What to do with records only the target has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Extra {
    /// Delete them: the source of truth does not have them.
    Delete,
    /// Leave them.
    Keep,
    /// Leave them and list them in the report.
    Report,
}

/// A sync job.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Source-of-truth agent, `http://host:port`.
    pub source: String,
    /// Target agent.
    pub target: String,
    /// Dataset name on the source.
    pub dataset: String,
    /// Dataset name on the target.
    pub target_dataset: String,
    /// Records only on the target.
    pub extra: Extra,
    /// Writes per batch (one transaction on the target).
    pub batch: usize,
    /// Rows per second, 0 for no throttle.
    pub max_rows_per_sec: u64,
    /// How long a batch is retried while the target is unreachable.
    pub retry_for: Duration,
}

/// One planned action.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// `upsert`, `delete`, `keep` or `report`.
    pub action: &'static str,
    /// Why: the drift kind.
    pub drift: &'static str,
    /// The key, human form.
    pub key: String,
    /// Canonical key bytes, hex.
    pub canonical_key: String,
    /// The SQL the target would run (dry run only).
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
        matches!(self.action, "upsert" | "delete")
    }

    fn wire(&self) -> pb::PlannedWrite {
        pb::PlannedWrite {
            canonical_key: self.key_bytes.clone(),
            delete: self.action == "delete",
            values: self
                .values
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(convert::wire_value)
                .collect(),
            expected_digest: self.expected.map(|d| d.0.to_vec()).unwrap_or_default(),
        }
    }
}

/// A plan saved for review and later execution (`arbor sync plan --out`):
/// exactly these writes run, each still conditional on the digest seen here.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PlanFile {
    /// Format version (1).
    pub version: u32,
    /// The run id the execution journals under.
    pub run_id: String,
    /// Source-of-truth agent.
    pub source: String,
    /// Target agent.
    pub target: String,
    /// Dataset on the source.
    pub dataset: String,
    /// Dataset on the target.
    pub target_dataset: String,
    /// The writes.
    pub writes: Vec<PlanEntry>,
}

/// One write of a saved plan.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PlanEntry {
    /// `upsert` or `delete`.
    pub action: String,
    /// The drift kind behind it.
    pub drift: String,
    /// The key, human form.
    pub key: String,
    /// Canonical key bytes, hex.
    pub canonical_key: String,
    /// The target row's digest at plan time, hex (absent: no row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_digest: Option<String>,
    /// New values, canonical column order (upserts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<arbor_record::TypedValue>>,
}

impl PlanFile {
    /// The plan's writes, for saving.
    pub fn new(opts: &SyncOptions, run_id: &str, actions: &[Action]) -> PlanFile {
        PlanFile {
            version: 1,
            run_id: run_id.to_owned(),
            source: opts.source.clone(),
            target: opts.target.clone(),
            dataset: opts.dataset.clone(),
            target_dataset: opts.target_dataset.clone(),
            writes: actions
                .iter()
                .filter(|a| a.writes())
                .map(|a| PlanEntry {
                    action: a.action.to_owned(),
                    drift: a.drift.to_owned(),
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
                let action: &'static str = match e.action.as_str() {
                    "upsert" => "upsert",
                    "delete" => "delete",
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
                    None if action == "upsert" => {
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
                    drift: "planned",
                    key: e.key.clone(),
                    canonical_key: e.canonical_key.clone(),
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
    /// The run id (journal key on the target).
    pub run_id: String,
    /// Whether writes were executed (false: a plan only).
    pub executed: bool,
    /// Drifting keys found.
    pub drift: u64,
    /// Planned upserts and deletes.
    pub planned_upserts: u64,
    /// See `planned_upserts`.
    pub planned_deletes: u64,
    /// Target-only records left alone (`keep`/`report`).
    pub kept: u64,
    /// Keys the source no longer had when its values were fetched.
    pub vanished: u64,
    /// Writes applied.
    pub applied: u64,
    /// Writes found already applied (a replay).
    pub already_applied: u64,
    /// Writes skipped because the target row changed since the plan.
    pub conflicts: u64,
    /// Batches answered from the target's journal.
    pub replayed_batches: u64,
    /// Keys of the conflicts (human form), at most 100.
    pub conflict_keys: Vec<String>,
    /// Drift left after the run (the verifying compare).
    pub drift_after: Option<u64>,
    /// Wall time, milliseconds.
    pub elapsed_ms: u64,
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
}

fn channel(address: &str) -> Result<Channel, SyncError> {
    let endpoint = Endpoint::from_shared(address.to_owned())
        .map_err(|e| SyncError::Agent {
            agent: address.to_owned(),
            message: format!("invalid address: {e}"),
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

fn repair_client(address: &str) -> Result<RepairServiceClient<Channel>, SyncError> {
    Ok(RepairServiceClient::new(channel(address)?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

fn agent_err(agent: &str, s: &tonic::Status) -> SyncError {
    SyncError::Agent {
        agent: agent.to_owned(),
        message: format!("{} ({:?})", s.message(), s.code()),
    }
}

async fn drift_count(opts: &SyncOptions) -> Result<(Vec<arbor_sync::Drift>, u64), SyncError> {
    let left = GrpcPeer::new(&opts.source, &opts.dataset, RetryPolicy::default())
        .map_err(|e| SyncError::Compare(e.to_string()))?;
    let right = GrpcPeer::new(&opts.target, &opts.target_dataset, RetryPolicy::default())
        .map_err(|e| SyncError::Compare(e.to_string()))?;
    let (drift, _) = compare_collect(&left, &right, &CompareOptions::default())
        .await
        .map_err(|e| SyncError::Compare(e.to_string()))?;
    let n = drift.len() as u64;
    Ok((drift, n))
}

/// Compares and plans; fetches the values the plan writes. With `dry_run`
/// the target renders each write's SQL.
pub async fn plan(
    opts: &SyncOptions,
    dry_run: bool,
) -> Result<(Vec<Action>, SyncReport), SyncError> {
    let started = Instant::now();
    let (drift, n) = drift_count(opts).await?;
    let mut report = SyncReport {
        run_id: crate::agent::new_run_id(),
        drift: n,
        ..SyncReport::default()
    };
    let mut actions: Vec<Action> = drift
        .iter()
        .map(|d| {
            let (action, drift, expected) = match d.kind {
                DriftKind::MissingRight => ("upsert", "missing_on_target", None),
                DriftKind::Changed => ("upsert", "changed", d.right),
                DriftKind::MissingLeft => (
                    match opts.extra {
                        Extra::Delete => "delete",
                        Extra::Keep => "keep",
                        Extra::Report => "report",
                    },
                    "only_on_target",
                    d.right,
                ),
            };
            Action {
                action,
                drift,
                key: display_key(&d.key),
                canonical_key: hex::encode(&d.key),
                sql: None,
                key_bytes: d.key.clone(),
                expected,
                values: None,
            }
        })
        .collect();

    // Values for the upserts, from the source of truth.
    let wanted: Vec<Vec<u8>> = actions
        .iter()
        .filter(|a| a.action == "upsert")
        .map(|a| a.key_bytes.clone())
        .collect();
    let mut values: HashMap<Vec<u8>, Option<Vec<Value>>> = HashMap::new();
    let mut source = repair_client(&opts.source)?;
    for chunk in wanted.chunks(crate::repair::MAX_FETCH_KEYS) {
        let mut stream = source
            .fetch_records(pb::FetchRecordsRequest {
                dataset: opts.dataset.clone(),
                canonical_keys: chunk.to_vec(),
            })
            .await
            .map_err(|s| agent_err(&opts.source, &s))?
            .into_inner();
        while let Some(batch) = stream
            .message()
            .await
            .map_err(|s| agent_err(&opts.source, &s))?
        {
            for r in batch.records {
                let v = if r.found {
                    Some(
                        r.values
                            .iter()
                            .map(|v| convert::typed_value("values", v))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|m| SyncError::Agent {
                                agent: opts.source.clone(),
                                message: m.to_string(),
                            })?,
                    )
                } else {
                    None
                };
                values.insert(r.canonical_key, v);
            }
        }
    }
    actions.retain_mut(|a| {
        if a.action != "upsert" {
            return true;
        }
        match values.remove(&a.key_bytes).flatten() {
            Some(v) => {
                a.values = Some(v);
                true
            }
            None => {
                // Gone from the source since the compare: the next run sees it.
                report.vanished += 1;
                false
            }
        }
    });
    for a in &actions {
        match a.action {
            "upsert" => report.planned_upserts += 1,
            "delete" => report.planned_deletes += 1,
            _ => report.kept += 1,
        }
    }
    if dry_run {
        let mut target = repair_client(&opts.target)?;
        let writing: Vec<usize> = (0..actions.len())
            .filter(|&i| actions[i].writes())
            .collect();
        for chunk in writing.chunks(opts.batch.max(1)) {
            let resp = target
                .apply_changes(pb::ApplyChangesRequest {
                    dataset: opts.target_dataset.clone(),
                    run_id: String::new(),
                    batch: 0,
                    writes: chunk.iter().map(|&i| actions[i].wire()).collect(),
                    dry_run: true,
                })
                .await
                .map_err(|s| agent_err(&opts.target, &s))?
                .into_inner();
            for (&i, r) in chunk.iter().zip(resp.results) {
                actions[i].sql = Some(r.sql);
            }
        }
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok((actions, report))
}

/// Executes a plan on the target, then compares again.
pub async fn execute(
    opts: &SyncOptions,
    actions: &[Action],
    mut report: SyncReport,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    report.executed = true;
    let mut target = repair_client(&opts.target)?;
    let writing: Vec<&Action> = actions.iter().filter(|a| a.writes()).collect();
    let mut written = 0u64;
    for (n, chunk) in writing.chunks(opts.batch.max(1)).enumerate() {
        let request = pb::ApplyChangesRequest {
            dataset: opts.target_dataset.clone(),
            run_id: report.run_id.clone(),
            batch: n as u64,
            writes: chunk.iter().map(|a| a.wire()).collect(),
            dry_run: false,
        };
        let deadline = Instant::now() + opts.retry_for;
        let mut backoff = Duration::from_millis(100);
        let resp = loop {
            match target.apply_changes(request.clone()).await {
                Ok(r) => break r.into_inner(),
                Err(s) if is_transient(&s) && Instant::now() < deadline => {
                    warn!(target = %opts.target, batch = n, code = ?s.code(), error = %s.message(), "batch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(s) => return Err(agent_err(&opts.target, &s)),
            }
        };
        if resp.replayed {
            report.replayed_batches += 1;
        }
        for (a, r) in chunk.iter().zip(&resp.results) {
            match pb::WriteOutcome::try_from(r.outcome) {
                Ok(pb::WriteOutcome::Applied) => report.applied += 1,
                Ok(pb::WriteOutcome::AlreadyApplied) => report.already_applied += 1,
                Ok(pb::WriteOutcome::Conflict) => {
                    report.conflicts += 1;
                    if report.conflict_keys.len() < 100 {
                        report.conflict_keys.push(a.key.clone());
                    }
                }
                _ => {}
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
    let (_, left) = drift_count(opts).await?;
    report.drift_after = Some(left);
    report.elapsed_ms += started.elapsed().as_millis() as u64;
    Ok(report)
}
