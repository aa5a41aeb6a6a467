//! `AdminService`: index maintenance (Reindex, GetIndexStatus, Verify,
//! RotateKey), sync jobs and their conflicts.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::grpc::status::index_status;
use crate::proto::v1 as pb;
use crate::proto::v1::admin_service_server::AdminService;
use arbor_agent::config::AgentConfig;
use arbor_agent::dataset::{AgentState, Dataset};
use arbor_agent::maintain::reindex;
use arbor_agent::report;

/// `AdminService`: index maintenance.
#[derive(Clone)]
pub struct AdminServer {
    state: Arc<AgentState>,
    jobs: Option<Arc<arbor_agent::jobs::Jobs<crate::sync::GrpcRemote>>>,
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
    pub fn with_jobs(
        mut self,
        jobs: Arc<arbor_agent::jobs::Jobs<crate::sync::GrpcRemote>>,
    ) -> AdminServer {
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
        let ds = Arc::clone(self.state.dataset(&name).map_err(crate::grpc::status::op)?);
        let status = tokio::task::spawn_blocking(move || {
            reindex(&ds, &name, false).map_err(crate::grpc::status::op)?;
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
        let ds = self.state.dataset(&name).map_err(crate::grpc::status::op)?;
        Ok(Response::new(status_of(&name, ds)?))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let name = request.into_inner().dataset;
        let ds = Arc::clone(
            self.state
                .comparable(&name)
                .map_err(crate::grpc::status::op)?,
        );
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
        let runs = jobs
            .history(&req.job, limit)
            .map_err(crate::grpc::status::op)?;
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
            .map_err(crate::grpc::status::op)?
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
        let ds = Arc::clone(self.state.dataset(&name).map_err(crate::grpc::status::op)?);
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
                .map_err(crate::grpc::status::op)?;
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
        let report = jobs
            .resolve(&req.id, take)
            .await
            .map_err(crate::grpc::status::op)?;
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
            .map_err(crate::grpc::status::op)?;
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
                Ok(arbor_agent::jobs::Unresolved {
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
            .map_err(crate::grpc::status::op)?;
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
        let run = jobs.run_now(&name).await.map_err(crate::grpc::status::op)?;
        Ok(Response::new(pb::SyncJobRun {
            json: serde_json::to_string(&run).map_err(|e| Status::internal(e.to_string()))?,
        }))
    }
}

/// Unresolved rows one QueueConflicts request may carry.
pub const MAX_QUEUED_CONFLICTS: usize = 100_000;
