//! The `Peer` trait: what the descent needs from a side of a compare, and
//! [`LocalPeer`], its implementation over an index in this process.
//!
//! A peer answers from one consistent state for the whole compare (a local
//! peer holds an index snapshot; a remote one pins a snapshot on its agent),
//! so the nodes of level 3 and the leaves below them describe the same data.

use std::future::Future;

use arbor_index::{Description, Index, IndexError, IndexSnapshot, Leaf};
use arbor_tree::{Node, Prefix};
use thiserror::Error;

/// A failure on one side of a compare.
#[derive(Debug, Error)]
pub enum PeerError {
    /// The side's index failed.
    #[error("index error: {0}")]
    Index(#[from] IndexError),
    /// The side could not be reached, or went away (worth retrying).
    #[error("peer unavailable: {0}")]
    Unavailable(String),
    /// The side refused the request.
    #[error("peer refused the request: {0}")]
    Refused(String),
    /// The side answered with something that is not a valid response.
    #[error("malformed response from peer: {0}")]
    Malformed(String),
}

/// One side of a compare.
///
/// Methods are batched by design: [`Peer::children`] takes every parent of a
/// level at once, [`Peer::leaves`] every range of a batch, so a compare costs
/// one round trip per level rather than one per node.
pub trait Peer: Sync {
    /// The dataset this peer serves (used in requests and their wire size).
    fn dataset(&self) -> &str;

    /// Parameters, root and watermark.
    fn describe(&self) -> impl Future<Output = Result<Description, PeerError>> + Send;

    /// The non-empty children of each parent (all parents share one level),
    /// sorted by prefix.
    fn children(
        &self,
        parents: &[Prefix],
    ) -> impl Future<Output = Result<Vec<(Prefix, Node)>, PeerError>> + Send;

    /// Every record under each range (ranges sorted and disjoint), sorted by
    /// (position, key).
    fn leaves(
        &self,
        ranges: &[Prefix],
    ) -> impl Future<Output = Result<Vec<Leaf>, PeerError>> + Send;

    /// Releases what the peer holds for this compare (a remote snapshot).
    /// Best effort: called once the compare is over, whatever its outcome.
    fn finish(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A peer over an index in this process, reading one snapshot.
pub struct LocalPeer<'a> {
    dataset: String,
    snapshot: IndexSnapshot<'a>,
}

impl<'a> LocalPeer<'a> {
    /// Snapshots `index` and serves it as `dataset`.
    pub fn new(index: &'a Index, dataset: impl Into<String>) -> Result<LocalPeer<'a>, IndexError> {
        Ok(LocalPeer {
            dataset: dataset.into(),
            snapshot: index.snapshot()?,
        })
    }
}

impl Peer for LocalPeer<'_> {
    fn dataset(&self) -> &str {
        &self.dataset
    }

    async fn describe(&self) -> Result<Description, PeerError> {
        Ok(self.snapshot.describe()?)
    }

    async fn children(&self, parents: &[Prefix]) -> Result<Vec<(Prefix, Node)>, PeerError> {
        Ok(self.snapshot.children(parents)?)
    }

    async fn leaves(&self, ranges: &[Prefix]) -> Result<Vec<Leaf>, PeerError> {
        Ok(self.snapshot.leaves(ranges)?)
    }
}
