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
use std::path::PathBuf;
use std::sync::Arc;

use arbor_index::{IndexError, RunStore};
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
        .map_err(|e| AgentError::DataDir {
            path: PathBuf::from(at.to_string()),
            source: e,
        })
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
            match crate::grpc::auth::check(auth, &request, "AgentService/*", "") {
                Ok(principal) => {
                    // The service checks the dataset each message names.
                    if let Some(scope) = crate::grpc::auth::scope_of(auth, &request) {
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
        crate::grpc::audited::Audited::new(
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
        arbor_agent::jobs::Jobs::new(&config.syncs, self_address.clone(), crate::sync::GrpcRemote)
            .with_store(Arc::clone(&runs))
            .with_repairs(repairs.clone()),
    );
    let admin_service = AdminServiceServer::new(
        crate::grpc::audited::Audited::new(
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
        crate::grpc::audited::Audited::new(
            IngestServer::new(Arc::clone(&state)),
            Arc::clone(&audit_log),
            Arc::clone(&metrics),
        )
        .with_auth(auth.clone())
        .insecure(config.insecure),
    )
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let repair_service = crate::proto::v1::repair_service_server::RepairServiceServer::new(
        crate::grpc::audited::Audited::new(
            crate::grpc::repair::RepairServer::new(repairs),
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
        crate::grpc::client::set_client_tls(
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
