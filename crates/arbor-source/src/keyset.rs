//! What the database connectors share: reading a relation in chunks under
//! a throttle, and reconnecting with backoff when the connection breaks,
//! resuming at the chunk that broke.
//!
//! A connector implements `KeysetReader`: read one whole chunk from a
//! cursor (the last key read, for keyset chunks; a block of the table for
//! PostgreSQL's block walk), and open a fresh connection. `scan_in_chunks`
//! drives it. Because a chunk is read whole before any of it is handed out,
//! a connection that breaks mid-chunk only means reading that chunk again:
//! no record is handed out twice or skipped.
//!
//! **Memory is bounded in bytes, not only in rows.** A chunk of 50,000 rows
//! is 10 MB of 200-byte rows but 2.5 GB of 50 KB rows. Each statement asks
//! for as many rows as fit `chunk_bytes` at the row size seen so far
//! (`RowBudget`), and a reader stops taking rows once a chunk holds
//! `chunk_bytes` (a *cut* chunk, which the next one continues after, by its
//! last key; the rest of the statement's rows are read off the connection
//! and dropped). In flight at once: the chunk being fetched, the
//! `FETCH_AHEAD_CHUNKS` queued and the one being parsed.

use std::time::{Duration, Instant};

use arbor_record::{Record, Value};
use tracing::{debug, info, warn};

use crate::SourceError;
use crate::mapping::Mapping;

/// How a database scan treats the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOptions {
    /// Rows per chunk (one statement each; PostgreSQL's block walk aims at
    /// about this many).
    pub chunk_rows: u64,
    /// Bytes per chunk: fewer rows are read when they are wide (see the
    /// module documentation).
    pub chunk_bytes: u64,
    /// Throttle: at most this many rows per second; 0 means no limit.
    pub max_rows_per_sec: u64,
    /// Time limit of every statement.
    pub statement_timeout: Duration,
    /// Connections a build reads over, side by side (PostgreSQL's block
    /// walk of a plain table, unthrottled; every other scan uses one).
    pub build_connections: u32,
    /// Reconnection attempts after a broken connection, before giving up.
    pub reconnect_attempts: u32,
    /// Wait before the first reconnection; doubles up to [`MAX_RECONNECT_BACKOFF`].
    pub reconnect_backoff: Duration,
}

/// Default of [`ScanOptions::chunk_bytes`]: 50,000 rows of up to ~330
/// bytes fit, so only wide rows make chunks shorter.
pub const DEFAULT_CHUNK_BYTES: u64 = 16 << 20;

/// Rows a batch asks for before any row's size is known: few, because a
/// row may be a megabyte and a chunk cut short is still read to its end.
const FIRST_BATCH_ROWS: u64 = 32;

/// Sizes batches of rows (a chunk's `LIMIT`, keys per lookup) to a budget
/// in bytes from the sizes of the rows read so far: the budget over the
/// larger of the average row and the last batch's, so that a table whose
/// rows grow is followed at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowBudget {
    /// Bytes a batch may hold.
    bytes: u64,
    /// Rows a batch may hold whatever their size.
    max_rows: u64,
    /// Rows and bytes seen so far.
    seen_rows: u64,
    seen_bytes: u64,
    /// Bytes per row of the last batch.
    last_per_row: f64,
}

impl RowBudget {
    /// A budget of `bytes` and at most `max_rows` rows a batch.
    pub fn new(bytes: u64, max_rows: u64) -> RowBudget {
        RowBudget {
            bytes: bytes.max(1),
            max_rows: max_rows.max(1),
            seen_rows: 0,
            seen_bytes: 0,
            last_per_row: 0.0,
        }
    }

    /// A budget for a scan's chunks.
    pub fn of_chunks(options: &ScanOptions) -> RowBudget {
        RowBudget::new(options.chunk_bytes, options.chunk_rows)
    }

    /// Rows the next batch asks for.
    pub fn rows(&self) -> u64 {
        if self.seen_rows == 0 {
            return self.max_rows.min(FIRST_BATCH_ROWS);
        }
        let average = self.seen_bytes as f64 / self.seen_rows as f64;
        let per_row = average.max(self.last_per_row).max(1.0);
        ((self.bytes as f64 / per_row) as u64).clamp(1, self.max_rows)
    }

    /// Whether a batch of `bytes` is full.
    pub fn full(&self, bytes: u64) -> bool {
        bytes >= self.bytes
    }

    /// Counts a batch read: `rows` rows of `bytes` bytes in all.
    pub fn observe(&mut self, rows: u64, bytes: u64) {
        if rows == 0 {
            return;
        }
        self.seen_rows += rows;
        self.seen_bytes += bytes;
        self.last_per_row = bytes as f64 / rows as f64;
    }
}

/// What a connector's scans held: the largest chunk, in bytes, shared by
/// the lanes of a scan (a bound tests and operators can check).
#[derive(Debug, Default)]
pub struct ChunkStats {
    largest: std::sync::atomic::AtomicU64,
}

impl ChunkStats {
    /// Counts a chunk of `bytes`.
    pub(crate) fn note(&self, bytes: u64) {
        self.largest
            .fetch_max(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes of the largest chunk read so far.
    pub fn largest_chunk_bytes(&self) -> u64 {
        self.largest.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Longest wait between two reconnection attempts.
pub const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(10);

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            chunk_rows: 50_000,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            max_rows_per_sec: 0,
            statement_timeout: Duration::from_secs(60),
            build_connections: 2,
            reconnect_attempts: 10,
            reconnect_backoff: Duration::from_millis(200),
        }
    }
}

/// Why a chunk could not be read.
pub(crate) enum ChunkError {
    /// The connection broke: reconnect and read the chunk again.
    Connection(String),
    /// Anything else: the scan fails.
    Fatal(SourceError),
}

impl From<SourceError> for ChunkError {
    fn from(e: SourceError) -> ChunkError {
        ChunkError::Fatal(e)
    }
}

/// The error of a column whose type on the server (`found`, as `server`
/// names it) cannot be read as the kind it is mapped to.
pub(crate) fn unreadable_column(
    dataset: String,
    server: &str,
    c: &crate::ColumnMapping,
    found: &str,
) -> SourceError {
    SourceError::Schema {
        dataset,
        problem: format!(
            "column {:?} is {found} in {server} and cannot be read as {} (mapped to {:?})",
            c.source,
            c.kind,
            c.canonical()
        ),
    }
}

/// The key columns, then the value columns, quoted by `ident`: `a, b, c`.
pub(crate) fn select_list(mapping: &Mapping, ident: fn(&str) -> String) -> String {
    let cols: Vec<String> = mapping.all_columns().map(|c| ident(&c.source)).collect();
    cols.join(", ")
}

/// The key columns, quoted by `ident`.
pub(crate) fn key_list(mapping: &Mapping, ident: fn(&str) -> String) -> String {
    let cols: Vec<String> = mapping.key().iter().map(|c| ident(&c.source)).collect();
    cols.join(", ")
}

/// What a chunk's rows need to become records, shared by the thread that
/// parses them while the next chunk is fetched.
pub(crate) struct ChunkContext {
    /// The dataset's mapping.
    pub mapping: Mapping,
    /// The dataset, for messages.
    pub dataset: String,
}

impl ChunkContext {
    /// A value error naming the column.
    pub fn value_error(&self, column: &str, problem: String) -> SourceError {
        SourceError::Value {
            dataset: self.dataset.clone(),
            column: column.to_owned(),
            problem,
        }
    }

    /// `e` naming the row it happened in by its `key` (a value error,
    /// unless the keys are sensitive), so that the row can be found.
    pub fn in_row(&self, e: SourceError, key: Option<&[Value]>) -> SourceError {
        match (e, key) {
            (
                SourceError::Value {
                    dataset,
                    column,
                    problem,
                },
                Some(key),
            ) if self.mapping.keys_shown() => SourceError::Value {
                dataset: format!(
                    "{dataset}, row with key {}",
                    arbor_record::display_tuple(key)
                ),
                column,
                problem,
            },
            (e, _) => e,
        }
    }

    /// A record from values in select-list order (see [`Mapping::record`]).
    pub fn record(&self, values: Vec<Value>) -> Result<Record, SourceError> {
        self.mapping
            .record(values)
            .map_err(|c| self.value_error(c, crate::NULL_KEY.into()))
    }
}

/// A chunk as fetched: rows not yet parsed, their count, and where the next
/// chunk starts (`None` after the last one).
pub(crate) struct Fetched<R, C> {
    pub raw: R,
    pub rows: u64,
    pub next: Option<C>,
}

impl<R, K> Fetched<R, K> {
    /// A keyset chunk of `rows` rows read by a statement that asked for
    /// `limit` (see [`keyset_continues`]), ending at `last_key`.
    pub fn keyset(raw: R, rows: u64, limit: u64, cut: bool, last_key: Option<K>) -> Self {
        Fetched {
            raw,
            rows,
            next: last_key.filter(|_| keyset_continues(rows, limit, cut)),
        }
    }
}

/// Whether a keyset chunk of `rows` rows, read by a statement with `LIMIT
/// limit`, has a next one: a chunk cut at its byte budget or holding all
/// the rows asked for continues after its last key; a short one is the
/// last. `limit` must be the one the statement sent, not the configured
/// `chunk_rows`: a chunk shortened for wide rows is not the end.
pub(crate) fn keyset_continues(rows: u64, limit: u64, cut: bool) -> bool {
    cut || rows >= limit.max(1)
}

/// Chunks a scan fetches ahead of the one being parsed (each at most
/// `chunk_bytes`, plus one row).
const FETCH_AHEAD_CHUNKS: usize = 2;

/// Chunks of fewer rows than this are parsed on one thread.
pub(crate) const PARALLEL_PARSE_MIN_ROWS: u64 = 2_048;

/// A connector that reads a relation in keyset chunks.
///
/// Fetching and parsing are split so that a scan overlaps them: one thread
/// fetches chunk n+1 from the server while chunk n is parsed (in parallel)
/// and handed out. The server never waits for arbor's parsing.
pub(crate) trait KeysetReader: Send {
    /// A chunk's rows as the server sent them.
    type Raw: Send;
    /// Where a chunk starts: the key it follows, or a place in the table.
    type Cursor: Clone + Send;
    /// Chunking, throttle and reconnection settings.
    fn options(&self) -> &ScanOptions;
    /// The dataset, for messages (no password).
    fn dataset(&self) -> String;
    /// The chunk starting at `from` (the first if `None`), unparsed except
    /// for where the next one starts.
    fn fetch_chunk(
        &mut self,
        from: Option<&Self::Cursor>,
    ) -> Result<Fetched<Self::Raw, Self::Cursor>, ChunkError>;
    /// Drops the current connection and opens a new one.
    fn connect_again(&mut self) -> Result<(), SourceError>;
    /// Further readers, each to open its own connection, that walk the
    /// relation side by side with this one: each reads its own share of
    /// the chunks, in no particular order between them. None by default.
    fn lanes(&mut self) -> Vec<Self>
    where
        Self: Sized,
    {
        Vec::new()
    }
}

/// Scans everything, chunk after chunk: `parse` turns each fetched chunk
/// into what `visit` takes (records, or a batch of hashed records); its
/// flag allows spreading the work over the rayon pool. Returns the rows
/// read. A reader with [lanes](KeysetReader::lanes) is read by one
/// fetching thread per lane, and chunks come in the order they arrive.
pub(crate) fn scan_in_chunks<R: KeysetReader, T>(
    reader: &mut R,
    parse: &dyn Fn(R::Raw, bool) -> Result<T, SourceError>,
    visit: &mut dyn FnMut(T) -> Result<(), SourceError>,
) -> Result<u64, SourceError> {
    let dataset = reader.dataset();
    // Held until the scan ends: a lane that runs out of blocks early keeps
    // its connection until the others are done, as the reader does.
    let mut lanes = reader.lanes();
    std::thread::scope(|scope| {
        // Chunks fetched ahead of the one being parsed: the server keeps
        // streaming while parsing falls behind for a while. A fetcher that
        // fails sends its error, which ends the scan at once.
        let (tx, rx) = std::sync::mpsc::sync_channel::<FetchResult<R>>(FETCH_AHEAD_CHUNKS);
        let mut fetchers = vec![scope.spawn({
            let tx = tx.clone();
            move || fetch_all(reader, &tx)
        })];
        for lane in lanes.iter_mut() {
            let tx = tx.clone();
            fetchers.push(scope.spawn(move || fetch_all(lane, &tx)));
        }
        // The fetchers hold the only senders: the receiver ends with them.
        drop(tx);
        let consumed = (|| -> Result<u64, SourceError> {
            let mut total = 0u64;
            for fetched in rx {
                let fetched = fetched?;
                let parallel = fetched.rows >= PARALLEL_PARSE_MIN_ROWS;
                total += fetched.rows;
                visit(parse(fetched.raw, parallel)?)?;
            }
            Ok(total)
        })();
        // The receiver is gone now, so fetchers still running stop.
        let panicked = fetchers.into_iter().any(|f| f.join().is_err());
        let total = consumed?;
        if panicked {
            return Err(SourceError::Read {
                dataset,
                reason: "a fetching thread panicked".into(),
            });
        }
        debug!(rows = total, "scan finished");
        Ok(total)
    })
}

/// What a fetching thread sends: a chunk, or the error that ended it.
type FetchResult<R> =
    Result<Fetched<<R as KeysetReader>::Raw, <R as KeysetReader>::Cursor>, SourceError>;

/// Fetches every chunk of `reader` (its lane of the relation) into `tx`,
/// reconnecting when the connection breaks, under the throttle; a failure
/// is sent as the last item.
fn fetch_all<R: KeysetReader>(reader: &mut R, tx: &std::sync::mpsc::SyncSender<FetchResult<R>>) {
    let options = *reader.options();
    let started = Instant::now();
    let mut from: Option<R::Cursor> = None;
    let mut total = 0u64;
    loop {
        let fetched = match reader.fetch_chunk(from.as_ref()) {
            Ok(f) => f,
            Err(ChunkError::Connection(cause)) => match reconnect(reader, &cause) {
                Ok(()) => continue,
                Err(e) => {
                    // A closed channel means the consumer already failed.
                    let _ = tx.send(Err(e));
                    return;
                }
            },
            Err(ChunkError::Fatal(e)) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        total += fetched.rows;
        let next = fetched.next.clone();
        if tx.send(Ok(fetched)).is_err() {
            // The consumer stopped: its error is the scan's.
            return;
        }
        match next {
            Some(next) => from = Some(next),
            None => return,
        }
        if options.max_rows_per_sec > 0 {
            let due = Duration::from_secs_f64(total as f64 / options.max_rows_per_sec as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                THROTTLE_WAITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(wait);
            }
        }
    }
}

/// [`scan_in_chunks`] handing out records one by one.
pub(crate) fn scan_records<R: KeysetReader>(
    reader: &mut R,
    parse: &dyn Fn(R::Raw, bool) -> Result<Vec<Record>, SourceError>,
    visit: &mut dyn FnMut(Record) -> Result<(), SourceError>,
) -> Result<u64, SourceError> {
    scan_in_chunks(reader, parse, &mut |records: Vec<Record>| {
        records.into_iter().try_for_each(&mut *visit)
    })
}

static THROTTLE_WAITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Times a scan paused to stay under its `max_rows_per_sec`, in this
/// process.
pub fn throttle_waits() -> u64 {
    THROTTLE_WAITS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Hands `items` to `each` in consecutive groups sized by `budget`: `each`
/// returns how many rows its group held and their bytes, which size the
/// next group.
pub(crate) fn in_groups<T, E>(
    items: &[T],
    mut budget: RowBudget,
    mut each: impl FnMut(&[T]) -> Result<(u64, u64), E>,
) -> Result<(), E> {
    let mut rest = items;
    while !rest.is_empty() {
        let (group, more) = rest.split_at((budget.rows() as usize).min(rest.len()));
        rest = more;
        let (rows, bytes) = each(group)?;
        budget.observe(rows, bytes);
    }
    Ok(())
}

/// Keys looked up per statement by `fetch`, at most.
pub(crate) const FETCH_KEYS_PER_STATEMENT: usize = 1_000;

/// Bytes of rows one lookup statement reads, about.
pub(crate) const FETCH_STATEMENT_BYTES: u64 = 8 << 20;

/// Looks records up by key, up to [`FETCH_KEYS_PER_STATEMENT`] keys and
/// about [`FETCH_STATEMENT_BYTES`] of rows a statement: `query` reads the
/// rows of one batch of keys, in any order; the result is in `keys` order,
/// `None` where a key has no row. A caller holding many wide rows asks for
/// fewer keys at a time ([`crate::fetch_each`]).
pub(crate) fn fetch_in_batches(
    keys: &[Vec<Value>],
    mut query: impl FnMut(&[&[Value]]) -> Result<Vec<Record>, SourceError>,
) -> Result<Vec<Option<Record>>, SourceError> {
    let mut found = std::collections::HashMap::new();
    let budget = RowBudget::new(FETCH_STATEMENT_BYTES, FETCH_KEYS_PER_STATEMENT as u64);
    in_groups(keys, budget, |group| {
        let refs: Vec<&[Value]> = group.iter().map(Vec::as_slice).collect();
        let rows = query(&refs)?;
        let sized = (
            rows.len() as u64,
            rows.iter().map(|r| r.mem_bytes() as u64).sum(),
        );
        for r in rows {
            found.insert(arbor_record::tuple_bytes(&r.key), r);
        }
        Ok(sized)
    })?;
    Ok(keys
        .iter()
        .map(|k| found.remove(&arbor_record::tuple_bytes(k)))
        .collect())
}

/// Reconnects with backoff after `cause` broke the connection.
fn reconnect(reader: &mut impl KeysetReader, cause: &str) -> Result<(), SourceError> {
    let options = *reader.options();
    let mut wait = options.reconnect_backoff;
    for attempt in 1..=options.reconnect_attempts {
        warn!(dataset = %reader.dataset(), attempt, error = %cause, "connection lost; reconnecting");
        std::thread::sleep(wait);
        match reader.connect_again() {
            Ok(()) => {
                info!(dataset = %reader.dataset(), attempt, "reconnected; resuming the scan");
                return Ok(());
            }
            Err(e) => debug!(error = %e, "reconnect failed"),
        }
        wait = (wait * 2).min(MAX_RECONNECT_BACKOFF);
    }
    Err(SourceError::Read {
        dataset: reader.dataset(),
        reason: format!(
            "connection lost and {} reconnections failed: {cause}",
            options.reconnect_attempts
        ),
    })
}
