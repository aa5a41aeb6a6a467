//! arbor: keeps records consistent across systems by Merkle-tree
//! anti-entropy.
//!
//! This package is the agent binary and the gRPC edge. The engine lives in
//! the workspace crates, bottom-up:
//!
//! * [`arbor_record`]: typed values, canonical encoding, keyed hashing;
//! * [`arbor_tree`]: positions, levels, additive node sums, node-set diff;
//! * [`arbor_index`]: the RocksDB index of one dataset;
//! * [`arbor_sync`]: the descent engine over the `Peer` trait.
//!
//! Only this package links tonic and prost; generated types stay in
//! [`proto`] and are converted to domain types at the edge.

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod grpc;
pub mod metrics;
pub mod node;
pub mod sync;
pub mod wire;

/// What this binary is: package version, git commit, build profile.
pub mod build {
    /// The package version (`Cargo.toml`).
    pub const VERSION: &str = env!("CARGO_PKG_VERSION");
    /// The git commit it was built from (`unknown` outside a checkout).
    pub const COMMIT: &str = env!("ARBOR_GIT_COMMIT");
    /// `release` for production builds, `debug` for the dev profile.
    pub const PROFILE: &str = env!("ARBOR_BUILD_PROFILE");
    /// `0.1.0 (commit 3a482dc1d2e4, release)`: `arbor --version`.
    pub const LONG_VERSION: &str = concat!(
        env!("CARGO_PKG_VERSION"),
        " (commit ",
        env!("ARBOR_GIT_COMMIT"),
        ", ",
        env!("ARBOR_BUILD_PROFILE"),
        ")"
    );
}

pub use arbor_agent;
pub use arbor_index;
pub use arbor_record;
pub use arbor_source;
pub use arbor_sync;
pub use arbor_tree;

/// Generated protobuf and gRPC code of `proto/arbor/v1/`.
pub mod proto {
    /// The encoded descriptor set of every arbor proto, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/arbor_descriptor.bin"));

    /// Package `arbor.v1`.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("arbor.v1");
    }
}
