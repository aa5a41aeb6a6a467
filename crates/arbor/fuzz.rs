//! The fuzz targets: every decoder of outside bytes, by name, for the
//! coverage-guided fuzzer (`fuzz/`, `tools/fuzz.sh`). Each target takes
//! arbitrary bytes and drops the result; the only failure is a panic (or
//! an abort, a hang, a runaway allocation, which the fuzzer reports too).
//!
//! The decoders of the source crate are reached through
//! [`arbor_source::fuzz`]; the others are public already. The never-panic
//! property tests call the same functions.
//!
//! Built only for tests and with the `fuzzing` feature.

use std::path::PathBuf;
use std::sync::OnceLock;

use prost::Message;

use crate::proto::v1 as pb;
use crate::wire;

/// One fuzz target: a name (the corpus folder under `fuzz/corpus/`) and
/// the function that takes the bytes.
pub struct Target {
    /// The target's name, as `arbor-fuzz NAME` takes it.
    pub name: &'static str,
    /// What it decodes.
    pub about: &'static str,
    /// Runs one input.
    pub run: fn(&[u8]),
}

/// Every fuzz target.
pub static TARGETS: &[Target] = &[
    Target {
        name: "wire",
        about: "protobuf messages from a peer or an agent, decoded and converted",
        run: wire,
    },
    Target {
        name: "pgoutput",
        about: "pgoutput messages from a logical replication slot",
        run: arbor_source::fuzz::pgoutput,
    },
    Target {
        name: "binary_copy",
        about: "binary COPY rows from PostgreSQL, in any column layout",
        run: arbor_source::fuzz::binary_copy,
    },
    Target {
        name: "csv",
        about: "a CSV export",
        run: arbor_source::fuzz::csv,
    },
    Target {
        name: "jsonl",
        about: "a JSONL export",
        run: arbor_source::fuzz::jsonl,
    },
    Target {
        name: "config",
        about: "an agent's config file",
        run: config,
    },
    Target {
        name: "canonical",
        about: "canonical record encoding and the index's stored keys and nodes",
        run: canonical,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Protobuf messages that arrive from the network, each decoded from the
/// bytes after the first and converted to its domain type. The first byte
/// gives the tree level (and the number of keys a column-digest answer is
/// checked against).
pub fn wire(data: &[u8]) {
    let Some((&head, bytes)) = data.split_first() else {
        return;
    };
    let level = head % 20;
    let keys: Vec<Vec<u8>> = (0..head >> 6).map(|i| vec![i]).collect();
    if let Ok(r) = pb::DescribeResponse::decode(bytes) {
        let _ = wire::description(&r);
    }
    if let Ok(r) = pb::GetNodesResponse::decode(bytes) {
        let _ = wire::children_from_response(level, &r);
    }
    if let Ok(e) = pb::NodeEntry::decode(bytes) {
        let _ = wire::node_from_entry(level, &e);
    }
    if let Ok(e) = pb::LeafEntry::decode(bytes) {
        let _ = wire::leaf(e);
    }
    if let Ok(v) = pb::TypedValue::decode(bytes) {
        let _ = wire::typed_value("v", &v);
    }
    if let Ok(r) = pb::ColumnDigestsResponse::decode(bytes) {
        let _ = wire::column_digests_from_response(&keys, r);
    }
    if let Ok(s) = pb::RunSummary::decode(bytes) {
        let _ = arbor_agent::report::RunSummary::from(s);
    }
    if let Ok(d) = pb::DriftEntry::decode(bytes) {
        let _ = arbor_agent::report::DriftEntry::from(d);
    }
}

/// An agent config file, loaded and checked from a directory of this
/// process's own (relative paths in it resolve there).
pub fn config(data: &[u8]) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("arbor-fuzz-{}-config", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory for the fuzzed config");
        dir
    });
    let path = dir.join("agent.toml");
    std::fs::write(&path, data).expect("the fuzzed config is written");
    let _ = arbor_agent::config::AgentConfig::load(&path, &Default::default());
}

/// The canonical encoding of a record's values, and the keys and values
/// of the index's column families as read back from RocksDB.
pub fn canonical(data: &[u8]) {
    if let Ok(values) = arbor_record::decode_tuple(data) {
        // What decodes is the one canonical form of its values.
        assert_eq!(arbor_record::tuple_bytes(&values), data);
    }
    use arbor_index::cf;
    let (key, value) = data.split_at(data.len().min(data.first().map_or(0, |&b| b as usize)));
    let _ = cf::split_record_key(key);
    let _ = cf::record_digest(key, value);
    let _ = cf::split_node_key(key);
    let _ = cf::node_value(key, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_target_has_its_own_name() {
        for t in TARGETS {
            assert!(std::ptr::eq(target(t.name).unwrap(), t), "{}", t.name);
        }
        assert!(target("none").is_none());
    }

    /// Every input of the committed corpus (`fuzz/corpus/TARGET/`) runs
    /// through its target: the seeds, what the long runs kept, and every
    /// input that once crashed a target, kept as a regression.
    #[test]
    fn the_committed_corpus_runs_clean() {
        let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        let corpus = std::path::Path::new(&root).join("fuzz/corpus");
        for t in TARGETS {
            let folder = corpus.join(t.name);
            let inputs: Vec<_> = std::fs::read_dir(&folder)
                .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
                .map(|e| e.unwrap().path())
                .collect();
            assert!(!inputs.is_empty(), "{} has no corpus", t.name);
            for input in inputs {
                let bytes = std::fs::read(&input).unwrap();
                eprintln!("{}", input.display());
                (t.run)(&bytes);
            }
        }
    }

    proptest! {
        /// Arbitrary bytes as every message a peer or an agent answers
        /// (the level and key count in the first byte); the structured
        /// cases are beside the conversions, in `wire.rs`.
        #[test]
        fn wire_takes_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            wire(&bytes);
        }

        /// Every target takes arbitrary bytes without a panic (the fuzzer
        /// goes far deeper; this keeps the entry points honest in CI).
        #[test]
        fn every_target_takes_arbitrary_bytes(
            name in proptest::sample::select(TARGETS.iter().map(|t| t.name).collect::<Vec<_>>()),
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            (target(name).unwrap().run)(&bytes);
        }
    }
}
