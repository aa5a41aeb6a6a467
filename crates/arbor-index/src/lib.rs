//! The Merkle index of one dataset, stored in RocksDB.
//!
//! The index holds, for every record, its position, canonical key and digest
//! (never its values), and the tree nodes of levels `0..=depth` (see
//! [`arbor_tree`]), where `depth` is chosen from the dataset's size at build
//! time so the deepest stored nodes hold a few dozen records. Nodes deeper
//! than that are summed on demand from one contiguous range scan.
//!
//! ```text
//!  Record ─hash─▶ (position, key, digest) ──┬─▶ records: pos ‖ key → digest
//!                                           └─▶ nodes: (level, prefix) += Node(digest), levels 0..=depth
//! ```
//!
//! Guarantees:
//!
//! * a record and its node deltas commit in one atomic WriteBatch, so after a
//!   crash the nodes are still exactly the sums of the records;
//! * a full build is marked in progress until it has committed, and an
//!   unfinished build is reported, never read;
//! * reads come from [`IndexSnapshot`]s, consistent across a whole compare;
//! * [`Index::verify`] recomputes everything from the records;
//! * bytes read back from disk are checked: corruption is an
//!   [`IndexError::Corrupt`], never a panic. The column families and their
//!   layouts are in [`cf`].
//!
//! Only this crate links RocksDB.

mod build;
pub mod cf;
mod error;
pub mod runs;
mod snapshot;
mod store;
mod verify;

pub use error::{IndexError, SourceError};
pub use runs::RunStore;
pub use snapshot::{Description, IndexSnapshot, Leaf, SharedSnapshot};
pub use store::{
    ApplyStats, BLOCK_CACHE_BYTES, BUILD_CHUNK_RECORDS, BuildFeed, BuildStats, BuildStopped,
    Change, ChangeTime, HashedChange, INDEX_FORMAT, Index, IndexConfig, KeyRepeats,
    MEMTABLE_BUDGET_BYTES, RescanStats, RocksdbMemory, now_us, rescan_each, rocksdb_memory,
};
pub use verify::{BadRecord, MAX_REPORTED_PROBLEMS, NodeMismatch, VerifyReport};
