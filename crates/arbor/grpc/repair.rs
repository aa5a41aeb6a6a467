//! RepairService: the one gRPC edge where record values cross the wire.
//! Request checks and wire conversions around
//! [`arbor_agent::repair::Repairs`], which owns the reading, writing and
//! journalling (its module documentation says how).

use std::pin::Pin;

use arbor_record::{Digest, Record, decode_tuple};
use arbor_source::sink::{Change, Write};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::proto::v1 as pb;
use crate::proto::v1::repair_service_server::RepairService;
use crate::wire;
use arbor_agent::config::DatasetConfig;
use arbor_agent::repair::{
    FETCH_BATCH_BYTES, MAX_FETCH_KEYS, MAX_WRITES_PER_BATCH, RepairOutcome, Repairs,
};

/// The RepairService of an agent: request checks and wire conversions
/// around [`Repairs`].
pub struct RepairServer {
    repairs: Repairs,
}

impl RepairServer {
    /// The service over the agent's repairs.
    pub fn new(repairs: Repairs) -> RepairServer {
        RepairServer { repairs }
    }
}

/// Decodes the planned writes of a request, checked against the schema.
fn planned_writes(d: &DatasetConfig, req: &pb::ApplyChangesRequest) -> Result<Vec<Write>, Status> {
    let schema = d.mapping.schema();
    req.writes
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let invalid = |what: String| {
                Status::invalid_argument(format!("ApplyChangesRequest.writes[{i}]: {what}"))
            };
            let key = decode_tuple(&w.canonical_key).map_err(|e| invalid(e.to_string()))?;
            let expected = match w.expected_digest.len() {
                0 => None,
                32 => {
                    let mut d = [0u8; 32];
                    d.copy_from_slice(&w.expected_digest);
                    Some(Digest(d))
                }
                n => return Err(invalid(format!("expected_digest has {n} bytes, not 32"))),
            };
            let change = if w.delete {
                let nulls = vec![arbor_record::Value::Null; schema.values().len()];
                schema
                    .check(&key, &nulls)
                    .map_err(|e| invalid(e.to_string()))?;
                Change::Delete
            } else {
                let values = w
                    .values
                    .iter()
                    .map(|v| wire::typed_value("values", v))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|m| invalid(m.to_string()))?;
                schema
                    .check(&key, &values)
                    .map_err(|e| invalid(e.to_string()))?;
                Change::Upsert(Record::new(key.clone(), values))
            };
            Ok(Write {
                key,
                expected,
                change,
                made_at_us: (w.made_at_us > 0).then_some(w.made_at_us),
            })
        })
        .collect()
}

/// A journalled outcome on the wire.
fn outcome_wire(o: RepairOutcome) -> pb::WriteOutcome {
    match o {
        RepairOutcome::Applied => pb::WriteOutcome::Applied,
        RepairOutcome::AlreadyApplied => pb::WriteOutcome::AlreadyApplied,
        RepairOutcome::Conflict => pb::WriteOutcome::Conflict,
    }
}

type FetchStream = Pin<Box<dyn Stream<Item = Result<pb::RecordBatch, Status>> + Send>>;

#[tonic::async_trait]
impl RepairService for RepairServer {
    type FetchRecordsStream = FetchStream;

    #[instrument(skip_all, fields(dataset = %request.get_ref().dataset, keys = request.get_ref().canonical_keys.len()))]
    async fn fetch_records(
        &self,
        request: Request<pb::FetchRecordsRequest>,
    ) -> Result<Response<FetchStream>, Status> {
        let req = request.into_inner();
        let d = self
            .repairs
            .serving(&req.dataset)
            .map_err(crate::grpc::status::op)?;
        if req.canonical_keys.len() > MAX_FETCH_KEYS {
            return Err(Status::invalid_argument(format!(
                "FetchRecordsRequest.canonical_keys: {} keys, at most {MAX_FETCH_KEYS}",
                req.canonical_keys.len()
            )));
        }
        let keys = req
            .canonical_keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                decode_tuple(k).map_err(|e| {
                    Status::invalid_argument(format!(
                        "FetchRecordsRequest.canonical_keys[{i}]: {e}"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let columns: Vec<String> = d
            .mapping
            .columns()
            .iter()
            .map(|c| c.canonical().to_owned())
            .collect();
        let repairs = self.repairs.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            // `Err(None)`: the caller went away; nothing left to tell it.
            let fetched = repairs.fetch(&req.dataset, &keys, req.stored, |rows| {
                // A group read by rows of unknown width may hold more than
                // a message: it leaves in messages of about
                // FETCH_BATCH_BYTES.
                let mut batch = Vec::new();
                let mut bytes = 0;
                for r in rows {
                    let r = pb::FetchedRecord {
                        canonical_key: r.canonical_key,
                        found: r.values.is_some(),
                        values: r
                            .values
                            .map(|v| v.iter().map(wire::wire_value).collect())
                            .unwrap_or_default(),
                        deleted_at_us: r.deleted_at_us,
                        changed_at_us: r.changed_at_us,
                    };
                    let size = prost::Message::encoded_len(&r);
                    if !batch.is_empty() && bytes + size > FETCH_BATCH_BYTES {
                        let full = pb::RecordBatch {
                            columns: columns.clone(),
                            records: std::mem::take(&mut batch),
                        };
                        tx.blocking_send(Ok(full)).map_err(|_| None)?;
                        bytes = 0;
                    }
                    bytes += size;
                    batch.push(r);
                }
                let last = pb::RecordBatch {
                    columns: columns.clone(),
                    records: batch,
                };
                tx.blocking_send(Ok(last)).map_err(|_| None)
            });
            if let Err(Some(e)) = fetched {
                let _ = tx.blocking_send(Err(crate::grpc::status::op(e)));
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    #[instrument(skip_all, fields(dataset = %request.get_ref().dataset, run = %request.get_ref().run_id, batch = request.get_ref().batch))]
    async fn apply_changes(
        &self,
        request: Request<pb::ApplyChangesRequest>,
    ) -> Result<Response<pb::ApplyChangesResponse>, Status> {
        let req = request.into_inner();
        let d = self
            .repairs
            .accepting(&req.dataset)
            .map_err(crate::grpc::status::op)?;
        if req.writes.len() > MAX_WRITES_PER_BATCH {
            return Err(Status::invalid_argument(format!(
                "ApplyChangesRequest.writes: {} writes, at most {MAX_WRITES_PER_BATCH}",
                req.writes.len()
            )));
        }
        if req.run_id.is_empty() && !req.dry_run {
            return Err(Status::invalid_argument(
                "ApplyChangesRequest.run_id: required to journal the batch",
            ));
        }
        let writes = planned_writes(d, &req)?;
        let key_id = crate::wire::optional_key_id("ApplyChangesRequest.key_id", &req.key_id)?;
        let repairs = self.repairs.clone();
        let response = tokio::task::spawn_blocking(move || -> Result<_, Status> {
            let keys = req.writes.iter().map(|w| w.canonical_key.clone());
            if req.dry_run {
                let sql = repairs
                    .render(&req.dataset, &writes, key_id)
                    .map_err(crate::grpc::status::op)?;
                return Ok(pb::ApplyChangesResponse {
                    results: keys
                        .zip(sql)
                        .map(|(canonical_key, sql)| pb::WriteResult {
                            canonical_key,
                            outcome: pb::WriteOutcome::Planned as i32,
                            sql,
                        })
                        .collect(),
                    replayed: false,
                });
            }
            let (outcomes, replayed) = repairs
                .apply(&req.dataset, &req.run_id, &writes, key_id)
                .map_err(crate::grpc::status::op)?;
            Ok(pb::ApplyChangesResponse {
                results: keys
                    .zip(outcomes)
                    .map(|(canonical_key, o)| pb::WriteResult {
                        canonical_key,
                        outcome: outcome_wire(o) as i32,
                        sql: String::new(),
                    })
                    .collect(),
                replayed,
            })
        })
        .await
        .map_err(|e| Status::internal(format!("repair task failed: {e}")))??;
        Ok(Response::new(response))
    }
}
