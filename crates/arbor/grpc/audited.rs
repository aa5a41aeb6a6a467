//! The services an audit log watches: [`Audited`] wraps a service and
//! appends one [`arbor_agent::audit`] entry per call — who, what, dataset, run,
//! decision, outcome and counts; never values. AgentService (peers
//! exchanging hashes) is not audited: it is neither privileged nor an audit
//! read, and it is the hot path of every compare.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::proto::v1 as pb;
use crate::proto::v1::admin_service_server::AdminService;
use crate::proto::v1::audit_service_server::AuditService;
use crate::proto::v1::ingest_service_server::IngestService;
use crate::proto::v1::repair_service_server::RepairService;
use arbor_agent::access::Auth;
use arbor_agent::audit::{AuditLog, Record};

/// A service whose calls are written to the audit log and timed in the
/// metrics.
pub struct Audited<S> {
    inner: S,
    log: Arc<AuditLog>,
    metrics: Arc<Metrics>,
    auth: Option<Arc<Auth>>,
    /// Without `auth`: serve write and value calls too (`insecure = true`).
    insecure: bool,
}

/// Who called, and when the call started.
struct Caller {
    who: String,
    started: Instant,
}

impl<S> Audited<S> {
    /// `inner`, audited into `log` and timed into `metrics`.
    pub fn new(inner: S, log: Arc<AuditLog>, metrics: Arc<Metrics>) -> Audited<S> {
        Audited {
            inner,
            log,
            metrics,
            auth: None,
            insecure: false,
        }
    }

    /// Admits only callers whose principal holds the call's role.
    pub fn with_auth(mut self, auth: Option<Arc<Auth>>) -> Audited<S> {
        self.auth = auth;
        self
    }

    /// Without principals, serves write and value calls too (the config's
    /// `insecure = true`); otherwise they are refused.
    pub fn insecure(mut self, insecure: bool) -> Audited<S> {
        self.insecure = insecure;
        self
    }

    /// Authenticates and authorises a call (a refusal is audited as
    /// `denied`); the caller is named by its principal when there is one.
    fn admit<T>(
        &self,
        request: &Request<T>,
        call: &'static str,
        dataset: &str,
    ) -> Result<Caller, Status> {
        let mut caller = who(request);
        let decided = match &self.auth {
            Some(auth) => {
                crate::grpc::auth::check(auth, request, call, dataset).map(|p| p.name.clone())
            }
            None if !self.insecure && crate::grpc::auth::writes_or_reveals(call) => {
                Err(Status::permission_denied(format!(
                    "{call} writes or reveals values, and this agent has no [agent.auth]: \
                     add principals, or set insecure = true for a trial on one machine"
                )))
            }
            None => return Ok(caller),
        };
        match decided {
            Ok(name) => {
                caller.who = name;
                Ok(caller)
            }
            Err(status) => {
                self.log.record(Record {
                    who: caller.who,
                    call,
                    dataset: dataset.to_owned(),
                    run: String::new(),
                    decision: "denied",
                    outcome: format!("{:?}", status.code()),
                    counts: BTreeMap::new(),
                });
                Err(status)
            }
        }
    }

    /// Appends the entry of a finished call; `describe` gives the run and
    /// counts of a successful response.
    fn log<T>(
        &self,
        caller: Caller,
        call: &'static str,
        dataset: String,
        result: &Result<Response<T>, Status>,
        describe: impl FnOnce(&T) -> (String, BTreeMap<String, u64>),
    ) {
        let (outcome, (run, counts)) = match result {
            Ok(r) => ("ok".to_string(), describe(r.get_ref())),
            Err(s) => (format!("{:?}", s.code()), (String::new(), BTreeMap::new())),
        };
        self.metrics
            .observe_rpc(call, &outcome, caller.started.elapsed());
        let n = |k: &str| counts.get(k).copied().unwrap_or(0);
        match call {
            // A run that started is counted by the audit server when it
            // ends (it may end after this call, detached); here only
            // compares refused before a run began.
            "AuditService/Compare" if result.is_err() => {
                self.metrics.observe_run(&dataset, false, 0)
            }
            "RepairService/ApplyChanges" if result.is_ok() => {
                self.metrics
                    .observe_repair(n("applied"), n("already_applied"), n("conflicts"))
            }
            _ => {}
        }
        self.log.record(Record {
            who: caller.who,
            call,
            dataset,
            run,
            // Refusals are logged by `admit`.
            decision: "allowed",
            outcome,
            counts,
        });
    }
}

fn who<T>(r: &Request<T>) -> Caller {
    Caller {
        who: r
            .remote_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.to_string()),
        started: Instant::now(),
    }
}

fn counts<const N: usize>(pairs: [(&str, u64); N]) -> BTreeMap<String, u64> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn none<T>(_: &T) -> (String, BTreeMap<String, u64>) {
    (String::new(), BTreeMap::new())
}

fn run_counts(r: &pb::RunSummary) -> (String, BTreeMap<String, u64>) {
    (
        r.run_id.clone(),
        counts([
            ("missing_left", r.missing_left),
            ("missing_right", r.missing_right),
            ("changed", r.changed),
        ]),
    )
}

#[tonic::async_trait]
impl<S: AuditService> AuditService for Audited<S> {
    type StreamDriftStream = S::StreamDriftStream;

    async fn compare(
        &self,
        request: Request<pb::CompareRequest>,
    ) -> Result<Response<pb::RunSummary>, Status> {
        let d = request.get_ref().dataset.clone();
        let w = self.admit(&request, "AuditService/Compare", &d)?;
        let result = self.inner.compare(request).await;
        self.log(w, "AuditService/Compare", d, &result, run_counts);
        result
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::RunSummary>, Status> {
        let w = self.admit(&request, "AuditService/GetRun", "")?;
        let result = self.inner.get_run(request).await;
        self.log(w, "AuditService/GetRun", String::new(), &result, run_counts);
        result
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let d = request.get_ref().dataset.clone();
        let w = self.admit(&request, "AuditService/ListRuns", &d)?;
        let result = self.inner.list_runs(request).await;
        self.log(w, "AuditService/ListRuns", d, &result, |r| {
            (String::new(), counts([("runs", r.runs.len() as u64)]))
        });
        result
    }

    async fn stream_drift(
        &self,
        request: Request<pb::StreamDriftRequest>,
    ) -> Result<Response<Self::StreamDriftStream>, Status> {
        let run = request.get_ref().run_id.clone();
        let w = self.admit(&request, "AuditService/StreamDrift", "")?;
        let result = self.inner.stream_drift(request).await;
        self.log(
            w,
            "AuditService/StreamDrift",
            String::new(),
            &result,
            |_| (run, BTreeMap::new()),
        );
        result
    }

    async fn reconcile(
        &self,
        request: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileResponse>, Status> {
        let d = request.get_ref().dataset.clone();
        let w = self.admit(&request, "AuditService/Reconcile", &d)?;
        let result = self.inner.reconcile(request).await;
        self.log(w, "AuditService/Reconcile", d, &result, |r| {
            let report = r.report.clone().unwrap_or_default();
            (
                report.run_id,
                counts([
                    ("drift", report.drift),
                    ("applied", report.applied),
                    ("conflicts", report.conflicts),
                ]),
            )
        });
        result
    }
}

#[tonic::async_trait]
impl<S: AdminService> AdminService for Audited<S> {
    async fn reindex(
        &self,
        request: Request<pb::ReindexRequest>,
    ) -> Result<Response<pb::IndexStatus>, Status> {
        let d = request.get_ref().dataset.clone();
        let w = self.admit(&request, "AdminService/Reindex", &d)?;
        let result = self.inner.reindex(request).await;
        self.log(w, "AdminService/Reindex", d, &result, |r| {
            (String::new(), counts([("records", r.count)]))
        });
        result
    }

    async fn get_index_status(
        &self,
        request: Request<pb::IndexStatusRequest>,
    ) -> Result<Response<pb::IndexStatus>, Status> {
        let d = request.get_ref().dataset.clone();
        let w = self.admit(&request, "AdminService/GetIndexStatus", &d)?;
        let result = self.inner.get_index_status(request).await;
        self.log(w, "AdminService/GetIndexStatus", d, &result, none);
        result
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let d = request.get_ref().dataset.clone();
        let w = self.admit(&request, "AdminService/Verify", &d)?;
        let result = self.inner.verify(request).await;
        self.log(w, "AdminService/Verify", d, &result, |r| {
            (
                String::new(),
                counts([
                    ("records", r.records),
                    ("node_mismatches", r.node_mismatches),
                ]),
            )
        });
        result
    }

    async fn list_sync_jobs(
        &self,
        request: Request<pb::ListSyncJobsRequest>,
    ) -> Result<Response<pb::ListSyncJobsResponse>, Status> {
        let w = self.admit(&request, "AdminService/ListSyncJobs", "")?;
        let result = self.inner.list_sync_jobs(request).await;
        self.log(w, "AdminService/ListSyncJobs", String::new(), &result, none);
        result
    }

    async fn run_sync_job(
        &self,
        request: Request<pb::RunSyncJobRequest>,
    ) -> Result<Response<pb::SyncJobRun>, Status> {
        let job = request.get_ref().name.clone();
        let w = self.admit(&request, "AdminService/RunSyncJob", "")?;
        let result = self.inner.run_sync_job(request).await;
        self.log(w, "AdminService/RunSyncJob", String::new(), &result, |_| {
            (job, BTreeMap::new())
        });
        result
    }

    async fn list_sync_runs(
        &self,
        request: Request<pb::ListSyncRunsRequest>,
    ) -> Result<Response<pb::ListSyncRunsResponse>, Status> {
        let job = request.get_ref().job.clone();
        let w = self.admit(&request, "AdminService/ListSyncRuns", "")?;
        let result = self.inner.list_sync_runs(request).await;
        self.log(
            w,
            "AdminService/ListSyncRuns",
            String::new(),
            &result,
            |_| (job, BTreeMap::new()),
        );
        result
    }

    async fn list_conflicts(
        &self,
        request: Request<pb::ListConflictsRequest>,
    ) -> Result<Response<pb::ListConflictsResponse>, Status> {
        let w = self.admit(&request, "AdminService/ListConflicts", "")?;
        let result = self.inner.list_conflicts(request).await;
        self.log(
            w,
            "AdminService/ListConflicts",
            String::new(),
            &result,
            |r| {
                (
                    String::new(),
                    counts([("conflicts", r.conflicts.len() as u64)]),
                )
            },
        );
        result
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let d = request.get_ref().dataset.clone();
        let w = self.admit(&request, "AdminService/RotateKey", &d)?;
        let result = self.inner.rotate_key(request).await;
        self.log(w, "AdminService/RotateKey", d, &result, |r| {
            (String::new(), counts([("records", r.records)]))
        });
        result
    }

    async fn queue_conflicts(
        &self,
        request: Request<pb::QueueConflictsRequest>,
    ) -> Result<Response<pb::QueueConflictsResponse>, Status> {
        let d = request.get_ref().dataset.clone();
        let w = self.admit(&request, "AdminService/QueueConflicts", &d)?;
        let result = self.inner.queue_conflicts(request).await;
        self.log(w, "AdminService/QueueConflicts", d, &result, |r| {
            (String::new(), counts([("conflicts", r.ids.len() as u64)]))
        });
        result
    }

    async fn resolve_conflict(
        &self,
        request: Request<pb::ResolveConflictRequest>,
    ) -> Result<Response<pb::SyncJobRun>, Status> {
        let id = request.get_ref().id.clone();
        let w = self.admit(&request, "AdminService/ResolveConflict", "")?;
        let result = self.inner.resolve_conflict(request).await;
        self.log(
            w,
            "AdminService/ResolveConflict",
            String::new(),
            &result,
            |_| (id, BTreeMap::new()),
        );
        result
    }
}

#[tonic::async_trait]
impl<S: IngestService> IngestService for Audited<S> {
    async fn ingest_changes(
        &self,
        request: Request<pb::IngestRequest>,
    ) -> Result<Response<pb::IngestResponse>, Status> {
        let d = request.get_ref().dataset.clone();
        let w = self.admit(&request, "IngestService/IngestChanges", &d)?;
        let result = self.inner.ingest_changes(request).await;
        self.log(w, "IngestService/IngestChanges", d, &result, |r| {
            (
                String::new(),
                counts([
                    ("inserted", r.inserted),
                    ("updated", r.updated),
                    ("deleted", r.deleted),
                ]),
            )
        });
        result
    }
}

#[tonic::async_trait]
impl<S: RepairService> RepairService for Audited<S> {
    type FetchRecordsStream = S::FetchRecordsStream;

    async fn fetch_records(
        &self,
        request: Request<pb::FetchRecordsRequest>,
    ) -> Result<Response<Self::FetchRecordsStream>, Status> {
        let d = request.get_ref().dataset.clone();
        let w = self.admit(&request, "RepairService/FetchRecords", &d)?;
        let keys = request.get_ref().canonical_keys.len() as u64;
        let result = self.inner.fetch_records(request).await;
        self.log(w, "RepairService/FetchRecords", d, &result, |_| {
            (String::new(), counts([("keys", keys)]))
        });
        result
    }

    async fn apply_changes(
        &self,
        request: Request<pb::ApplyChangesRequest>,
    ) -> Result<Response<pb::ApplyChangesResponse>, Status> {
        let d = request.get_ref().dataset.clone();
        let w = self.admit(&request, "RepairService/ApplyChanges", &d)?;
        let (run, batch) = (request.get_ref().run_id.clone(), request.get_ref().batch);
        let result = self.inner.apply_changes(request).await;
        self.log(w, "RepairService/ApplyChanges", d, &result, |r| {
            let of = |o: pb::WriteOutcome| {
                r.results.iter().filter(|x| x.outcome == o as i32).count() as u64
            };
            (
                run,
                counts([
                    ("batch", batch),
                    ("writes", r.results.len() as u64),
                    ("applied", of(pb::WriteOutcome::Applied)),
                    ("already_applied", of(pb::WriteOutcome::AlreadyApplied)),
                    ("conflicts", of(pb::WriteOutcome::Conflict)),
                    ("replayed", u64::from(r.replayed)),
                ]),
            )
        });
        result
    }
}
