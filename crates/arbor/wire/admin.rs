//! AdminService answers built from domain results.

use crate::proto::v1 as pb;

impl From<arbor_agent::keys::Rotated> for pb::RotateKeyResponse {
    fn from(r: arbor_agent::keys::Rotated) -> pb::RotateKeyResponse {
        pb::RotateKeyResponse {
            dataset: r.dataset,
            previous_key_id: r.previous_key_id,
            key_id: r.key_id,
            built: r.built,
            records: r.records,
            elapsed_ms: r.elapsed_ms,
            held_key_ids: r.held_key_ids,
        }
    }
}
