//! The repair machinery of an agent, without gRPC: reading the values a
//! repair writes, and applying planned writes through a dataset's [`Sink`]
//! with the journal. RepairService serves it over the wire; an agent's own
//! side of a sync calls it directly.
//!
//! * Fetches hand out a source of truth's current records, only for
//!   datasets configured with `serve_values = true`.
//! * Applies write one planned batch into a target system, only for
//!   datasets with `allow_repairs = true`: one transaction, each write
//!   conditional on the digest the plan saw. The batch's rows are then
//!   read back and applied to the index (what the system stored, not what
//!   was sent; conflicting rows too, since a conflict means the index was
//!   behind), and each write's outcome is journalled under (run id,
//!   dataset, the write's content: key, the digest the plan saw, the
//!   change). A write sent again — a client retry after a crash of either
//!   side, or a rerun of the plan with another batch size — returns its
//!   journalled outcome while the batch's other writes are applied; if the
//!   crash came between the system's commit and the journal, the write
//!   finds itself already applied. Nothing is applied twice, and nothing is
//!   skipped because a batch number matched.
//!
//! Sinks open their read-write connection on the first batch: an agent
//! that never repairs never holds one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arbor_index::{Change as IndexChange, ChangeTime, RunStore};
use arbor_record::tuple_bytes;
use arbor_source::sink::{Change, Outcome, Sink, Write};
use arbor_source::sqlite::SqliteSink;
use arbor_source::{SourceError, postgres::PostgresSink};
use tracing::info;

use crate::config::{DatasetConfig, SourceConfig};
use crate::dataset::AgentState;
use crate::error::OpError;

/// Writes per ApplyChanges batch, at most.
pub const MAX_WRITES_PER_BATCH: usize = arbor_sync::repair::MAX_BATCH_WRITES;
/// Keys per FetchRecords request, at most.
pub const MAX_FETCH_KEYS: usize = 100_000;
/// Records per streamed FetchRecords batch, at most.
const FETCH_BATCH: usize = 1_000;
/// Bytes of values per streamed FetchRecords batch, about: well under the
/// 16 MiB a gRPC message may hold, and what the agent holds at a time.
pub const FETCH_BATCH_BYTES: usize = 4 << 20;

/// Opens the sink of a dataset's system (read-write).
pub fn open_sink(d: &DatasetConfig) -> Result<Box<dyn Sink>, SourceError> {
    match &d.source {
        SourceConfig::Sqlite { path, relation } => Ok(Box::new(SqliteSink::open(
            path,
            relation.clone(),
            d.mapping.clone(),
        )?)),
        SourceConfig::Postgres(db) => Ok(Box::new(PostgresSink::new(
            db.url.clone(),
            db.relation.clone(),
            d.mapping.clone(),
            db.options.statement_timeout,
        )?)),
        SourceConfig::Mysql(db) => Ok(Box::new(arbor_source::mysql::MysqlSink::new(
            db.url.clone(),
            db.relation.clone(),
            d.mapping.clone(),
            db.options.statement_timeout,
        )?)),
        SourceConfig::Files { .. } => Err(SourceError::Schema {
            dataset: d.name.clone(),
            problem: "file sources are read-only".into(),
        }),
    }
}

/// What identifies a write in the journal: its content, so that the same
/// planned write is found whichever batch carries it.
fn write_id(w: &Write) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("arbor 2026 repair journal write id");
    let key = tuple_bytes(&w.key);
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(&key);
    match &w.expected {
        None => h.update(&[0]),
        Some(d) => h.update(&[1]).update(d.as_bytes()),
    };
    match &w.change {
        Change::Delete => h.update(b"D"),
        Change::Upsert(r) => h.update(b"U").update(&tuple_bytes(&r.values)),
    };
    *h.finalize().as_bytes()
}

/// What became of one planned write, as journalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairOutcome {
    /// Written.
    Applied,
    /// The row already was as the write would leave it.
    AlreadyApplied,
    /// The row changed since the plan: left alone.
    Conflict,
}

impl RepairOutcome {
    /// Its name in the journal.
    pub fn name(self) -> &'static str {
        match self {
            RepairOutcome::Applied => "applied",
            RepairOutcome::AlreadyApplied => "already_applied",
            RepairOutcome::Conflict => "conflict",
        }
    }

    fn parse(name: &[u8]) -> Option<RepairOutcome> {
        [
            RepairOutcome::Applied,
            RepairOutcome::AlreadyApplied,
            RepairOutcome::Conflict,
        ]
        .into_iter()
        .find(|o| o.name().as_bytes() == name)
    }

    fn of(o: &Outcome) -> RepairOutcome {
        match o {
            Outcome::Applied => RepairOutcome::Applied,
            Outcome::AlreadyApplied => RepairOutcome::AlreadyApplied,
            Outcome::Conflict { .. } => RepairOutcome::Conflict,
        }
    }
}

/// What a repair reads of one key: its values (`None`: absent), and what
/// change capture knows of it (0: nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct FetchedRow {
    /// The canonical key.
    pub canonical_key: Vec<u8>,
    /// Its values, canonical column order.
    pub values: Option<Vec<arbor_record::Value>>,
    /// When absent: when capture saw it deleted (µs since the epoch).
    pub deleted_at_us: i64,
    /// When present: when an incremental change last wrote it.
    pub changed_at_us: i64,
}

/// Sources reading values as stored, by dataset.
type StoredSources = Arc<Mutex<HashMap<String, Arc<Mutex<Box<dyn arbor_source::Source>>>>>>;

/// An agent's repair machinery, without gRPC: reading the values a repair
/// writes, and applying planned writes with the journal. RepairService
/// serves it; an agent's own side of a sync can call it directly.
#[derive(Clone)]
pub struct Repairs {
    state: Arc<AgentState>,
    runs: Arc<RunStore>,
    configs: Arc<HashMap<String, DatasetConfig>>,
    sinks: Arc<Mutex<HashMap<String, Box<dyn Sink>>>>,
    /// Per dataset with lossy transforms: its system read through
    /// [`arbor_source::Mapping::stored_values`], for fetches of the values
    /// a repair writes. Opened on first use.
    stored_sources: StoredSources,
}

impl Repairs {
    /// Over the agent's datasets and run store.
    pub fn new(state: Arc<AgentState>, runs: Arc<RunStore>, configs: &[DatasetConfig]) -> Repairs {
        Repairs {
            state,
            runs,
            configs: Arc::new(
                configs
                    .iter()
                    .map(|d| (d.name.clone(), d.clone()))
                    .collect(),
            ),
            sinks: Arc::new(Mutex::new(HashMap::new())),
            stored_sources: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The agent's state (its datasets).
    pub fn state(&self) -> &Arc<AgentState> {
        &self.state
    }

    /// A dataset's configuration.
    pub fn config(&self, dataset: &str) -> Result<&DatasetConfig, OpError> {
        self.configs
            .get(dataset)
            .ok_or_else(|| OpError::UnknownDataset(dataset.to_owned()))
    }

    /// A dataset that serves values (`serve_values = true`).
    pub fn serving(&self, dataset: &str) -> Result<&DatasetConfig, OpError> {
        let d = self.config(dataset)?;
        if !d.serve_values {
            return Err(OpError::Forbidden(format!(
                "dataset {dataset:?} does not serve values (serve_values = false)"
            )));
        }
        Ok(d)
    }

    /// A dataset that takes repairs (`allow_repairs = true`).
    pub fn accepting(&self, dataset: &str) -> Result<&DatasetConfig, OpError> {
        let d = self.config(dataset)?;
        if !d.allow_repairs {
            return Err(OpError::Forbidden(format!(
                "dataset {dataset:?} does not accept repairs (allow_repairs = false)"
            )));
        }
        Ok(d)
    }

    /// The system to read `dataset`'s values from: as compared, or (with
    /// `stored`) as stored where its transforms lose information. Blocking
    /// on first use of a stored-values source (it connects).
    fn source_for(
        &self,
        d: &DatasetConfig,
        stored: bool,
    ) -> Result<Arc<Mutex<Box<dyn arbor_source::Source>>>, OpError> {
        let ds = self.state.dataset(&d.name)?;
        let source = ds
            .source
            .clone()
            .ok_or_else(|| OpError::NoSystem(d.name.clone()))?;
        if !(stored && d.mapping.has_lossy_values()) {
            return Ok(source);
        }
        let mut opened = self
            .stored_sources
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(s) = opened.get(&d.name) {
            return Ok(Arc::clone(s));
        }
        let mut exact = d.clone();
        exact.mapping = d.mapping.stored_values();
        let s = crate::maintain::open_source(&exact).map_err(|e| {
            OpError::Unavailable(format!(
                "open the system of {:?} to read stored values: {e}",
                d.name
            ))
        })?;
        let s = Arc::new(Mutex::new(s));
        opened.insert(d.name.clone(), Arc::clone(&s));
        Ok(s)
    }

    /// Reads `keys` of `dataset` (as stored with `stored`), handing each
    /// group of rows, about `FETCH_BATCH_BYTES`, to `visit` before the
    /// next is read; an absent row carries its deletion time, a present
    /// one its last write time. `Err(None)`: `visit` stopped. Blocking.
    pub fn fetch(
        &self,
        dataset: &str,
        keys: &[Vec<arbor_record::Value>],
        stored: bool,
        mut visit: impl FnMut(Vec<FetchedRow>) -> Result<(), Option<OpError>>,
    ) -> Result<(), Option<OpError>> {
        let d = self.serving(dataset).map_err(Some)?;
        let source = self.source_for(d, stored).map_err(Some)?;
        let ds = Arc::clone(self.state.dataset(dataset).map_err(Some)?);
        arbor_source::fetch_each(
            keys,
            FETCH_BATCH_BYTES,
            FETCH_BATCH,
            |group| {
                let mut s = source.lock().unwrap_or_else(|p| p.into_inner());
                s.fetch(group).map_err(|e| Some(OpError::Source(e)))
            },
            |group, rows| {
                let index = ds.index();
                let fetched = group
                    .iter()
                    .zip(rows)
                    .map(|(k, r)| {
                        let canonical_key = tuple_bytes(k);
                        // An absent row may be a delete capture saw; a
                        // present one may have a known last write. Two-way
                        // sync weighs the one against the other.
                        let (deleted_at_us, changed_at_us) = match &r {
                            Some(_) => (
                                0,
                                index
                                    .changed_at(&canonical_key)
                                    .map_err(OpError::Index)?
                                    .unwrap_or(0),
                            ),
                            None => (
                                index
                                    .tombstone_of(&canonical_key)
                                    .map_err(OpError::Index)?
                                    .unwrap_or(0),
                                0,
                            ),
                        };
                        Ok(FetchedRow {
                            canonical_key,
                            values: r.map(|r| r.values),
                            deleted_at_us,
                            changed_at_us,
                        })
                    })
                    .collect::<Result<Vec<_>, OpError>>()
                    .map_err(Some)?;
                visit(fetched)
            },
        )
    }

    /// Checks `dataset` takes repairs now and returns it, its configuration
    /// and the hashing keys of the plan's compare (`key_id`; `None`: the
    /// current one).
    fn writable(
        &self,
        dataset: &str,
        key_id: Option<arbor_record::KeyId>,
    ) -> Result<
        (
            Arc<crate::dataset::Dataset>,
            DatasetConfig,
            arbor_record::DatasetKeys,
        ),
        OpError,
    > {
        let d = self.accepting(dataset)?.clone();
        let ds = Arc::clone(self.state.dataset(dataset)?);
        if ds.indexing.load(std::sync::atomic::Ordering::Acquire) {
            // A restarted agent rebuilds first; the client retries.
            return Err(OpError::Unavailable(format!(
                "dataset {dataset:?} is being indexed; retry shortly"
            )));
        }
        // Current rows are hashed with the key of the compare that planned
        // the writes, which this agent must hold.
        let keys = match key_id {
            None => ds.index().config().keys.clone(),
            Some(k) => ds
                .index_for(k)
                .ok_or_else(|| {
                    OpError::NotReady(format!(
                        "dataset {dataset:?} holds no index under key {k}: the plan's digests cannot be checked"
                    ))
                })?
                .config()
                .keys
                .clone(),
        };
        Ok((ds, d, keys))
    }

    /// Runs `f` on the sink of `d`, opening it on first use.
    fn with_sink<T>(
        &self,
        d: &DatasetConfig,
        f: impl FnOnce(&mut dyn Sink) -> Result<T, OpError>,
    ) -> Result<T, OpError> {
        let mut sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        if !sinks.contains_key(&d.name) {
            sinks.insert(d.name.clone(), open_sink(d).map_err(OpError::Source)?);
        }
        let Some(sink) = sinks.get_mut(&d.name) else {
            unreachable!("inserted above")
        };
        f(sink.as_mut())
    }

    /// The SQL each write would run (a dry run). Blocking.
    pub fn render(
        &self,
        dataset: &str,
        writes: &[Write],
        key_id: Option<arbor_record::KeyId>,
    ) -> Result<Vec<String>, OpError> {
        let (_, d, _) = self.writable(dataset, key_id)?;
        self.with_sink(&d, |sink| {
            writes
                .iter()
                .map(|w| sink.render(w).map_err(OpError::Source))
                .collect()
        })
    }

    /// Applies planned writes of run `run_id` to `dataset` (see the module
    /// documentation): per write its outcome, and whether every one came
    /// from the journal. Blocking.
    pub fn apply(
        &self,
        dataset: &str,
        run_id: &str,
        writes: &[Write],
        key_id: Option<arbor_record::KeyId>,
    ) -> Result<(Vec<RepairOutcome>, bool), OpError> {
        if run_id.is_empty() {
            return Err(OpError::Invalid(
                "a repair batch needs its run's id: the journal files its writes under it".into(),
            ));
        }
        let (ds, d, keys) = self.writable(dataset, key_id)?;
        // One run may write to several datasets of this agent (two-way).
        let journal_key = format!("{run_id}/{dataset}");
        // Writes of this run that already committed (in any batch).
        let ids: Vec<[u8; 32]> = writes.iter().map(write_id).collect();
        let mut journalled: Vec<Option<RepairOutcome>> = Vec::with_capacity(writes.len());
        for id in &ids {
            journalled.push(
                match self
                    .runs
                    .journalled_write(&journal_key, id)
                    .map_err(OpError::Index)?
                {
                    None => None,
                    Some(raw) => Some(RepairOutcome::parse(&raw).ok_or_else(|| {
                        OpError::DataLoss("a repair journal entry names no outcome".into())
                    })?),
                },
            );
        }
        if journalled.iter().all(Option::is_some) {
            return Ok((journalled.into_iter().flatten().collect(), true));
        }
        // Only the writes not yet journalled go to the system.
        let pending: Vec<usize> = (0..writes.len())
            .filter(|&i| journalled[i].is_none())
            .collect();
        let to_write: Vec<Write> = pending.iter().map(|&i| writes[i].clone()).collect();
        let outcomes = self.with_sink(&d, |sink| {
            sink.apply(&to_write, &keys).map_err(OpError::Source)
        })?;
        // The index follows what the system now stores: written rows, and
        // conflicting rows too (a conflict means the index was behind the
        // system, so the next plan starts from the truth). A written change
        // keeps the time it was made where it came from; a conflicting row
        // was changed by someone else, seen now.
        let touched: Vec<Vec<arbor_record::Value>> =
            to_write.iter().map(|w| w.key.clone()).collect();

        if let Some(source) = &ds.source
            && !touched.is_empty()
        {
            let rows = {
                let mut s = source.lock().unwrap_or_else(|p| p.into_inner());
                s.fetch(&touched).map_err(OpError::Source)?
            };
            // A row as this batch wrote it keeps the time of the change it
            // copies, even if capture indexed it first; one that is not
            // (a conflict, or changed again since) is seen now.
            let made_at: Vec<ChangeTime> = to_write
                .iter()
                .zip(&outcomes)
                .zip(&rows)
                .map(|((w, o), row)| {
                    let as_written = match (&w.change, row) {
                        (Change::Upsert(sent), Some(stored)) => sent.values == stored.values,
                        (Change::Delete, None) => true,
                        _ => false,
                    };
                    match o {
                        Outcome::Applied | Outcome::AlreadyApplied if as_written => {
                            ChangeTime::Ours(w.made_at_us)
                        }
                        _ => ChangeTime::Seen,
                    }
                })
                .collect();
            let changes: Vec<IndexChange> = touched
                .into_iter()
                .zip(rows)
                .map(|(k, r)| match r {
                    Some(r) => IndexChange::Upsert(r),
                    None => IndexChange::Delete(k),
                })
                .collect();
            ds.apply_timed(&changes, &made_at, None)
                .map_err(OpError::Index)?;
        }
        let entries: Vec<([u8; 32], Vec<u8>)> = pending
            .iter()
            .zip(&outcomes)
            .map(|(&i, o)| (ids[i], RepairOutcome::of(o).name().as_bytes().to_vec()))
            .collect();
        self.runs
            .journal_writes(&journal_key, &entries)
            .map_err(OpError::Index)?;
        for (&i, o) in pending.iter().zip(&outcomes) {
            journalled[i] = Some(RepairOutcome::of(o));
        }
        let applied = outcomes.iter().filter(|o| **o == Outcome::Applied).count();
        info!(
            dataset,
            run = run_id,
            writes = outcomes.len(),
            journalled_before = writes.len() - outcomes.len(),
            applied,
            "repair batch committed"
        );
        Ok((journalled.into_iter().flatten().collect(), false))
    }
}
