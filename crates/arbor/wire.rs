//! The edge between generated protobuf types and domain types.
//!
//! Everything that arrives from the network goes through a checked
//! conversion here: prefixes must fit their level, digests and sums must be
//! exactly 32 bytes, key ids 8. A malformed message becomes an error naming
//! the field, never a panic. Domain errors map to `tonic::Status` codes in
//! one place, [`crate::grpc::status`].

pub mod admin;
pub mod report;
mod values;

pub use values::{typed_value, wire_value};

use arbor_index::{Description, Leaf};
use arbor_record::{Digest, KeyId};
use arbor_tree::{FINGERPRINT_BYTES, MAX_LEVEL, MAX_STORED_DEPTH, Node, Prefix, Sum256};
use tonic::Status;

use crate::proto::v1 as pb;

/// A field of a message that does not hold what the protocol says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Malformed {
    /// The field, as `message.field`.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

fn malformed(field: &'static str, problem: impl Into<String>) -> Malformed {
    Malformed {
        field,
        problem: problem.into(),
    }
}

impl From<Malformed> for Status {
    fn from(m: Malformed) -> Status {
        Status::invalid_argument(m.to_string())
    }
}

/// A prefix from its level and value.
pub fn prefix(field: &'static str, level: u32, value: u64) -> Result<Prefix, Malformed> {
    let level = u8::try_from(level)
        .ok()
        .filter(|l| *l <= MAX_LEVEL)
        .ok_or_else(|| malformed(field, format!("level {level} is beyond {MAX_LEVEL}")))?;
    Prefix::new(level, value).map_err(|e| malformed(field, e.to_string()))
}

/// A node sum (the root's): 32 bytes, or empty for zero (proto3 omits
/// empty bytes).
fn sum(field: &'static str, bytes: &[u8]) -> Result<Sum256, Malformed> {
    match bytes.len() {
        0 => Ok(Sum256::ZERO),
        32 => {
            let mut b = [0u8; 32];
            b[..bytes.len()].copy_from_slice(bytes);
            Ok(Sum256::from_le_bytes(&b))
        }
        n => Err(malformed(field, format!("{n} bytes, expected 32"))),
    }
}

/// The wire form of a node with its full 32-byte sum (the root).
pub fn node_entry(p: Prefix, n: Node) -> pb::NodeEntry {
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

/// The [gap encoding](arbor_sync::wire::gaps) of sorted prefix values.
pub fn gaps(prefixes: impl IntoIterator<Item = u64>) -> Vec<u64> {
    arbor_sync::wire::gaps(prefixes).collect()
}

/// Prefix values from their [`gaps`]: strictly ascending, or an error
/// naming `field` (a zero gap after the first, or past 64 bits).
pub fn ungap(field: &'static str, gaps: &[u64]) -> Result<Vec<u64>, Malformed> {
    let mut at = 0u64;
    gaps.iter()
        .enumerate()
        .map(|(i, &g)| {
            at = if i == 0 {
                g
            } else {
                at.checked_add(g).filter(|_| g > 0).ok_or_else(|| {
                    malformed(field, format!("gap {g} at {i}: prefixes must ascend"))
                })?
            };
            Ok(at)
        })
        .collect()
}

/// GetNodes children on the wire: columns of gap-encoded prefixes, counts
/// and 8-byte fingerprints.
pub fn children_response(children: &[(Prefix, Node)]) -> pb::GetNodesResponse {
    pb::GetNodesResponse {
        prefix_gaps: gaps(children.iter().map(|(p, _)| p.value())),
        counts: children.iter().map(|(_, n)| n.count).collect(),
        fingerprints: children
            .iter()
            .flat_map(|(_, n)| n.sum.fingerprint().to_le_bytes())
            .collect(),
    }
}

/// GetNodes children from the wire, at `level`.
pub fn children_from_response(
    level: u8,
    r: &pb::GetNodesResponse,
) -> Result<Vec<(Prefix, Node)>, Malformed> {
    let n = r.prefix_gaps.len();
    if r.counts.len() != n || r.fingerprints.len() != n * FINGERPRINT_BYTES {
        return Err(malformed(
            "GetNodesResponse",
            format!(
                "{n} prefixes, {} counts and {} fingerprint bytes (expected {})",
                r.counts.len(),
                r.fingerprints.len(),
                n * FINGERPRINT_BYTES
            ),
        ));
    }
    let prefixes = ungap("GetNodesResponse.prefix_gaps", &r.prefix_gaps)?;
    prefixes
        .into_iter()
        .zip(&r.counts)
        .zip(r.fingerprints.chunks_exact(FINGERPRINT_BYTES))
        .map(|((p, &count), fp)| {
            let p = prefix("GetNodesResponse.prefix_gaps", u32::from(level), p)?;
            let mut sum = [0u8; 32];
            sum[..FINGERPRINT_BYTES].copy_from_slice(fp);
            Ok((
                p,
                Node {
                    sum: Sum256::from_le_bytes(&sum),
                    count,
                },
            ))
        })
        .collect()
}

/// A node of a known level from the wire.
pub fn node_from_entry(level: u8, e: &pb::NodeEntry) -> Result<(Prefix, Node), Malformed> {
    let p = prefix("NodeEntry.prefix", u32::from(level), e.prefix)?;
    Ok((
        p,
        Node {
            sum: sum("NodeEntry.sum", &e.sum)?,
            count: e.count,
        },
    ))
}

/// The wire form of a description.
pub fn describe_response(d: &Description, session: u64) -> pb::DescribeResponse {
    pb::DescribeResponse {
        encoding_version: d.encoding_version,
        key_id: d.key_id.0.to_vec(),
        schema_fingerprint: d.schema_fingerprint.to_vec(),
        stored_depth: u32::from(d.stored_depth),
        root: Some(node_entry(Prefix::ROOT, d.root)),
        watermark: d.watermark.clone().unwrap_or_default(),
        session,
    }
}

/// An optional key id from a request: empty means "not given".
pub fn optional_key_id(field: &str, bytes: &[u8]) -> Result<Option<KeyId>, Status> {
    match bytes.len() {
        0 => Ok(None),
        8 => {
            let mut k = [0; 8];
            k.copy_from_slice(bytes);
            Ok(Some(KeyId(k)))
        }
        n => Err(Status::invalid_argument(format!(
            "{field}: {n} bytes, expected 8 (or none)"
        ))),
    }
}

/// A description from the wire, and its session.
pub fn description(r: &pb::DescribeResponse) -> Result<(Description, u64), Malformed> {
    let key_id: [u8; 8] = r.key_id.as_slice().try_into().map_err(|_| {
        malformed(
            "DescribeResponse.key_id",
            format!("{} bytes, expected 8", r.key_id.len()),
        )
    })?;
    let schema_fingerprint: [u8; 32] =
        r.schema_fingerprint.as_slice().try_into().map_err(|_| {
            malformed(
                "DescribeResponse.schema_fingerprint",
                format!("{} bytes, expected 32", r.schema_fingerprint.len()),
            )
        })?;
    let stored_depth = u8::try_from(r.stored_depth)
        .ok()
        .filter(|d| (1..=MAX_STORED_DEPTH).contains(d))
        .ok_or_else(|| {
            malformed(
                "DescribeResponse.stored_depth",
                format!("{} is not in 1..={MAX_STORED_DEPTH}", r.stored_depth),
            )
        })?;
    let root = r
        .root
        .as_ref()
        .ok_or_else(|| malformed("DescribeResponse.root", "missing"))?;
    let (_, root) = node_from_entry(0, root)?;
    Ok((
        Description {
            encoding_version: r.encoding_version,
            key_id: KeyId(key_id),
            schema_fingerprint,
            stored_depth,
            root,
            watermark: (!r.watermark.is_empty()).then(|| r.watermark.clone()),
        },
        r.session,
    ))
}

/// The wire form of a leaf.
pub fn leaf_entry(l: &Leaf) -> pb::LeafEntry {
    pb::LeafEntry {
        position: l.position,
        key: l.key.clone(),
        digest: l.digest.0.to_vec(),
    }
}

/// A leaf from the wire.
pub fn leaf(e: pb::LeafEntry) -> Result<Leaf, Malformed> {
    let digest = Digest::from_slice(&e.digest).ok_or_else(|| {
        malformed(
            "LeafEntry.digest",
            format!("{} bytes, expected 32", e.digest.len()),
        )
    })?;
    if e.key.is_empty() {
        return Err(malformed("LeafEntry.key", "empty"));
    }
    Ok(Leaf {
        position: e.position,
        key: e.key,
        digest,
    })
}

/// ColumnDigests from the wire, for the `keys` asked: one entry per key, in
/// order, each present one with a 32-byte digest per column.
pub fn column_digests_from_response(
    keys: &[Vec<u8>],
    r: pb::ColumnDigestsResponse,
) -> Result<arbor_sync::ColumnDigests, Malformed> {
    if r.entries.len() != keys.len() {
        return Err(malformed(
            "ColumnDigestsResponse.entries",
            format!("{} entries for {} keys", r.entries.len(), keys.len()),
        ));
    }
    let rows = r
        .entries
        .into_iter()
        .zip(keys)
        .map(|(e, key)| {
            if e.key != *key {
                return Err(malformed(
                    "KeyColumnDigests.key",
                    "not the key asked for at this place",
                ));
            }
            if !e.present {
                return Ok(None);
            }
            if e.digests.len() != r.columns.len() {
                return Err(malformed(
                    "KeyColumnDigests.digests",
                    format!(
                        "{} digests for {} columns",
                        e.digests.len(),
                        r.columns.len()
                    ),
                ));
            }
            e.digests
                .iter()
                .map(|d| {
                    Digest::from_slice(d).ok_or_else(|| {
                        malformed(
                            "KeyColumnDigests.digests",
                            format!("{} bytes, expected 32", d.len()),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(arbor_sync::ColumnDigests {
        columns: r.columns,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_digests_from_the_wire_are_checked_against_the_keys_asked() {
        let keys = vec![vec![1u8], vec![2u8]];
        let entry = |key: u8, present: bool, digests: Vec<Vec<u8>>| pb::KeyColumnDigests {
            key: vec![key],
            present,
            digests,
        };
        let response = |entries| pb::ColumnDigestsResponse {
            columns: vec!["a".into(), "b".into()],
            entries,
        };
        let good = column_digests_from_response(
            &keys,
            response(vec![
                entry(1, true, vec![vec![7; 32], vec![8; 32]]),
                entry(2, false, vec![]),
            ]),
        )
        .unwrap();
        assert_eq!(
            good.rows,
            vec![Some(vec![Digest([7; 32]), Digest([8; 32])]), None]
        );
        for (bad, field) in [
            (
                response(vec![entry(1, false, vec![])]),
                "ColumnDigestsResponse.entries",
            ),
            (
                response(vec![entry(2, false, vec![]), entry(1, false, vec![])]),
                "KeyColumnDigests.key",
            ),
            (
                response(vec![
                    entry(1, true, vec![vec![7; 32]]),
                    entry(2, false, vec![]),
                ]),
                "KeyColumnDigests.digests",
            ),
            (
                response(vec![
                    entry(1, true, vec![vec![7; 31], vec![8; 32]]),
                    entry(2, false, vec![]),
                ]),
                "KeyColumnDigests.digests",
            ),
        ] {
            let e = column_digests_from_response(&keys, bad).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn malformed_fields_are_named() {
        let e = node_from_entry(
            2,
            &pb::NodeEntry {
                prefix: 0x100,
                sum: vec![],
                count: 1,
            },
        )
        .unwrap_err();
        assert_eq!(e.field, "NodeEntry.prefix");
        let e = node_from_entry(
            2,
            &pb::NodeEntry {
                prefix: 1,
                sum: vec![0; 31],
                count: 1,
            },
        )
        .unwrap_err();
        assert_eq!(e.field, "NodeEntry.sum");
        // Children in columns: lengths must agree, prefixes ascend and fit.
        let good = children_response(&[
            (Prefix::new(2, 3).unwrap(), Node::of_digest(&[7; 32])),
            (Prefix::new(2, 0x41).unwrap(), Node::of_digest(&[9; 32])),
        ]);
        let back = children_from_response(2, &good).unwrap();
        assert_eq!(back[1].0, Prefix::new(2, 0x41).unwrap());
        assert_eq!(
            back[1].1.fingerprint(),
            Node::of_digest(&[9; 32]).fingerprint()
        );
        for bad in [
            pb::GetNodesResponse {
                counts: vec![1],
                ..good.clone()
            },
            pb::GetNodesResponse {
                fingerprints: vec![0; 15],
                ..good.clone()
            },
            pb::GetNodesResponse {
                prefix_gaps: vec![3, 0],
                ..good.clone()
            },
            pb::GetNodesResponse {
                prefix_gaps: vec![3, 0x100],
                ..good.clone()
            },
        ] {
            let e = children_from_response(2, &bad).unwrap_err();
            assert!(e.field.starts_with("GetNodesResponse"), "{e}");
        }
        // A root sum is 32 bytes; 16 (an older agent's fingerprint) is refused.
        let e = node_from_entry(
            2,
            &pb::NodeEntry {
                prefix: 1,
                sum: vec![1; 16],
                count: 1,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("expected 32"), "{e}");
        let e = leaf(pb::LeafEntry {
            position: 1,
            key: vec![1],
            digest: vec![0; 33],
        })
        .unwrap_err();
        assert_eq!(e.field, "LeafEntry.digest");
        assert!(prefix("Range.level", 17, 0).is_err());
        assert!(prefix("Range.level", u32::MAX, 0).is_err());
        let bad = pb::DescribeResponse {
            key_id: vec![1; 7],
            ..Default::default()
        };
        assert_eq!(
            description(&bad).unwrap_err().field,
            "DescribeResponse.key_id"
        );
    }

    #[test]
    fn descriptions_round_trip() {
        let d = Description {
            encoding_version: 1,
            key_id: KeyId([1; 8]),
            schema_fingerprint: [2; 32],
            stored_depth: 4,
            root: Node::of_digest(&[3; 32]),
            watermark: Some(b"lsn".to_vec()),
        };
        assert_eq!(description(&describe_response(&d, 77)).unwrap(), (d, 77));
    }

    /// Every decoder of bytes from the network returns a value or a
    /// `Malformed` naming the field, whatever the bytes: messages decoded
    /// from arbitrary bytes, and structured ones with arbitrary fields.
    mod decoders_never_panic {
        use super::*;
        use proptest::prelude::*;

        fn value(kind: u8, text: String, bytes: Vec<u8>, x: f64) -> pb::TypedValue {
            use pb::typed_value::Value as V;
            let v = match kind {
                0 => V::Null(true),
                1 => V::Bool(x > 0.0),
                2 => V::Integer(text),
                3 => V::Decimal(text),
                4 => V::Float(x),
                5 => V::Text(text),
                6 => V::Bytes(bytes),
                7 => V::Date(text),
                8 => V::Timestamp(text),
                9 => V::Uuid(bytes),
                _ => V::Json(text),
            };
            pb::TypedValue { value: Some(v) }
        }

        proptest! {
            #[test]
            fn structured_nodes_and_descriptions(
                gaps in proptest::collection::vec(any::<u64>(), 0..8),
                counts in proptest::collection::vec(any::<u64>(), 0..8),
                fingerprints in proptest::collection::vec(any::<u8>(), 0..80),
                level in 0u8..20,
                key_id in proptest::collection::vec(any::<u8>(), 0..10),
                fingerprint in proptest::collection::vec(any::<u8>(), 0..40),
                depth in 0u32..10,
                sum in proptest::collection::vec(any::<u8>(), 0..40),
            ) {
                let n = gaps.len().min(counts.len());
                let r = pb::GetNodesResponse {
                    prefix_gaps: gaps[..n].to_vec(),
                    counts: counts[..n].to_vec(),
                    fingerprints: fingerprints.clone(),
                };
                let _ = children_from_response(level, &r);
                let d = pb::DescribeResponse {
                    encoding_version: depth,
                    key_id,
                    schema_fingerprint: fingerprint,
                    stored_depth: depth,
                    root: Some(pb::NodeEntry {
                        prefix: counts.first().copied().unwrap_or_default(),
                        count: n as u64,
                        sum,
                    }),
                    watermark: fingerprints,
                    session: 0,
                };
                let _ = description(&d);
            }

            #[test]
            fn structured_values(
                kind in 0u8..11,
                text in ".{0,40}",
                bytes in proptest::collection::vec(any::<u8>(), 0..20),
                x in any::<f64>(),
            ) {
                let _ = typed_value("v", &value(kind, text, bytes, x));
            }
        }
    }
}
