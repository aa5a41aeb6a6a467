//! Exact wire sizes of the descent's messages.
//!
//! The engine does not link prost (only the root package does), yet it must
//! report what a compare costs on the network. These functions compute the
//! protobuf encoding length of the `AgentService` messages in
//! `proto/arbor/v1/agent.proto` for given contents, plus the 5-byte gRPC
//! length-prefix of each message. HTTP/2 frame and header bytes are not
//! counted. The root package's `tests/wire.rs` checks every function against
//! prost's `encoded_len` of the real messages.

use arbor_index::Leaf;
use arbor_tree::{FINGERPRINT_BYTES, Node, Prefix, Sum256};

/// Bytes gRPC puts before every message (compressed flag + u32 length).
pub const GRPC_MESSAGE_PREFIX: u64 = 5;
/// Largest gRPC message either side of any arbor call accepts.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Leaves per `LeafBatch` message when a peer streams leaves.
pub const LEAVES_PER_MESSAGE: usize = 1024;

fn varint(v: u64) -> u64 {
    (64 - (v | 1).leading_zeros() as u64).div_ceil(7)
}

/// A length-delimited field (string, bytes, message); absent when empty.
fn len_field(len: u64) -> u64 {
    if len == 0 { 0 } else { 1 + varint(len) + len }
}

/// An always-present embedded message field (proto3 sends set messages even when empty).
fn message_field(len: u64) -> u64 {
    1 + varint(len) + len
}

/// A varint scalar field; absent when zero.
fn scalar_field(v: u64) -> u64 {
    if v == 0 { 0 } else { 1 + varint(v) }
}

/// `NodeEntry { uint64 prefix = 1; bytes sum = 2; uint64 count = 3; }`
/// with the full 32-byte sum (the root in Describe).
pub fn node_entry_len(prefix: Prefix, node: Node) -> u64 {
    entry_len(prefix.value(), node.count, node.sum != Sum256::ZERO, 32)
}

fn entry_len(prefix: u64, count: u64, has_sum: bool, sum_bytes: u64) -> u64 {
    scalar_field(prefix) + if has_sum { len_field(sum_bytes) } else { 0 } + scalar_field(count)
}

/// `DescribeRequest { string dataset = 1; }`
pub fn describe_request(dataset: &str) -> u64 {
    GRPC_MESSAGE_PREFIX + len_field(dataset.len() as u64)
}

/// `bytes key_id = 2` of a DescribeRequest that asks for a key: tag,
/// length and 8 bytes.
pub const KEY_ID_FIELD_BYTES: u64 = 1 + 1 + 8;

/// A session id as the agents issue them (random 64-bit, so 10 varint bytes
/// at worst); accounting assumes the worst case.
pub const SESSION_ID_BYTES: u64 = 1 + 10;

/// `DescribeResponse { uint32 encoding_version = 1; bytes key_id = 2;
/// bytes schema_fingerprint = 3; uint32 stored_depth = 4; NodeEntry root = 5;
/// bytes watermark = 6; uint64 session = 7; }` (session at its worst case)
pub fn describe_response(d: &arbor_index::Description) -> u64 {
    GRPC_MESSAGE_PREFIX
        + scalar_field(u64::from(d.encoding_version))
        + len_field(8)
        + len_field(32)
        + scalar_field(u64::from(d.stored_depth))
        + message_field(node_entry_len(Prefix::ROOT, d.root))
        + len_field(d.watermark.as_ref().map_or(0, |w| w.len() as u64))
        + SESSION_ID_BYTES
}

/// `GetNodesRequest { string dataset = 1; uint32 level = 2; repeated uint64
/// parents = 3 [packed]; uint64 session = 4; }`, parents gap-encoded (the
/// first as is, then each one's distance from the one before).
pub fn nodes_request(dataset: &str, parents: &[Prefix]) -> u64 {
    let level = parents.first().map_or(0, |p| u64::from(p.level()));
    let packed: u64 = gaps(parents.iter().map(|p| p.value())).map(varint).sum();
    GRPC_MESSAGE_PREFIX
        + len_field(dataset.len() as u64)
        + scalar_field(level)
        + len_field(packed)
        + SESSION_ID_BYTES
}

/// `GetNodesResponse { repeated uint64 prefix_gaps = 2 [packed]; repeated
/// uint64 counts = 3 [packed]; bytes fingerprints = 4; }`, prefixes
/// gap-encoded like the request's parents.
pub fn nodes_response(nodes: &[(Prefix, Node)]) -> u64 {
    GRPC_MESSAGE_PREFIX
        + len_field(gaps(nodes.iter().map(|(p, _)| p.value())).map(varint).sum())
        + len_field(nodes.iter().map(|(_, n)| varint(n.count)).sum())
        + len_field(nodes.len() as u64 * FINGERPRINT_BYTES as u64)
}

/// Gap encoding of sorted prefix values (GetNodes parents and children):
/// the first as is, each next one as its distance from the one before.
/// Children of neighbouring parents sit close, so most gaps fit one varint
/// byte where a whole level-5 prefix takes three.
pub fn gaps(prefixes: impl IntoIterator<Item = u64>) -> impl Iterator<Item = u64> {
    prefixes.into_iter().scan(0u64, |previous, p| {
        let gap = p.wrapping_sub(*previous);
        *previous = p;
        Some(gap)
    })
}

/// `StreamLeavesRequest { string dataset = 1; repeated Range ranges = 2; uint64 session = 3; }`,
/// `Range { uint32 level = 1; uint64 prefix = 2; }`
pub fn leaves_request(dataset: &str, ranges: &[Prefix]) -> u64 {
    GRPC_MESSAGE_PREFIX
        + len_field(dataset.len() as u64)
        + ranges
            .iter()
            .map(|r| message_field(scalar_field(u64::from(r.level())) + scalar_field(r.value())))
            .sum::<u64>()
        + SESSION_ID_BYTES
}

/// `LeafEntry { fixed64 position = 1; bytes key = 2; bytes digest = 3; }`
pub fn leaf_entry_len(leaf: &Leaf) -> u64 {
    let position = if leaf.position == 0 { 0 } else { 1 + 8 };
    position + len_field(leaf.key.len() as u64) + len_field(32)
}

/// The stream of `LeafBatch { repeated LeafEntry leaves = 1; }` messages,
/// [`LEAVES_PER_MESSAGE`] leaves each (an empty stream sends no message).
pub fn leaves_response(leaves: &[Leaf]) -> u64 {
    leaves
        .chunks(LEAVES_PER_MESSAGE)
        .map(|chunk| {
            GRPC_MESSAGE_PREFIX
                + chunk
                    .iter()
                    .map(|l| message_field(leaf_entry_len(l)))
                    .sum::<u64>()
        })
        .sum()
}
