//! A dataset an agent serves (its indexes, one per hashing key held, and
//! the system beside them), the agent's datasets together, and the compare
//! sessions peers hold on pinned snapshots.
//!
//! Each Describe pins a snapshot of the dataset's index in a **session**;
//! GetNodes and StreamLeaves name the session, so every answer of one
//! compare comes from the same state. Sessions end with EndSession or after
//! [`ServiceLimits::session_idle`] without use; at most
//! [`ServiceLimits::max_sessions`] are open at once, and one caller (a
//! principal, or without principals an address) holds at most
//! [`ServiceLimits::max_sessions_per_caller`]: opening one more closes that
//! caller's least recently used session, so no caller can lock others out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arbor_index::{ApplyStats, Change, ChangeTime, Index, IndexError, SharedSnapshot};
use arbor_record::{Digest, KeyId, decode_tuple};
use arbor_source::Source;

use crate::config::DEFAULT_MAX_RUNS_PER_DATASET;
use crate::error::OpError;

/// Keys in one ColumnDigests request.
pub const MAX_COLUMN_DIGEST_KEYS: usize = 4_096;

/// Bytes of rows a ColumnDigests request reads at a time, about: the
/// digests are kept, the rows dropped.
const COLUMN_DIGEST_FETCH_BYTES: usize = 8 << 20;

/// A dataset an agent serves: its index and, when the agent runs beside the
/// system, the system itself (for column digests and reindexing).
pub struct Dataset {
    /// The Merkle indexes, one per hashing key held (see [`Keyring`]).
    keyring: std::sync::RwLock<Keyring>,
    /// Serialises applies with key switches, so every index of the ring
    /// sees every change.
    apply_lock: Mutex<()>,
    /// Set while `arbor keys rotate` builds an index under a new key.
    pub rotating: AtomicBool,
    /// The system, read-only.
    pub source: Option<Arc<Mutex<Box<dyn Source>>>>,
    /// Set while a full build runs: compares are refused meanwhile, since
    /// the index does not yet describe the system.
    pub indexing: AtomicBool,
    /// The column mapping (schema and transforms), for ingested changes.
    pub mapping: Option<arbor_source::Mapping>,
    /// A counter bumped whenever change capture brings changes into the
    /// index: real-time sync jobs watch it.
    pub changes: tokio::sync::watch::Sender<u64>,
    /// Commit-to-index lag of the last captured batch, milliseconds
    /// (logical capture; 0 otherwise).
    pub lag_ms: std::sync::atomic::AtomicU64,
    /// For a dataset whose key is sensitive: the key reports hash keys
    /// with, so they show `hash:…` instead of the key.
    pub report_key: Option<[u8; 32]>,
    /// Compare and reconcile runs in progress on this dataset.
    pub runs_in_progress: std::sync::atomic::AtomicUsize,
    /// How many may run at once.
    pub max_runs: usize,
    /// Its capture takes changes pushed through IngestService
    /// (`capture = { mode = "push" }`); other datasets refuse them.
    pub accepts_push: bool,
    /// Why the last attempt to index this dataset failed, while it stays
    /// failed (the agent retries it).
    failure: Mutex<Option<String>>,
    /// Why its last rescan failed, until one succeeds: the index may then
    /// miss changes (deletes above all), so it is not compared.
    stale: Mutex<Option<String>>,
}

/// The indexes of a dataset, one per hashing key it holds. Normally one;
/// during a key rotation two: the index under the new key is built beside
/// the old one, then becomes active, while the old one keeps being
/// maintained for peers that have not rotated yet.
struct Keyring {
    /// The index under the dataset's current key.
    active: Arc<Index>,
    /// Indexes under other keys, maintained alongside.
    others: Vec<Arc<Index>>,
    /// While a rotation builds a new index: the changes applied meanwhile,
    /// replayed into the new index once it is built.
    pending: Option<Pending>,
}

/// Changes queued for an index being built.
#[derive(Default)]
pub struct Pending {
    /// Each applied batch and its watermark, in order.
    pub batches: Vec<(Vec<Change>, Option<Vec<u8>>)>,
    /// Changes queued so far.
    pub changes: usize,
    /// More changes arrived than [`MAX_PENDING_CHANGES`]: the build must
    /// be abandoned.
    pub overflowed: bool,
}

/// Changes a rotation buffers while it builds the new index (bounds memory).
pub const MAX_PENDING_CHANGES: usize = 2_000_000;

/// A run's claim on its dataset; released when dropped.
pub struct RunSlot(Arc<Dataset>);

impl Drop for RunSlot {
    fn drop(&mut self) {
        self.0
            .runs_in_progress
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Dataset {
    /// Records why indexing this dataset failed; compares refuse it with
    /// that reason until [`Dataset::clear_failure`].
    pub fn fail(&self, reason: String) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    /// The dataset was indexed: it serves again.
    pub fn clear_failure(&self) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Records that a rescan failed: until one succeeds, the index may be
    /// stale and compares refuse it with `reason`.
    pub fn mark_stale(&self, reason: String) {
        *self.stale.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    /// A rescan succeeded: the index is up to date with its system.
    pub fn clear_stale(&self) {
        *self.stale.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Why the index may be stale, if its last rescan failed.
    pub fn stale(&self) -> Option<String> {
        self.stale.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Why the dataset is unavailable, if its last indexing failed.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A dataset of an index and, optionally, its system and mapping.
    pub fn new(
        index: Arc<Index>,
        source: Option<Box<dyn Source>>,
        mapping: Option<arbor_source::Mapping>,
    ) -> Dataset {
        Dataset {
            keyring: std::sync::RwLock::new(Keyring {
                active: index,
                others: Vec::new(),
                pending: None,
            }),
            apply_lock: Mutex::new(()),
            rotating: AtomicBool::new(false),
            source: source.map(|s| Arc::new(Mutex::new(s))),
            indexing: AtomicBool::new(false),
            failure: Mutex::new(None),
            stale: Mutex::new(None),
            accepts_push: false,
            mapping,
            changes: tokio::sync::watch::Sender::new(0),
            lag_ms: std::sync::atomic::AtomicU64::new(0),
            report_key: None,
            runs_in_progress: std::sync::atomic::AtomicUsize::new(0),
            max_runs: DEFAULT_MAX_RUNS_PER_DATASET,
        }
    }

    /// The index under the dataset's current key.
    pub fn index(&self) -> Arc<Index> {
        Arc::clone(&self.ring().active)
    }

    /// Every index held, the active one first.
    pub fn indexes(&self) -> Vec<Arc<Index>> {
        let ring = self.ring();
        std::iter::once(&ring.active)
            .chain(&ring.others)
            .cloned()
            .collect()
    }

    /// The index under the key `key_id`, if this dataset holds one.
    pub fn index_for(&self, key_id: KeyId) -> Option<Arc<Index>> {
        self.indexes()
            .into_iter()
            .find(|i| i.config().keys.key_id() == key_id)
    }

    fn ring(&self) -> std::sync::RwLockReadGuard<'_, Keyring> {
        self.keyring.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies changes to every index held (and queues them for an index
    /// being built). Returns what the active index reports.
    pub fn apply(
        &self,
        changes: &[Change],
        watermark: Option<&[u8]>,
    ) -> Result<ApplyStats, IndexError> {
        self.apply_at(changes, None, watermark)
    }

    /// [`Dataset::apply`] with each change's own time: a commit time, or
    /// when a repaired change was made where it came from (see
    /// [`Index::apply_timed`]).
    pub fn apply_timed(
        &self,
        changes: &[Change],
        times: &[ChangeTime],
        watermark: Option<&[u8]>,
    ) -> Result<ApplyStats, IndexError> {
        self.apply_at(changes, Some(times), watermark)
    }

    fn apply_at(
        &self,
        changes: &[Change],
        times: Option<&[ChangeTime]>,
        watermark: Option<&[u8]>,
    ) -> Result<ApplyStats, IndexError> {
        let _serial = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        let indexes = self.indexes();
        let apply = |index: &Index| match times {
            Some(times) => index.apply_timed(changes, times, watermark),
            None => index.apply(changes, watermark),
        };
        let stats = apply(&indexes[0])?;
        for other in &indexes[1..] {
            apply(other)?;
        }
        // Pending is only set and taken under `apply_lock`, held here: a
        // read first keeps the usual apply (no rotation) off the write lock
        // that describes would wait on.
        if self.ring().pending.is_none() {
            return Ok(stats);
        }
        let mut ring = self.keyring.write().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = ring.pending.as_mut().filter(|p| !p.overflowed) {
            p.changes += changes.len();
            if p.changes > MAX_PENDING_CHANGES {
                p.overflowed = true;
                p.batches = Vec::new();
            } else {
                p.batches
                    .push((changes.to_vec(), watermark.map(<[u8]>::to_vec)));
            }
        }
        Ok(stats)
    }

    /// Applies a batch of changes the system pushed (IngestChanges), or
    /// refuses it as unavailable while a rescan reads the system.
    pub fn apply_pushed(
        &self,
        changes: &[Change],
        watermark: Option<&[u8]>,
    ) -> Result<ApplyStats, OpError> {
        // A rescan holds the system for its whole pass and writes what it
        // read: a batch applied meanwhile could be overwritten by that older
        // view (a pushed delete undone, a pushed update rolled back). The
        // batch waits for the pass instead, by being refused as unavailable:
        // the pusher retries it, and what the pass read already holds every
        // batch the system committed before pushing.
        let _system = match &self.source {
            None => None,
            Some(source) => match source.try_lock() {
                Ok(guard) => Some(guard),
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => {
                    return Err(OpError::Unavailable(
                        "the dataset is being read from its system (a rescan); \
                         push the batch again when it is done"
                            .into(),
                    ));
                }
            },
        };
        self.apply(changes, watermark).map_err(OpError::Index)
    }

    /// Records that every index holds each insert and update the system
    /// committed before `as_of_us` (see [`Index::mark_current`]): a capture
    /// calls it once it has applied everything it read from then.
    pub fn mark_current(&self, as_of_us: i64) -> Result<(), IndexError> {
        let _serial = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.indexes()
            .iter()
            .try_for_each(|i| i.mark_current(as_of_us))
    }

    /// Makes every index's write-ahead log durable.
    pub fn sync_wal(&self) -> Result<(), IndexError> {
        self.indexes().iter().try_for_each(|i| i.sync_wal())
    }

    /// Starts queueing applied changes for an index about to be built.
    pub fn start_pending(&self) {
        let _serial = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.keyring
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .pending = Some(Pending::default());
    }

    /// Stops queueing. With `built`, replays the queued changes into it
    /// (then the active index's watermark) and adds it to the ring, all
    /// while no other change can land in between.
    pub fn finish_pending(&self, built: Option<Arc<Index>>) -> Result<(), IndexError> {
        let _serial = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        let pending = self
            .keyring
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .take()
            .unwrap_or_default();
        let Some(built) = built else {
            return Ok(());
        };
        if pending.overflowed {
            return Err(IndexError::InvalidRequest(format!(
                "more than {MAX_PENDING_CHANGES} changes arrived while the new index was built; \
                 retry when the system is quieter"
            )));
        }
        for (changes, watermark) in &pending.batches {
            built.apply(changes, watermark.as_deref())?;
        }
        let active = self.index();
        let watermark = active.snapshot()?.describe()?.watermark;
        built.apply(&[], watermark.as_deref())?;
        self.keyring
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .others
            .push(built);
        Ok(())
    }

    /// Makes the index under `key_id` the active one (it must be held).
    pub fn switch_to(&self, key_id: KeyId) -> Result<(), IndexError> {
        let _serial = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut ring = self.keyring.write().unwrap_or_else(|p| p.into_inner());
        let Some(i) = ring
            .others
            .iter()
            .position(|x| x.config().keys.key_id() == key_id)
        else {
            return Err(IndexError::InvalidRequest(format!(
                "no index under key {key_id} to switch to"
            )));
        };
        let next = ring.others.remove(i);
        let previous = std::mem::replace(&mut ring.active, next);
        ring.others.push(previous);
        Ok(())
    }

    /// Adds an index (under another key) maintained alongside the active one.
    pub fn hold(&self, index: Arc<Index>) {
        let _serial = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.keyring
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .others
            .push(index);
    }

    /// A dataset served from an index alone.
    pub fn from_index(index: Arc<Index>) -> Dataset {
        Dataset::new(index, None, None)
    }

    /// Claims a run slot, or says the dataset is busy (ResourceExhausted:
    /// protects the system from a pile of concurrent scans and repairs).
    pub fn start_run(self: &Arc<Self>, name: &str) -> Result<RunSlot, OpError> {
        let before = self
            .runs_in_progress
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if before >= self.max_runs {
            self.runs_in_progress
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            return Err(OpError::Busy(format!(
                "dataset {name:?} already has {before} runs in progress (max_runs_per_dataset = {})",
                self.max_runs
            )));
        }
        Ok(RunSlot(Arc::clone(self)))
    }

    /// How a report shows a canonical key: (human form, hex). A sensitive
    /// key shows as a keyed hash in both.
    pub fn shown_key(&self, canonical: &[u8]) -> (String, String) {
        match &self.report_key {
            Some(k) => {
                let h = hex::encode(&blake3::keyed_hash(k, canonical).as_bytes()[..12]);
                (format!("hash:{h}"), h)
            }
            None => (
                crate::report::display_key(canonical),
                hex::encode(canonical),
            ),
        }
    }

    /// Tells real-time sync jobs that captured changes reached the index.
    pub fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Canonical column names, and per key the column digests of its current
/// row (`None` if the system has no such row).
pub type ColumnDigests = (Vec<String>, Vec<Option<Vec<Digest>>>);

/// The [`ColumnDigests`] of some canonical keys. Blocking: reads the system.
/// `key_id` names the hashing key (that of the compare); `None`: the
/// current one.
pub fn column_digests(
    ds: &Dataset,
    keys: &[Vec<u8>],
    key_id: Option<KeyId>,
) -> Result<ColumnDigests, OpError> {
    let index = match key_id {
        None => ds.index(),
        Some(k) => ds
            .index_for(k)
            .ok_or_else(|| OpError::NotReady(format!("this agent holds no index under key {k}")))?,
    };
    let source = ds.source.as_ref().ok_or_else(|| {
        OpError::NotReady(
            "this agent serves the dataset without its system: no column digests".into(),
        )
    })?;
    let typed = keys
        .iter()
        .map(|k| {
            decode_tuple(k).map_err(|e| OpError::Invalid(format!("ColumnDigestsRequest.keys: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut source = source.lock().unwrap_or_else(|p| p.into_inner());
    let columns: Vec<String> = source
        .mapping()
        .columns()
        .iter()
        .map(|c| c.canonical().to_owned())
        .collect();
    let hashing = &index.config().keys;
    let mut digests = Vec::with_capacity(keys.len());
    let mut at = 0;
    arbor_source::fetch_each(
        &typed,
        COLUMN_DIGEST_FETCH_BYTES,
        MAX_COLUMN_DIGEST_KEYS,
        |group| source.fetch(group).map_err(OpError::Source),
        |group, rows| {
            for (row, key) in rows.into_iter().zip(&keys[at..at + group.len()]) {
                digests.push(row.map(|r| {
                    columns
                        .iter()
                        .zip(&r.values)
                        .map(|(c, v)| hashing.column_digest(key, c, v))
                        .collect()
                }));
            }
            at += group.len();
            Ok(())
        },
    )?;
    Ok((columns, digests))
}

/// Bounds on what one client can ask of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceLimits {
    /// Parents in one GetNodes request.
    pub max_parents_per_request: usize,
    /// Ranges in one StreamLeaves request.
    pub max_ranges_per_request: usize,
    /// Sessions (pinned snapshots) open at once.
    pub max_sessions: usize,
    /// Sessions one caller holds at once; its least recently used one is
    /// closed for a new one.
    pub max_sessions_per_caller: usize,
    /// A session unused this long is closed.
    pub session_idle: Duration,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        ServiceLimits {
            max_parents_per_request: arbor_sync::DEFAULT_MAX_PARENTS_PER_REQUEST,
            max_ranges_per_request: 65_536,
            max_sessions: 256,
            max_sessions_per_caller: 32,
            session_idle: Duration::from_secs(300),
        }
    }
}

struct Session {
    dataset: String,
    /// Who opened it (see [`SessionOwner`]).
    owner: String,
    snapshot: Arc<SharedSnapshot>,
    last_used: Instant,
}

/// Who a session belongs to: the principal the agent's interceptor
/// authenticated, else the caller's address (its IP: one machine's
/// connections share a quota).
#[derive(Debug, Clone)]
pub struct SessionOwner(pub String);

/// The agent's datasets and open sessions, shared by its services.
pub struct AgentState {
    datasets: HashMap<String, Arc<Dataset>>,
    sessions: Mutex<HashMap<u64, Session>>,
    limits: ServiceLimits,
    session_seed: [u8; 32],
    session_counter: AtomicU64,
}

impl AgentState {
    /// State serving bare indexes by name (no systems attached).
    pub fn new(indexes: HashMap<String, Arc<Index>>, limits: ServiceLimits) -> AgentState {
        let datasets = indexes
            .into_iter()
            .map(|(name, index)| (name, Arc::new(Dataset::from_index(index))))
            .collect();
        AgentState::with_datasets(datasets, limits)
    }

    /// State serving these datasets by name.
    pub fn with_datasets(
        datasets: HashMap<String, Arc<Dataset>>,
        limits: ServiceLimits,
    ) -> AgentState {
        // Session ids need only be unguessable by accident, not by an
        // attacker (authorisation is separate): hash a per-process seed.
        let mut seed_input = Vec::new();
        seed_input.extend_from_slice(&std::process::id().to_le_bytes());
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        seed_input.extend_from_slice(&now.to_le_bytes());
        seed_input.extend_from_slice(&(&seed_input as *const _ as usize).to_le_bytes());
        AgentState {
            datasets,
            sessions: Mutex::new(HashMap::new()),
            limits,
            session_seed: *blake3::hash(&seed_input).as_bytes(),
            session_counter: AtomicU64::new(0),
        }
    }

    /// A dataset by name, or `NotFound`.
    pub fn dataset(&self, dataset: &str) -> Result<&Arc<Dataset>, OpError> {
        self.datasets
            .get(dataset)
            .ok_or_else(|| OpError::NotFound(format!("unknown dataset {dataset:?}")))
    }

    /// Names of the datasets served, sorted.
    pub fn dataset_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.datasets.keys().cloned().collect();
        names.sort();
        names
    }

    /// A dataset that is ready to be compared: indexed, not being indexed.
    pub fn comparable(&self, dataset: &str) -> Result<&Arc<Dataset>, OpError> {
        let ds = self.dataset(dataset)?;
        if let Some(reason) = ds.failure() {
            return Err(OpError::NotReady(format!(
                "dataset {dataset:?} failed to index: {reason} (the agent retries it)"
            )));
        }
        if ds.indexing.load(Ordering::Acquire) {
            return Err(OpError::Unavailable(format!(
                "dataset {dataset:?} is being indexed; retry when it is done"
            )));
        }
        // A failed rescan may have missed deletes and late changes: an
        // answer from this index could say "in sync" wrongly.
        if let Some(reason) = ds.stale() {
            return Err(OpError::NotReady(format!(
                "dataset {dataset:?} may be stale: its last rescan failed ({reason}); it is \
                 compared again once a rescan succeeds"
            )));
        }
        Ok(ds)
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Session>> {
        // A panic while holding the lock leaves a map that is still valid.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a compare session on a pinned snapshot of `dataset`.
    pub fn open_session(
        &self,
        dataset: &str,
        owner: &str,
        snapshot: SharedSnapshot,
    ) -> Result<u64, OpError> {
        let mut sessions = self.sessions();
        let idle = self.limits.session_idle;
        sessions.retain(|_, s| s.last_used.elapsed() < idle);
        // A caller at its quota gives up its own least recently used session.
        let own: Vec<(u64, Instant)> = sessions
            .iter()
            .filter(|(_, s)| s.owner == owner)
            .map(|(id, s)| (*id, s.last_used))
            .collect();
        if own.len() >= self.limits.max_sessions_per_caller
            && let Some((oldest, _)) = own.iter().min_by_key(|(_, used)| *used)
        {
            sessions.remove(oldest);
        }
        if sessions.len() >= self.limits.max_sessions {
            return Err(OpError::Busy(format!(
                "{} compare sessions are open; retry later",
                sessions.len()
            )));
        }
        let n = self.session_counter.fetch_add(1, Ordering::Relaxed);
        let mut h = blake3::Hasher::new_keyed(&self.session_seed);
        h.update(&n.to_le_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&h.finalize().as_bytes()[..8]);
        let id = u64::from_le_bytes(id) | 1; // never 0, which means "no session"
        sessions.insert(
            id,
            Session {
                dataset: dataset.to_owned(),
                owner: owner.to_owned(),
                snapshot: Arc::new(snapshot),
                last_used: Instant::now(),
            },
        );
        Ok(id)
    }

    /// The snapshot of an open session, refreshing its idle clock.
    pub fn session(&self, dataset: &str, id: u64) -> Result<Arc<SharedSnapshot>, OpError> {
        self.dataset(dataset)?;
        let mut sessions = self.sessions();
        match sessions.get_mut(&id) {
            Some(s) if s.dataset == dataset && s.last_used.elapsed() < self.limits.session_idle => {
                s.last_used = Instant::now();
                Ok(Arc::clone(&s.snapshot))
            }
            _ => Err(OpError::NotFound(format!(
                "no open session {id} for dataset {dataset:?} (expired or never opened): describe again"
            ))),
        }
    }

    /// Ends a session of `dataset` (nothing if there is none).
    pub fn end_session(&self, dataset: &str, id: u64) {
        let mut sessions = self.sessions();
        if sessions.get(&id).is_some_and(|s| s.dataset == dataset) {
            sessions.remove(&id);
        }
    }

    /// The bounds on what one client can ask.
    pub fn limits(&self) -> &ServiceLimits {
        &self.limits
    }

    /// Number of open sessions (for status and tests).
    pub fn open_sessions(&self) -> usize {
        self.sessions().len()
    }
}
