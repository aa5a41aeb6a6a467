//! The gRPC client of a remote agent, as a [`Peer`] for the descent.
//!
//! `describe` opens a session on the agent (a pinned snapshot); every later
//! call names it, and `finish` ends it. Transient failures (`Unavailable`,
//! `ResourceExhausted`, `DeadlineExceeded`) are retried with exponential
//! backoff, since every call of a session is an idempotent read of one
//! snapshot. If the agent restarts, the session is gone and the compare
//! fails with the agent's reason rather than mixing two states.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arbor_index::{Description, Leaf};
use arbor_record::KeyId;
use arbor_sync::{Peer, PeerError};
use arbor_tree::{Node, Prefix};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::warn;

use crate::proto::v1 as pb;
use crate::proto::v1::agent_service_client::AgentServiceClient;
use crate::wire;

/// Largest gRPC message either side accepts.
pub use arbor_sync::wire::MAX_MESSAGE_BYTES;

/// The TLS every `https://` address of this process is reached with: set
/// once, at agent start from `[agent.tls]`, or at CLI start from
/// `ARBOR_TLS_CA` / `ARBOR_TLS_CERT` / `ARBOR_TLS_KEY`.
static CLIENT_TLS: std::sync::OnceLock<tonic::transport::ClientTlsConfig> =
    std::sync::OnceLock::new();

/// Sets the process's client TLS (the first call wins).
pub fn set_client_tls(ca: Option<&[u8]>, identity: Option<(&[u8], &[u8])>) {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new().with_enabled_roots();
    if let Some(ca) = ca {
        tls = tls.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let _ = CLIENT_TLS.set(tls);
}

/// Longest a peer's Describe may take. It is a run's first call and opens
/// the connection: a peer that accepts TCP but never speaks HTTP/2 (a
/// black hole) is bounded neither by the connect timeout, which ends with
/// TCP, nor by the keep-alive, which starts once HTTP/2 is up. A peer that
/// describes its index answers in milliseconds.
pub const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a connection to an agent is pinged (HTTP/2 PING).
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is closed.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// An endpoint for an agent address: `http://` in clear, `https://` with
/// the process's client TLS.
pub fn endpoint(address: &str) -> Result<Endpoint, String> {
    let endpoint = Endpoint::from_shared(address.to_owned())
        .map_err(|e| format!("invalid agent address {address:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // A link that goes silent (a peer's host gone, a half-open
        // connection, a black hole) fails the calls on it within about
        // KEEP_ALIVE_INTERVAL + KEEP_ALIVE_TIMEOUT instead of hanging them
        // for ever; they are then retried where the caller retries.
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if !address.starts_with("https://") {
        // A bearer token is a password: it never crosses a network in clear.
        if matches!(BEARER.get(), Some(Some(_))) && !is_loopback(endpoint.uri().host()) {
            return Err(format!(
                "refusing to send ARBOR_TOKEN in plaintext to {address}: use https:// (the \
                 agent's [agent.tls]), or unset ARBOR_TOKEN"
            ));
        }
        return Ok(endpoint);
    }
    let tls = CLIENT_TLS
        .get()
        .cloned()
        .unwrap_or_else(|| tonic::transport::ClientTlsConfig::new().with_enabled_roots());
    endpoint
        .tls_config(tls)
        .map_err(|e| format!("TLS for {address}: {e}"))
}

/// Whether a URI host is this machine: `localhost`, 127.0.0.0/8 or `::1`.
fn is_loopback(host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// How a client retries transient failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Wait before the first retry; doubles after each.
    pub first_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// Deadline of each call.
    pub call_timeout: Duration,
    /// No retry starts once this long has passed since the first attempt
    /// (`None`: `attempts` alone bounds them). Attempts that each wait out
    /// a deadline (a peer that never answers) would otherwise stretch a
    /// span meant for an agent's restart many times over.
    pub span: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            call_timeout: Duration::from_secs(60),
            span: None,
        }
    }
}

impl RetryPolicy {
    /// Retries transient failures for about `span` (an agent restarting, or
    /// catching up with its system, answers Unavailable meanwhile).
    pub fn spanning(span: Duration) -> RetryPolicy {
        let base = RetryPolicy::default();
        let attempts = (span.as_secs() / base.max_backoff.as_secs().max(1)) as u32 + base.attempts;
        RetryPolicy {
            attempts: attempts.max(base.attempts),
            span: Some(span),
            ..base
        }
    }
}

/// A function adding the process's bearer token to a call.
pub type BearerFn = fn(tonic::Request<()>) -> Result<tonic::Request<()>, Status>;
/// A channel whose calls carry the process's bearer token, if it has one.
pub type Authed = tonic::service::interceptor::InterceptedService<Channel, BearerFn>;

/// The bearer token every outgoing call of this process carries: the
/// CLI's `ARBOR_TOKEN` (an agent started with it presents it to its peers
/// too, for sync runs and column names), as an `authorization` value.
static BEARER: std::sync::OnceLock<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>> =
    std::sync::OnceLock::new();

/// Sets the process's bearer token (once; later calls are ignored). An
/// error if it cannot be a header value.
pub fn set_bearer_token(token: &str) -> Result<(), String> {
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token has characters a header cannot carry".to_string())?;
    let _ = BEARER.set(Some(value));
    Ok(())
}

/// Adds `authorization: Bearer <token>` when the process has a token.
fn bearer(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
    if let Some(Some(value)) = BEARER.get() {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    Ok(request)
}

/// `channel` with the process's bearer token on every call.
pub fn authed(channel: Channel) -> Authed {
    tonic::service::interceptor::InterceptedService::new(channel, bearer as BearerFn)
}

/// A dataset on a remote agent.
pub struct GrpcPeer {
    client: AgentServiceClient<Authed>,
    address: String,
    dataset: String,
    session: AtomicU64,
    retry: RetryPolicy,
}

/// Whether a failed call may succeed if tried again. A connection that broke
/// mid-call surfaces as `Unknown` with the transport error as its source
/// (a status decoded from an agent's reply never has a local source).
pub(crate) fn is_transient(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded
    ) || (s.code() == Code::Unknown && std::error::Error::source(s).is_some())
}

fn peer_error(address: &str, s: Status) -> PeerError {
    let what = format!("{address}: {} ({:?})", s.message(), s.code());
    if is_transient(&s) {
        PeerError::Unavailable(what)
    } else {
        PeerError::Refused(what)
    }
}

impl GrpcPeer {
    /// A peer for `dataset` on the agent at `address` (`http://host:port`).
    /// Connects lazily: an unreachable agent fails the first call. Must be
    /// called within a Tokio runtime (the connection's worker is spawned on it).
    pub fn new(
        address: &str,
        dataset: impl Into<String>,
        retry: RetryPolicy,
    ) -> Result<GrpcPeer, PeerError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(PeerError::Refused(format!(
                "cannot connect to {address}: no Tokio runtime is running"
            )));
        }
        let endpoint = endpoint(address)
            .map_err(PeerError::Refused)?
            .timeout(retry.call_timeout);
        let client = AgentServiceClient::new(authed(endpoint.connect_lazy()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(GrpcPeer {
            client,
            address: address.to_owned(),
            dataset: dataset.into(),
            session: AtomicU64::new(0),
            retry,
        })
    }

    async fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, PeerError>
    where
        F: Fn(AgentServiceClient<Authed>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut backoff = self.retry.first_backoff;
        let mut attempt = 1;
        let started = std::time::Instant::now();
        let within_span = |backoff: Duration| {
            self.retry
                .span
                .is_none_or(|span| started.elapsed() + backoff < span)
        };
        loop {
            match f(self.client.clone()).await {
                Ok(v) => return Ok(v),
                Err(s)
                    if is_transient(&s)
                        && attempt < self.retry.attempts
                        && within_span(backoff) =>
                {
                    warn!(peer = %self.address, call = what, attempt, code = ?s.code(), "transient peer error, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                    attempt += 1;
                }
                Err(s) => return Err(peer_error(&self.address, s)),
            }
        }
    }

    fn session(&self) -> u64 {
        self.session.load(Ordering::Acquire)
    }

    /// The agent's address.
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Peer for GrpcPeer {
    fn dataset(&self) -> &str {
        &self.dataset
    }

    async fn describe(&self) -> Result<Description, PeerError> {
        self.describe_under(None).await
    }

    async fn switch_key(&self, key_id: KeyId) -> Result<Option<Description>, PeerError> {
        let previous = self.session();
        let description = self.describe_under(Some(key_id)).await?;
        if description.key_id != key_id {
            // The agent does not hold that key: back to the first session.
            self.finish().await;
            self.session.store(previous, Ordering::Release);
            return Ok(None);
        }
        self.end(previous).await;
        Ok(Some(description))
    }

    async fn column_digests(
        &self,
        keys: &[Vec<u8>],
        key_id: Option<KeyId>,
    ) -> Result<arbor_sync::ColumnDigests, PeerError> {
        let req = pb::ColumnDigestsRequest {
            dataset: self.dataset.clone(),
            keys: keys.to_vec(),
            key_id: key_id.map(|k| k.0.to_vec()).unwrap_or_default(),
        };
        let resp = self
            .call("ColumnDigests", |mut c| {
                let req = req.clone();
                async move { c.column_digests(req).await.map(tonic::Response::into_inner) }
            })
            .await?;
        wire::column_digests_from_response(keys, resp)
            .map_err(|e| PeerError::Malformed(format!("{}: {e}", self.address)))
    }

    async fn children(&self, parents: &[Prefix]) -> Result<Vec<(Prefix, Node)>, PeerError> {
        let Some(level) = parents.first().map(|p| p.level()) else {
            return Ok(Vec::new());
        };
        let req = pb::GetNodesRequest {
            dataset: self.dataset.clone(),
            level: u32::from(level),
            parents: wire::gaps(parents.iter().map(|p| p.value())),
            session: self.session(),
        };
        let resp = self
            .call("GetNodes", |mut c| {
                let req = req.clone();
                async move { c.get_nodes(req).await.map(tonic::Response::into_inner) }
            })
            .await?;
        wire::children_from_response(level + 1, &resp)
            .map_err(|e| PeerError::Malformed(format!("{}: {e}", self.address)))
    }

    async fn leaves(&self, ranges: &[Prefix]) -> Result<Vec<Leaf>, PeerError> {
        let req = pb::StreamLeavesRequest {
            dataset: self.dataset.clone(),
            ranges: ranges
                .iter()
                .map(|r| pb::Range {
                    level: u32::from(r.level()),
                    prefix: r.value(),
                })
                .collect(),
            session: self.session(),
        };
        // The whole stream is retried: a partial stream is never used.
        self.call("StreamLeaves", |mut c| {
            let req = req.clone();
            let address = self.address.clone();
            async move {
                let mut stream = c.stream_leaves(req).await?.into_inner();
                let mut out = Vec::new();
                while let Some(batch) = stream.message().await? {
                    for e in batch.leaves {
                        out.push(
                            wire::leaf(e)
                                .map_err(|m| Status::data_loss(format!("{address}: {m}")))?,
                        );
                    }
                }
                Ok(out)
            }
        })
        .await
    }

    async fn finish(&self) {
        let session = self.session.swap(0, Ordering::AcqRel);
        self.end(session).await;
    }
}

impl GrpcPeer {
    /// Opens a session, under the key `key_id` if the agent holds it.
    async fn describe_under(&self, key_id: Option<KeyId>) -> Result<Description, PeerError> {
        let req = pb::DescribeRequest {
            dataset: self.dataset.clone(),
            key_id: key_id.map(|k| k.0.to_vec()).unwrap_or_default(),
        };
        let resp = self
            .call("Describe", |mut c| {
                let req = req.clone();
                async move {
                    match tokio::time::timeout(DESCRIBE_TIMEOUT, c.describe(req)).await {
                        Ok(answer) => answer.map(tonic::Response::into_inner),
                        Err(_) => Err(Status::deadline_exceeded(format!(
                            "no answer to Describe within {} s",
                            DESCRIBE_TIMEOUT.as_secs()
                        ))),
                    }
                }
            })
            .await?;
        let (description, session) = wire::description(&resp)
            .map_err(|e| PeerError::Malformed(format!("{}: {e}", self.address)))?;
        self.session.store(session, Ordering::Release);
        Ok(description)
    }

    /// Ends a session on the agent (best effort: it would expire anyway).
    async fn end(&self, session: u64) {
        if session == 0 {
            return;
        }
        let req = pb::EndSessionRequest {
            dataset: self.dataset.clone(),
            session,
        };
        if let Err(s) = self.client.clone().end_session(req).await {
            warn!(peer = %self.address, code = ?s.code(), "could not end the session; it will expire");
        }
    }
}
