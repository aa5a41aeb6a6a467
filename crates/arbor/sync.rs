//! The gRPC sides of a sync run: [`GrpcRemote`] reaches other agents for
//! [`arbor_agent::sync`] (compare through a [`GrpcPeer`], FetchRecords,
//! ApplyChanges), and the one-shot CLI runs plan and execute through it.

use std::time::{Duration, Instant};

use tracing::warn;

use crate::grpc::client::{GrpcPeer, MAX_MESSAGE_BYTES, RetryPolicy, is_transient};
use crate::proto::v1 as pb;
use crate::proto::v1::repair_service_client::RepairServiceClient;
use crate::wire;
pub use arbor_agent::sync::*;

/// Reaches other agents over gRPC.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcRemote;

impl Remote for GrpcRemote {
    type Peer = GrpcPeer;

    fn peer(&self, agent: &str, dataset: &str, retry_for: Duration) -> Result<GrpcPeer, SyncError> {
        GrpcPeer::new(agent, dataset, RetryPolicy::spanning(retry_for))
            .map_err(|e| SyncError::Compare(arbor_agent::report::error_chain(&e)))
    }

    async fn fetch(
        &self,
        agent: &str,
        dataset: &str,
        keys: Vec<Vec<u8>>,
    ) -> Result<Fetched, SyncError> {
        fetch_remote(agent, dataset, keys).await
    }

    async fn apply(
        &self,
        agent: &str,
        dataset: &str,
        retry_for: Duration,
        batch: Batch<'_>,
    ) -> Result<Applied, SyncError> {
        apply_remote(agent, dataset, retry_for, batch).await
    }

    fn write_bytes(&self, action: &Action) -> usize {
        prost::Message::encoded_len(&planned_write(action)) + WRITE_FRAMING_BYTES
    }
}

/// Both sides behind the agents `opts` names, over gRPC.
pub fn remote_sides(opts: &SyncOptions) -> Sides<GrpcRemote> {
    Sides::remote(opts, GrpcRemote)
}

/// A planned write on the wire.
pub fn planned_write(a: &Action) -> pb::PlannedWrite {
    pb::PlannedWrite {
        canonical_key: a.key_bytes.clone(),
        delete: a.action == ActionKind::Delete,
        values: a
            .values
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(wire::wire_value)
            .collect(),
        expected_digest: a.expected.map(|d| d.0.to_vec()).unwrap_or_default(),
        made_at_us: a.made_at_us.unwrap_or(0),
    }
}

impl From<&SyncReport> for pb::SyncReport {
    fn from(r: &SyncReport) -> pb::SyncReport {
        pb::SyncReport {
            run_id: r.run_id.clone(),
            key_id: r.key_id.clone(),
            executed: r.executed,
            drift: r.drift,
            planned_upserts: r.planned_upserts,
            planned_deletes: r.planned_deletes,
            planned_to_source: r.planned_to_source,
            planned_to_target: r.planned_to_target,
            kept: r.kept,
            unresolved: r.unresolved,
            unresolved_keys: r.unresolved_keys.clone(),
            queued: r.queued,
            vanished: r.vanished,
            applied: r.applied,
            already_applied: r.already_applied,
            conflicts: r.conflicts,
            replayed_batches: r.replayed_batches,
            conflict_keys: r.conflict_keys.clone(),
            drift_after: r.drift_after,
            elapsed_ms: r.elapsed_ms,
            compare_ms: r.compare_ms,
            fetch_ms: r.fetch_ms,
            write_ms: r.write_ms,
            verify_ms: r.verify_ms,
        }
    }
}

fn repair_client(
    address: &str,
) -> Result<RepairServiceClient<crate::grpc::client::Authed>, SyncError> {
    let endpoint = crate::grpc::client::endpoint(address).map_err(|message| SyncError::Agent {
        agent: address.to_owned(),
        message,
    })?;
    Ok(
        RepairServiceClient::new(crate::grpc::client::authed(endpoint.connect_lazy()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
}

fn agent_err(agent: &str, s: &tonic::Status) -> SyncError {
    SyncError::Agent {
        agent: agent.to_owned(),
        message: format!("{} ({:?})", s.message(), s.code()),
    }
}

async fn fetch_remote(
    agent: &str,
    dataset: &str,
    keys: Vec<Vec<u8>>,
) -> Result<Fetched, SyncError> {
    let mut out = Fetched::default();
    let mut client = repair_client(agent)?;
    for chunk in keys.chunks(arbor_agent::repair::MAX_FETCH_KEYS) {
        let mut stream = client
            .fetch_records(pb::FetchRecordsRequest {
                dataset: dataset.to_owned(),
                canonical_keys: chunk.to_vec(),
                // Written as the source holds them; transforms shape
                // comparison only.
                stored: true,
            })
            .await
            .map_err(|s| agent_err(agent, &s))?
            .into_inner();
        while let Some(batch) = stream.message().await.map_err(|s| agent_err(agent, &s))? {
            if out.columns.is_empty() {
                out.columns = batch.columns;
            }
            for r in batch.records {
                let values = if r.found {
                    Some(
                        r.values
                            .iter()
                            .map(|v| wire::typed_value("values", v))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|m| SyncError::Agent {
                                agent: agent.to_owned(),
                                message: m.to_string(),
                            })?,
                    )
                } else {
                    None
                };
                out.add(r.canonical_key, values, r.deleted_at_us, r.changed_at_us);
            }
        }
    }
    Ok(out)
}

async fn apply_remote(
    agent: &str,
    dataset: &str,
    retry_for: Duration,
    batch: Batch<'_>,
) -> Result<Applied, SyncError> {
    let mut client = repair_client(agent)?;
    let request = pb::ApplyChangesRequest {
        dataset: dataset.to_owned(),
        run_id: batch.run_id.to_owned(),
        batch: batch.number,
        writes: batch.writes.iter().map(|a| planned_write(a)).collect(),
        dry_run: batch.dry_run,
        key_id: batch.key_id.map(|k| k.0.to_vec()).unwrap_or_default(),
    };
    let deadline = Instant::now() + retry_for;
    let mut backoff = Duration::from_millis(100);
    let resp = loop {
        match client.apply_changes(request.clone()).await {
            Ok(r) => break r.into_inner(),
            Err(s) if is_transient(&s) && Instant::now() < deadline => {
                warn!(agent, batch = batch.number, code = ?s.code(), error = %s.message(), "batch failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(s) => return Err(agent_err(agent, &s)),
        }
    };
    Ok(Applied {
        outcomes: resp
            .results
            .into_iter()
            .map(|r| match pb::WriteOutcome::try_from(r.outcome) {
                Ok(pb::WriteOutcome::Applied) => BatchOutcome::Applied,
                Ok(pb::WriteOutcome::AlreadyApplied) => BatchOutcome::AlreadyApplied,
                Ok(pb::WriteOutcome::Planned) => BatchOutcome::Planned(r.sql),
                // Unknown outcomes count as conflicts: never as applied.
                _ => BatchOutcome::Conflict,
            })
            .collect(),
        replayed: resp.replayed,
    })
}

/// Compares and plans over gRPC (see [`plan_with`]).
pub async fn plan(
    opts: &SyncOptions,
    dry_run: bool,
) -> Result<(Vec<Action>, SyncReport), SyncError> {
    plan_with(opts, &remote_sides(opts), dry_run).await
}

/// Queues an executed two-way run's unresolved rows in the source agent,
/// where `arbor sync conflicts` lists them and `arbor sync resolve` settles
/// them; rows of the pair queued by earlier one-shot runs and now settled
/// leave the queue. Returns how many are queued.
pub async fn queue_unresolved(opts: &SyncOptions, actions: &[Action]) -> Result<u64, SyncError> {
    if !matches!(opts.policy, Policy::TwoWay(_)) {
        return Ok(0);
    }
    let endpoint =
        crate::grpc::client::endpoint(&opts.source).map_err(|message| SyncError::Agent {
            agent: opts.source.clone(),
            message,
        })?;
    let mut client = crate::proto::v1::admin_service_client::AdminServiceClient::new(
        crate::grpc::client::authed(endpoint.connect_lazy()),
    )
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let rows: Vec<pb::UnresolvedRow> = actions
        .iter()
        .filter(|a| a.action == ActionKind::Unresolved)
        .map(|a| pb::UnresolvedRow {
            key: a.key.clone(),
            canonical_key: a.canonical_key.clone(),
            reason: a.reason.clone().unwrap_or_default(),
        })
        .collect();
    let queued = client
        .queue_conflicts(pb::QueueConflictsRequest {
            dataset: opts.dataset.clone(),
            peer: opts.target.clone(),
            peer_dataset: opts.target_dataset.clone(),
            rows,
        })
        .await
        .map_err(|s| agent_err(&opts.source, &s))?
        .into_inner();
    Ok(queued.ids.len() as u64)
}

/// Executes a plan (each side's writes in batches), then compares again.
pub async fn execute(
    opts: &SyncOptions,
    actions: &[Action],
    report: SyncReport,
) -> Result<SyncReport, SyncError> {
    execute_with(opts, &remote_sides(opts), actions, report).await
}
