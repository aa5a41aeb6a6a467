//! The storage half of a full build: records spilled into buckets by
//! position while the source is read, then each bucket sorted in memory and
//! written, in position order, into SST files that RocksDB ingests whole,
//! with every stored node summed on the way.
//!
//! ```text
//!   batches ──▶ 256 bucket files (by the top 8 bits of the position)
//!   end:  16 groups in parallel, one per level-1 prefix:
//!         bucket ──sort──▶ records SST  +  nodes of levels 1..=depth
//!   nodes sorted ──▶ nodes SST;  ingest everything;  root = Σ level 1
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

/// Buckets: the top 8 bits of the position (two tree levels).
const BUCKETS: usize = 256;
/// Buckets per level-1 prefix: one group of the final pass.
const BUCKETS_PER_GROUP: usize = BUCKETS / FANOUT;
/// Bytes a bucket gathers in memory before they are appended to its file.
pub(crate) const BUCKET_BUFFER_BYTES: usize = 64 << 10;
/// Spilled record: position (8), digest (32), key length (4), key.
const RECORD_HEADER: usize = 8 + 32 + 4;

/// Where a build's spilled records go while the source is read.
pub(crate) struct Spill {
    dir: PathBuf,
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
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io("clear", dir))?;
        }
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        Ok(Spill {
            dir: dir.to_owned(),
            buffers: vec![Vec::new(); BUCKETS],
            flush_bytes,
            started: vec![false; BUCKETS],
        })
    }

    /// Spills every record of a batch.
    pub fn push(&mut self, batch: &HashedBatch) -> Result<(), IndexError> {
        for e in batch.entries() {
            let b = bucket_of(e.position);
            let key = batch.key(e);
            let buf = &mut self.buffers[b];
            buf.extend_from_slice(&e.position.to_le_bytes());
            buf.extend_from_slice(&e.digest.0);
            buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
            buf.extend_from_slice(key);
            if buf.len() >= self.flush_bytes {
                self.flush(b)?;
            }
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
        })
    }
}

/// The spilled buckets of a build, ready for the final pass.
pub(crate) struct SpilledBuckets {
    dir: PathBuf,
    present: Vec<bool>,
}

/// What the final pass wrote.
pub(crate) struct Written {
    /// Distinct records.
    pub records: u64,
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
    pub fn write(self, depth: u8, options: &Options) -> Result<Written, IndexError> {
        let groups = (0..FANOUT)
            .into_par_iter()
            .map_init(GroupBuffers::default, |buffers, g| {
                self.write_group(g, depth, options, buffers)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut written = Written {
            records: 0,
            nodes: 0,
            record_files: Vec::new(),
            node_files: Vec::new(),
        };
        let mut root = Node::EMPTY;
        for g in &groups {
            root += g.root;
            written.records += g.records;
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

    /// The buckets under level-1 prefix `g`, in position order: its records
    /// and its deepest nodes each in an SST file, and its other nodes of
    /// levels `1..depth`.
    fn write_group(
        &self,
        g: usize,
        depth: u8,
        options: &Options,
        buffers: &mut GroupBuffers,
    ) -> Result<GroupOutput, IndexError> {
        let mut out = GroupOutput {
            upper: vec![Vec::new(); usize::from(depth.saturating_sub(1))],
            ..GroupOutput::default()
        };
        let mut records = LazySst::new(options, self.dir.join(format!("records-{g:02}.sst")));
        let mut nodes = NodeSink {
            depth,
            deep: LazySst::new(options, self.dir.join(format!("nodes-{g:02}.sst"))),
            error: None,
        };
        let mut aggregator = Aggregator::new(depth);
        let GroupBuffers {
            raw,
            entries,
            key_buf,
        } = buffers;
        for b in g * BUCKETS_PER_GROUP..(g + 1) * BUCKETS_PER_GROUP {
            if !self.present[b] {
                continue;
            }
            let path = bucket_path(&self.dir, b);
            raw.clear();
            File::open(&path)
                .and_then(|mut f| {
                    raw.reserve(f.metadata()?.len() as usize);
                    f.read_to_end(raw)
                })
                .map_err(io("read", &path))?;
            // The spill file is gone once read: disk holds one copy.
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
            spilled_entries(raw, entries).map_err(|reason| IndexError::Corrupt {
                cf: "build spill",
                key: path.display().to_string(),
                reason,
            })?;
            sort_spilled(raw, entries);
            for (i, &(position, at)) in entries.iter().enumerate() {
                let key = spilled_key(raw, at);
                if let Some(&(next_pos, next_at)) = entries.get(i + 1)
                    && next_pos == position
                    && spilled_key(raw, next_at) == key
                {
                    // A later copy of this key follows: it wins.
                    continue;
                }
                let digest = spilled_digest(raw, at);
                key_buf.clear();
                cf::put_record_key(key_buf, position, key);
                records.put(key_buf, &digest.0)?;
                aggregator.push(position, Node::of_digest(&digest.0), |p, n| {
                    nodes.emit(p, n, &mut out)
                });
                out.records += 1;
            }
            if let Some(e) = nodes.error.take() {
                return Err(e);
            }
        }
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
            .ok_or_else(|| format!("record cut short at byte {at}"))?;
        let mut pos = [0u8; 8];
        pos.copy_from_slice(&header[..8]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&header[40..44]);
        let end = at + RECORD_HEADER + u32::from_le_bytes(len) as usize;
        if end > raw.len() {
            return Err(format!("key cut short at byte {at}"));
        }
        out.push((u64::from_le_bytes(pos), at));
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

/// The key of the spilled record at `at` (checked by [`spilled_entries`]).
fn spilled_key(raw: &[u8], at: usize) -> &[u8] {
    let mut len = [0u8; 4];
    len.copy_from_slice(&raw[at + 40..at + 44]);
    let start = at + RECORD_HEADER;
    &raw[start..start + u32::from_le_bytes(len) as usize]
}

/// The digest of the spilled record at `at`.
fn spilled_digest(raw: &[u8], at: usize) -> Digest {
    let mut d = [0u8; 32];
    d.copy_from_slice(&raw[at + 8..at + 40]);
    Digest(d)
}

fn bucket_of(position: u64) -> usize {
    (position >> 56) as usize
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
