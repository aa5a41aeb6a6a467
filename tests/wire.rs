//! arbor-sync counts the bytes a compare would put on the wire without
//! linking prost; this checks those counts against prost's own encoding of
//! the real `arbor.v1` messages.

use arbor::arbor_index::{Description, Leaf};
use arbor::arbor_record::{Digest, KeyId};
use arbor::arbor_sync::wire;
use arbor::arbor_tree::{Node, Prefix, Sum256};
use arbor::proto::v1 as pb;
use prost::Message;

const GRPC_PREFIX: u64 = wire::GRPC_MESSAGE_PREFIX;
/// A session id at its worst case: every varint byte used.
const SESSION: u64 = u64::MAX;

fn node(seed: u8, count: u64) -> Node {
    Node {
        sum: if seed == 0 {
            Sum256::ZERO
        } else {
            Sum256::from_le_bytes(&[seed; 32])
        },
        count,
    }
}

fn entry(p: Prefix, n: Node) -> pb::NodeEntry {
    pb::NodeEntry {
        prefix: p.value(),
        sum: if n.sum == Sum256::ZERO {
            Vec::new()
        } else {
            n.sum.to_le_bytes().to_vec()
        },
        count: n.count,
    }
}

#[test]
fn describe_sizes_match_prost() {
    for (watermark, root) in [
        (None, node(0, 0)),
        (Some(b"lsn:0/16B3748".to_vec()), node(7, 1_000_000)),
    ] {
        let d = Description {
            encoding_version: 1,
            key_id: KeyId([3; 8]),
            schema_fingerprint: [9; 32],
            stored_depth: 3,
            root,
            watermark: watermark.clone(),
        };
        let msg = pb::DescribeResponse {
            encoding_version: 1,
            key_id: vec![3; 8],
            schema_fingerprint: vec![9; 32],
            stored_depth: 3,
            root: Some(entry(Prefix::ROOT, root)),
            watermark: watermark.unwrap_or_default(),
            session: SESSION,
        };
        assert_eq!(
            wire::describe_response(&d),
            msg.encoded_len() as u64 + GRPC_PREFIX
        );
    }
    let mut req = pb::DescribeRequest {
        dataset: "customers".into(),
        key_id: Vec::new(),
    };
    assert_eq!(
        wire::describe_request("customers"),
        req.encoded_len() as u64 + GRPC_PREFIX
    );
    // Asking for a key (a compare across a key rotation) adds the key id.
    req.key_id = vec![7; 8];
    assert_eq!(
        wire::describe_request("customers") + wire::KEY_ID_FIELD_BYTES,
        req.encoded_len() as u64 + GRPC_PREFIX
    );
}

#[test]
fn node_sizes_match_prost() {
    let parents: Vec<Prefix> = [0u64, 5, 0xabc, 0xfff]
        .iter()
        .map(|&v| Prefix::new(3, v).unwrap())
        .collect();
    let req = pb::GetNodesRequest {
        dataset: "orders".into(),
        level: 3,
        parents: arbor::wire::gaps(parents.iter().map(|p| p.value())),
        session: SESSION,
    };
    assert_eq!(
        wire::nodes_request("orders", &parents),
        req.encoded_len() as u64 + GRPC_PREFIX
    );

    let children: Vec<(Prefix, Node)> = vec![
        (Prefix::new(4, 0).unwrap(), node(1, 1)),
        (Prefix::new(4, 0x50).unwrap(), node(2, 300)),
        (Prefix::new(4, 0xfff0).unwrap(), node(3, u64::MAX)),
    ];
    // Below the root, sums cross as 8-byte fingerprints.
    let resp = arbor::wire::children_response(&children);
    assert_eq!(
        wire::nodes_response(&children),
        resp.encoded_len() as u64 + GRPC_PREFIX
    );
}

#[test]
fn leaf_sizes_match_prost() {
    let ranges = vec![
        Prefix::new(2, 0).unwrap(),
        Prefix::new(5, 0x12345).unwrap(),
        Prefix::ROOT,
    ];
    let req = pb::StreamLeavesRequest {
        dataset: "orders".into(),
        ranges: ranges
            .iter()
            .map(|r| pb::Range {
                level: u32::from(r.level()),
                prefix: r.value(),
            })
            .collect(),
        session: SESSION,
    };
    assert_eq!(
        wire::leaves_request("orders", &ranges),
        req.encoded_len() as u64 + GRPC_PREFIX
    );

    // Enough leaves to span several stream messages.
    let leaves: Vec<Leaf> = (0..2500u64)
        .map(|i| Leaf {
            position: i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            key: (0..(i % 20) as u8).collect(),
            digest: Digest([i as u8; 32]),
        })
        .collect();
    let encoded: u64 = leaves
        .chunks(wire::LEAVES_PER_MESSAGE)
        .map(|c| {
            pb::LeafBatch {
                leaves: c
                    .iter()
                    .map(|l| pb::LeafEntry {
                        position: l.position,
                        key: l.key.clone(),
                        digest: l.digest.0.to_vec(),
                    })
                    .collect(),
            }
            .encoded_len() as u64
                + GRPC_PREFIX
        })
        .sum();
    assert_eq!(wire::leaves_response(&leaves), encoded);
    assert_eq!(wire::leaves_response(&[]), 0);
}
