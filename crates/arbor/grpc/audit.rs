//! `AuditService`: compare runs against a peer agent, their stored
//! reports (GetRun, ListRuns, StreamDrift), and Reconcile (compare, plan and
//! repair in one call).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use arbor_index::RunStore;
use arbor_sync::{CompareOptions, DriftKind, LocalPeer, Peer, compare_collect};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, instrument, warn};

use crate::grpc::client::{GrpcPeer, RetryPolicy};
use crate::grpc::status::index_status;
use crate::proto::v1 as pb;
use crate::proto::v1::audit_service_server::AuditService;
use arbor_agent::dataset::{self, AgentState, Dataset, MAX_COLUMN_DIGEST_KEYS};
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
                .map_err(crate::grpc::status::op)?,
        );
        let slot = ds
            .start_run(&req.dataset)
            .map_err(crate::grpc::status::op)?;
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
                .map_err(crate::grpc::status::op)?,
        )
        .start_run(&req.dataset)
        .map_err(crate::grpc::status::op)?;
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
                crate::sync::GrpcRemote,
            ),
            None => crate::sync::remote_sides(&opts),
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
