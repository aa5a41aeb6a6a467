//! `IngestService`: change events pushed by the system itself, checked
//! against the dataset's schema and applied to its index.

use std::sync::Arc;

use arbor_index::Change;
use arbor_record::Record;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::proto::v1 as pb;
use crate::proto::v1::ingest_service_server::IngestService;
use crate::wire;
use arbor_agent::dataset::AgentState;

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
                .map_err(crate::grpc::status::op)?,
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
        let stats =
            tokio::task::spawn_blocking(move || ds.apply_pushed(&changes, watermark.as_deref()))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(crate::grpc::status::op)?;
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

/// The largest watermark an ingest may record: it is copied into every
/// later run's record, so an unbounded one would grow them all.
pub const MAX_WATERMARK_BYTES: usize = 1024;
