//! Comparing two datasets: the descent engine over the [`Peer`] trait.
//!
//! The engine never sees a transport or a database: a [`Peer`] answers
//! Describe, children-of-these-parents and leaves-of-these-ranges, from one
//! consistent state. [`LocalPeer`] serves an in-process index (tests,
//! benches, the agent's own side); the gRPC client in the root package
//! serves a remote agent. See [`descent`] for the algorithm and its bounds,
//! and [`wire`] for how bytes on the wire are accounted.
//!
//! [`policy`] holds the sync rules, pure: which side's row wins, or how two
//! rows merge. Planning and executing runs over gRPC (fetching values,
//! conditional writes) lives with the client in the root package.

pub mod descent;
pub mod peer;
pub mod policy;
pub mod repair;
pub mod wire;

pub use descent::{
    CompareError, CompareOptions, CompareStats, DEFAULT_LEAF_THRESHOLD, DEFAULT_MAX_LEAF_BATCH,
    DEFAULT_MAX_PARENTS_PER_REQUEST, Drift, DriftKind, Side, Traffic, compare, compare_collect,
};
pub use peer::{ColumnDigests, LocalPeer, Peer, PeerError};
