//! The `Peer` trait: what the descent needs from a side of a compare, and
//! [`LocalPeer`], its implementation over an index in this process.
//!
//! A peer answers from one consistent state for the whole compare (a local
//! peer holds an index snapshot; a remote one pins a snapshot on its agent),
//! so the nodes of level 3 and the leaves below them describe the same data.

use std::future::Future;
use std::sync::OnceLock;

use arbor_index::{Description, Index, IndexError, IndexSnapshot, Leaf};
use arbor_record::{Digest, KeyId};
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

/// Per-column digests of some rows, read from a side's system (not its
/// index): what names the columns of a changed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDigests {
    /// Canonical column names, in the order of every row's digests.
    pub columns: Vec<String>,
    /// Per key asked, in order: its digests, or `None` if the system has no
    /// such row now.
    pub rows: Vec<Option<Vec<Digest>>>,
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

    /// Describes the dataset again under the hashing key `key_id`, if this
    /// side holds an index under it (during a key rotation an agent holds
    /// two); `None` if it does not. Later calls then read that index.
    fn switch_key(
        &self,
        key_id: KeyId,
    ) -> impl Future<Output = Result<Option<Description>, PeerError>> + Send {
        let _ = key_id;
        async { Ok(None) }
    }

    /// The column digests of the rows with these canonical keys, read from
    /// the side's system now and hashed under `key_id`'s key (the
    /// compare's; `None`: the current one). A side that cannot read its
    /// system refuses, which is the default.
    fn column_digests(
        &self,
        keys: &[Vec<u8>],
        key_id: Option<KeyId>,
    ) -> impl Future<Output = Result<ColumnDigests, PeerError>> + Send {
        let _ = (keys, key_id);
        async {
            Err(PeerError::Refused(
                "this peer cannot read its system's columns".into(),
            ))
        }
    }

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
    /// Indexes of the same dataset under other keys (a key rotation).
    alternates: Vec<&'a Index>,
    /// The snapshot of the alternate switched to, if any.
    switched: OnceLock<IndexSnapshot<'a>>,
}

impl<'a> LocalPeer<'a> {
    /// Snapshots `index` and serves it as `dataset`.
    pub fn new(index: &'a Index, dataset: impl Into<String>) -> Result<LocalPeer<'a>, IndexError> {
        Ok(LocalPeer {
            dataset: dataset.into(),
            snapshot: index.snapshot()?,
            alternates: Vec::new(),
            switched: OnceLock::new(),
        })
    }

    /// Also offers these indexes of the dataset, under other keys, to a
    /// peer that uses one of them ([`Peer::switch_key`]).
    pub fn with_alternates(mut self, alternates: impl IntoIterator<Item = &'a Index>) -> Self {
        self.alternates.extend(alternates);
        self
    }

    fn current(&self) -> &IndexSnapshot<'a> {
        self.switched.get().unwrap_or(&self.snapshot)
    }
}

impl Peer for LocalPeer<'_> {
    fn dataset(&self) -> &str {
        &self.dataset
    }

    async fn describe(&self) -> Result<Description, PeerError> {
        Ok(self.current().describe()?)
    }

    async fn switch_key(&self, key_id: KeyId) -> Result<Option<Description>, PeerError> {
        let Some(index) = self
            .alternates
            .iter()
            .find(|i| i.config().keys.key_id() == key_id)
        else {
            return Ok(None);
        };
        if self.switched.get().is_some() {
            return Err(PeerError::Refused(
                "this compare already switched keys once".into(),
            ));
        }
        let snapshot = index.snapshot()?;
        let description = snapshot.describe()?;
        let _ = self.switched.set(snapshot);
        Ok(Some(description))
    }

    async fn children(&self, parents: &[Prefix]) -> Result<Vec<(Prefix, Node)>, PeerError> {
        Ok(self.current().children(parents)?)
    }

    async fn leaves(&self, ranges: &[Prefix]) -> Result<Vec<Leaf>, PeerError> {
        Ok(self.current().leaves(ranges)?)
    }
}
