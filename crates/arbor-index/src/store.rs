//! The index handle: opening and checking an index, full builds and
//! incremental changes.
//!
//! Writes are serialised by one writer lock; reads go through
//! [`IndexSnapshot`](crate::IndexSnapshot)s and never block writers.
//!
//! * **Incremental changes** ([`Index::apply`]) read the old digests, then
//!   commit the record puts/deletes, every ancestor's node delta (as merge
//!   operands) and the watermark in **one WriteBatch**: a crash leaves either
//!   all of a batch or none of it.
//! * **Full builds** ([`Index::build`]) mark the index `building` (synced),
//!   stream records in chunks that are hashed in parallel and written without
//!   the WAL, then compute every stored node in one ordered scan of the
//!   records, flush, and mark it `ready` (synced). A crash in between leaves
//!   `building`, which [`Index::open`] reports so nothing half-built is used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Instant;

use arbor_record::{
    DatasetKeys, Digest, ENCODING_VERSION, HashedBatch, HashedRecord, KeyId, Record, Value,
};
use arbor_tree::{Node, Prefix, ancestor_deltas, stored_depth};
use rayon::prelude::*;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType,
    IngestExternalFileOptions, Options, WriteBatch, WriteBufferManager, WriteOptions,
};
use tracing::{debug, info, instrument};

use crate::build::{BUCKET_BUFFER_BYTES, Spill, SpilledBuckets, Written};
use crate::cf::{self, meta};
use crate::error::{IndexError, SourceError};

/// On-disk format version of the index (the layout in [`crate::cf`]).
pub const INDEX_FORMAT: u32 = 1;
/// Records hashed and written per chunk of a full build. Large enough to
/// amortise WriteBatch and rayon overhead, small enough that a chunk in flight
/// is a few MiB whatever the dataset size.
pub const BUILD_CHUNK_RECORDS: usize = 32_768;
/// A full build logs its progress every this many records.
const PROGRESS_LOG_RECORDS: u64 = 1 << 20;
/// Chunks queued between the hashing and the writing stage of a build.
const BUILD_QUEUE_CHUNKS: usize = 2;
/// Records per batch of a rescan, at most.
const RESCAN_CHUNK_RECORDS: usize = 8_192;
/// Bytes of records per batch of a rescan, about (plus one record): wide
/// rows make batches of fewer records.
const RESCAN_CHUNK_BYTES: usize = 8 << 20;
/// Changes per batch above which [`Index::apply`] hashes in parallel.
const PARALLEL_HASH_MIN: usize = 1_024;
/// RocksDB block cache shared by every index of the process (an agent
/// with a hundred datasets holds one cache, not a hundred). A compare with
/// 20,000 drifting keys touches ~40,000 random 4 KiB blocks (deep nodes,
/// then leaves in the same ranges): 64 MiB thrashed and sent every read to
/// the file system. Memory is taken only as blocks are cached.
pub const BLOCK_CACHE_BYTES: usize = 256 << 20;

/// The process-wide block cache (see [`BLOCK_CACHE_BYTES`]).
fn block_cache() -> Cache {
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    CACHE
        .get_or_init(|| Cache::new_lru_cache(BLOCK_CACHE_BYTES))
        .clone()
}
/// RocksDB memtable size per column family.
const WRITE_BUFFER_BYTES: usize = 64 << 20;
/// Memtable memory of every RocksDB database the process opens (each
/// index's column families and the run store), together. Without a shared
/// budget each column family of each index could hold four write buffers
/// of `WRITE_BUFFER_BYTES`: an agent with many datasets had no bound, and
/// one under steady writes grew for as long as its memtables took to fill
/// (the soak's memory finding). Past about 90 % of it the largest memtable
/// is flushed. Builds ingest files and do not go through memtables.
pub const MEMTABLE_BUDGET_BYTES: usize = 64 << 20;

/// The process-wide memtable budget (see [`MEMTABLE_BUDGET_BYTES`]).
pub(crate) fn write_buffers() -> WriteBufferManager {
    static BUFFERS: std::sync::OnceLock<WriteBufferManager> = std::sync::OnceLock::new();
    BUFFERS
        .get_or_init(|| WriteBufferManager::new_write_buffer_manager(MEMTABLE_BUDGET_BYTES, false))
        .clone()
}

/// What RocksDB holds in memory for the whole process, both bounded:
/// cached blocks (at most [`BLOCK_CACHE_BYTES`]) and memtables (about
/// [`MEMTABLE_BUDGET_BYTES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RocksdbMemory {
    /// Bytes of the shared block cache in use.
    pub block_cache_bytes: u64,
    /// Bytes of memtables, every database together.
    pub memtable_bytes: u64,
}

/// RocksDB's memory in this process now.
pub fn rocksdb_memory() -> RocksdbMemory {
    RocksdbMemory {
        block_cache_bytes: block_cache().get_usage() as u64,
        memtable_bytes: write_buffers().get_usage() as u64,
    }
}
/// The build's spilled records, inside the index directory.
const BUILD_SPILL_DIR: &str = "build-spill";

/// Keys per write batch when a build remembers the records it replaces
/// (and tombstones those it no longer finds).
const REMEMBER_BATCH_KEYS: usize = 65_536;

/// What a full build reads into: batches of hashed records, pushed by the
/// caller of [`Index::build_batches`] while the index writes earlier ones.
pub struct BuildFeed<'a> {
    tx: SyncSender<Vec<HashedBatch>>,
    records_read: u64,
    progress: &'a dyn Fn(u64),
    repeats: KeyRepeats,
}

/// What a build or rescan does with a key read more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRepeats {
    /// The last copy read wins: the read may meet a row twice (a
    /// PostgreSQL block walk meets a row an update moved ahead of it).
    LastWins,
    /// The system holds duplicates: refuse ([`IndexError::RepeatedKeys`]),
    /// naming one of them if `show_key`.
    Refuse {
        /// Whether the error may show a key (not for sensitive keys).
        show_key: bool,
    },
}

/// The build behind a [`BuildFeed`] stopped (the build returns why); stop
/// reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the index build stopped")]
pub struct BuildStopped;

impl BuildFeed<'_> {
    /// Says what the build does with a key read more than once; the last
    /// copy wins unless this says otherwise (see [`KeyRepeats`]).
    pub fn key_repeats(&mut self, repeats: KeyRepeats) {
        self.repeats = repeats;
    }

    /// Hands batches to the writer (one chunk of the source, say: one
    /// hand-over each, not one per batch), waiting while
    /// two hand-overs are already queued.
    pub fn push(&mut self, batches: Vec<HashedBatch>) -> Result<(), BuildStopped> {
        let n: u64 = batches.iter().map(|b| b.len() as u64).sum();
        if n == 0 {
            return Ok(());
        }
        self.tx.send(batches).map_err(|_| BuildStopped)?;
        let before = self.records_read;
        self.records_read += n;
        (self.progress)(self.records_read);
        if before / PROGRESS_LOG_RECORDS != self.records_read / PROGRESS_LOG_RECORDS {
            info!(records_read = self.records_read, "full build progress");
        }
        Ok(())
    }
}

/// Feeds `items` in chunks of [`BUILD_CHUNK_RECORDS`], each turned into a
/// batch by `hash`.
fn feed_chunks<T, I, E>(
    feed: &mut BuildFeed<'_>,
    items: I,
    hash: impl Fn(Vec<T>) -> HashedBatch,
) -> Result<(), SourceError>
where
    I: IntoIterator<Item = Result<T, E>>,
    E: Into<SourceError>,
{
    let mut items = items.into_iter();
    loop {
        let mut chunk = Vec::with_capacity(BUILD_CHUNK_RECORDS);
        for item in items.by_ref().take(BUILD_CHUNK_RECORDS) {
            chunk.push(item.map_err(Into::into)?);
        }
        if chunk.is_empty() {
            return Ok(());
        }
        feed.push(vec![hash(chunk)])?;
    }
}

/// What identifies the records an index may hold: its hashing keys and schema.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// Hashing keys derived from the dataset secret.
    pub keys: DatasetKeys,
    /// Fingerprint of the dataset schema.
    pub schema_fingerprint: [u8; 32],
}

/// One change to apply incrementally.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Insert or replace a record.
    Upsert(Record),
    /// Remove the record with this key (a no-op if absent).
    Delete(Vec<Value>),
}

/// The times an apply records for what it writes (`changed` for inserts and
/// updates, `tombstones` for deletes), which two-way sync weighs against
/// the other side's changes.
#[derive(Debug, Clone, Copy)]
enum Stamp<'a> {
    /// Seen as it happened (a capture, a repair read back, a push): now.
    Now,
    /// Found by a rescan: made at some moment after the index was last
    /// current, and only that is known, so that moment is its time (none
    /// when it is not known). "Now" would claim it newer than every delete
    /// the other side made meanwhile: a row a crashed agent's repair wrote,
    /// or one edited before the other side deleted it, would come back.
    FoundAfter(Option<i64>),
    /// Each change's own time, in the order of the changes.
    Each(&'a [ChangeTime]),
}

/// The time an apply records for one change (see [`Index::apply_timed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeTime {
    /// Seen now, by whoever applies it: stamped now.
    Seen,
    /// Made at this time (µs since the Unix epoch; a commit time read from
    /// the system's log). `None`: not known, so no time is recorded for an
    /// insert or update, and a delete is stamped now.
    Made(Option<i64>),
    /// This agent's own repair, which copied a change made at this time on
    /// the side it came from (`None` as for `Made`). Recorded even when the
    /// index already holds the row as written: capture may have indexed
    /// the repair's write first, stamping it when it saw it, which would
    /// make the copy look newer than the change it copies.
    Ours(Option<i64>),
}

/// One key's state while [`Index::apply_hashed`] runs through a batch.
struct KeyState {
    /// Its digest before the batch.
    before: Option<Digest>,
    /// Its digest after the batch's changes so far.
    after: Option<Digest>,
    /// The time of its last effective change in the batch (see [`Stamp`]).
    at: Option<i64>,
    /// A repair's own write: its time is recorded even if the batch leaves
    /// the key as it was ([`ChangeTime::Ours`]).
    restamp: bool,
}

/// A change whose key is already encoded and hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashedChange {
    /// Insert or replace.
    Upsert(HashedRecord),
    /// Remove.
    Delete {
        /// Position of the key.
        position: u64,
        /// Canonical key bytes.
        key: Vec<u8>,
    },
}

/// What a full build did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildStats {
    /// Records read from the source (duplicates counted).
    pub records_read: u64,
    /// Distinct records in the index afterwards.
    pub records: u64,
    /// Stored node depth chosen.
    pub depth: u8,
    /// Nodes written.
    pub nodes: u64,
}

/// What a rescan did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RescanStats {
    /// Records read from the source.
    pub records_read: u64,
    /// Inserts, updates and unchanged records among them.
    pub applied: ApplyStats,
    /// Records in the index that the source no longer has, removed.
    pub vanished: u64,
}

/// What an incremental apply did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Records that did not exist before.
    pub inserted: u64,
    /// Records whose digest changed.
    pub updated: u64,
    /// Upserts that changed nothing (same digest).
    pub unchanged: u64,
    /// Records removed.
    pub deleted: u64,
    /// Deletes of keys that were not there.
    pub absent: u64,
}

/// A dataset's Merkle index in RocksDB.
pub struct Index {
    pub(crate) db: DB,
    pub(crate) path: PathBuf,
    pub(crate) config: IndexConfig,
    writer: Mutex<()>,
    /// Set while a rescan runs: applies then mark their keys as seen, so a
    /// change that lands mid-rescan is never taken for a vanished record.
    rescanning: AtomicBool,
    /// Bytes per spill bucket buffer of a full build.
    build_spill_bytes: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("path", &self.path)
            .field("key_id", &self.config.keys.key_id())
            .finish_non_exhaustive()
    }
}

fn db_options() -> (Options, Vec<ColumnFamilyDescriptor>) {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.increase_parallelism(2);
    opts.set_max_background_jobs(2);
    opts.set_write_buffer_manager(&write_buffers());
    let cache = block_cache();
    let cfs = cf::ALL
        .iter()
        .map(|&name| {
            let mut o = Options::default();
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            if name == cf::RECORDS {
                // Point lookups of old digests on every incremental change.
                table.set_bloom_filter(10.0, false);
            }
            o.set_block_based_table_factory(&table);
            o.set_write_buffer_size(WRITE_BUFFER_BYTES);
            o.set_max_write_buffer_number(4);
            o.set_level_compaction_dynamic_level_bytes(true);
            // Digests and positions are random bytes: compression costs CPU
            // and saves nothing.
            o.set_compression_type(DBCompressionType::None);
            if name == cf::NODES {
                o.set_merge_operator_associative(cf::NODE_MERGE_OPERATOR, cf::merge_nodes);
            }
            ColumnFamilyDescriptor::new(name, o)
        })
        .collect();
    (opts, cfs)
}

/// Options of the SST files a build writes for the records CF: the same
/// table format as the CF's own files (bloom filters for point lookups, no
/// compression).
fn records_file_options() -> Options {
    let mut o = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    o.set_block_based_table_factory(&table);
    o.set_compression_type(DBCompressionType::None);
    o
}

impl Index {
    /// Removes the index at `path` (it is derived data: a build makes it
    /// again from the system). Refused while a process has it open: RocksDB
    /// takes the index's lock first.
    pub fn destroy(path: impl AsRef<Path>) -> Result<(), IndexError> {
        let path = path.as_ref();
        let (opts, _) = db_options();
        DB::destroy(&opts, path).map_err(IndexError::storage("remove the index"))?;
        match std::fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(IndexError::InvalidRequest(format!(
                "remove {}: {e}",
                path.display()
            ))),
        }
    }

    /// Opens the index at `path`, creating an empty one if there is none.
    ///
    /// An existing index must match `config` (format, encoding version, key id
    /// and schema): a mismatch is an error naming both sides, never a silently
    /// different tree.
    #[instrument(skip_all, fields(path = %path.as_ref().display()))]
    pub fn open(path: impl AsRef<Path>, config: IndexConfig) -> Result<Index, IndexError> {
        let path = path.as_ref().to_path_buf();
        let (opts, cfs) = db_options();
        let db = DB::open_cf_descriptors(&opts, &path, cfs)
            .map_err(IndexError::storage("open the index"))?;
        let index = Index {
            db,
            path,
            config,
            writer: Mutex::new(()),
            rescanning: AtomicBool::new(false),
            build_spill_bytes: std::sync::atomic::AtomicUsize::new(BUCKET_BUFFER_BYTES),
        };
        index.check_or_init_meta()?;
        Ok(index)
    }

    fn check_or_init_meta(&self) -> Result<(), IndexError> {
        let format = self.get_meta(meta::FORMAT)?;
        let Some(format) = format else {
            let mut batch = WriteBatch::default();
            let m = self.cf(cf::META);
            batch.put_cf(m, meta::FORMAT, INDEX_FORMAT.to_le_bytes());
            batch.put_cf(m, meta::ENCODING_VERSION, ENCODING_VERSION.to_le_bytes());
            batch.put_cf(m, meta::KEY_ID, self.config.keys.key_id().0);
            batch.put_cf(m, meta::SCHEMA, self.config.schema_fingerprint);
            batch.put_cf(m, meta::DEPTH, [1u8]);
            batch.put_cf(m, meta::STATE, meta::STATE_READY);
            self.write(batch, true)?;
            info!("created empty index");
            return Ok(());
        };
        let stored = read_u32(meta::FORMAT, &format)?;
        if stored != INDEX_FORMAT {
            return Err(IndexError::Format {
                path: self.path.clone(),
                stored,
                supported: INDEX_FORMAT,
            });
        }
        let version = read_u32(
            meta::ENCODING_VERSION,
            &self.require_meta(meta::ENCODING_VERSION)?,
        )?;
        if version != ENCODING_VERSION {
            return Err(IndexError::EncodingVersion {
                stored: version,
                expected: ENCODING_VERSION,
            });
        }
        let key_id = self.require_meta(meta::KEY_ID)?;
        let key_id: [u8; 8] = key_id
            .as_slice()
            .try_into()
            .map_err(|_| IndexError::corrupt(cf::META, meta::KEY_ID, "key id is not 8 bytes"))?;
        if KeyId(key_id) != self.config.keys.key_id() {
            return Err(IndexError::KeyId {
                stored: KeyId(key_id),
                expected: self.config.keys.key_id(),
            });
        }
        let schema = self.require_meta(meta::SCHEMA)?;
        if schema.as_slice() != self.config.schema_fingerprint {
            return Err(IndexError::Schema {
                stored: hex::encode(&schema),
                expected: hex::encode(self.config.schema_fingerprint),
            });
        }
        self.depth()?;
        Ok(())
    }

    /// The directory of the index.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration the index was opened with.
    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// Whether the last full build committed. An index that is not ready
    /// refuses reads and incremental changes until [`Index::build`] succeeds.
    pub fn is_ready(&self) -> Result<bool, IndexError> {
        Ok(self.require_meta(meta::STATE)?.as_slice() == meta::STATE_READY)
    }

    pub(crate) fn ensure_ready(&self) -> Result<(), IndexError> {
        if self.is_ready()? {
            Ok(())
        } else {
            Err(IndexError::IncompleteBuild {
                path: self.path.clone(),
            })
        }
    }

    /// The deepest stored node level.
    pub fn depth(&self) -> Result<u8, IndexError> {
        let d = self.require_meta(meta::DEPTH)?;
        match d.as_slice() {
            [d] if (1..=arbor_tree::MAX_STORED_DEPTH).contains(d) => Ok(*d),
            _ => Err(IndexError::corrupt(
                cf::META,
                meta::DEPTH,
                "depth is not one byte in 1..=6",
            )),
        }
    }

    pub(crate) fn cf(&self, name: &'static str) -> &ColumnFamily {
        // The handles of every CF in `cf::ALL` are created by `open`.
        self.db
            .cf_handle(name)
            .expect("column family opened with the index")
    }

    fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        self.db
            .get_cf(self.cf(cf::META), key)
            .map_err(IndexError::storage("read index metadata"))
    }

    fn require_meta(&self, key: &'static [u8]) -> Result<Vec<u8>, IndexError> {
        self.get_meta(key)?
            .ok_or_else(|| IndexError::corrupt(cf::META, key, "missing metadata entry"))
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), IndexError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db
            .write_opt(batch, &wo)
            .map_err(IndexError::storage("write a batch"))
    }

    /// Replaces the whole index with the given records, hashing them in
    /// parallel. Memory stays bounded by a few chunks whatever the count.
    pub fn build<I, E>(
        &self,
        records: I,
        watermark: Option<&[u8]>,
    ) -> Result<BuildStats, IndexError>
    where
        I: IntoIterator<Item = Result<Record, E>>,
        E: Into<SourceError>,
    {
        let keys = &self.config.keys;
        self.build_batches(watermark, &|_| {}, |feed| {
            feed_chunks(feed, records, |chunk| {
                HashedBatch::hash_records(keys, &chunk)
            })
        })
    }

    /// [`Index::build`] from records already hashed (tests placing records
    /// at chosen positions).
    pub fn build_hashed<I, E>(
        &self,
        records: I,
        watermark: Option<&[u8]>,
    ) -> Result<BuildStats, IndexError>
    where
        I: IntoIterator<Item = Result<HashedRecord, E>>,
        E: Into<SourceError>,
    {
        self.build_batches(watermark, &|_| {}, |feed| {
            feed_chunks(feed, records, HashedBatch::from_iter)
        })
    }

    /// Replaces the whole index with the batches `fill` pushes into its
    /// [`BuildFeed`] (a connector that reads and hashes rows itself pushes
    /// them as it goes). `progress` hears the records read so far after
    /// each batch. A failing `fill` fails the build, which then stays
    /// marked unfinished.
    #[instrument(skip_all, fields(path = %self.path.display()))]
    pub fn build_batches<E>(
        &self,
        watermark: Option<&[u8]>,
        progress: &dyn Fn(u64),
        fill: impl FnOnce(&mut BuildFeed<'_>) -> Result<(), E>,
    ) -> Result<BuildStats, IndexError>
    where
        E: Into<SourceError>,
    {
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let started_us = now_us();
        self.begin_build()?;

        // This thread (through `fill`) reads and hashes batches; the writer
        // thread spills them into buckets by position (see crate::build).
        let spill_dir = self.path.join(BUILD_SPILL_DIR);
        let (filled, spilled, records_read, repeats) = std::thread::scope(|scope| {
            let (tx, rx) = sync_channel::<Vec<HashedBatch>>(BUILD_QUEUE_CHUNKS);
            let spill_dir = &spill_dir;
            let writer = scope.spawn(move || -> Result<SpilledBuckets, IndexError> {
                let mut spill =
                    Spill::create(spill_dir, self.build_spill_bytes.load(Ordering::Relaxed))?;
                for batch in rx.iter().flatten() {
                    spill.push(&batch)?;
                }
                spill.finish()
            });
            let mut feed = BuildFeed {
                tx,
                records_read: 0,
                progress,
                repeats: KeyRepeats::LastWins,
            };
            let filled = fill(&mut feed);
            let (records_read, repeats) = (feed.records_read, feed.repeats);
            // Closing the channel ends the writer's loop.
            drop(feed);
            let spilled = writer.join().unwrap_or_else(|_| {
                Err(IndexError::InvalidRequest(
                    "build writer thread panicked".into(),
                ))
            });
            (filled, spilled, records_read, repeats)
        });
        // The writer's error first: a feed that stopped because the writer
        // did reports only that it was stopped.
        let spilled = spilled?;
        filled.map_err(|e| IndexError::Source(e.into()))?;

        let depth = stored_depth(records_read);
        debug!(records_read, "build: source read, writing the buckets");
        let written = spilled.write(records_read, depth, &records_file_options())?;
        if let KeyRepeats::Refuse { show_key } = repeats
            && written.records < records_read
        {
            // The build stays unfinished; its files go.
            let _ = std::fs::remove_dir_all(&spill_dir);
            return Err(IndexError::RepeatedKeys {
                count: records_read - written.records,
                example: written
                    .repeated_key
                    .filter(|_| show_key)
                    .map(|k| arbor_record::display_canonical_tuple(&k)),
            });
        }
        debug!(
            records = written.records,
            "build: buckets written, ingesting"
        );
        self.ingest_build(&written)?;
        debug!("build: ingested");
        std::fs::remove_dir_all(&spill_dir).map_err(|source| IndexError::Io {
            op: "remove",
            path: spill_dir.clone(),
            source,
        })?;
        let (records, nodes) = (written.records, written.nodes);
        let vanished = self.tombstone_vanished()?;
        self.finish_build(depth, watermark, started_us)?;
        self.clear_cf(cf::SCAN)?;
        if vanished > 0 {
            info!(
                vanished,
                "build: records gone since the last build left tombstones"
            );
        }
        let stats = BuildStats {
            records_read,
            records,
            depth,
            nodes,
        };
        info!(
            records,
            records_read,
            depth,
            nodes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "full build committed"
        );
        Ok(stats)
    }

    /// Records another canonical encoding version, as an index built by an
    /// older arbor holds (tests of the upgrade path).
    #[doc(hidden)]
    pub fn record_encoding_version(&self, version: u32) -> Result<(), IndexError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(cf::META),
            meta::ENCODING_VERSION,
            version.to_le_bytes(),
        );
        self.write(batch, true)
    }

    /// Sets the bytes a build's spill bucket gathers before writing them
    /// (tests use tiny buffers so a few records cover many appends).
    #[doc(hidden)]
    pub fn set_build_spill_bytes(&self, bytes: usize) {
        self.build_spill_bytes
            .store(bytes.max(1), Ordering::Relaxed);
    }

    /// Ingests a build's files: they do not overlap, so RocksDB places them
    /// in the bottom level as they are, without compacting them.
    fn ingest_build(&self, written: &Written) -> Result<(), IndexError> {
        let mut ingest = IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        for (name, files, op) in [
            (
                cf::RECORDS,
                &written.record_files,
                "ingest the build's records",
            ),
            (cf::NODES, &written.node_files, "ingest the build's nodes"),
        ] {
            if !files.is_empty() {
                self.db
                    .ingest_external_file_cf_opts(self.cf(name), &ingest, files.iter().collect())
                    .map_err(IndexError::storage(op))?;
            }
        }
        Ok(())
    }

    fn begin_build(&self) -> Result<(), IndexError> {
        // Remember the keys a ready index held: those the build no longer
        // finds were deleted meanwhile, and leave tombstones, so two-way
        // sync settles their deletes instead of copying the rows back. A
        // build resumed after a crash keeps what the first attempt
        // remembered (the records are half replaced by then).
        if self.get_meta(meta::STATE)?.as_deref() == Some(meta::STATE_READY) {
            self.clear_cf(cf::SCAN)?;
            let (records, scan) = (self.cf(cf::RECORDS), self.cf(cf::SCAN));
            let mut it = self.db.raw_iterator_cf(records);
            it.seek_to_first();
            let mut batch = WriteBatch::default();
            while let Some(k) = it.key() {
                batch.put_cf(scan, k, []);
                if batch.len() >= REMEMBER_BATCH_KEYS {
                    self.write(std::mem::take(&mut batch), false)?;
                }
                it.next();
            }
            it.status()
                .map_err(IndexError::storage("remember the records before a build"))?;
            self.write(batch, false)?;
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(cf::META), meta::STATE, meta::STATE_BUILDING);
        self.write(batch, true)?;
        self.clear_cf(cf::RECORDS)?;
        self.clear_cf(cf::NODES)?;
        Ok(())
    }

    /// Entries of a column family.
    fn count_cf(&self, name: &'static str) -> Result<u64, IndexError> {
        let mut it = self.db.raw_iterator_cf(self.cf(name));
        it.seek_to_first();
        let mut n = 0;
        while it.valid() {
            n += 1;
            it.next();
        }
        it.status()
            .map_err(IndexError::storage("count a column family"))?;
        Ok(n)
    }

    /// Deletes every entry of a column family (range tombstone, then any key
    /// the range could not name).
    fn clear_cf(&self, name: &'static str) -> Result<(), IndexError> {
        let handle = self.cf(name);
        let end = [0xffu8; 32];
        self.db
            .delete_range_cf(handle, &[][..], &end[..])
            .map_err(IndexError::storage("clear a column family"))?;
        let mut it = self.db.raw_iterator_cf(handle);
        it.seek(end);
        let mut batch = WriteBatch::default();
        while let Some(k) = it.key() {
            batch.delete_cf(handle, k);
            it.next();
        }
        it.status()
            .map_err(IndexError::storage("clear a column family"))?;
        self.write(batch, false)
    }

    /// Tombstones the keys [`Index::begin_build`] remembered that the build
    /// did not find; returns how many.
    fn tombstone_vanished(&self) -> Result<u64, IndexError> {
        let (records, scan) = (self.cf(cf::RECORDS), self.cf(cf::SCAN));
        let (tombstones, changed) = (self.cf(cf::TOMBSTONES), self.cf(cf::CHANGED));
        let now_us = now_us();
        let mut it = self.db.raw_iterator_cf(scan);
        it.seek_to_first();
        let (mut batch, mut vanished) = (WriteBatch::default(), 0u64);
        while let Some(k) = it.key() {
            let present = self
                .db
                .get_pinned_cf(records, k)
                .map_err(IndexError::storage("read a record"))?
                .is_some();
            if !present {
                batch.put_cf(tombstones, k, now_us.to_be_bytes());
                batch.delete_cf(changed, k);
                vanished += 1;
                if batch.len() >= REMEMBER_BATCH_KEYS {
                    self.write(std::mem::take(&mut batch), false)?;
                }
            }
            it.next();
        }
        it.status()
            .map_err(IndexError::storage("read the remembered records"))?;
        self.write(batch, false)?;
        Ok(vanished)
    }

    /// Marks the build the index, current as of `started_us` (it read the
    /// system after then).
    fn finish_build(
        &self,
        depth: u8,
        watermark: Option<&[u8]>,
        started_us: i64,
    ) -> Result<(), IndexError> {
        // Unlogged writes live only in memtables until flushed: flush before
        // the synced `ready` marks them as the index.
        for name in [cf::RECORDS, cf::NODES] {
            self.db
                .flush_cf(self.cf(name))
                .map_err(IndexError::storage("flush the build"))?;
        }
        let mut batch = WriteBatch::default();
        let m = self.cf(cf::META);
        batch.put_cf(m, meta::DEPTH, [depth]);
        match watermark {
            Some(w) => batch.put_cf(m, meta::WATERMARK, w),
            None => batch.delete_cf(m, meta::WATERMARK),
        }
        batch.put_cf(m, meta::CURRENT_AS_OF, started_us.to_be_bytes());
        batch.put_cf(m, meta::STATE, meta::STATE_READY);
        self.write(batch, true)
    }

    /// When an incremental change deleted the record with this canonical
    /// key (µs since the Unix epoch), if it did and nothing re-inserted it.
    pub fn tombstone_of(&self, canonical_key: &[u8]) -> Result<Option<i64>, IndexError> {
        self.time_of(cf::TOMBSTONES, canonical_key)
    }

    /// When an incremental change last inserted or updated the record with
    /// this canonical key (µs since the Unix epoch); `None` if none did
    /// since it was built (or since [`Index::prune_tombstones`] forgot it).
    pub fn changed_at(&self, canonical_key: &[u8]) -> Result<Option<i64>, IndexError> {
        self.time_of(cf::CHANGED, canonical_key)
    }

    /// When the index was last known current (µs since the Unix epoch): it
    /// held every change its system had committed before then. `None` for
    /// an index built before arbor recorded it.
    pub fn current_as_of(&self) -> Result<Option<i64>, IndexError> {
        self.get_meta(meta::CURRENT_AS_OF)?
            .map(|v| read_time(cf::META, meta::CURRENT_AS_OF, &v))
            .transpose()
    }

    /// Records that the index holds every change its system committed
    /// before `as_of_us` (a capture that read everything up to then has
    /// applied it). Never moves the mark back; an index not ready is left.
    pub fn mark_current(&self, as_of_us: i64) -> Result<(), IndexError> {
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if !self.is_ready()? || self.current_as_of()?.is_some_and(|t| t >= as_of_us) {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(cf::META),
            meta::CURRENT_AS_OF,
            as_of_us.to_be_bytes(),
        );
        self.write(batch, false)
    }

    fn time_of(&self, name: &'static str, canonical_key: &[u8]) -> Result<Option<i64>, IndexError> {
        let position = self.config.keys.position_of_encoded_key(canonical_key);
        let key = cf::record_key(position, canonical_key);
        self.time_of_record(name, &key)
    }

    /// The time stored under a record key in column family `name`
    /// (tombstones, changed).
    fn time_of_record(
        &self,
        name: &'static str,
        record_key: &[u8],
    ) -> Result<Option<i64>, IndexError> {
        self.db
            .get_pinned_cf(self.cf(name), record_key)
            .map_err(IndexError::storage("read a change time"))?
            .map(|v| read_time(name, record_key, &v))
            .transpose()
    }

    /// Forgets tombstones and change times older than `before_us` (µs since
    /// the Unix epoch); returns how many tombstones went. A write older than
    /// every tombstone kept needs no time: it is older than any delete.
    pub fn prune_tombstones(&self, before_us: i64) -> Result<u64, IndexError> {
        let mut pruned = 0u64;
        for name in [cf::TOMBSTONES, cf::CHANGED] {
            let handle = self.cf(name);
            let mut it = self.db.raw_iterator_cf(handle);
            it.seek_to_first();
            let mut batch = WriteBatch::default();
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                let at = <[u8; 8]>::try_from(v).map_or(i64::MIN, i64::from_be_bytes);
                if at < before_us {
                    batch.delete_cf(handle, k);
                    if name == cf::TOMBSTONES {
                        pruned += 1;
                    }
                }
                it.next();
            }
            it.status()
                .map_err(IndexError::storage("read the change times"))?;
            self.write(batch, false)?;
        }
        Ok(pruned)
    }

    /// Makes every write so far durable (fsyncs the write-ahead log). Call
    /// it before telling a system its changes are safely indexed, as logical
    /// replication does before advancing its slot.
    pub fn sync_wal(&self) -> Result<(), IndexError> {
        self.db
            .flush_wal(true)
            .map_err(IndexError::storage("sync the write-ahead log"))
    }

    /// Applies typed changes in one atomic batch (see [`Index::apply_hashed`]).
    pub fn apply(
        &self,
        changes: &[Change],
        watermark: Option<&[u8]>,
    ) -> Result<ApplyStats, IndexError> {
        self.apply_stamped(&self.hash_changes(changes), watermark, Stamp::Now)
    }

    /// [`Index::apply`] with each change's own time (see [`ChangeTime`]),
    /// recorded as the time of its insert, update or delete instead of now.
    pub fn apply_timed(
        &self,
        changes: &[Change],
        times: &[ChangeTime],
        watermark: Option<&[u8]>,
    ) -> Result<ApplyStats, IndexError> {
        self.apply_stamped(&self.hash_changes(changes), watermark, Stamp::Each(times))
    }

    /// Encodes and hashes typed changes under this index's key.
    fn hash_changes(&self, changes: &[Change]) -> Vec<HashedChange> {
        let keys = &self.config.keys;
        let hash_one = |scratch: &mut Vec<u8>, c: &Change| match c {
            Change::Upsert(r) => HashedChange::Upsert(r.hash(keys, scratch)),
            Change::Delete(key) => {
                let key = arbor_record::tuple_bytes(key);
                HashedChange::Delete {
                    position: keys.position_of_encoded_key(&key),
                    key,
                }
            }
        };
        if changes.len() >= PARALLEL_HASH_MIN {
            changes.par_iter().map_init(Vec::new, hash_one).collect()
        } else {
            let mut scratch = Vec::new();
            changes.iter().map(|c| hash_one(&mut scratch, c)).collect()
        }
    }

    /// Applies changes in one atomic WriteBatch: each record put or delete,
    /// the node deltas of all its ancestors and the watermark commit together
    /// or not at all. Later changes to the same key in the batch win.
    #[instrument(skip_all, fields(path = %self.path.display(), changes = changes.len()))]
    pub fn apply_hashed(
        &self,
        changes: &[HashedChange],
        watermark: Option<&[u8]>,
    ) -> Result<ApplyStats, IndexError> {
        self.apply_stamped(changes, watermark, Stamp::Now)
    }

    /// [`Index::apply_hashed`], recording each insert's and update's time as
    /// `stamp` says.
    fn apply_stamped(
        &self,
        changes: &[HashedChange],
        watermark: Option<&[u8]>,
        stamp: Stamp,
    ) -> Result<ApplyStats, IndexError> {
        if let Stamp::Each(times) = stamp
            && times.len() != changes.len()
        {
            return Err(IndexError::InvalidRequest(format!(
                "{} change times for {} changes",
                times.len(),
                changes.len()
            )));
        }
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.ensure_ready()?;
        let depth = self.depth()?;
        let records_cf = self.cf(cf::RECORDS);

        let record_keys: Vec<Vec<u8>> = changes
            .iter()
            .map(|c| match c {
                HashedChange::Upsert(r) => cf::record_key(r.position, &r.key),
                HashedChange::Delete { position, key } => cf::record_key(*position, key),
            })
            .collect();
        // Read every old digest with one batched MultiGet over sorted,
        // distinct keys (RocksDB shares index and filter work across them).
        let mut distinct: Vec<&[u8]> = record_keys.iter().map(Vec::as_slice).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let found = self
            .db
            .batched_multi_get_cf(records_cf, distinct.iter().copied(), true);
        // Per key: the digest before the batch, then the batch's running state.
        let mut state: BTreeMap<&[u8], KeyState> = BTreeMap::new();
        for (key, stored) in distinct.iter().zip(found) {
            let before = match stored.map_err(IndexError::storage("read a record"))? {
                Some(v) => Some(cf::record_digest(key, &v)?),
                None => None,
            };
            state.insert(
                key,
                KeyState {
                    before,
                    after: before,
                    at: None,
                    restamp: false,
                },
            );
        }

        let now_us = now_us();
        let mut deltas: BTreeMap<Prefix, Node> = BTreeMap::new();
        let mut stats = ApplyStats::default();
        for (i, (change, rk)) in changes.iter().zip(&record_keys).enumerate() {
            let (position, after) = match change {
                HashedChange::Upsert(r) => (r.position, Some(r.digest)),
                HashedChange::Delete { position, .. } => (*position, None),
            };
            let (at, ours) = match stamp {
                Stamp::Now => (Some(now_us), false),
                // A rescan's deletes are seen gone now.
                Stamp::FoundAfter(current_as_of) if after.is_some() => (current_as_of, false),
                Stamp::FoundAfter(_) => (Some(now_us), false),
                Stamp::Each(times) => match times[i] {
                    ChangeTime::Seen => (Some(now_us), false),
                    ChangeTime::Made(at) => (at, false),
                    ChangeTime::Ours(at) => (at, true),
                },
            };
            let key = state
                .get_mut(rk.as_slice())
                .expect("every change's key was read above");
            if ours {
                // Recorded even if the change turns out to change nothing.
                (key.at, key.restamp) = (at, true);
            }
            let current = &mut key.after;
            let delta = match (*current, after) {
                (Some(b), Some(a)) if a == b => {
                    stats.unchanged += 1;
                    continue;
                }
                (None, None) => {
                    stats.absent += 1;
                    continue;
                }
                (Some(b), Some(a)) => {
                    stats.updated += 1;
                    Node::of_digest(&a.0) - Node::of_digest(&b.0)
                }
                (None, Some(a)) => {
                    stats.inserted += 1;
                    Node::of_digest(&a.0)
                }
                (Some(b), None) => {
                    stats.deleted += 1;
                    -Node::of_digest(&b.0)
                }
            };
            *current = after;
            key.at = at;
            for (p, d) in ancestor_deltas(position, delta, depth) {
                *deltas.entry(p).or_default() += d;
            }
        }

        // Write in key order (records, then node deltas) so memtable inserts
        // reuse their skiplist position; each key once, in its final state.
        let mut batch = WriteBatch::default();
        let mark_seen = self.rescanning.load(Ordering::Acquire);
        let tombstones_cf = self.cf(cf::TOMBSTONES);
        let changed_cf = self.cf(cf::CHANGED);
        for (key, k) in &state {
            let (before, after, mut at) = (&k.before, &k.after, k.at);
            match (before, after) {
                (b, a) if b == a => {
                    if k.restamp {
                        match a {
                            Some(_) => match at {
                                Some(at) => batch.put_cf(changed_cf, key, at.to_be_bytes()),
                                None => batch.delete_cf(changed_cf, key),
                            },
                            None => {
                                batch.put_cf(tombstones_cf, key, at.unwrap_or(now_us).to_be_bytes())
                            }
                        }
                    }
                }
                (before, Some(a)) => {
                    batch.put_cf(records_cf, key, a.0);
                    if before.is_none() {
                        if let Stamp::FoundAfter(_) = stamp
                            && let Some(deleted) = self.time_of_record(cf::TOMBSTONES, key)?
                        {
                            // Seen deleted here, and found again: made after
                            // that delete, whenever the index was current.
                            let just_after = deleted.saturating_add(1);
                            at = Some(at.map_or(just_after, |t| t.max(just_after)));
                        }
                        batch.delete_cf(tombstones_cf, key);
                    }
                    match at {
                        Some(at) => batch.put_cf(changed_cf, key, at.to_be_bytes()),
                        None => batch.delete_cf(changed_cf, key),
                    }
                }
                (_, None) => {
                    batch.delete_cf(records_cf, key);
                    batch.put_cf(tombstones_cf, key, at.unwrap_or(now_us).to_be_bytes());
                    batch.delete_cf(changed_cf, key);
                }
            }
            if mark_seen && after.is_some() {
                batch.put_cf(self.cf(cf::SCAN), key, []);
            }
        }
        let nodes_cf = self.cf(cf::NODES);
        for (p, d) in deltas {
            if !d.is_empty() {
                batch.merge_cf(nodes_cf, cf::node_key(p), d.to_bytes());
            }
        }
        if let Some(w) = watermark {
            batch.put_cf(self.cf(cf::META), meta::WATERMARK, w);
        }
        self.write(batch, false)?;
        Ok(stats)
    }

    /// Brings the index to the source's current records without a rebuild:
    /// every record read is applied (only changed digests are written), and
    /// records the source no longer has are removed. Memory is bounded: keys
    /// seen are marked in the `scan` column family, then merge-joined
    /// against the records. Each batch commits atomically; a rescan that
    /// dies half way leaves a consistent index (with the changes so far).
    pub fn rescan<I, E>(
        &self,
        records: I,
        watermark: Option<&[u8]>,
    ) -> Result<RescanStats, IndexError>
    where
        I: IntoIterator<Item = Result<Record, E>>,
        E: Into<SourceError>,
    {
        let mut stats = rescan_each(&[self], records, watermark, KeyRepeats::LastWins)?;
        Ok(stats.remove(0))
    }

    /// Applies one rescan chunk, hashed under this index's key; what it
    /// changes was written after `current_as_of` (see [`Stamp::FoundAfter`]).
    fn rescan_chunk(
        &self,
        chunk: &[Record],
        current_as_of: Option<i64>,
    ) -> Result<ApplyStats, IndexError> {
        let hashed: Vec<HashedChange> = HashedBatch::hash_records(&self.config.keys, chunk)
            .to_records()
            .into_iter()
            .map(HashedChange::Upsert)
            .collect();
        // Marks every key as seen in the same batch (see `rescanning`).
        self.apply_stamped(&hashed, None, Stamp::FoundAfter(current_as_of))
    }

    /// Removes the records this rescan did not see, committing `watermark`
    /// with the last of them. Returns how many were removed.
    fn remove_unseen(&self, watermark: Option<&[u8]>) -> Result<u64, IndexError> {
        let mut removed = 0;
        let mut vanished: Vec<HashedChange> = Vec::new();
        {
            let mut records_it = self.db.raw_iterator_cf(self.cf(cf::RECORDS));
            let mut seen_it = self.db.raw_iterator_cf(self.cf(cf::SCAN));
            records_it.seek_to_first();
            seen_it.seek_to_first();
            while let Some(rk) = records_it.key() {
                while seen_it.key().is_some_and(|sk| sk < rk) {
                    seen_it.next();
                }
                if seen_it.key() != Some(rk) {
                    let (position, key) = cf::split_record_key(rk)?;
                    vanished.push(HashedChange::Delete {
                        position,
                        key: key.to_vec(),
                    });
                }
                if vanished.len() == RESCAN_CHUNK_RECORDS {
                    removed += self.apply_hashed(&vanished, None)?.deleted;
                    vanished.clear();
                }
                records_it.next();
            }
            records_it
                .status()
                .map_err(IndexError::storage("scan records"))?;
            seen_it
                .status()
                .map_err(IndexError::storage("scan seen keys"))?;
        }
        removed += self.apply_hashed(&vanished, watermark)?.deleted;
        Ok(removed)
    }
}

/// Rescans several indexes of one system (the indexes of a dataset under
/// each key it holds during a key rotation) in one pass over `records`
/// (see [`Index::rescan`]). One pass, not one per index, so every index
/// ends at the same state of the system; returns each index's figures.
pub fn rescan_each<I, E>(
    indexes: &[&Index],
    records: I,
    watermark: Option<&[u8]>,
    repeats: KeyRepeats,
) -> Result<Vec<RescanStats>, IndexError>
where
    I: IntoIterator<Item = Result<Record, E>>,
    E: Into<SourceError>,
{
    for index in indexes {
        index.ensure_ready()?;
        index.clear_cf(cf::SCAN)?;
    }
    // Set only once nothing above can fail, so that every flag set is
    // cleared below.
    for index in indexes {
        index.rescanning.store(true, Ordering::Release);
    }
    // What the pass finds changed was written after each index was last
    // current; once done, each is current as of the pass's start.
    let started_us = now_us();
    let outcome = (|| {
        let current_as_of = indexes
            .iter()
            .map(|i| i.current_as_of())
            .collect::<Result<Vec<_>, _>>()?;
        let mut stats = vec![RescanStats::default(); indexes.len()];
        let mut source = records.into_iter();
        loop {
            let (mut chunk, mut bytes) = (Vec::new(), 0);
            while chunk.len() < RESCAN_CHUNK_RECORDS && bytes < RESCAN_CHUNK_BYTES {
                let Some(item) = source.next() else { break };
                let record = item.map_err(|e| IndexError::Source(e.into()))?;
                bytes += record.mem_bytes();
                chunk.push(record);
            }
            if chunk.is_empty() {
                break;
            }
            for ((index, stats), as_of) in indexes.iter().zip(&mut stats).zip(&current_as_of) {
                stats.records_read += chunk.len() as u64;
                let applied = index.rescan_chunk(&chunk, *as_of)?;
                stats.applied.inserted += applied.inserted;
                stats.applied.updated += applied.updated;
                stats.applied.unchanged += applied.unchanged;
            }
        }
        // A key read twice is marked seen once: fewer keys seen than
        // records read means the system holds duplicates (capture applying
        // changes meanwhile only adds seen keys). Refused before anything
        // is removed.
        if let (KeyRepeats::Refuse { .. }, Some(index), Some(read)) = (
            repeats,
            indexes.first(),
            stats.first().map(|s| s.records_read),
        ) {
            let seen = index.count_cf(cf::SCAN)?;
            if seen < read {
                return Err(IndexError::RepeatedKeys {
                    count: read - seen,
                    example: None,
                });
            }
        }
        // Records not seen by this scan vanished from the source.
        for (index, stats) in indexes.iter().zip(&mut stats) {
            stats.vanished += index.remove_unseen(watermark)?;
            index.mark_current(started_us)?;
        }
        Ok(stats)
    })();
    for index in indexes {
        index.rescanning.store(false, Ordering::Release);
    }
    let stats = outcome?;
    for (index, stats) in indexes.iter().zip(&stats) {
        index.clear_cf(cf::SCAN)?;
        info!(
            key_id = %index.config.keys.key_id(),
            read = stats.records_read,
            inserted = stats.applied.inserted,
            updated = stats.applied.updated,
            vanished = stats.vanished,
            "rescan finished"
        );
    }
    Ok(stats)
}

/// Now, in µs since the Unix epoch: the unit of the index's change times
/// (tombstones, `changed`, [`Index::current_as_of`]).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// A stored time (i64 µs, big-endian) under `key` of column family `cf`.
fn read_time(cf: &'static str, key: &[u8], v: &[u8]) -> Result<i64, IndexError> {
    let b: [u8; 8] = v
        .try_into()
        .map_err(|_| IndexError::corrupt(cf, key, format!("{} bytes, expected 8", v.len())))?;
    Ok(i64::from_be_bytes(b))
}

fn read_u32(name: &'static [u8], v: &[u8]) -> Result<u32, IndexError> {
    let b: [u8; 4] = v
        .try_into()
        .map_err(|_| IndexError::corrupt(cf::META, name, "expected a 4-byte integer"))?;
    Ok(u32::from_le_bytes(b))
}
