//! The run store: where an agent keeps the reports of its compares.
//!
//! | CF      | key                      | value                          |
//! |---------|--------------------------|--------------------------------|
//! | `runs`  | run id (UTF-8)           | the run's summary (opaque bytes, JSON in practice) |
//! | `drift` | run id ‖ 0x00 ‖ seq (u64 BE) | one drift entry (opaque bytes) |
//! | `journal` | journal run (run id/dataset) ‖ 0x01 ‖ write id (32 bytes) | one committed repair write's outcome (opaque bytes) |
//! | `conflicts` | conflict id (UTF-8) | a queued sync conflict (opaque bytes) |
//! | `sync_runs` | job name ‖ 0x00 ‖ seq (u64 BE) | one sync job run's report (opaque bytes) |
//!
//! Run ids sort by start time, so listing newest-first is a reverse scan.
//! The store knows nothing of the report schema: the agent owns that.

use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions};

use crate::error::IndexError;

/// Run summaries by run id.
pub const RUNS: &str = "runs";
/// Drift entries by run id and sequence number.
pub const DRIFT: &str = "drift";
/// Committed repair writes by run and content (see [`RunStore::journal_writes`]).
pub const JOURNAL: &str = "journal";

/// Separates a journal run from a write id (0x00 was the batch-numbered
/// form, whose entries are never read).
const JOURNAL_WRITE: u8 = 1;

fn journal_key(run: &str, write: &[u8; 32]) -> Vec<u8> {
    let mut k = Vec::with_capacity(run.len() + 33);
    k.extend_from_slice(run.as_bytes());
    k.push(JOURNAL_WRITE);
    k.extend_from_slice(write);
    k
}
/// Sync conflicts waiting for a person, by id.
pub const CONFLICTS: &str = "conflicts";
/// Sync job runs by job name and sequence number.
pub const SYNC_RUNS: &str = "sync_runs";

/// A RocksDB store of run reports.
pub struct RunStore {
    db: DB,
}

impl std::fmt::Debug for RunStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunStore")
            .field("path", &self.db.path())
            .finish()
    }
}

fn drift_key(run_id: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(run_id.len() + 9);
    k.extend_from_slice(run_id.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

impl RunStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<RunStore, IndexError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Its memtables count against the process's budget, with the
        // indexes' (journals grow with every repair write).
        opts.set_write_buffer_manager(&crate::store::write_buffers());
        let cfs = [RUNS, DRIFT, JOURNAL, CONFLICTS, SYNC_RUNS]
            .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path.as_ref(), cfs)
            .map_err(IndexError::storage("open the run store"))?;
        Ok(RunStore { db })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family opened with the run store")
    }

    /// Writes (or replaces) a run's summary, synced: a run marked finished
    /// stays finished across a crash.
    pub fn put_run(&self, run_id: &str, summary: &[u8]) -> Result<(), IndexError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .put_cf_opt(self.cf(RUNS), run_id.as_bytes(), summary, &wo)
            .map_err(IndexError::storage("write a run summary"))
    }

    /// Appends drift entries numbered from `first_seq`.
    pub fn put_drift(
        &self,
        run_id: &str,
        first_seq: u64,
        entries: &[Vec<u8>],
    ) -> Result<(), IndexError> {
        let mut batch = WriteBatch::default();
        for (i, e) in entries.iter().enumerate() {
            batch.put_cf(self.cf(DRIFT), drift_key(run_id, first_seq + i as u64), e);
        }
        self.db
            .write(batch)
            .map_err(IndexError::storage("write drift entries"))
    }

    /// Journals repair writes that committed together, in one synced
    /// batch: each write's id (a digest of its content: key, the digest
    /// the plan saw, the change) and its outcome, under `run`. Keyed by
    /// content rather than by batch number, a retry of the run with any
    /// batch size finds exactly the writes that committed.
    pub fn journal_writes(
        &self,
        run: &str,
        writes: &[([u8; 32], Vec<u8>)],
    ) -> Result<(), IndexError> {
        let mut batch = WriteBatch::default();
        for (id, outcome) in writes {
            batch.put_cf(self.cf(JOURNAL), journal_key(run, id), outcome);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(batch, &wo)
            .map_err(IndexError::storage("journal repair writes"))
    }

    /// The journalled outcome of one repair write of `run`, if it committed.
    pub fn journalled_write(
        &self,
        run: &str,
        write: &[u8; 32],
    ) -> Result<Option<Vec<u8>>, IndexError> {
        self.db
            .get_cf(self.cf(JOURNAL), journal_key(run, write))
            .map_err(IndexError::storage("read the repair journal"))
    }

    /// Queues (or replaces) a sync conflict, synced.
    pub fn put_conflict(&self, id: &str, conflict: &[u8]) -> Result<(), IndexError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .put_cf_opt(self.cf(CONFLICTS), id.as_bytes(), conflict, &wo)
            .map_err(IndexError::storage("queue a conflict"))
    }

    /// A queued conflict.
    pub fn get_conflict(&self, id: &str) -> Result<Option<Vec<u8>>, IndexError> {
        self.db
            .get_cf(self.cf(CONFLICTS), id.as_bytes())
            .map_err(IndexError::storage("read a conflict"))
    }

    /// Removes a settled conflict.
    pub fn delete_conflict(&self, id: &str) -> Result<(), IndexError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .delete_cf_opt(self.cf(CONFLICTS), id.as_bytes(), &wo)
            .map_err(IndexError::storage("remove a conflict"))
    }

    /// Every queued conflict, in id order.
    pub fn conflicts(&self) -> Result<Vec<Vec<u8>>, IndexError> {
        self.db
            .iterator_cf(self.cf(CONFLICTS), IteratorMode::Start)
            .map(|item| {
                item.map(|(_, v)| v.to_vec())
                    .map_err(IndexError::storage("list conflicts"))
            })
            .collect()
    }

    /// Appends a sync job's run report (numbered after the job's last).
    pub fn put_sync_run(&self, job: &str, report: &[u8]) -> Result<(), IndexError> {
        let next = match self.sync_runs(job, 1)?.first() {
            Some((seq, _)) => seq + 1,
            None => 0,
        };
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .put_cf_opt(self.cf(SYNC_RUNS), drift_key(job, next), report, &wo)
            .map_err(IndexError::storage("record a sync run"))
    }

    /// A job's last `limit` runs, newest first, with their numbers.
    pub fn sync_runs(&self, job: &str, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, IndexError> {
        let mut prefix = job.as_bytes().to_vec();
        prefix.push(0);
        let mut it = self.db.raw_iterator_cf(self.cf(SYNC_RUNS));
        it.seek_for_prev(drift_key(job, u64::MAX));
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(k) = it.key() else { break };
            if !k.starts_with(&prefix) || k.len() != prefix.len() + 8 {
                break;
            }
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&k[prefix.len()..]);
            out.push((
                u64::from_be_bytes(seq),
                it.value().unwrap_or_default().to_vec(),
            ));
            it.prev();
        }
        it.status().map_err(IndexError::storage("list sync runs"))?;
        Ok(out)
    }

    /// A run's summary.
    pub fn get_run(&self, run_id: &str) -> Result<Option<Vec<u8>>, IndexError> {
        self.db
            .get_cf(self.cf(RUNS), run_id.as_bytes())
            .map_err(IndexError::storage("read a run summary"))
    }

    /// Forgets runs whose id says they started before `before_ms` (run ids
    /// begin with their start time in milliseconds), with their drift;
    /// returns how many went.
    pub fn prune_runs(&self, before_ms: u64) -> Result<u64, IndexError> {
        let mut doomed = Vec::new();
        for item in self.db.iterator_cf(self.cf(RUNS), IteratorMode::Start) {
            let (k, _) = item.map_err(IndexError::storage("list runs"))?;
            let started = std::str::from_utf8(&k)
                .ok()
                .and_then(|id| id.split('-').next())
                .and_then(|ms| ms.parse::<u64>().ok());
            match started {
                Some(ms) if ms < before_ms => doomed.push(k.to_vec()),
                // Ids sort by start time: the rest are newer.
                Some(_) => break,
                None => {}
            }
        }
        let mut batch = WriteBatch::default();
        for id in &doomed {
            batch.delete_cf(self.cf(RUNS), id);
            let mut from = id.clone();
            from.push(0);
            let mut to = id.clone();
            to.push(1);
            batch.delete_range_cf(self.cf(DRIFT), from, to);
        }
        // Journal entries of sync runs started before then: run ids begin
        // with their start in milliseconds, 13 digits until the year 2286,
        // so they sort by time as text.
        batch.delete_range_cf(
            self.cf(JOURNAL),
            Vec::new(),
            before_ms.to_string().into_bytes(),
        );
        self.db
            .write(batch)
            .map_err(IndexError::storage("forget old runs"))?;
        Ok(doomed.len() as u64)
    }

    /// Up to `limit` summaries, newest first.
    pub fn list_runs(&self, limit: usize) -> Result<Vec<Vec<u8>>, IndexError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(RUNS), IteratorMode::End) {
            if out.len() >= limit {
                break;
            }
            let (_, v) = item.map_err(IndexError::storage("list runs"))?;
            out.push(v.to_vec());
        }
        Ok(out)
    }

    /// Visits a run's drift entries in order until `visit` returns false.
    pub fn drift(
        &self,
        run_id: &str,
        mut visit: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), IndexError> {
        let start = drift_key(run_id, 0);
        let mut it = self.db.raw_iterator_cf(self.cf(DRIFT));
        it.seek(&start);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k.len() != start.len() || !k.starts_with(&start[..start.len() - 8]) {
                break;
            }
            if !visit(v) {
                return Ok(());
            }
            it.next();
        }
        it.status()
            .map_err(IndexError::storage("read drift entries"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repair_writes_are_journalled_by_run_and_content_and_forgotten_with_old_runs() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = RunStore::open(dir.path()).unwrap();
        let (old, new) = (
            "1000000000000-aaaaaa/customers",
            "3000000000000-cccccc/customers",
        );
        store
            .journal_writes(
                old,
                &[
                    ([1; 32], b"applied".to_vec()),
                    ([2; 32], b"conflict".to_vec()),
                ],
            )
            .unwrap();
        store
            .journal_writes(new, &[([1; 32], b"already_applied".to_vec())])
            .unwrap();
        assert_eq!(
            store.journalled_write(old, &[2; 32]).unwrap(),
            Some(b"conflict".to_vec())
        );
        assert_eq!(
            store.journalled_write(new, &[1; 32]).unwrap(),
            Some(b"already_applied".to_vec())
        );
        assert_eq!(store.journalled_write(new, &[2; 32]).unwrap(), None);
        store.prune_runs(2_500_000_000_000).unwrap();
        assert_eq!(store.journalled_write(old, &[1; 32]).unwrap(), None);
        assert!(store.journalled_write(new, &[1; 32]).unwrap().is_some());
    }

    #[test]
    fn old_runs_and_their_drift_are_forgotten() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = RunStore::open(dir.path()).unwrap();
        for id in [
            "1000000000000-aaaaaa",
            "2000000000000-bbbbbb",
            "3000000000000-cccccc",
        ] {
            store.put_run(id, id.as_bytes()).unwrap();
            store.put_drift(id, 0, &[id.as_bytes().to_vec()]).unwrap();
        }
        assert_eq!(store.prune_runs(2_500_000_000_000).unwrap(), 2);
        assert_eq!(
            store.list_runs(10).unwrap(),
            vec![b"3000000000000-cccccc".to_vec()]
        );
        let mut left = 0;
        store
            .drift("2000000000000-bbbbbb", |_| {
                left += 1;
                true
            })
            .unwrap();
        assert_eq!(left, 0);
        store
            .drift("3000000000000-cccccc", |_| {
                left += 1;
                true
            })
            .unwrap();
        assert_eq!(left, 1);
    }

    #[test]
    fn sync_runs_number_per_job_and_list_newest_first() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = RunStore::open(dir.path()).unwrap();
        assert!(store.sync_runs("nightly", 5).unwrap().is_empty());
        for r in [&b"one"[..], b"two", b"three"] {
            store.put_sync_run("nightly", r).unwrap();
        }
        // A job whose name extends another's keeps its own runs.
        store.put_sync_run("nightly2", b"other").unwrap();
        store.put_sync_run("a", b"before").unwrap();
        assert_eq!(
            store.sync_runs("nightly", 2).unwrap(),
            vec![(2, b"three".to_vec()), (1, b"two".to_vec())]
        );
        assert_eq!(store.sync_runs("nightly", 9).unwrap().len(), 3);
        assert_eq!(
            store.sync_runs("nightly2", 9).unwrap(),
            vec![(0, b"other".to_vec())]
        );
        assert_eq!(
            store.sync_runs("a", 9).unwrap(),
            vec![(0, b"before".to_vec())]
        );
    }

    #[test]
    fn runs_list_newest_first_and_drift_stays_with_its_run() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = RunStore::open(dir.path()).unwrap();
        store.put_run("0001-a", b"first").unwrap();
        store.put_run("0002-b", b"second").unwrap();
        store.put_run("0001-a", b"first, finished").unwrap();
        assert_eq!(
            store.list_runs(10).unwrap(),
            vec![b"second".to_vec(), b"first, finished".to_vec()]
        );
        assert_eq!(store.list_runs(1).unwrap().len(), 1);
        store
            .put_drift("0001-a", 0, &[b"x".to_vec(), b"y".to_vec()])
            .unwrap();
        store.put_drift("0001-a", 2, &[b"z".to_vec()]).unwrap();
        // A run id that extends another must not see its drift.
        store.put_drift("0001-ab", 0, &[b"other".to_vec()]).unwrap();
        let mut seen = Vec::new();
        store
            .drift("0001-a", |e| {
                seen.push(e.to_vec());
                true
            })
            .unwrap();
        assert_eq!(seen, vec![b"x".to_vec(), b"y".to_vec(), b"z".to_vec()]);
        let mut first = Vec::new();
        store
            .drift("0001-a", |e| {
                first.push(e.to_vec());
                false
            })
            .unwrap();
        assert_eq!(first.len(), 1);
        assert!(store.get_run("nope").unwrap().is_none());
    }
}
