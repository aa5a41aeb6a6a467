//! The two sides of a sync run: how a run compares them, reads their
//! values and writes their repairs, each side in this process (through the
//! agent's [`Repairs`], no gRPC) or behind another agent ([`Remote`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arbor_record::Value;
use arbor_sync::{CompareOptions, compare_collect};

use super::{Action, Side, SyncError, SyncOptions};
use crate::repair::Repairs;

/// How a run reaches a side behind another agent: the gRPC client, in the
/// `arbor` package. Kept a trait so this crate links no transport.
pub trait Remote: Clone + Send + Sync + 'static {
    /// The peer a compare descends through.
    type Peer: arbor_sync::Peer + Send + Sync;

    /// A peer for `dataset` at `agent`, retrying for `retry_for`.
    fn peer(
        &self,
        agent: &str,
        dataset: &str,
        retry_for: Duration,
    ) -> Result<Self::Peer, SyncError>;

    /// The values of these keys of `dataset` at `agent`, as stored.
    fn fetch(
        &self,
        agent: &str,
        dataset: &str,
        keys: Vec<Vec<u8>>,
    ) -> impl Future<Output = Result<Fetched, SyncError>> + Send;

    /// Applies (or renders) one batch on `dataset` at `agent`, retrying
    /// transient failures for `retry_for`.
    fn apply(
        &self,
        agent: &str,
        dataset: &str,
        retry_for: Duration,
        batch: Batch<'_>,
    ) -> impl Future<Output = Result<Applied, SyncError>> + Send;

    /// Bytes the write of `action` takes in a request, at most.
    fn write_bytes(&self, action: &Action) -> usize;
}

/// No other agent: the [`Remote`] of a run whose two sides are both in
/// this process. Reaching a remote side through it is an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct InProcess;

impl InProcess {
    fn refuse(agent: &str) -> SyncError {
        SyncError::Invalid(format!(
            "{agent}: this run reaches no other agent (both sides are in this process)"
        ))
    }
}

impl Remote for InProcess {
    type Peer = arbor_sync::LocalPeer<'static>;

    fn peer(&self, agent: &str, _: &str, _: Duration) -> Result<Self::Peer, SyncError> {
        Err(InProcess::refuse(agent))
    }

    async fn fetch(&self, agent: &str, _: &str, _: Vec<Vec<u8>>) -> Result<Fetched, SyncError> {
        Err(InProcess::refuse(agent))
    }

    async fn apply(
        &self,
        agent: &str,
        _: &str,
        _: Duration,
        _: Batch<'_>,
    ) -> Result<Applied, SyncError> {
        Err(InProcess::refuse(agent))
    }

    fn write_bytes(&self, action: &Action) -> usize {
        local_write_bytes(action)
    }
}

/// The size of a write in process: nothing limits a batch's bytes but
/// memory, and the canonical encoding is a fair measure.
fn local_write_bytes(action: &Action) -> usize {
    const WRITE_OVERHEAD_BYTES: usize = 64;
    action.key_bytes.len()
        + action
            .values
            .as_deref()
            .map_or(0, |v| arbor_record::tuple_bytes(v).len())
        + WRITE_OVERHEAD_BYTES
}

/// Values fetched from one side: by canonical key (`None`: absent), and
/// the canonical names of the value columns.
#[derive(Debug, Default)]
pub struct Fetched {
    pub(crate) rows: HashMap<Vec<u8>, Option<Vec<Value>>>,
    /// Absent rows whose delete that side's change capture saw, and when
    /// (µs since the Unix epoch).
    pub(crate) deleted: HashMap<Vec<u8>, i64>,
    /// Present rows an incremental change last wrote, and when.
    pub(crate) changed: HashMap<Vec<u8>, i64>,
    /// The canonical names of the value columns.
    pub columns: Vec<String>,
}

impl Fetched {
    /// Records one key's values and what capture knows of it.
    pub fn add(
        &mut self,
        key: Vec<u8>,
        values: Option<Vec<Value>>,
        deleted_at_us: i64,
        changed_at_us: i64,
    ) {
        if changed_at_us > 0 {
            self.changed.insert(key.clone(), changed_at_us);
        }
        if values.is_none() && deleted_at_us > 0 {
            self.deleted.insert(key.clone(), deleted_at_us);
        }
        self.rows.insert(key, values);
    }
}

/// One batch of planned writes for one side.
pub struct Batch<'a> {
    /// The run the journal files it under.
    pub run_id: &'a str,
    /// Its number in the run (for logs).
    pub number: u64,
    /// The writes.
    pub writes: &'a [&'a Action],
    /// Render each write's SQL instead of running it.
    pub dry_run: bool,
    /// The hashing key of the plan's compare; `None`: the side's current one.
    pub key_id: Option<arbor_record::KeyId>,
}

/// What became of one write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Written.
    Applied,
    /// The row already was as planned.
    AlreadyApplied,
    /// The row changed since the plan: left alone.
    Conflict,
    /// A dry run: the SQL it would run.
    Planned(String),
}

/// What one batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Per write, in order.
    pub outcomes: Vec<BatchOutcome>,
    /// Whether every write's outcome came from the journal.
    pub replayed: bool,
}

/// The two sides of a sync run: how the run compares them, reads their
/// values and writes their repairs. [`Sides`] holds each side in this
/// process (no gRPC) or behind an agent.
pub trait SyncSides: Sync {
    /// How errors name a side (its agent).
    fn name(&self, side: Side) -> &str;

    /// Compares the two sides now: the drift, the hashing key id the
    /// compare settled on (hex; its digests are keyed with it), and each
    /// side's record count.
    fn drift(&self) -> impl Future<Output = Result<Compared, SyncError>> + Send;

    /// The values of these keys on `side`, as stored.
    fn fetch(
        &self,
        side: Side,
        keys: Vec<Vec<u8>>,
    ) -> impl Future<Output = Result<Fetched, SyncError>> + Send;

    /// Applies (or renders) one batch on `side`.
    fn apply(
        &self,
        side: Side,
        batch: Batch<'_>,
    ) -> impl Future<Output = Result<Applied, SyncError>> + Send;

    /// Bytes the write of `action` takes in one of `side`'s batches, at
    /// most: batches stay under what one request may carry.
    fn write_bytes(&self, side: Side, action: &Action) -> usize;
}

/// Where one side of a sync run is.
#[derive(Clone)]
pub enum SideAt {
    /// A dataset of this process, through an agent's [`Repairs`] (no
    /// gRPC: an agent's own side of a job or a Reconcile).
    ///
    /// [`Repairs`]: Repairs
    Local {
        /// The agent's repair machinery.
        repairs: Repairs,
        /// The dataset.
        dataset: String,
    },
    /// A dataset of an agent reached over gRPC.
    Remote {
        /// The agent, `http://host:port`.
        agent: String,
        /// The dataset.
        dataset: String,
    },
}

impl SideAt {
    fn name(&self) -> &str {
        match self {
            SideAt::Local { dataset, .. } => dataset,
            SideAt::Remote { agent, .. } => agent,
        }
    }
}

/// The two sides of a sync run, each in this process or behind an agent
/// reached through `R`.
pub struct Sides<R> {
    source: SideAt,
    target: SideAt,
    /// How long a remote side is waited for (calls and batches retried).
    retry_for: Duration,
    remote: R,
}

impl<R: Remote> Sides<R> {
    /// These sides.
    pub fn new(source: SideAt, target: SideAt, retry_for: Duration, remote: R) -> Sides<R> {
        Sides {
            source,
            target,
            retry_for,
            remote,
        }
    }

    /// Both sides behind the agents `opts` names.
    pub fn remote(opts: &SyncOptions, remote: R) -> Sides<R> {
        Sides::new(
            SideAt::Remote {
                agent: opts.source.clone(),
                dataset: opts.dataset.clone(),
            },
            SideAt::Remote {
                agent: opts.target.clone(),
                dataset: opts.target_dataset.clone(),
            },
            opts.retry_for,
            remote,
        )
    }

    fn at(&self, side: Side) -> &SideAt {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }
}

fn local_err(dataset: &str, e: &crate::error::OpError) -> SyncError {
    SyncError::Agent {
        agent: format!("(this process) {dataset}"),
        message: crate::report::error_chain(e),
    }
}

/// The index of a local side's dataset, if it may be compared now.
/// Waits while a local dataset is being indexed (an agent that just
/// started catches up with its system first), as a remote side is waited
/// for through its retries, for at most `retry_for`.
async fn local_index(
    repairs: &Repairs,
    dataset: &str,
    retry_for: Duration,
) -> Result<std::sync::Arc<arbor_index::Index>, SyncError> {
    let deadline = Instant::now() + retry_for;
    loop {
        match repairs.state().comparable(dataset) {
            Ok(ds) => return Ok(ds.index()),
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(LOCAL_WAIT).await;
            }
            Err(e) => return Err(local_err(dataset, &e)),
        }
    }
}

/// Pause between looks at a local side that is still being indexed.
const LOCAL_WAIT: Duration = Duration::from_millis(100);

pub(crate) fn peer_err(e: impl std::error::Error) -> SyncError {
    SyncError::Compare(crate::report::error_chain(&e))
}

impl<R: Remote> SyncSides for Sides<R> {
    fn name(&self, side: Side) -> &str {
        self.at(side).name()
    }

    async fn drift(&self) -> Result<Compared, SyncError> {
        // A side that restarted mid-run is back only once it caught up with
        // its system: wait for it as long as writes are retried.
        let remote = |agent: &str, dataset: &str| self.remote.peer(agent, dataset, self.retry_for);
        use arbor_sync::LocalPeer;
        match (&self.source, &self.target) {
            (
                SideAt::Local { repairs, dataset },
                SideAt::Local {
                    repairs: other,
                    dataset: other_dataset,
                },
            ) => {
                let (l, r) = (
                    local_index(repairs, dataset, self.retry_for).await?,
                    local_index(other, other_dataset, self.retry_for).await?,
                );
                let l = LocalPeer::new(&l, dataset.clone()).map_err(peer_err)?;
                let r = LocalPeer::new(&r, other_dataset.clone()).map_err(peer_err)?;
                compared(&l, &r).await
            }
            (
                SideAt::Local { repairs, dataset },
                SideAt::Remote {
                    agent,
                    dataset: theirs,
                },
            ) => {
                let l = local_index(repairs, dataset, self.retry_for).await?;
                let l = LocalPeer::new(&l, dataset.clone()).map_err(peer_err)?;
                compared(&l, &remote(agent, theirs)?).await
            }
            (
                SideAt::Remote {
                    agent,
                    dataset: theirs,
                },
                SideAt::Local { repairs, dataset },
            ) => {
                let r = local_index(repairs, dataset, self.retry_for).await?;
                let r = LocalPeer::new(&r, dataset.clone()).map_err(peer_err)?;
                compared(&remote(agent, theirs)?, &r).await
            }
            (
                SideAt::Remote { agent, dataset },
                SideAt::Remote {
                    agent: other,
                    dataset: other_dataset,
                },
            ) => compared(&remote(agent, dataset)?, &remote(other, other_dataset)?).await,
        }
    }

    async fn fetch(&self, side: Side, keys: Vec<Vec<u8>>) -> Result<Fetched, SyncError> {
        if keys.is_empty() {
            return Ok(Fetched::default());
        }
        match self.at(side).clone() {
            SideAt::Remote { agent, dataset } => self.remote.fetch(&agent, &dataset, keys).await,
            SideAt::Local { repairs, dataset } => fetch_local(repairs, dataset, keys).await,
        }
    }

    async fn apply(&self, side: Side, batch: Batch<'_>) -> Result<Applied, SyncError> {
        match self.at(side).clone() {
            SideAt::Remote { agent, dataset } => {
                self.remote
                    .apply(&agent, &dataset, self.retry_for, batch)
                    .await
            }
            SideAt::Local { repairs, dataset } => {
                apply_local(repairs, dataset, self.retry_for, batch).await
            }
        }
    }

    fn write_bytes(&self, side: Side, action: &Action) -> usize {
        match self.at(side) {
            SideAt::Remote { .. } => self.remote.write_bytes(action),
            SideAt::Local { .. } => local_write_bytes(action),
        }
    }
}
async fn fetch_local(
    repairs: Repairs,
    dataset: String,
    keys: Vec<Vec<u8>>,
) -> Result<Fetched, SyncError> {
    tokio::task::spawn_blocking(move || {
        let mut out = Fetched {
            columns: repairs
                .config(&dataset)
                .map_err(|s| local_err(&dataset, &s))?
                .mapping
                .columns()
                .iter()
                .map(|c| c.canonical().to_owned())
                .collect(),
            ..Fetched::default()
        };
        let keys = keys
            .iter()
            .map(|k| arbor_record::decode_tuple(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SyncError::Invalid(e.to_string()))?;
        repairs
            .fetch(&dataset, &keys, true, |rows| {
                for r in rows {
                    out.add(r.canonical_key, r.values, r.deleted_at_us, r.changed_at_us);
                }
                Ok(())
            })
            .map_err(|s| match s {
                Some(s) => local_err(&dataset, &s),
                None => SyncError::Invalid("the fetch stopped".into()),
            })?;
        Ok(out)
    })
    .await
    .map_err(|e| SyncError::Invalid(format!("fetch task failed: {e}")))?
}

async fn apply_local(
    repairs: Repairs,
    dataset: String,
    retry_for: Duration,
    batch: Batch<'_>,
) -> Result<Applied, SyncError> {
    // Shared, not copied, by each attempt of the blocking task.
    let writes: std::sync::Arc<Vec<arbor_source::sink::Write>> = std::sync::Arc::new(
        batch
            .writes
            .iter()
            .map(|a| a.write())
            .collect::<Result<Vec<_>, _>>()?,
    );
    let key_id = batch.key_id;
    let (run_id, dry_run) = (batch.run_id.to_owned(), batch.dry_run);
    // A dataset being indexed refuses writes for now: waited for, as a
    // remote side's refusals are retried.
    let deadline = Instant::now() + retry_for;
    loop {
        let (repairs, name, writes, run_id) = (
            repairs.clone(),
            dataset.clone(),
            std::sync::Arc::clone(&writes),
            run_id.clone(),
        );
        let result =
            tokio::task::spawn_blocking(move || -> Result<Applied, crate::error::OpError> {
                let dataset = name;
                if dry_run {
                    let sql = repairs.render(&dataset, &writes, key_id)?;
                    return Ok(Applied {
                        outcomes: sql.into_iter().map(BatchOutcome::Planned).collect(),
                        replayed: false,
                    });
                }
                let (outcomes, replayed) = repairs.apply(&dataset, &run_id, &writes, key_id)?;
                Ok(Applied {
                    outcomes: outcomes
                        .into_iter()
                        .map(|o| match o {
                            crate::repair::RepairOutcome::Applied => BatchOutcome::Applied,
                            crate::repair::RepairOutcome::AlreadyApplied => {
                                BatchOutcome::AlreadyApplied
                            }
                            crate::repair::RepairOutcome::Conflict => BatchOutcome::Conflict,
                        })
                        .collect(),
                    replayed,
                })
            })
            .await
            .map_err(|e| SyncError::Invalid(format!("repair task failed: {e}")))?;
        match result {
            Ok(applied) => return Ok(applied),
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(LOCAL_WAIT).await;
            }
            Err(e) => return Err(local_err(&dataset, &e)),
        }
    }
}

/// What a compare of the two sides found.
#[derive(Debug, Clone, Default)]
pub struct Compared {
    /// The drift.
    pub drift: Vec<arbor_sync::Drift>,
    /// The hashing key id (hex) the compare settled on.
    pub key_id: String,
    /// Records on each side: source, target.
    pub rows: [u64; 2],
}

/// The drift between two peers, the key id the compare settled on, and
/// each side's record count.
pub(crate) async fn compared<L: arbor_sync::Peer, R: arbor_sync::Peer>(
    left: &L,
    right: &R,
) -> Result<Compared, SyncError> {
    let (drift, stats) = compare_collect(left, right, &CompareOptions::default())
        .await
        .map_err(|e| SyncError::Compare(crate::report::error_chain(&e)))?;
    let count = |d: &Option<arbor_index::Description>| d.as_ref().map_or(0, |d| d.count());
    Ok(Compared {
        key_id: stats
            .right_description
            .as_ref()
            .map(|d| d.key_id.to_string())
            .unwrap_or_default(),
        rows: [
            count(&stats.left_description),
            count(&stats.right_description),
        ],
        drift,
    })
}
