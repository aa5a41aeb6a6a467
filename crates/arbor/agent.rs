//! The agent: one process beside one system, serving its datasets.
//!
//! Start-up opens each dataset's system read-only (a missing table or
//! column stops the agent with the dataset's name), opens its index under
//! `data_dir/indexes/<name>` and starts serving at once, with
//! `grpc.health.v1` answering NOT_SERVING and compares refused until every
//! dataset has been indexed from its system. Then it serves:
//!
//! * `AgentService` (peers: hashes only), see [`crate::service`];
//! * `AuditService`: Compare starts a run against a peer agent and stores
//!   its report in `data_dir/runs`; GetRun, ListRuns, StreamDrift read them;
//! * `AdminService`: Reindex, GetIndexStatus, Verify;
//! * health and server reflection (v1 and v1alpha), so any gRPC client works
//!   without our proto files. Health's empty service name is readiness
//!   (every dataset indexed); [`LIVENESS_SERVICE`] answers SERVING as soon as
//!   the port is open. `health_listen` serves health alone on a second,
//!   plaintext port for probes that cannot speak TLS.
//!
//! SIGTERM or SIGINT stop it gracefully: in-flight requests finish.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arbor_index::{Change, IndexError, RunStore};
use arbor_record::Record;
use arbor_sync::{CompareOptions, DriftKind, LocalPeer, Peer, compare_collect};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, instrument, warn};

use crate::client::{GrpcPeer, MAX_MESSAGE_BYTES, RetryPolicy};
use crate::proto::v1 as pb;
use crate::proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use crate::proto::v1::agent_service_server::AgentServiceServer;
use crate::proto::v1::audit_service_server::{AuditService, AuditServiceServer};
use crate::proto::v1::ingest_service_server::{IngestService, IngestServiceServer};
use crate::service::AgentServer;
use crate::status::index_status;
use crate::wire;
use arbor_agent::config::{AgentConfig, Capture, DatasetConfig, SourceConfig};
use arbor_agent::dataset::{self, AgentState, Dataset, MAX_COLUMN_DIGEST_KEYS, ServiceLimits};
pub use arbor_agent::error::AgentError;
use arbor_agent::error::OpError;
pub use arbor_agent::maintain::{
    build_from_source, build_from_source_with_progress, catch_up, index_path, open_source, poll,
    reindex, rescan, rescan_marked, with_records,
};
use arbor_agent::report::{self, DriftEntry, RunSide, RunSummary, SCHEMA_VERSION};
use arbor_agent::report::{error_chain, new_run_id};

/// Drift entries written to the run store per batch.
const DRIFT_WRITE_BATCH: usize = 1_000;
/// Runs listed when the request gives no limit.
const DEFAULT_LIST_RUNS: usize = 50;

fn side(agent: &str, dataset: &str, d: Option<&arbor_index::Description>) -> RunSide {
    RunSide {
        agent: agent.to_owned(),
        dataset: dataset.to_owned(),
        count: d.map_or(0, |d| d.count()),
        root: d.map_or_else(String::new, |d| hex::encode(d.root.sum.to_le_bytes())),
        watermark: report::watermark_text(d.and_then(|d| d.watermark.as_deref())),
        key_id: d.map_or_else(String::new, |d| d.key_id.to_string()),
    }
}

/// `AuditService`: runs and their reports.
#[derive(Clone)]
pub struct AuditServer {
    state: Arc<AgentState>,
    runs: Arc<RunStore>,
    retry: RetryPolicy,
    self_address: Option<String>,
    /// This agent's repairs: Reconcile reaches its own side in process.
    repairs: Option<arbor_agent::repair::Repairs>,
    /// Where finished runs are counted, if anywhere.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl AuditServer {
    /// The service over shared agent state and a run store.
    pub fn new(state: Arc<AgentState>, runs: Arc<RunStore>, retry: RetryPolicy) -> AuditServer {
        AuditServer {
            state,
            runs,
            retry,
            self_address: None,
            repairs: None,
            metrics: None,
        }
    }

    /// This agent's repairs, so Reconcile reaches its own side in process
    /// rather than through its own socket.
    pub fn with_repairs(mut self, repairs: arbor_agent::repair::Repairs) -> AuditServer {
        self.repairs = Some(repairs);
        self
    }

    /// This agent's own address, so Reconcile can reach it like a client.
    pub fn with_self_address(mut self, address: String) -> AuditServer {
        self.self_address = Some(address);
        self
    }

    /// Counts each finished run (outcome, drift) into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> AuditServer {
        self.metrics = Some(metrics);
        self
    }

    fn save(&self, s: &RunSummary) -> Result<(), Status> {
        let json = serde_json::to_vec(s).map_err(|e| Status::internal(e.to_string()))?;
        self.runs.put_run(&s.run_id, &json).map_err(index_status)
    }

    fn load(&self, run_id: &str) -> Result<RunSummary, Status> {
        let raw = self
            .runs
            .get_run(run_id)
            .map_err(index_status)?
            .ok_or_else(|| Status::not_found(format!("no run {run_id:?}")))?;
        serde_json::from_slice(&raw)
            .map_err(|e| Status::data_loss(format!("run {run_id}: stored summary unreadable: {e}")))
    }

    /// The compare itself; fills `summary` and stores the drift.
    async fn execute(
        &self,
        ds: &Arc<Dataset>,
        req: &pb::CompareRequest,
        peer_dataset: &str,
        summary: &mut RunSummary,
    ) -> Result<Option<String>, String> {
        // During a key rotation the dataset holds two indexes; the one
        // under the peer's key is offered if the current one differs.
        let indexes = ds.indexes();
        let local = LocalPeer::new(&indexes[0], req.dataset.clone())
            .map_err(|e| format!("local index: {e}"))?
            .with_alternates(indexes[1..].iter().map(|i| &**i));
        let remote =
            GrpcPeer::new(&req.peer, peer_dataset, self.retry).map_err(|e| e.to_string())?;
        let mut options = CompareOptions::default();
        if req.leaf_threshold > 0 {
            options.leaf_threshold = req.leaf_threshold;
        }
        let outcome = compare_collect(&local, &remote, &options).await;
        drop(local);
        drop(indexes);
        let (mut drift, stats) = outcome.map_err(|e| error_chain(&e))?;
        // Reports read by kind, then key (canonical order: numeric for
        // non-negative integers, byte order for text).
        drift.sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
        summary.left = side("local", &req.dataset, stats.left_description.as_ref());
        summary.right = side(&req.peer, peer_dataset, stats.right_description.as_ref());
        summary.missing_left = stats.missing_left;
        summary.missing_right = stats.missing_right;
        summary.changed = stats.changed;
        summary.cost.round_trips = stats.round_trips;
        summary.cost.levels = stats.levels;
        summary.cost.peer_bytes = stats.right.total_bytes();

        let mut columns: HashMap<Vec<u8>, Vec<String>> = HashMap::new();
        // A step that could not be done: the run is stored `incomplete`.
        let mut missing_step = None;
        let changed: Vec<Vec<u8>> = drift
            .iter()
            .filter(|d| d.kind == DriftKind::Changed)
            .map(|d| d.key.clone())
            .collect();
        if !req.skip_column_names && !changed.is_empty() {
            match self
                .differing_columns(
                    ds,
                    &remote,
                    &changed,
                    stats.left_description.as_ref().map(|d| d.key_id),
                )
                .await
            {
                Ok(found) => columns = found,
                Err(e) => {
                    warn!(run = %summary.run_id, error = %e, "could not name the differing columns");
                    missing_step = Some(format!(
                        "the differing columns of the {} changed keys could not be named: {e} \
                         (the drifting keys are complete; compare again, or pass \
                         --skip-column-names)",
                        changed.len()
                    ));
                }
            }
        }
        // Redacted columns are never named; sensitive keys are hashed.
        let redacted = ds
            .mapping
            .as_ref()
            .map(|m| m.redacted_names())
            .unwrap_or_default();
        let mut seq = 0u64;
        for chunk in drift.chunks(DRIFT_WRITE_BATCH) {
            let entries = chunk
                .iter()
                .map(|d| {
                    let (key, canonical_key) = ds.shown_key(&d.key);
                    serde_json::to_vec(&DriftEntry {
                        kind: d.kind.name().to_owned(),
                        key,
                        canonical_key,
                        columns: columns
                            .remove(&d.key)
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|c| !redacted.contains(c))
                            .collect(),
                    })
                    .map_err(|e| e.to_string())
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.runs
                .put_drift(&summary.run_id, seq, &entries)
                .map_err(|e| e.to_string())?;
            seq += entries.len() as u64;
        }
        Ok(missing_step)
    }

    /// Runs a stored `running` compare to its end and stores the outcome.
    async fn finish_run(
        &self,
        ds: &Arc<Dataset>,
        req: &pb::CompareRequest,
        peer_dataset: &str,
        mut summary: RunSummary,
    ) -> Result<RunSummary, Status> {
        let started = Instant::now();
        let outcome = self.execute(ds, req, peer_dataset, &mut summary).await;
        summary.cost.elapsed_ms = started.elapsed().as_millis() as u64;
        summary.finished_at = report::now_rfc3339();
        match outcome {
            Ok(None) => {
                summary.status = report::RunStatus::Completed;
                info!(run = %summary.run_id, drift = summary.drift(), elapsed_ms = summary.cost.elapsed_ms, "run completed");
            }
            Ok(Some(missing)) => {
                summary.status = report::RunStatus::Incomplete;
                summary.error = missing;
                warn!(run = %summary.run_id, error = %summary.error, "run incomplete");
            }
            Err(e) => {
                summary.status = report::RunStatus::Failed;
                summary.error = e;
                warn!(run = %summary.run_id, error = %summary.error, "run failed");
            }
        }
        // Counted before it is stored: whoever sees the run finished (a
        // caller polling GetRun) sees it counted.
        if let Some(m) = &self.metrics {
            m.observe_run(
                &req.dataset,
                summary.status == report::RunStatus::Completed,
                summary.drift(),
            );
        }
        self.save(&summary)?;
        Ok(summary)
    }

    /// For changed keys, the canonical names of the columns whose digests
    /// differ between the two systems (read now, from both; the peer's
    /// through `remote`, with its retries).
    async fn differing_columns(
        &self,
        ds: &Arc<Dataset>,
        remote: &GrpcPeer,
        keys: &[Vec<u8>],
        key_id: Option<arbor_record::KeyId>,
    ) -> Result<HashMap<Vec<u8>, Vec<String>>, String> {
        let mut out = HashMap::new();
        for chunk in keys.chunks(MAX_COLUMN_DIGEST_KEYS) {
            let local_ds = Arc::clone(ds);
            let local_keys = chunk.to_vec();
            let local = tokio::task::spawn_blocking(move || {
                dataset::column_digests(&local_ds, &local_keys, key_id)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            let theirs = remote
                .column_digests(chunk, key_id)
                .await
                .map_err(|e| e.to_string())?;
            if theirs.columns != local.0 {
                return Err(format!(
                    "{} answered column digests for other columns",
                    remote.address()
                ));
            }
            for ((key, mine), theirs) in chunk.iter().zip(local.1).zip(theirs.rows) {
                let (Some(mine), Some(theirs)) = (mine, theirs) else {
                    continue; // changed again since the compare: nothing to name
                };
                let names = local
                    .0
                    .iter()
                    .zip(&mine)
                    .zip(&theirs)
                    .filter(|((_, a), b)| a != b)
                    .map(|((name, _), _)| name.clone())
                    .collect();
                out.insert(key.clone(), names);
            }
        }
        Ok(out)
    }
}

type DriftStream = Pin<Box<dyn Stream<Item = Result<pb::DriftEntry, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for AuditServer {
    #[instrument(skip_all, fields(dataset = %request.get_ref().dataset, peer = %request.get_ref().peer))]
    async fn compare(
        &self,
        request: Request<pb::CompareRequest>,
    ) -> Result<Response<pb::RunSummary>, Status> {
        let req = request.into_inner();
        let ds = Arc::clone(
            self.state
                .comparable(&req.dataset)
                .map_err(crate::status::op)?,
        );
        let slot = ds.start_run(&req.dataset).map_err(crate::status::op)?;
        if req.peer.is_empty() {
            return Err(Status::invalid_argument(
                "CompareRequest.peer: the peer agent's address is required",
            ));
        }
        let peer_dataset = if req.peer_dataset.is_empty() {
            req.dataset.clone()
        } else {
            req.peer_dataset.clone()
        };
        let summary = RunSummary {
            schema_version: SCHEMA_VERSION,
            run_id: new_run_id(),
            status: report::RunStatus::Running,
            started_at: report::now_rfc3339(),
            left: side("local", &req.dataset, None),
            right: side(&req.peer, &peer_dataset, None),
            ..RunSummary::default()
        };
        self.save(&summary)?;
        // The run is a task of its own: it finishes, and is stored finished,
        // even when the caller detaches, goes away or hits its deadline.
        let detach = req.detach;
        let running = summary.clone();
        let server = self.clone();
        let run = tokio::spawn(async move {
            // Held until the run ends: the dataset's run limit counts it.
            let _slot = slot;
            server.finish_run(&ds, &req, &peer_dataset, summary).await
        });
        if detach {
            return Ok(Response::new((&running).into()));
        }
        let summary = run
            .await
            .map_err(|e| Status::internal(format!("run task: {e}")))??;
        Ok(Response::new((&summary).into()))
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::RunSummary>, Status> {
        let s = self.load(&request.into_inner().run_id)?;
        Ok(Response::new((&s).into()))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let req = request.into_inner();
        let limit = if req.limit == 0 {
            DEFAULT_LIST_RUNS
        } else {
            req.limit as usize
        };
        let mut runs = Vec::new();
        // Filtering by dataset may skip runs: read until enough match.
        for raw in self.runs.list_runs(usize::MAX).map_err(index_status)? {
            if runs.len() >= limit {
                break;
            }
            let s: RunSummary = serde_json::from_slice(&raw)
                .map_err(|e| Status::data_loss(format!("stored run summary unreadable: {e}")))?;
            if req.dataset.is_empty() || s.left.dataset == req.dataset {
                runs.push((&s).into());
            }
        }
        Ok(Response::new(pb::ListRunsResponse { runs }))
    }

    type StreamDriftStream = DriftStream;

    async fn stream_drift(
        &self,
        request: Request<pb::StreamDriftRequest>,
    ) -> Result<Response<DriftStream>, Status> {
        let req = request.into_inner();
        let summary = self.load(&req.run_id)?;
        // An incomplete run lists every drifting key (a later step, naming
        // columns, is what it lacks).
        if !summary.status.found_all_keys() {
            return Err(Status::failed_precondition(format!(
                "run {} is {}{}: it has no complete drift report",
                summary.run_id,
                summary.status,
                if summary.error.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", summary.error)
                }
            )));
        }
        for k in &req.kinds {
            if !["missing_left", "missing_right", "changed"].contains(&k.as_str()) {
                return Err(Status::invalid_argument(format!(
                    "StreamDriftRequest.kinds: unknown kind {k:?} (missing_left, missing_right, changed)"
                )));
            }
        }
        let (tx, rx) = mpsc::channel(64);
        let runs = Arc::clone(&self.runs);
        tokio::task::spawn_blocking(move || {
            let mut sent = 0u64;
            let read = runs.drift(&req.run_id, |raw| {
                let entry: DriftEntry = match serde_json::from_slice(raw) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::data_loss(format!(
                            "stored drift entry unreadable: {e}"
                        ))));
                        return false;
                    }
                };
                let wanted = (req.kinds.is_empty() || req.kinds.contains(&entry.kind))
                    && (req.column.is_empty() || entry.columns.contains(&req.column))
                    && (req.key_contains.is_empty() || entry.key.contains(&req.key_contains));
                if wanted {
                    if tx.blocking_send(Ok((&entry).into())).is_err() {
                        return false;
                    }
                    sent += 1;
                }
                req.limit == 0 || sent < req.limit
            });
            if let Err(e) = read {
                let _ = tx.blocking_send(Err(index_status(e)));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[instrument(skip_all, fields(dataset = %request.get_ref().dataset, peer = %request.get_ref().peer))]
    async fn reconcile(
        &self,
        request: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileResponse>, Status> {
        let req = request.into_inner();
        let _slot = Arc::clone(
            self.state
                .dataset(&req.dataset)
                .map_err(crate::status::op)?,
        )
        .start_run(&req.dataset)
        .map_err(crate::status::op)?;
        let me = match (&self.self_address, &self.repairs) {
            (Some(address), _) => address.clone(),
            (None, Some(_)) => "(this agent)".to_owned(),
            (None, None) => {
                return Err(Status::unavailable(
                    "this agent does not know its own address",
                ));
            }
        };
        let owners: Vec<(String, String)> = req.owners.into_iter().collect();
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let policy = crate::sync::parse_policy(
            nonempty(&req.policy).as_deref().unwrap_or("one_way"),
            nonempty(&req.extra).as_deref(),
            nonempty(&req.rule).as_deref(),
            &owners,
            nonempty(&req.fallback).as_deref(),
        )
        .map_err(|(field, e)| Status::invalid_argument(format!("ReconcileRequest.{field}: {e}")))?;
        let opts = crate::sync::SyncOptions {
            source: me,
            target: req.peer.clone(),
            target_dataset: nonempty(&req.peer_dataset).unwrap_or_else(|| req.dataset.clone()),
            dataset: req.dataset,
            policy,
            batch: if req.batch == 0 {
                crate::sync::DEFAULT_BATCH
            } else {
                req.batch as usize
            }
            .min(arbor_agent::repair::MAX_WRITES_PER_BATCH),
            max_rows_per_sec: req.max_rows_per_sec,
            retry_for: crate::sync::DEFAULT_RETRY_FOR,
            only_keys: None,
            max_skew: crate::sync::DEFAULT_MAX_SKEW,
            max_share: crate::sync::DEFAULT_MAX_SHARE,
        };
        let sync_status = |e: crate::sync::SyncError| Status::aborted(e.to_string());
        // This agent's side in process, the peer's over gRPC.
        let sides = match &self.repairs {
            Some(repairs) => crate::sync::Sides::new(
                crate::sync::SideAt::Local {
                    repairs: repairs.clone(),
                    dataset: opts.dataset.clone(),
                },
                crate::sync::SideAt::Remote {
                    agent: opts.target.clone(),
                    dataset: opts.target_dataset.clone(),
                },
                opts.retry_for,
            ),
            None => crate::sync::Sides::remote(&opts),
        };
        let (actions, report) = crate::sync::plan_with(&opts, &sides, false)
            .await
            .map_err(sync_status)?;
        let report = if req.execute && report.drift > 0 {
            crate::sync::execute_with(&opts, &sides, &actions, report)
                .await
                .map_err(sync_status)?
        } else {
            report
        };
        Ok(Response::new(pb::ReconcileResponse {
            report: Some((&report).into()),
        }))
    }
}

/// Changes in one IngestChanges request, at most.
pub const MAX_INGEST_CHANGES: usize = 10_000;

/// `IngestService`: change events pushed by the system itself.
#[derive(Clone)]
pub struct IngestServer {
    state: Arc<AgentState>,
}

impl IngestServer {
    /// The service over shared agent state.
    pub fn new(state: Arc<AgentState>) -> IngestServer {
        IngestServer { state }
    }
}

/// Turns the wire changes into index changes, checked against the schema.
fn ingested_changes(
    mapping: &arbor_source::Mapping,
    req: &pb::IngestRequest,
) -> Result<Vec<Change>, Status> {
    use pb::change_event::Op;
    let schema = mapping.schema();
    let mut out = Vec::with_capacity(req.changes.len());
    for (i, c) in req.changes.iter().enumerate() {
        let invalid =
            |what: String| Status::invalid_argument(format!("IngestRequest.changes[{i}]: {what}"));
        let values = |list: &[pb::TypedValue], field| {
            list.iter()
                .map(|v| wire::typed_value(field, v))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| invalid(m.to_string()))
        };
        let key = values(&c.key, "key")?;
        if key.contains(&arbor_record::Value::Null) {
            return Err(invalid("a key value is NULL".into()));
        }
        match Op::try_from(c.op) {
            Ok(Op::Upsert) => {
                let vals = values(&c.values, "values")?;
                schema
                    .check(&key, &vals)
                    .map_err(|e| invalid(e.to_string()))?;
                out.push(Change::Upsert(mapping.apply(Record::new(key, vals))));
            }
            Ok(Op::Delete) => {
                // NULL fits every kind: this checks the key alone.
                let nulls = vec![arbor_record::Value::Null; schema.values().len()];
                schema
                    .check(&key, &nulls)
                    .map_err(|e| invalid(e.to_string()))?;
                // Keys arrive as stored, like the values of an upsert.
                out.push(Change::Delete(mapping.key_of(key)));
            }
            _ => return Err(invalid("op is not set (UPSERT or DELETE)".into())),
        }
    }
    Ok(out)
}

#[tonic::async_trait]
impl IngestService for IngestServer {
    #[instrument(skip_all, fields(dataset = %request.get_ref().dataset, changes = request.get_ref().changes.len()))]
    async fn ingest_changes(
        &self,
        request: Request<pb::IngestRequest>,
    ) -> Result<Response<pb::IngestResponse>, Status> {
        let req = request.into_inner();
        if req.changes.len() > MAX_INGEST_CHANGES {
            return Err(Status::invalid_argument(format!(
                "IngestRequest.changes: {} changes, at most {MAX_INGEST_CHANGES} per request",
                req.changes.len()
            )));
        }
        if req.watermark.len() > MAX_WATERMARK_BYTES {
            return Err(Status::invalid_argument(format!(
                "IngestRequest.watermark: {} bytes, at most {MAX_WATERMARK_BYTES}",
                req.watermark.len()
            )));
        }
        let ds = Arc::clone(
            self.state
                .dataset(&req.dataset)
                .map_err(crate::status::op)?,
        );
        if !ds.accepts_push {
            return Err(Status::failed_precondition(format!(
                "dataset {:?} does not take pushed changes: its capture reads them from \
                 the system itself (set capture = {{ mode = \"push\" }} for a system that \
                 pushes)",
                req.dataset
            )));
        }
        let mapping = ds.mapping.as_ref().ok_or_else(|| {
            Status::failed_precondition(format!(
                "dataset {:?} has no mapping to check changes against",
                req.dataset
            ))
        })?;
        let changes = ingested_changes(mapping, &req)?;
        let watermark = (!req.watermark.is_empty()).then_some(req.watermark);
        let applied = Arc::clone(&ds);
        let stats = tokio::task::spawn_blocking(move || ds.apply(&changes, watermark.as_deref()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(index_status)?;
        if stats.inserted + stats.updated + stats.deleted > 0 {
            applied.changed();
        }
        Ok(Response::new(pb::IngestResponse {
            inserted: stats.inserted,
            updated: stats.updated,
            unchanged: stats.unchanged,
            deleted: stats.deleted,
            absent: stats.absent,
        }))
    }
}

/// `AdminService`: index maintenance.
#[derive(Clone)]
pub struct AdminServer {
    state: Arc<AgentState>,
    jobs: Option<Arc<crate::jobs::Jobs>>,
    /// The agent's configuration (data directory, dataset keys): key
    /// rotation needs it.
    config: Option<Arc<AgentConfig>>,
}

impl AdminServer {
    /// The service over shared agent state.
    pub fn new(state: Arc<AgentState>) -> AdminServer {
        AdminServer {
            state,
            jobs: None,
            config: None,
        }
    }

    /// With the agent's configuration, for key rotation.
    pub fn with_config(mut self, config: Arc<AgentConfig>) -> AdminServer {
        self.config = Some(config);
        self
    }

    /// With the agent's sync jobs.
    pub fn with_jobs(mut self, jobs: Arc<crate::jobs::Jobs>) -> AdminServer {
        self.jobs = Some(jobs);
        self
    }
}

fn status_of(name: &str, ds: &Dataset) -> Result<pb::IndexStatus, Status> {
    if let Some(error) = ds.failure() {
        return Ok(pb::IndexStatus {
            dataset: name.to_owned(),
            state: "failed".into(),
            error,
            ..Default::default()
        });
    }
    if ds.indexing.load(Ordering::Acquire) {
        return Ok(pb::IndexStatus {
            dataset: name.to_owned(),
            state: "indexing".into(),
            ..Default::default()
        });
    }
    let stale = ds.stale();
    let d = ds
        .index()
        .snapshot()
        .and_then(|s| s.describe())
        .map_err(index_status)?;
    Ok(pb::IndexStatus {
        dataset: name.to_owned(),
        count: d.count(),
        root: hex::encode(d.root.sum.to_le_bytes()),
        stored_depth: u32::from(d.stored_depth),
        key_id: d.key_id.to_string(),
        watermark: report::watermark_text(d.watermark.as_deref()),
        state: if stale.is_some() { "stale" } else { "ready" }.into(),
        error: stale.unwrap_or_default(),
    })
}

#[tonic::async_trait]
impl AdminService for AdminServer {
    async fn reindex(
        &self,
        request: Request<pb::ReindexRequest>,
    ) -> Result<Response<pb::IndexStatus>, Status> {
        let name = request.into_inner().dataset;
        let ds = Arc::clone(self.state.dataset(&name).map_err(crate::status::op)?);
        let status = tokio::task::spawn_blocking(move || {
            reindex(&ds, &name, false).map_err(crate::status::op)?;
            status_of(&name, &ds)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(status))
    }

    async fn get_index_status(
        &self,
        request: Request<pb::IndexStatusRequest>,
    ) -> Result<Response<pb::IndexStatus>, Status> {
        let name = request.into_inner().dataset;
        let ds = self.state.dataset(&name).map_err(crate::status::op)?;
        Ok(Response::new(status_of(&name, ds)?))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let name = request.into_inner().dataset;
        let ds = Arc::clone(self.state.comparable(&name).map_err(crate::status::op)?);
        let report = tokio::task::spawn_blocking(move || ds.index().verify())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(index_status)?;
        let mut problems: Vec<String> = report
            .mismatches
            .iter()
            .map(|m| {
                format!(
                    "node {}: stored {} records, computed {}",
                    m.prefix, m.stored.count, m.computed.count
                )
            })
            .collect();
        problems.extend(
            report
                .records_with_problems
                .iter()
                .map(|b| format!("record {}: {}", b.key, b.reason)),
        );
        Ok(Response::new(pb::VerifyResponse {
            ok: report.is_ok(),
            records: report.records,
            node_mismatches: report.node_mismatches,
            bad_records: report.bad_records,
            problems,
        }))
    }

    async fn list_sync_jobs(
        &self,
        _request: Request<pb::ListSyncJobsRequest>,
    ) -> Result<Response<pb::ListSyncJobsResponse>, Status> {
        let Some(jobs) = &self.jobs else {
            return Ok(Response::new(pb::ListSyncJobsResponse { jobs: vec![] }));
        };
        let jobs = jobs
            .status()
            .await
            .into_iter()
            .map(|j| pb::SyncJobStatus {
                name: j.name,
                dataset: j.dataset,
                peers: j.peers,
                schedule: j.schedule.unwrap_or_default(),
                timezone: j.timezone,
                realtime: j.realtime,
                execute: j.execute,
                running: j.running,
                next_run: j.next_run.unwrap_or_default(),
                runs: j.runs,
                skipped: j.skipped,
                last_run_json: j
                    .last_run
                    .and_then(|r| serde_json::to_string(&r).ok())
                    .unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::ListSyncJobsResponse { jobs }))
    }

    async fn list_sync_runs(
        &self,
        request: Request<pb::ListSyncRunsRequest>,
    ) -> Result<Response<pb::ListSyncRunsResponse>, Status> {
        let req = request.into_inner();
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| Status::not_found(format!("no sync job {:?}", req.job)))?;
        let limit = if req.limit == 0 {
            20
        } else {
            req.limit as usize
        };
        let runs = jobs.history(&req.job, limit).map_err(|e| {
            if e.starts_with("no sync job") {
                Status::not_found(e)
            } else {
                Status::internal(e)
            }
        })?;
        Ok(Response::new(pb::ListSyncRunsResponse { runs }))
    }

    async fn list_conflicts(
        &self,
        _request: Request<pb::ListConflictsRequest>,
    ) -> Result<Response<pb::ListConflictsResponse>, Status> {
        let Some(jobs) = &self.jobs else {
            return Ok(Response::new(pb::ListConflictsResponse::default()));
        };
        let conflicts = jobs
            .conflicts()
            .map_err(Status::internal)?
            .iter()
            .map(|c| serde_json::to_string(c).map_err(|e| Status::internal(e.to_string())))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListConflictsResponse { conflicts }))
    }

    #[instrument(skip_all, fields(dataset = %request.get_ref().dataset))]
    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let name = request.into_inner().dataset;
        let config = self
            .config
            .clone()
            .ok_or_else(|| Status::unimplemented("this server cannot rotate keys"))?;
        let ds = Arc::clone(self.state.dataset(&name).map_err(crate::status::op)?);
        let d = config
            .datasets
            .iter()
            .find(|d| d.name == name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no dataset {name:?} configured")))?;
        let response =
            tokio::task::spawn_blocking(move || arbor_agent::keys::rotate(&config, &d, &ds))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(crate::status::op)?;
        Ok(Response::new(response.into()))
    }

    async fn resolve_conflict(
        &self,
        request: Request<pb::ResolveConflictRequest>,
    ) -> Result<Response<pb::SyncJobRun>, Status> {
        let req = request.into_inner();
        let take = crate::sync::parse_side(&req.take)
            .map_err(|e| Status::invalid_argument(format!("ResolveConflictRequest.take: {e}")))?;
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| Status::not_found(format!("no queued conflict {:?}", req.id)))?;
        let report = jobs.resolve(&req.id, take).await.map_err(|e| {
            if e.starts_with("no queued conflict") {
                Status::not_found(e)
            } else {
                Status::unavailable(e)
            }
        })?;
        Ok(Response::new(pb::SyncJobRun {
            json: serde_json::to_string(&report).map_err(|e| Status::internal(e.to_string()))?,
        }))
    }

    async fn queue_conflicts(
        &self,
        request: Request<pb::QueueConflictsRequest>,
    ) -> Result<Response<pb::QueueConflictsResponse>, Status> {
        let req = request.into_inner();
        self.state
            .dataset(&req.dataset)
            .map_err(crate::status::op)?;
        if req.peer.is_empty() || req.peer_dataset.is_empty() {
            return Err(Status::invalid_argument(
                "QueueConflictsRequest.peer and peer_dataset: required to settle a conflict later",
            ));
        }
        if req.rows.len() > MAX_QUEUED_CONFLICTS {
            return Err(Status::invalid_argument(format!(
                "QueueConflictsRequest.rows: {} rows, at most {MAX_QUEUED_CONFLICTS} per request",
                req.rows.len()
            )));
        }
        let rows = req
            .rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                hex::decode(&r.canonical_key)
                    .map_err(|e| e.to_string())
                    .and_then(|k| arbor_record::decode_tuple(&k).map_err(|e| e.to_string()))
                    .map_err(|e| {
                        Status::invalid_argument(format!(
                            "QueueConflictsRequest.rows[{i}].canonical_key: {e}"
                        ))
                    })?;
                Ok(crate::jobs::Unresolved {
                    key: r.key,
                    canonical_key: r.canonical_key,
                    reason: r.reason,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| Status::unimplemented("this server keeps no conflicts"))?;
        let ids = jobs
            .queue_one_shot(&req.dataset, &req.peer, &req.peer_dataset, &rows)
            .map_err(Status::internal)?;
        Ok(Response::new(pb::QueueConflictsResponse { ids }))
    }

    async fn run_sync_job(
        &self,
        request: Request<pb::RunSyncJobRequest>,
    ) -> Result<Response<pb::SyncJobRun>, Status> {
        let name = request.into_inner().name;
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| Status::not_found(format!("no sync job {name:?}")))?;
        match jobs.run_now(&name).await {
            None => Err(Status::not_found(format!("no sync job {name:?}"))),
            Some(Err(busy)) => Err(Status::aborted(busy)),
            Some(Ok(run)) => Ok(Response::new(pb::SyncJobRun {
                json: serde_json::to_string(&run).map_err(|e| Status::internal(e.to_string()))?,
            })),
        }
    }
}

/// Unresolved rows one QueueConflicts request may carry.
pub const MAX_QUEUED_CONFLICTS: usize = 100_000;

/// Polls a dataset forever, `interval` after each poll ends. Each poll
/// reads from the last value seen at least `overlap` ago, not from the last
/// value seen: a transaction that commits after a later one was polled
/// carries a `column` value below the newest one seen, and would otherwise
/// be missed until the next rescan.
async fn poll_every(
    ds: Arc<Dataset>,
    name: String,
    column: String,
    interval: std::time::Duration,
    overlap: std::time::Duration,
) {
    let mut since: Option<String> = None;
    let mut seen = PollWatermarks::default();
    loop {
        let (d, n, c, s) = (Arc::clone(&ds), name.clone(), column.clone(), since.clone());
        match tokio::task::spawn_blocking(move || poll(&d, &n, &c, s.as_deref())).await {
            Ok(Ok((applied, next))) => {
                ds.clear_stale();
                if applied > 0 {
                    info!(dataset = %name, applied, watermark = ?next, "poll applied changes");
                    ds.changed();
                }
                seen.push(Instant::now(), next);
                if let Some(from) = seen.settled(Instant::now(), overlap) {
                    since = from;
                }
            }
            // Until a poll succeeds, changes may be missing: compares refuse
            // the index rather than answer from it.
            Ok(Err(status)) => {
                warn!(dataset = %name, error = %status, "poll failed; retrying");
                ds.mark_stale(format!(
                    "poll capture failed: {} at {}",
                    status,
                    report::now_rfc3339()
                ));
            }
            Err(e) => {
                warn!(dataset = %name, error = %e, "poll task failed");
                ds.mark_stale(format!(
                    "poll capture failed: {e} at {}",
                    report::now_rfc3339()
                ));
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// The values a poll saw, with when, until they are older than the overlap
/// window: the next poll reads from the newest value at least that old.
#[derive(Default)]
struct PollWatermarks {
    held: std::collections::VecDeque<(Instant, Option<String>)>,
}

impl PollWatermarks {
    fn push(&mut self, at: Instant, watermark: Option<String>) {
        self.held.push_back((at, watermark));
    }

    /// The newest watermark seen at least `overlap` before `now`, if one
    /// became so since the last call (older ones are dropped).
    fn settled(&mut self, now: Instant, overlap: std::time::Duration) -> Option<Option<String>> {
        let mut settled = None;
        while let Some((at, _)) = self.held.front() {
            if now.duration_since(*at) < overlap {
                break;
            }
            settled = self.held.pop_front().map(|(_, w)| w);
        }
        settled
    }
}

/// Rescans a dataset forever, `interval` after each rescan ends.
async fn rescan_every(ds: Arc<Dataset>, name: String, interval: std::time::Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let (d, n) = (Arc::clone(&ds), name.clone());
        match tokio::task::spawn_blocking(move || rescan(&d, &n)).await {
            Ok(Ok(stats)) => {
                info!(
                    dataset = %name,
                    inserted = stats.applied.inserted,
                    updated = stats.applied.updated,
                    vanished = stats.vanished,
                    "rescan applied"
                );
                if stats.applied.inserted + stats.applied.updated + stats.vanished > 0 {
                    ds.changed();
                }
            }
            Ok(Err(status)) => {
                warn!(dataset = %name, error = %status, "rescan failed; retrying at the next interval")
            }
            Err(e) => warn!(dataset = %name, error = %e, "rescan task failed"),
        }
    }
}

/// Forgets compare reports older than `retention`, now and once a day.
async fn prune_runs_daily(runs: Arc<RunStore>, retention: std::time::Duration) {
    loop {
        let cut = std::time::SystemTime::now()
            .checked_sub(retention)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        let store = Arc::clone(&runs);
        match tokio::task::spawn_blocking(move || store.prune_runs(cut)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(pruned)) => info!(pruned, "old run reports forgotten"),
            Ok(Err(e)) => warn!(error = %e, "pruning run reports failed"),
            Err(e) => warn!(error = %e, "pruning task failed"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(86_400)).await;
    }
}

/// Forgets tombstones older than `retention`, now and once a day.
async fn prune_tombstones_daily(state: Arc<AgentState>, retention: std::time::Duration) {
    loop {
        for name in state.dataset_names() {
            let Ok(ds) = state.dataset(&name).map(Arc::clone) else {
                continue;
            };
            let cut = std::time::SystemTime::now()
                .checked_sub(retention)
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_micros() as i64);
            match tokio::task::spawn_blocking(move || {
                ds.indexes()
                    .iter()
                    .map(|i| i.prune_tombstones(cut))
                    .sum::<Result<_, _>>()
            })
            .await
            {
                Ok(Ok(0)) => {}
                Ok(Ok(pruned)) => info!(dataset = %name, pruned, "old tombstones forgotten"),
                Ok(Err(e)) => warn!(dataset = %name, error = %e, "pruning tombstones failed"),
                Err(e) => warn!(dataset = %name, error = %e, "pruning task failed"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(86_400)).await;
    }
}

/// Opens every dataset (system and index) of a configuration.
pub fn open_datasets(config: &AgentConfig) -> Result<HashMap<String, Arc<Dataset>>, AgentError> {
    std::fs::create_dir_all(config.data_dir.join("indexes")).map_err(|source| {
        AgentError::DataDir {
            path: config.data_dir.clone(),
            source,
        }
    })?;
    let mut out = HashMap::new();
    for d in &config.datasets {
        let source = open_source(d)?;
        // Two indexes while a key rotation is under way (see keys.rs).
        let (index, other) = arbor_agent::keys::open_dataset_indexes(config, d)?;
        out.insert(
            d.name.clone(),
            Arc::new({
                let mut ds = Dataset::new(Arc::new(index), Some(source), Some(d.mapping.clone()));
                if let Some(other) = other {
                    ds.hold(Arc::new(other));
                }
                ds.max_runs = config.max_runs_per_dataset;
                ds.accepts_push = matches!(d.capture, Capture::Push { .. });
                if d.key_sensitive {
                    ds.report_key =
                        Some(blake3::derive_key("arbor report key hashes v1", &d.secret));
                }
                // Indexed at start: compares wait for it.
                ds.indexing.store(true, Ordering::Release);
                ds
            }),
        );
    }
    Ok(out)
}

/// The largest watermark an ingest may record: it is copied into every
/// later run's record, so an unbounded one would grow them all.
pub const MAX_WATERMARK_BYTES: usize = 1024;

/// First wait before indexing a failed dataset again; doubles up to
/// [`INDEX_RETRY_MAX`].
const INDEX_RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest wait between attempts to index a failed dataset.
const INDEX_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(300);

/// The `grpc.health.v1` service name of one dataset: SERVING once it is
/// indexed, NOT_SERVING while it is being indexed or has failed.
pub fn dataset_health_name(dataset: &str) -> String {
    format!("arbor.dataset.{dataset}")
}

/// Brings one dataset up: prepares its capture, indexes it from its system,
/// then starts following its changes. A failure is recorded on the dataset
/// (compares say why at once), its health says NOT_SERVING, and the attempt
/// is repeated with backoff; `first` is told when the first attempt ends.
async fn bring_up(
    ds: Arc<Dataset>,
    dc: DatasetConfig,
    health: tonic_health::server::HealthReporter,
    first: tokio::sync::oneshot::Sender<()>,
) {
    let name = dc.name.clone();
    let mut first = Some(first);
    let mut wait = INDEX_RETRY_FIRST;
    loop {
        let (d, c) = (Arc::clone(&ds), dc.clone());
        let outcome = tokio::task::spawn_blocking(move || prepare_and_index(&d, &c))
            .await
            .unwrap_or_else(|e| Err(format!("indexing task failed: {e}")));
        let serving = match &outcome {
            Ok(_) => {
                ds.clear_failure();
                tonic_health::ServingStatus::Serving
            }
            Err(reason) => {
                warn!(
                    dataset = %name,
                    error = %reason,
                    retry_in_secs = wait.as_secs(),
                    "indexing failed; the dataset is unavailable until a retry succeeds"
                );
                ds.fail(reason.clone());
                tonic_health::ServingStatus::NotServing
            }
        };
        health
            .set_service_status(dataset_health_name(&name), serving)
            .await;
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        match outcome {
            Ok(follower) => {
                start_capture(ds, name, dc.capture, follower);
                return;
            }
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(INDEX_RETRY_MAX);
            }
        }
    }
}

/// Prepares a dataset's change capture and indexes it (blocking): a logical
/// slot that still covers the index catches up instead of rebuilding.
fn prepare_and_index(
    ds: &Dataset,
    dc: &DatasetConfig,
) -> Result<Option<arbor_agent::logical::Follower>, String> {
    let name = &dc.name;
    // Marked unavailable until this attempt succeeds.
    ds.indexing.store(true, Ordering::Release);
    let status = |e: OpError| e.to_string();
    let follower = match (&dc.capture, &dc.source) {
        (Capture::Logical(lc), SourceConfig::Postgres(db)) => Some(
            arbor_agent::logical::prepare(ds, name, &db.url, lc, db.options.statement_timeout)
                .map_err(status)?,
        ),
        _ => None,
    };
    match follower {
        Some((f, false)) => {
            arbor_agent::keys::rebuild_lagging(ds, name).map_err(status)?;
            ds.indexing.store(false, Ordering::Release);
            Ok(Some(f))
        }
        Some((f, true)) => {
            catch_up(ds, name).map_err(status)?;
            f.built(ds).map_err(status)?;
            Ok(Some(f))
        }
        None => catch_up(ds, name).map(|()| None).map_err(status),
    }
}

/// Starts following a dataset's changes: periodic rescans, polls, or a
/// logical replication slot.
fn start_capture(
    ds: Arc<Dataset>,
    name: String,
    capture: Capture,
    follower: Option<arbor_agent::logical::Follower>,
) {
    match capture {
        Capture::None => {}
        Capture::Rescan { interval } => {
            tokio::spawn(rescan_every(ds, name, interval));
        }
        Capture::Poll {
            column,
            interval,
            rescan_interval,
            overlap,
        } => {
            tokio::spawn(rescan_every(Arc::clone(&ds), name.clone(), rescan_interval));
            tokio::spawn(poll_every(ds, name, column, interval, overlap));
        }
        Capture::Push { rescan_interval } => {
            if let Some(interval) = rescan_interval {
                tokio::spawn(rescan_every(ds, name, interval));
            }
        }
        Capture::Logical(lc) => {
            if let Some(f) = follower {
                tokio::spawn(arbor_agent::logical::follow(ds, name, f, lc.interval));
            }
        }
    }
}

/// A listener for one of the agent's extra ports (metrics, health).
async fn bind(at: SocketAddr) -> Result<tokio::net::TcpListener, AgentError> {
    tokio::net::TcpListener::bind(at)
        .await
        .map_err(|e| AgentError::DataDir {
            path: PathBuf::from(at.to_string()),
            source: e,
        })
}

/// Marks `failed` every stored run still `running`: at start no run of this
/// process exists yet, so those were cut off when an earlier process
/// stopped (killed, crashed, restarted). Returns how many.
pub fn fail_orphaned_runs(runs: &RunStore) -> Result<usize, IndexError> {
    let mut failed = 0;
    for raw in runs.list_runs(usize::MAX)? {
        let Ok(mut summary) = serde_json::from_slice::<RunSummary>(&raw) else {
            // Unreadable summaries are reported when read (GetRun).
            continue;
        };
        if summary.status != report::RunStatus::Running {
            continue;
        }
        summary.status = report::RunStatus::Failed;
        summary.error = format!(
            "the agent stopped before the run finished (marked failed at the next start, {})",
            report::now_rfc3339()
        );
        summary.finished_at = report::now_rfc3339();
        let json = serde_json::to_vec(&summary)
            .map_err(|e| IndexError::InvalidRequest(format!("run {}: {e}", summary.run_id)))?;
        runs.put_run(&summary.run_id, &json)?;
        failed += 1;
    }
    Ok(failed)
}

/// The `grpc.health.v1` service name that answers SERVING as soon as the
/// agent listens (liveness); the empty name answers SERVING only once every
/// dataset is indexed (readiness).
pub const LIVENESS_SERVICE: &str = "arbor.liveness";

/// Runs the agent until `shutdown` resolves. `on_listening` is called with
/// the bound address once the port is open (before indexing finishes).
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), AgentError> {
    info!(
        version = crate::build::VERSION,
        commit = crate::build::COMMIT,
        profile = crate::build::PROFILE,
        "arbor agent starting"
    );
    // Connectors may block (and the PostgreSQL driver runs its own
    // runtime): sources are only ever touched on the blocking pool.
    let opening = config.clone();
    let datasets = tokio::task::spawn_blocking(move || open_datasets(&opening))
        .await
        .map_err(|e| {
            AgentError::Runs(IndexError::InvalidRequest(format!("opening datasets: {e}")))
        })??;
    let runs = Arc::new(RunStore::open(config.data_dir.join("runs")).map_err(AgentError::Runs)?);
    if config.insecure {
        warn!(
            "insecure = true: every caller may call everything, values and repairs included; \
             for a trial on one machine only"
        );
    } else if config.auth.is_none() {
        warn!(
            addr = %config.listen,
            "no [agent.auth]: serving on loopback only; reads are open to local callers, \
             write and value calls are refused"
        );
    }
    let orphans = fail_orphaned_runs(&runs).map_err(AgentError::Runs)?;
    if orphans > 0 {
        warn!(
            runs = orphans,
            "runs left running by an earlier process are marked failed"
        );
    }
    let state = Arc::new(AgentState::with_datasets(
        datasets,
        ServiceLimits::default(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    // The process answers: liveness, as opposed to readiness ("").
    health
        .set_service_status(LIVENESS_SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| AgentError::Runs(IndexError::InvalidRequest(format!("reflection: {e}"))))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| AgentError::Runs(IndexError::InvalidRequest(format!("reflection: {e}"))))?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| AgentError::DataDir {
            path: PathBuf::from(config.listen.to_string()),
            source: e,
        })?;
    let addr = listener.local_addr().map_err(|e| AgentError::DataDir {
        path: PathBuf::from(config.listen.to_string()),
        source: e,
    })?;
    on_listening(addr);
    info!(%addr, datasets = ?state.dataset_names(), "agent listening");

    // Sync runs reach this agent through its own gRPC edge, like any client.
    let self_host = if addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    let self_address = format!(
        "{}://{}",
        if config.tls.is_some() {
            "https"
        } else {
            "http"
        },
        SocketAddr::new(self_host, addr.port())
    );
    let auth = config.auth.clone().map(Arc::new);
    // Every privileged or audit call leaves a line in the audit log.
    let audit_log = Arc::new(
        arbor_agent::audit::AuditLog::open(&config.audit_log).map_err(|e| AgentError::DataDir {
            path: config.audit_log.clone(),
            source: std::io::Error::other(e.to_string()),
        })?,
    );
    let metrics = Arc::new(crate::metrics::Metrics::default());
    if let Some(at) = config.metrics_listen {
        let listener = bind(at).await?;
        tokio::spawn(crate::metrics::serve(
            listener,
            Arc::clone(&metrics),
            Arc::clone(&state),
        ));
    }
    // AgentService (peers' hash exchange) is not audited, only gated.
    let peer_auth = auth.clone();
    let peer_log = Arc::clone(&audit_log);
    let agent_service = tonic::service::interceptor::InterceptedService::new(
        AgentServiceServer::new(AgentServer::new(Arc::clone(&state)))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        move |mut request: Request<()>| {
            let Some(auth) = &peer_auth else {
                return Ok(request);
            };
            match crate::auth::check(auth, &request, "AgentService/*", "") {
                Ok(principal) => {
                    // The service checks the dataset each message names.
                    if let Some(scope) = crate::auth::scope_of(auth, &request) {
                        request.extensions_mut().insert(scope);
                    }
                    // Sessions are counted per principal.
                    request
                        .extensions_mut()
                        .insert(arbor_agent::dataset::SessionOwner(principal));
                    Ok(request)
                }
                Err(status) => {
                    peer_log.record(arbor_agent::audit::Record {
                        who: request
                            .remote_addr()
                            .map_or_else(|| "unknown".to_string(), |a| a.to_string()),
                        call: "AgentService/*",
                        decision: "denied",
                        outcome: format!("{:?}", status.code()),
                        ..Default::default()
                    });
                    Err(status)
                }
            }
        },
    );
    // The agent's repair machinery: RepairService serves it to peers; its
    // own jobs and Reconcile call it in process.
    let repairs =
        arbor_agent::repair::Repairs::new(Arc::clone(&state), Arc::clone(&runs), &config.datasets);
    let audit_service = AuditServiceServer::new(
        crate::audited::Audited::new(
            AuditServer::new(
                Arc::clone(&state),
                Arc::clone(&runs),
                RetryPolicy::default(),
            )
            .with_self_address(self_address.clone())
            .with_repairs(repairs.clone())
            .with_metrics(Arc::clone(&metrics)),
            Arc::clone(&audit_log),
            Arc::clone(&metrics),
        )
        .with_auth(auth.clone())
        .insecure(config.insecure),
    );
    let jobs = Arc::new(
        crate::jobs::Jobs::new(&config.syncs, self_address.clone())
            .with_store(Arc::clone(&runs))
            .with_repairs(repairs.clone()),
    );
    let admin_service = AdminServiceServer::new(
        crate::audited::Audited::new(
            AdminServer::new(Arc::clone(&state))
                .with_jobs(Arc::clone(&jobs))
                .with_config(Arc::new(config.clone())),
            Arc::clone(&audit_log),
            Arc::clone(&metrics),
        )
        .with_auth(auth.clone())
        .insecure(config.insecure),
    );
    let ingest_service = IngestServiceServer::new(
        crate::audited::Audited::new(
            IngestServer::new(Arc::clone(&state)),
            Arc::clone(&audit_log),
            Arc::clone(&metrics),
        )
        .with_auth(auth.clone())
        .insecure(config.insecure),
    )
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let repair_service = crate::proto::v1::repair_service_server::RepairServiceServer::new(
        crate::audited::Audited::new(
            crate::repair::RepairServer::new(repairs),
            Arc::clone(&audit_log),
            Arc::clone(&metrics),
        )
        .with_auth(auth.clone())
        .insecure(config.insecure),
    )
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let mut server_tls =
            ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key));
        if let Some(ca) = &tls.client_ca {
            // Mutual TLS: a client without a certificate from this CA is
            // refused during the handshake.
            server_tls = server_tls.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder
            .tls_config(server_tls)
            .map_err(|e| AgentError::Tls(e.to_string()))?;
        crate::client::set_client_tls(
            tls.ca.as_deref(),
            Some((&tls.client_identity.0, &tls.client_identity.1)),
        );
    }
    // Health alone, in plaintext, for probes that cannot do TLS.
    let health_port = match config.health_listen {
        None => None,
        Some(at) => {
            let listener = bind(at).await?;
            info!(addr = %at, "health port listening");
            Some(tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(health_service.clone())
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            ))
        }
    };
    let server = builder
        .timeout(config.request_timeout)
        .concurrency_limit_per_connection(config.max_concurrent_requests)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(agent_service)
        .add_service(audit_service)
        .add_service(admin_service)
        .add_service(ingest_service)
        .add_service(repair_service)
        .serve_with_incoming_shutdown(
            // Small request/response exchanges (one per descent level) must
            // not wait out Nagle's algorithm against delayed ACKs (~40 ms
            // a round trip).
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                |conn| {
                    if let Ok(stream) = &conn {
                        let _ = stream.set_nodelay(true);
                    }
                    conn
                },
            ),
            shutdown,
        );

    // Index every dataset while the server already answers (NOT_SERVING).
    // Each dataset comes up on its own: one that fails is reported and
    // retried with backoff while the others serve.
    let configs: Vec<DatasetConfig> = config.datasets.clone();
    let indexing_state = Arc::clone(&state);
    let tombstone_retention = config.tombstone_retention;
    let (prune_runs, runs_retention) = (Arc::clone(&runs), config.runs_retention);
    let indexing = async move {
        let mut first_attempts = Vec::new();
        for dc in configs {
            let Ok(ds) = indexing_state.dataset(&dc.name).map(Arc::clone) else {
                continue;
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(bring_up(ds, dc, health.clone(), tx));
            first_attempts.push(rx);
        }
        for attempt in first_attempts {
            let _ = attempt.await;
        }
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let failed: Vec<String> = indexing_state
            .dataset_names()
            .into_iter()
            .filter(|n| {
                indexing_state
                    .dataset(n)
                    .is_ok_and(|ds| ds.failure().is_some())
            })
            .collect();
        if failed.is_empty() {
            info!("all datasets indexed; serving");
        } else {
            warn!(failed = ?failed, "serving; these datasets failed to index and are retried");
        }
        jobs.spawn(&indexing_state);
        tokio::spawn(prune_tombstones_daily(
            Arc::clone(&indexing_state),
            tombstone_retention,
        ));
        tokio::spawn(prune_runs_daily(Arc::clone(&prune_runs), runs_retention));
    };
    let (served, ()) = tokio::join!(server, indexing);
    if let Some(port) = health_port {
        port.abort();
    }
    served.map_err(|source| AgentError::Serve {
        addr,
        source: Box::new(source),
    })?;
    info!("agent stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(run_id: &str, status: &str) -> RunSummary {
        RunSummary {
            schema_version: SCHEMA_VERSION,
            run_id: run_id.into(),
            status: report::RunStatus::parse(status).expect("a run status"),
            ..RunSummary::default()
        }
    }

    #[test]
    fn a_poll_reads_from_the_newest_value_outside_the_overlap_window() {
        let t0 = Instant::now();
        let s = std::time::Duration::from_secs;
        let mut seen = PollWatermarks::default();
        seen.push(t0, Some("a".into()));
        seen.push(t0 + s(10), Some("b".into()));
        seen.push(t0 + s(20), Some("c".into()));
        // Nothing is 30 s old yet: keep reading from where we were.
        assert_eq!(seen.settled(t0 + s(25), s(30)), None);
        // "a" is now 30 s old; "b" not yet.
        assert_eq!(seen.settled(t0 + s(30), s(30)), Some(Some("a".into())));
        assert_eq!(seen.settled(t0 + s(31), s(30)), None);
        // Both "b" and "c" are: the newer wins.
        assert_eq!(seen.settled(t0 + s(55), s(30)), Some(Some("c".into())));
        assert_eq!(seen.settled(t0 + s(99), s(30)), None);
        // No overlap: every poll reads from its own last value.
        seen.push(t0 + s(100), Some("d".into()));
        assert_eq!(
            seen.settled(t0 + s(100), std::time::Duration::ZERO),
            Some(Some("d".into()))
        );
    }

    #[test]
    fn runs_left_running_by_a_stopped_process_are_marked_failed() {
        let dir = tempfile::TempDir::new().unwrap();
        let runs = RunStore::open(dir.path()).unwrap();
        for (id, status) in [("r1", "completed"), ("r2", "running"), ("r3", "failed")] {
            runs.put_run(id, &serde_json::to_vec(&summary(id, status)).unwrap())
                .unwrap();
        }
        assert_eq!(fail_orphaned_runs(&runs).unwrap(), 1);
        let read = |id: &str| -> RunSummary {
            serde_json::from_slice(&runs.get_run(id).unwrap().unwrap()).unwrap()
        };
        let orphan = read("r2");
        assert_eq!(orphan.status, report::RunStatus::Failed);
        assert!(orphan.error.contains("agent stopped"), "{}", orphan.error);
        assert!(!orphan.finished_at.is_empty());
        assert_eq!(read("r1").status, report::RunStatus::Completed);
        assert_eq!(read("r3").status, report::RunStatus::Failed);
        // A second start finds nothing left to fail.
        assert_eq!(fail_orphaned_runs(&runs).unwrap(), 0);
    }
}
