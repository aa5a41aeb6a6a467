//! Compare-run reports on the wire: [`arbor_agent::report`] types to and
//! from their protobuf messages.

use arbor_agent::report::{DriftEntry, RunCost, RunSide, RunStatus, RunSummary};

use crate::proto::v1 as pb;

impl From<&RunSide> for pb::RunSide {
    fn from(s: &RunSide) -> pb::RunSide {
        pb::RunSide {
            agent: s.agent.clone(),
            dataset: s.dataset.clone(),
            count: s.count,
            root: s.root.clone(),
            watermark: s.watermark.clone(),
            key_id: s.key_id.clone(),
        }
    }
}

impl From<pb::RunSide> for RunSide {
    fn from(s: pb::RunSide) -> RunSide {
        RunSide {
            agent: s.agent,
            dataset: s.dataset,
            count: s.count,
            root: s.root,
            watermark: s.watermark,
            key_id: s.key_id,
        }
    }
}

impl From<&RunSummary> for pb::RunSummary {
    fn from(s: &RunSummary) -> pb::RunSummary {
        pb::RunSummary {
            schema_version: s.schema_version,
            run_id: s.run_id.clone(),
            status: s.status.name().to_owned(),
            error: s.error.clone(),
            started_at: s.started_at.clone(),
            finished_at: s.finished_at.clone(),
            left: Some((&s.left).into()),
            right: Some((&s.right).into()),
            missing_left: s.missing_left,
            missing_right: s.missing_right,
            changed: s.changed,
            cost: Some(pb::RunCost {
                round_trips: s.cost.round_trips,
                levels: s.cost.levels,
                peer_bytes: s.cost.peer_bytes,
                elapsed_ms: s.cost.elapsed_ms,
            }),
        }
    }
}

impl From<pb::RunSummary> for RunSummary {
    fn from(s: pb::RunSummary) -> RunSummary {
        let cost = s.cost.unwrap_or_default();
        // A status this version does not know is no success.
        let (status, error) = match RunStatus::parse(&s.status) {
            Some(status) => (status, s.error),
            None => (
                RunStatus::Failed,
                format!(
                    "the agent reported an unknown run status {:?}: {}",
                    s.status, s.error
                ),
            ),
        };
        RunSummary {
            schema_version: s.schema_version,
            run_id: s.run_id,
            status,
            error,
            started_at: s.started_at,
            finished_at: s.finished_at,
            left: s.left.unwrap_or_default().into(),
            right: s.right.unwrap_or_default().into(),
            missing_left: s.missing_left,
            missing_right: s.missing_right,
            changed: s.changed,
            cost: RunCost {
                round_trips: cost.round_trips,
                levels: cost.levels,
                peer_bytes: cost.peer_bytes,
                elapsed_ms: cost.elapsed_ms,
            },
        }
    }
}

impl From<&DriftEntry> for pb::DriftEntry {
    fn from(d: &DriftEntry) -> pb::DriftEntry {
        pb::DriftEntry {
            kind: d.kind.clone(),
            key: d.key.clone(),
            canonical_key: hex::decode(&d.canonical_key).unwrap_or_default(),
            columns: d.columns.clone(),
        }
    }
}

impl From<pb::DriftEntry> for DriftEntry {
    fn from(d: pb::DriftEntry) -> DriftEntry {
        DriftEntry {
            kind: d.kind,
            key: d.key,
            canonical_key: hex::encode(&d.canonical_key),
            columns: d.columns,
        }
    }
}
