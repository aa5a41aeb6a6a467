//! The agent: one process beside one system, serving its datasets.
//!
//! Start-up opens each dataset's system read-only (a missing table or
//! column stops the agent with the dataset's name), opens its index under
//! `data_dir/indexes/<name>` and starts serving at once, with
//! `grpc.health.v1` answering NOT_SERVING and compares refused until every
//! dataset has been indexed from its system. Then it serves:
//!
//! * `AgentService` (peers: hashes only), see [`crate::grpc::agent`];
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

use std::net::SocketAddr;
use std::sync::Arc;

use arbor_index::RunStore;
use tonic::Request;
use tracing::{info, warn};

use crate::grpc::admin::AdminServer;
use crate::grpc::agent::AgentServer;
use crate::grpc::audit::AuditServer;
use crate::grpc::client::{MAX_MESSAGE_BYTES, RetryPolicy};
use crate::grpc::ingest::IngestServer;
use crate::proto::v1::admin_service_server::AdminServiceServer;
use crate::proto::v1::agent_service_server::AgentServiceServer;
use crate::proto::v1::audit_service_server::AuditServiceServer;
use crate::proto::v1::ingest_service_server::IngestServiceServer;
use arbor_agent::capture::{prepare_and_index, start_capture};
use arbor_agent::config::{AgentConfig, DatasetConfig};
use arbor_agent::dataset::{AgentState, Dataset, ServiceLimits};
use arbor_agent::error::AgentError;
use arbor_agent::maintain::{prune_runs_daily, prune_tombstones_daily};
use arbor_agent::report::fail_orphaned_runs;
use arbor_agent::startup::open_datasets;

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

/// A listener for one of the agent's extra ports (metrics, health).
async fn bind(at: SocketAddr) -> Result<tokio::net::TcpListener, AgentError> {
    tokio::net::TcpListener::bind(at)
        .await
        .map_err(|source| AgentError::Listen { addr: at, source })
}

/// The `grpc.health.v1` service name that answers SERVING as soon as the
/// agent listens (liveness); the empty name answers SERVING only once every
/// dataset is indexed (readiness).
pub const LIVENESS_SERVICE: &str = "arbor.liveness";

/// Opens the datasets and the run store, and fails runs an earlier
/// process left running.
async fn open_state(config: &AgentConfig) -> Result<(Arc<AgentState>, Arc<RunStore>), AgentError> {
    // Connectors may block (and the PostgreSQL driver runs its own
    // runtime): sources are only ever touched on the blocking pool.
    let opening = config.clone();
    let datasets = tokio::task::spawn_blocking(move || open_datasets(&opening))
        .await
        .map_err(|e| AgentError::Startup(format!("opening datasets: {e}")))??;
    let runs = Arc::new(RunStore::open(config.data_dir.join("runs")).map_err(AgentError::Runs)?);
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
    Ok((state, runs))
}

/// Says what an agent without `[agent.auth]` lets callers do.
fn warn_about_access(config: &AgentConfig) {
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
}

/// Server reflection (v1 and v1alpha) over arbor's and health's protos.
fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    AgentError,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let failed =
        |e: tonic_reflection::server::Error| AgentError::Startup(format!("reflection: {e}"));
    Ok((
        builder().build_v1().map_err(failed)?,
        builder().build_v1alpha().map_err(failed)?,
    ))
}

/// How this agent's own address is written for its clients.
fn self_address(addr: SocketAddr, tls: bool) -> String {
    let host = if addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(host, addr.port()))
}

/// AgentService (peers' hash exchange), gated by the principals but not
/// audited: a denial leaves a line in the audit log.
fn agent_service(
    state: Arc<AgentState>,
    auth: Option<Arc<arbor_agent::access::Auth>>,
    audit_log: Arc<arbor_agent::audit::AuditLog>,
) -> tonic::service::interceptor::InterceptedService<
    AgentServiceServer<AgentServer>,
    impl tonic::service::Interceptor + Clone,
> {
    tonic::service::interceptor::InterceptedService::new(
        AgentServiceServer::new(AgentServer::new(state))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        move |mut request: Request<()>| {
            let Some(auth) = &auth else {
                return Ok(request);
            };
            match crate::grpc::auth::check(auth, &request, "AgentService/*", "") {
                Ok(principal) => {
                    // The service checks the dataset each message names.
                    if let Some(datasets) = &principal.datasets {
                        request
                            .extensions_mut()
                            .insert(crate::grpc::auth::DatasetScope(datasets.clone()));
                    }
                    // Sessions are counted per principal.
                    let owner = arbor_agent::dataset::SessionOwner(principal.name.clone());
                    request.extensions_mut().insert(owner);
                    Ok(request)
                }
                Err(status) => {
                    audit_log.record(arbor_agent::audit::Record {
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
    )
}

/// What every audited service shares: the audit log, metrics, principals.
#[derive(Clone)]
struct Edge {
    audit_log: Arc<arbor_agent::audit::AuditLog>,
    metrics: Arc<crate::metrics::Metrics>,
    auth: Option<Arc<arbor_agent::access::Auth>>,
    insecure: bool,
}

impl Edge {
    /// `service` behind the audit log, its metrics and access control.
    fn audited<S>(&self, service: S) -> crate::grpc::audited::Audited<S> {
        crate::grpc::audited::Audited::new(
            service,
            Arc::clone(&self.audit_log),
            Arc::clone(&self.metrics),
        )
        .with_auth(self.auth.clone())
        .insecure(self.insecure)
    }
}

/// The server's TLS from `[agent.tls]`; the same material is this
/// process's client identity towards its peers.
fn with_tls(
    builder: tonic::transport::Server,
    config: &AgentConfig,
) -> Result<tonic::transport::Server, AgentError> {
    let Some(tls) = &config.tls else {
        return Ok(builder);
    };
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let mut server_tls = ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key));
    if let Some(ca) = &tls.client_ca {
        // Mutual TLS: a client without a certificate from this CA is
        // refused during the handshake.
        server_tls = server_tls.client_ca_root(Certificate::from_pem(ca));
    }
    let builder = builder
        .tls_config(server_tls)
        .map_err(|e| AgentError::Tls(e.to_string()))?;
    crate::grpc::client::set_client_tls(
        tls.ca.as_deref(),
        Some((&tls.client_identity.0, &tls.client_identity.1)),
    );
    Ok(builder)
}

/// Indexes every dataset while the server already answers (NOT_SERVING),
/// each on its own: one that fails is reported and retried with backoff
/// while the others serve. Then readiness, sync jobs and pruning.
async fn index_all(
    config: &AgentConfig,
    state: Arc<AgentState>,
    runs: Arc<RunStore>,
    health: tonic_health::server::HealthReporter,
    jobs: Arc<arbor_agent::jobs::Jobs<crate::sync::GrpcRemote>>,
) {
    let mut first_attempts = Vec::new();
    for dc in config.datasets.clone() {
        let Ok(ds) = state.dataset(&dc.name).map(Arc::clone) else {
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
    let failed: Vec<String> = state
        .dataset_names()
        .into_iter()
        .filter(|n| state.dataset(n).is_ok_and(|ds| ds.failure().is_some()))
        .collect();
    if failed.is_empty() {
        info!("all datasets indexed; serving");
    } else {
        warn!(failed = ?failed, "serving; these datasets failed to index and are retried");
    }
    jobs.spawn(&state);
    tokio::spawn(prune_tombstones_daily(
        Arc::clone(&state),
        config.tombstone_retention,
    ));
    tokio::spawn(prune_runs_daily(runs, config.runs_retention));
}

/// Runs the agent until `shutdown` resolves. `on_listening` is called with
/// the bound address once the port is open (before indexing finishes).
/// (Long on purpose: the wiring of every service in the order it happens;
/// each step it takes is a named function above.)
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
    let (state, runs) = open_state(&config).await?;
    warn_about_access(&config);

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    // The process answers: liveness, as opposed to readiness ("").
    health
        .set_service_status(LIVENESS_SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    let (reflection_v1, reflection_v1alpha) = reflection()?;

    let listen_error = |source| AgentError::Listen {
        addr: config.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    on_listening(addr);
    info!(%addr, datasets = ?state.dataset_names(), "agent listening");
    let self_address = self_address(addr, config.tls.is_some());

    let auth = config.auth.clone().map(Arc::new);
    // Every privileged or audit call leaves a line in the audit log.
    let audit_log = Arc::new(arbor_agent::audit::AuditLog::open(&config.audit_log)?);
    let metrics = Arc::new(crate::metrics::Metrics::default());
    if let Some(at) = config.metrics_listen {
        let listener = bind(at).await?;
        tokio::spawn(crate::metrics::serve(
            listener,
            Arc::clone(&metrics),
            Arc::clone(&state),
        ));
    }
    let edge = Edge {
        audit_log: Arc::clone(&audit_log),
        metrics: Arc::clone(&metrics),
        auth: auth.clone(),
        insecure: config.insecure,
    };
    // The agent's repair machinery: RepairService serves it to peers; its
    // own jobs and Reconcile call it in process.
    let repairs =
        arbor_agent::repair::Repairs::new(Arc::clone(&state), Arc::clone(&runs), &config.datasets);
    let audit_service = AuditServiceServer::new(
        edge.audited(
            AuditServer::new(
                Arc::clone(&state),
                Arc::clone(&runs),
                RetryPolicy::default(),
            )
            .with_self_address(self_address.clone())
            .with_repairs(repairs.clone())
            .with_metrics(Arc::clone(&metrics)),
        ),
    );
    let jobs = Arc::new(
        arbor_agent::jobs::Jobs::new(&config.syncs, self_address, crate::sync::GrpcRemote)
            .with_store(Arc::clone(&runs))
            .with_repairs(repairs.clone()),
    );
    let admin_service = AdminServiceServer::new(
        edge.audited(
            AdminServer::new(Arc::clone(&state))
                .with_jobs(Arc::clone(&jobs))
                .with_config(Arc::new(config.clone())),
        ),
    );
    let ingest_service =
        IngestServiceServer::new(edge.audited(IngestServer::new(Arc::clone(&state))))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let repair_service = crate::proto::v1::repair_service_server::RepairServiceServer::new(
        edge.audited(crate::grpc::repair::RepairServer::new(repairs)),
    )
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let builder = with_tls(tonic::transport::Server::builder(), &config)?;
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
        .add_service(agent_service(Arc::clone(&state), auth, audit_log))
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
    let (served, ()) = tokio::join!(server, index_all(&config, state, runs, health, jobs));
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

    #[tokio::test]
    async fn a_port_in_use_is_named_as_such() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = taken.local_addr().unwrap();
        let e = bind(at).await.unwrap_err();
        assert_eq!(e.to_string(), format!("cannot listen on {at}"));
        assert!(matches!(e, AgentError::Listen { .. }));
    }
}
