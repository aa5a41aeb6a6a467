//! The storage half of a full build: records spilled into buckets by
//! position while the source is read, then each bucket sorted in memory and
//! written, in position order, into SST files that RocksDB ingests whole,
//! with every stored node summed on the way.
//!
//! ```text
//!   batches ──▶ 256 bucket files (by the top 8 bits of the position)
//!   end:  16 groups in parallel, one per level-1 prefix (2 in a small build):
//!         bucket ──sort──▶ records SST  +  deepest nodes SST
//!                          + levels above, in memory
//!   root and levels above ──▶ one more nodes SST;  ingest everything
//! ```
//!
//! Why not sorted runs ingested as they fill: those overlap each other, so
//! RocksDB compacts them (rewriting every record again), and the nodes then
//! need one more ordered scan of all records. Buckets partition the key
//! space instead: the files written at the end never overlap, land in the
//! bottom level without compaction, and the nodes come from the same pass.
//! All copies of a key share its position, hence its bucket, so "the last
//! record read wins" is decided there, whatever the source.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use arbor_record::{Digest, HashedBatch};
use arbor_tree::{Aggregator, FANOUT, Node, Prefix};
use rayon::prelude::*;
use rocksdb::{Options, SstFileWriter};

use crate::cf;
use crate::error::IndexError;

/// Buckets: 8 bits of the position (two tree levels).
const BUCKETS: usize = 256;
/// A record's bucket is `(position >> BUCKET_SHIFT) & BUCKET_MASK`: the top
/// 8 bits.
const BUCKET_SHIFT: u32 = 56;
/// An oversized bucket is split into pieces by the next 8 bits.
const PIECE_SHIFT: u32 = BUCKET_SHIFT - 8;
const BUCKET_MASK: u64 = BUCKETS as u64 - 1;
/// Builds of fewer records than this write their buckets in
/// [`SMALL_BUILD_GROUPS`] groups (a file costs a sync and an ingestion
/// whatever its size), larger ones in one group per level-1 prefix.
const SMALL_BUILD_RECORDS: u64 = 1 << 20;
/// Groups of a small build: two, so both cores still write.
const SMALL_BUILD_GROUPS: usize = 2;
/// Read buffer for splitting an oversized bucket.
const SPLIT_READ_BYTES: usize = 1 << 20;
/// Bytes a bucket gathers in memory before they are appended to its file.
pub(crate) const BUCKET_BUFFER_BYTES: usize = 64 << 10;
/// Spilled record: position (8, little-endian), digest (32), key length
/// (4, little-endian), key. Where the digest and the length start:
const DIGEST_AT: usize = 8;
const LEN_AT: usize = DIGEST_AT + 32;
/// Bytes before the key.
const RECORD_HEADER: usize = LEN_AT + 4;
/// A bucket larger than this is split by the next 8 bits of the position
/// before it is sorted, so the final pass holds at most about this much
/// per worker whatever the build's size (a 1 B-record build has ~200 MB
/// buckets; each splits into ~1 MB pieces).
const MAX_BUCKET_BYTES: u64 = 64 << 20;

/// Where a build's spilled records go while the source is read.
pub(crate) struct Spill {
    dir: PathBuf,
    /// The bucket of a record is `(position >> shift) & 0xff`.
    shift: u32,
    buffers: Vec<Vec<u8>>,
    /// Bytes a bucket gathers before they are written.
    flush_bytes: usize,
    /// Whether each bucket's file exists yet.
    started: Vec<bool>,
}

impl Spill {
    /// Buckets in `dir`, which is created empty, each writing its records
    /// once `flush_bytes` of them gathered.
    pub fn create(dir: &Path, flush_bytes: usize) -> Result<Spill, IndexError> {
        Spill::create_at(dir, flush_bytes, BUCKET_SHIFT)
    }

    /// Buckets by the 8 bits of the position at `shift`.
    fn create_at(dir: &Path, flush_bytes: usize, shift: u32) -> Result<Spill, IndexError> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io("clear", dir))?;
        }
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        Ok(Spill {
            dir: dir.to_owned(),
            shift,
            buffers: vec![Vec::new(); BUCKETS],
            flush_bytes,
            started: vec![false; BUCKETS],
        })
    }

    /// Spills every record of a batch.
    pub fn push(&mut self, batch: &HashedBatch) -> Result<(), IndexError> {
        for e in batch.entries() {
            self.push_record(e.position, &e.digest, batch.key(e))?;
        }
        Ok(())
    }

    fn push_record(
        &mut self,
        position: u64,
        digest: &Digest,
        key: &[u8],
    ) -> Result<(), IndexError> {
        let b = ((position >> self.shift) & BUCKET_MASK) as usize;
        let len = u32::try_from(key.len()).map_err(|_| {
            IndexError::InvalidRequest(format!("a key of {} bytes is too long", key.len()))
        })?;
        let buf = &mut self.buffers[b];
        buf.extend_from_slice(&position.to_le_bytes());
        buf.extend_from_slice(&digest.0);
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(key);
        if buf.len() >= self.flush_bytes {
            self.flush(b)?;
        }
        Ok(())
    }

    fn flush(&mut self, b: usize) -> Result<(), IndexError> {
        let path = bucket_path(&self.dir, b);
        // Opened per flush, so a build holds no descriptors between them.
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("open", &path))?;
        file.write_all(&self.buffers[b])
            .map_err(io("write", &path))?;
        self.buffers[b].clear();
        self.started[b] = true;
        Ok(())
    }

    /// Writes what is still buffered.
    pub fn finish(mut self) -> Result<SpilledBuckets, IndexError> {
        for b in 0..BUCKETS {
            if !self.buffers[b].is_empty() {
                self.flush(b)?;
            }
        }
        Ok(SpilledBuckets {
            dir: self.dir,
            present: self.started,
            split_above: MAX_BUCKET_BYTES,
        })
    }
}

/// The spilled buckets of a build, ready for the final pass.
pub(crate) struct SpilledBuckets {
    dir: PathBuf,
    present: Vec<bool>,
    /// Buckets of more bytes than this are split before sorting.
    split_above: u64,
}

/// What the final pass wrote.
pub(crate) struct Written {
    /// Distinct records.
    pub records: u64,
    /// A key read more than once, if any was (canonical bytes).
    pub repeated_key: Option<Vec<u8>>,
    /// Nodes, root included.
    pub nodes: u64,
    /// SST files to ingest into the records column family.
    pub record_files: Vec<PathBuf>,
    /// SST files to ingest into the nodes column family.
    pub node_files: Vec<PathBuf>,
}

/// One group's share of the final pass.
#[derive(Default)]
struct GroupOutput {
    records: u64,
    /// The first key of this group read more than once.
    repeated_key: Option<Vec<u8>>,
    /// Its records, in one SST file.
    record_file: Option<PathBuf>,
    /// Its nodes of the deepest stored level, in one SST file.
    deep_file: Option<PathBuf>,
    deep_nodes: u64,
    /// Its nodes of levels `1..depth`, per level (index `level - 1`), in
    /// prefix order.
    upper: Vec<Vec<(Prefix, Node)>>,
    root: Node,
}

/// Memory one worker of the final pass reuses from group to group.
#[derive(Default)]
struct GroupBuffers {
    raw: Vec<u8>,
    entries: Vec<(u64, usize)>,
    key_buf: Vec<u8>,
}

/// Where a group's nodes go as the aggregator closes them: the deepest
/// level (most of them, in key order) straight into an SST file, the
/// levels above into memory.
struct NodeSink<'a> {
    depth: u8,
    deep: LazySst<'a>,
    /// The first failed write.
    error: Option<IndexError>,
}

impl NodeSink<'_> {
    fn emit(&mut self, p: Prefix, n: Node, out: &mut GroupOutput) {
        if p.level() == self.depth {
            if let Err(e) = self.deep.put(&cf::node_key(p), &n.to_bytes()) {
                self.error.get_or_insert(e);
            }
            out.deep_nodes += 1;
        } else if let Some(level) = out.upper.get_mut(usize::from(p.level()).wrapping_sub(1)) {
            level.push((p, n));
        }
    }
}

/// A lazily created SST file.
struct LazySst<'a> {
    options: &'a Options,
    path: PathBuf,
    writer: Option<SstFileWriter<'a>>,
}

impl<'a> LazySst<'a> {
    fn new(options: &'a Options, path: PathBuf) -> LazySst<'a> {
        LazySst {
            options,
            path,
            writer: None,
        }
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), IndexError> {
        let writer = match &mut self.writer {
            Some(w) => w,
            None => self.writer.insert(sst_writer(self.options, &self.path)?),
        };
        writer
            .put(key, value)
            .map_err(IndexError::storage("write a build file"))
    }

    /// Finishes the file; its path if anything was written.
    fn finish(self) -> Result<Option<PathBuf>, IndexError> {
        match self.writer {
            None => Ok(None),
            Some(mut w) => {
                w.finish()
                    .map_err(IndexError::storage("finish a build file"))?;
                Ok(Some(self.path))
            }
        }
    }
}

impl SpilledBuckets {
    /// Sorts every bucket and writes the records' and the nodes' SST files
    /// (levels `0..=depth`), groups of buckets in parallel.
    pub fn write(
        self,
        records_read: u64,
        depth: u8,
        options: &Options,
    ) -> Result<Written, IndexError> {
        // Groups are contiguous runs of buckets covering whole level-1
        // prefixes, so each closes its own level-1 nodes.
        let count = if records_read < SMALL_BUILD_RECORDS {
            SMALL_BUILD_GROUPS
        } else {
            FANOUT
        };
        let per_group = BUCKETS / count;
        let groups = (0..count)
            .into_par_iter()
            .map_init(GroupBuffers::default, |buffers, g| {
                let buckets = g * per_group..(g + 1) * per_group;
                self.write_group(g, buckets, depth, options, buffers)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut written = Written {
            records: 0,
            repeated_key: None,
            nodes: 0,
            record_files: Vec::new(),
            node_files: Vec::new(),
        };
        let mut root = Node::EMPTY;
        for g in &groups {
            root += g.root;
            written.records += g.records;
            if written.repeated_key.is_none() {
                written.repeated_key.clone_from(&g.repeated_key);
            }
            written.nodes += g.deep_nodes;
            written.record_files.extend(g.record_file.clone());
            written.node_files.extend(g.deep_file.clone());
        }
        if written.records == 0 {
            return Ok(written);
        }
        // The root and the levels above the deepest: level by level, and
        // within a level group by group, which is key order.
        let mut upper = LazySst::new(options, self.dir.join("nodes-upper.sst"));
        upper.put(&cf::node_key(Prefix::ROOT), &root.to_bytes())?;
        written.nodes += 1;
        for level in 1..depth as usize {
            for g in &groups {
                for (p, n) in g.upper.get(level - 1).into_iter().flatten() {
                    upper.put(&cf::node_key(*p), &n.to_bytes())?;
                    written.nodes += 1;
                }
            }
        }
        written.node_files.extend(upper.finish()?);
        Ok(written)
    }

    /// Group `g`, the `buckets` (whole level-1 prefixes), in position
    /// order: its records and its deepest nodes each in an SST file, and
    /// its other nodes of levels `1..depth`.
    fn write_group(
        &self,
        g: usize,
        buckets: std::ops::Range<usize>,
        depth: u8,
        options: &Options,
        buffers: &mut GroupBuffers,
    ) -> Result<GroupOutput, IndexError> {
        let out = GroupOutput {
            upper: vec![Vec::new(); usize::from(depth.saturating_sub(1))],
            ..GroupOutput::default()
        };
        let mut state = GroupState {
            records: LazySst::new(options, self.dir.join(format!("records-{g:02}.sst"))),
            nodes: NodeSink {
                depth,
                deep: LazySst::new(options, self.dir.join(format!("nodes-{g:02}.sst"))),
                error: None,
            },
            aggregator: Aggregator::new(depth),
            out,
        };
        for b in buckets {
            if !self.present[b] {
                continue;
            }
            let path = bucket_path(&self.dir, b);
            let size = std::fs::metadata(&path).map_err(io("read", &path))?.len();
            if size <= self.split_above {
                self.write_bucket(&path, buffers, &mut state)?;
                continue;
            }
            // Too large to sort in memory: split by the next 8 bits of the
            // position (pieces come out in position order), then each.
            let pieces_dir = path.with_extension("pieces");
            let mut pieces = Spill::create_at(&pieces_dir, BUCKET_BUFFER_BYTES, PIECE_SHIFT)?;
            let mut reader = std::io::BufReader::with_capacity(
                SPLIT_READ_BYTES,
                File::open(&path).map_err(io("read", &path))?,
            );
            let mut header = [0u8; RECORD_HEADER];
            let mut key = Vec::new();
            loop {
                match reader.read_exact(&mut header) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(io("read", &path)(e)),
                }
                let (position, digest, len) = spilled_header(&header);
                if len as u64 > size {
                    return Err(IndexError::Corrupt {
                        cf: "build spill",
                        key: path.display().to_string(),
                        reason: format!("a key of {len} bytes in a file of {size}"),
                    });
                }
                key.resize(len, 0);
                reader.read_exact(&mut key).map_err(io("read", &path))?;
                pieces.push_record(position, &digest, &key)?;
            }
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
            let pieces = pieces.finish()?;
            for piece in (0..BUCKETS).filter(|&p| pieces.present[p]) {
                self.write_bucket(&bucket_path(&pieces_dir, piece), buffers, &mut state)?;
            }
            std::fs::remove_dir_all(&pieces_dir).map_err(io("remove", &pieces_dir))?;
        }
        let GroupState {
            records,
            mut nodes,
            aggregator,
            mut out,
        } = state;
        out.root = aggregator.finish(|p, n| {
            // The root is summed over every group by the caller.
            if p != Prefix::ROOT {
                nodes.emit(p, n, &mut out);
            }
        });
        if let Some(e) = nodes.error.take() {
            return Err(e);
        }
        out.record_file = records.finish()?;
        out.deep_file = nodes.deep.finish()?;
        Ok(out)
    }

    /// Sorts one bucket file (or piece of one) and writes its records and
    /// nodes; the file is removed once read.
    fn write_bucket(
        &self,
        path: &Path,
        buffers: &mut GroupBuffers,
        state: &mut GroupState<'_>,
    ) -> Result<(), IndexError> {
        let GroupBuffers {
            raw,
            entries,
            key_buf,
        } = buffers;
        raw.clear();
        File::open(path)
            .and_then(|mut f| {
                raw.reserve(f.metadata()?.len() as usize);
                f.read_to_end(raw)
            })
            .map_err(io("read", path))?;
        // The spill file is gone once read: disk holds one copy.
        std::fs::remove_file(path).map_err(io("remove", path))?;
        spilled_entries(raw, entries).map_err(|reason| IndexError::Corrupt {
            cf: "build spill",
            key: path.display().to_string(),
            reason,
        })?;
        sort_spilled(raw, entries);
        let GroupState {
            records,
            nodes,
            aggregator,
            out,
        } = state;
        for (i, &(position, at)) in entries.iter().enumerate() {
            let key = spilled_key(raw, at);
            if let Some(&(next_pos, next_at)) = entries.get(i + 1)
                && next_pos == position
                && spilled_key(raw, next_at) == key
            {
                // A later copy of this key follows: it wins.
                if out.repeated_key.is_none() {
                    out.repeated_key = Some(key.to_vec());
                }
                continue;
            }
            let digest = spilled_digest(raw, at);
            key_buf.clear();
            cf::put_record_key(key_buf, position, key);
            records.put(key_buf, &digest.0)?;
            aggregator.push(position, Node::of_digest(&digest.0), |p, n| {
                nodes.emit(p, n, out)
            });
            out.records += 1;
        }
        match nodes.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// What a group of the final pass carries from bucket to bucket.
struct GroupState<'a> {
    records: LazySst<'a>,
    nodes: NodeSink<'a>,
    aggregator: Aggregator,
    out: GroupOutput,
}

/// Indexes the records of a spill file: (position, offset) each. The file
/// is the build's own, but it is read back from disk: a bad length is an
/// error, not a panic.
fn spilled_entries(raw: &[u8], out: &mut Vec<(u64, usize)>) -> Result<(), String> {
    out.clear();
    let mut at = 0;
    while at < raw.len() {
        let header = raw
            .get(at..at + RECORD_HEADER)
            .and_then(|h| <&[u8; RECORD_HEADER]>::try_from(h).ok())
            .ok_or_else(|| format!("record cut short at byte {at}"))?;
        let (position, _, len) = spilled_header(header);
        let end = at + RECORD_HEADER + len;
        if end > raw.len() {
            return Err(format!("key cut short at byte {at}"));
        }
        out.push((position, at));
        at = end;
    }
    Ok(())
}

/// Sorts a bucket's entries by position, then key; copies of one key keep
/// their spill order (the offset), so the last one read comes last.
///
/// Positions are 64-bit keyed hashes: equal positions are nearly always
/// copies of one key, and distinct keys sharing one are rare. So the sort
/// compares plain `(position, offset)` pairs, and only runs of equal
/// positions are then ordered by key.
fn sort_spilled(raw: &[u8], entries: &mut [(u64, usize)]) {
    entries.sort_unstable();
    let mut start = 0;
    while start < entries.len() {
        let position = entries[start].0;
        let end = start
            + entries[start..]
                .iter()
                .take_while(|e| e.0 == position)
                .count();
        if end - start > 1 {
            // Stable: equal keys stay in offset order.
            entries[start..end].sort_by(|a, b| spilled_key(raw, a.1).cmp(spilled_key(raw, b.1)));
        }
        start = end;
    }
}

/// Position, digest and key length from a spilled record's header.
fn spilled_header(header: &[u8; RECORD_HEADER]) -> (u64, Digest, usize) {
    let (position, rest) = header.split_at(DIGEST_AT);
    let (digest, len) = rest.split_at(LEN_AT - DIGEST_AT);
    let mut p = [0u8; DIGEST_AT];
    p.copy_from_slice(position);
    let mut d = [0u8; 32];
    d.copy_from_slice(digest);
    let mut l = [0u8; RECORD_HEADER - LEN_AT];
    l.copy_from_slice(len);
    (
        u64::from_le_bytes(p),
        Digest(d),
        u32::from_le_bytes(l) as usize,
    )
}

/// The header of the spilled record at `at` (checked by [`spilled_entries`]).
fn header_at(raw: &[u8], at: usize) -> &[u8; RECORD_HEADER] {
    <&[u8; RECORD_HEADER]>::try_from(&raw[at..at + RECORD_HEADER])
        .expect("spilled_entries checked every header")
}

/// The key of the spilled record at `at` (checked by [`spilled_entries`]).
fn spilled_key(raw: &[u8], at: usize) -> &[u8] {
    let (_, _, len) = spilled_header(header_at(raw, at));
    let start = at + RECORD_HEADER;
    &raw[start..start + len]
}

/// The digest of the spilled record at `at`.
fn spilled_digest(raw: &[u8], at: usize) -> Digest {
    spilled_header(header_at(raw, at)).1
}

fn bucket_path(dir: &Path, b: usize) -> PathBuf {
    dir.join(format!("bucket-{b:03}"))
}

fn sst_writer<'a>(options: &'a Options, path: &Path) -> Result<SstFileWriter<'a>, IndexError> {
    let w = SstFileWriter::create(options);
    w.open(path)
        .map_err(IndexError::storage("open a build file"))?;
    Ok(w)
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IndexError {
    let path = path.to_owned();
    move |source| IndexError::Io { op, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbor_record::HashedRecord;
    use rocksdb::{DB, IngestExternalFileOptions};

    /// Everything a build writes, as RocksDB reads it back after ingestion:
    /// (records, nodes), each as sorted (key, value) pairs.
    type Content = (Vec<(Vec<u8>, Vec<u8>)>, Vec<(Vec<u8>, Vec<u8>)>);

    fn build(
        records: &HashedBatch,
        records_read: u64,
        depth: u8,
        split_above: u64,
    ) -> (Written, Content) {
        let dir = tempfile::TempDir::new().unwrap();
        let mut spill = Spill::create(&dir.path().join("spill"), 256).unwrap();
        spill.push(records).unwrap();
        let mut spilled = spill.finish().unwrap();
        spilled.split_above = split_above;
        let written = spilled
            .write(records_read, depth, &Options::default())
            .unwrap();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf(&opts, dir.path().join("db"), ["r", "n"]).unwrap();
        let ingest = IngestExternalFileOptions::default();
        let read = |cf: &str, files: &[PathBuf]| {
            let handle = db.cf_handle(cf).unwrap();
            if !files.is_empty() {
                db.ingest_external_file_cf_opts(handle, &ingest, files.iter().collect())
                    .unwrap();
            }
            db.iterator_cf(handle, rocksdb::IteratorMode::Start)
                .map(|kv| {
                    let (k, v) = kv.unwrap();
                    (k.to_vec(), v.to_vec())
                })
                .collect::<Vec<_>>()
        };
        let content = (
            read("r", &written.record_files),
            read("n", &written.node_files),
        );
        (written, content)
    }

    #[test]
    fn group_counts_and_split_buckets_write_the_same_index() {
        // Spread over every bucket; key 7 is read twice, the last copy wins.
        let mut records: Vec<HashedRecord> = (0u64..5_000)
            .map(|i| HashedRecord {
                position: i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                key: i.to_be_bytes().to_vec(),
                digest: Digest([i as u8; 32]),
            })
            .collect();
        records.push(HashedRecord {
            digest: Digest([0xee; 32]),
            ..records[7].clone()
        });
        let batch: HashedBatch = records.into_iter().collect();
        let (small, small_content) = build(&batch, 1, 3, MAX_BUCKET_BYTES);
        let (large, large_content) = build(&batch, SMALL_BUILD_RECORDS, 3, MAX_BUCKET_BYTES);
        // Every bucket (~20 records, ~1 KB) split into pieces.
        let (_, split_content) = build(&batch, 1, 3, 100);
        assert_eq!(split_content, small_content);
        assert_eq!(small.record_files.len(), 2);
        assert_eq!(large.record_files.len(), FANOUT);
        assert_eq!((small.records, large.records), (5_000, 5_000));
        assert_eq!(small.nodes, large.nodes);
        assert_eq!(small_content, large_content);
        let seven = cf::record_key(
            7u64.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            &7u64.to_be_bytes(),
        );
        let found = small_content.0.iter().find(|(k, _)| *k == seven).unwrap();
        assert_eq!(found.1, vec![0xee; 32]);
        // Root, 16 level-1 nodes, 256 level-2, and the non-empty level 3.
        assert_eq!(small_content.1.first().map(|(k, _)| k[0]), Some(0));
        assert_eq!(small.nodes as usize, small_content.1.len());
    }
}
