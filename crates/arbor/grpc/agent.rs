//! `AgentService`: the peer-facing gRPC service of an agent (hashes only).
//!
//! Each Describe pins a snapshot of the dataset's index in a **session**;
//! GetNodes and StreamLeaves name the session, so every answer of one
//! compare comes from the same state. Sessions (and their limits) are
//! [`arbor_agent::dataset`]'s; this service opens them for a caller: the
//! principal the interceptor authenticated, else the caller's address.
//!
//! Requests are validated before any work (prefix ranges, ordering, batch
//! sizes): a bad request is `InvalidArgument`, an unknown dataset or
//! session `NotFound`, and the agent keeps serving. RocksDB reads run on the
//! blocking pool; leaves are streamed as they are read, with backpressure.

use std::pin::Pin;
use std::sync::Arc;

use arbor_index::SharedSnapshot;
use arbor_tree::{MAX_LEVEL, Prefix};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, instrument};

use crate::grpc::status::index_status;
use crate::proto::v1 as pb;
use crate::proto::v1::agent_service_server::AgentService;
use crate::wire;
use arbor_agent::dataset::{AgentState, MAX_COLUMN_DIGEST_KEYS, SessionOwner};

/// Leaves per streamed `LeafBatch` (matches `arbor_sync::wire::LEAVES_PER_MESSAGE`).
pub const LEAVES_PER_BATCH: usize = arbor_sync::wire::LEAVES_PER_MESSAGE;
/// Leaf batches buffered ahead of a slow reader.
const LEAF_STREAM_BUFFER: usize = 4;
pub use arbor_agent::config::DEFAULT_MAX_RUNS_PER_DATASET;

/// Who a request's session belongs to: the principal the agent's
/// interceptor authenticated, else the caller's address (its IP: one
/// machine's connections share a quota).
fn session_owner<T>(request: &Request<T>) -> String {
    if let Some(owner) = request.extensions().get::<SessionOwner>() {
        return owner.0.clone();
    }
    request
        .remote_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string())
}

/// The gRPC implementation of `arbor.v1.AgentService`.
#[derive(Clone)]
pub struct AgentServer {
    state: Arc<AgentState>,
}

impl AgentServer {
    /// A service over shared agent state.
    pub fn new(state: Arc<AgentState>) -> AgentServer {
        AgentServer { state }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("index task failed: {e}")))?
}

fn ascending(field: &'static str, prefixes: &[Prefix]) -> Result<(), Status> {
    for w in prefixes.windows(2) {
        if w[0].range().end() >= w[1].range().start() {
            return Err(Status::invalid_argument(format!(
                "{field}: {} and {} are not ascending and disjoint",
                w[0], w[1]
            )));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl AgentService for AgentServer {
    #[instrument(skip_all, fields(dataset = %request.get_ref().dataset))]
    async fn describe(
        &self,
        request: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::DescribeResponse>, Status> {
        crate::grpc::auth::DatasetScope::admit(&request, &request.get_ref().dataset)?;
        let owner = session_owner(&request);
        let req = request.into_inner();
        let dataset = req.dataset;
        let wanted = wire::optional_key_id("DescribeRequest.key_id", &req.key_id)?;
        let ds = self
            .state
            .comparable(&dataset)
            .map_err(crate::grpc::status::op)?;
        let index = wanted
            .and_then(|k| ds.index_for(k))
            .unwrap_or_else(|| ds.index());
        let (snapshot, description) = blocking(move || {
            let snapshot = SharedSnapshot::new(index).map_err(index_status)?;
            let description = snapshot.get().describe().map_err(index_status)?;
            Ok((snapshot, description))
        })
        .await?;
        let session = self
            .state
            .open_session(&dataset, &owner, snapshot)
            .map_err(crate::grpc::status::op)?;
        debug!(session, records = description.count(), "session opened");
        Ok(Response::new(wire::describe_response(
            &description,
            session,
        )))
    }

    #[instrument(skip_all, fields(dataset = %request.get_ref().dataset, level = request.get_ref().level, parents = request.get_ref().parents.len()))]
    async fn get_nodes(
        &self,
        request: Request<pb::GetNodesRequest>,
    ) -> Result<Response<pb::GetNodesResponse>, Status> {
        crate::grpc::auth::DatasetScope::admit(&request, &request.get_ref().dataset)?;
        let req = request.into_inner();
        if req.parents.len() > self.state.limits().max_parents_per_request {
            return Err(Status::invalid_argument(format!(
                "GetNodesRequest.parents: {} parents, at most {} per request",
                req.parents.len(),
                self.state.limits().max_parents_per_request
            )));
        }
        if req.level >= u32::from(MAX_LEVEL) {
            return Err(Status::invalid_argument(format!(
                "GetNodesRequest.level: {} has no children (deepest level is {MAX_LEVEL})",
                req.level
            )));
        }
        let parents = wire::ungap("GetNodesRequest.parents", &req.parents)?
            .into_iter()
            .map(|p| wire::prefix("GetNodesRequest.parents", req.level, p))
            .collect::<Result<Vec<_>, _>>()?;
        ascending("GetNodesRequest.parents", &parents)?;
        let snapshot = self
            .state
            .session(&req.dataset, req.session)
            .map_err(crate::grpc::status::op)?;
        let children =
            blocking(move || snapshot.get().children(&parents).map_err(index_status)).await?;
        Ok(Response::new(wire::children_response(&children)))
    }

    type StreamLeavesStream = Pin<Box<dyn Stream<Item = Result<pb::LeafBatch, Status>> + Send>>;

    #[instrument(skip_all, fields(dataset = %request.get_ref().dataset, ranges = request.get_ref().ranges.len()))]
    async fn stream_leaves(
        &self,
        request: Request<pb::StreamLeavesRequest>,
    ) -> Result<Response<Self::StreamLeavesStream>, Status> {
        crate::grpc::auth::DatasetScope::admit(&request, &request.get_ref().dataset)?;
        let req = request.into_inner();
        if req.ranges.len() > self.state.limits().max_ranges_per_request {
            return Err(Status::invalid_argument(format!(
                "StreamLeavesRequest.ranges: {} ranges, at most {} per request",
                req.ranges.len(),
                self.state.limits().max_ranges_per_request
            )));
        }
        let ranges = req
            .ranges
            .iter()
            .map(|r| wire::prefix("StreamLeavesRequest.ranges", r.level, r.prefix))
            .collect::<Result<Vec<_>, _>>()?;
        ascending("StreamLeavesRequest.ranges", &ranges)?;
        let snapshot = self
            .state
            .session(&req.dataset, req.session)
            .map_err(crate::grpc::status::op)?;
        let (tx, rx) = mpsc::channel(LEAF_STREAM_BUFFER);
        tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(LEAVES_PER_BATCH);
            let send = |batch: Vec<pb::LeafEntry>| {
                tx.blocking_send(Ok(pb::LeafBatch { leaves: batch }))
                    .is_ok()
            };
            let scanned = snapshot
                .get()
                .scan_ranges(&ranges, |_, position, key, digest| {
                    batch.push(wire::leaf_entry(&arbor_index::Leaf {
                        position,
                        key: key.to_vec(),
                        digest,
                    }));
                    if batch.len() == LEAVES_PER_BATCH && !send(std::mem::take(&mut batch)) {
                        // The client went away: stop reading.
                        return Err(arbor_index::IndexError::InvalidRequest(
                            "stream closed by the client".into(),
                        ));
                    }
                    Ok(())
                });
            if let Err(e) = scanned {
                let _ = tx.blocking_send(Err(index_status(e)));
                return;
            }
            if !batch.is_empty() {
                send(batch);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[instrument(skip_all, fields(dataset = %request.get_ref().dataset, keys = request.get_ref().keys.len()))]
    async fn column_digests(
        &self,
        request: Request<pb::ColumnDigestsRequest>,
    ) -> Result<Response<pb::ColumnDigestsResponse>, Status> {
        crate::grpc::auth::DatasetScope::admit(&request, &request.get_ref().dataset)?;
        let req = request.into_inner();
        if req.keys.len() > MAX_COLUMN_DIGEST_KEYS {
            return Err(Status::invalid_argument(format!(
                "ColumnDigestsRequest.keys: {} keys, at most {MAX_COLUMN_DIGEST_KEYS} per request",
                req.keys.len()
            )));
        }
        let key_id = wire::optional_key_id("ColumnDigestsRequest.key_id", &req.key_id)?;
        let ds = Arc::clone(
            self.state
                .dataset(&req.dataset)
                .map_err(crate::grpc::status::op)?,
        );
        let keys = req.keys;
        let (columns, entries) = blocking(move || {
            let (columns, digests) = arbor_agent::dataset::column_digests(&ds, &keys, key_id)
                .map_err(crate::grpc::status::op)?;
            let entries = keys
                .into_iter()
                .zip(digests)
                .map(|(key, d)| pb::KeyColumnDigests {
                    key,
                    present: d.is_some(),
                    digests: d
                        .unwrap_or_default()
                        .into_iter()
                        .map(|x| x.0.to_vec())
                        .collect(),
                })
                .collect();
            Ok((columns, entries))
        })
        .await?;
        Ok(Response::new(pb::ColumnDigestsResponse {
            columns,
            entries,
        }))
    }

    async fn end_session(
        &self,
        request: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        crate::grpc::auth::DatasetScope::admit(&request, &request.get_ref().dataset)?;
        let req = request.into_inner();
        self.state.end_session(&req.dataset, req.session);
        Ok(Response::new(pb::EndSessionResponse {}))
    }
}
