//! Keeping a dataset's index in step with its system: opening the system,
//! full builds, rescans, reindexing, catching up at start and polling. The
//! services, capture and key rotation call these; none of them calls back.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arbor_index::RunStore;
use arbor_index::{BuildStats, Change, Index, IndexError, KeyRepeats};
use arbor_record::Record;
use arbor_source::sqlite::SqliteSource;
use arbor_source::{FileSource, MysqlSource, PostgresSource, Source, SourceError};
use tracing::{info, warn};

use crate::dataset::AgentState;

use crate::config::{AgentConfig, DatasetConfig, SourceConfig};
use crate::dataset::Dataset;
use crate::error::{AgentError, OpError};
use crate::report;

/// Records handed from the reading thread to the index build at a time.
const SOURCE_CHUNK_RECORDS: usize = 4_096;

/// Opens a dataset's system read-only and checks it against its mapping.
pub fn open_source(d: &DatasetConfig) -> Result<Box<dyn Source>, AgentError> {
    let wrap = |source| AgentError::Source {
        dataset: d.name.clone(),
        source,
    };
    let mut s: Box<dyn Source> = match &d.source {
        SourceConfig::Sqlite { path, relation } => {
            Box::new(SqliteSource::open(path, relation.clone(), d.mapping.clone()).map_err(wrap)?)
        }
        SourceConfig::Postgres(db) => Box::new(PostgresSource::new(
            db.url.clone(),
            db.relation.clone(),
            d.mapping.clone(),
            db.options,
        )),
        SourceConfig::Mysql(db) => Box::new(MysqlSource::new(
            db.url.clone(),
            db.relation.clone(),
            d.mapping.clone(),
            db.options,
        )),
        SourceConfig::Files { path, format, null } => Box::new(FileSource::new(
            path.clone(),
            *format,
            d.mapping.clone(),
            null.clone(),
        )),
    };
    match s.check() {
        Ok(()) => {}
        // A system down or busy at start stops nothing: every read checks
        // again, so the build fails with the same error, is reported on
        // the dataset and retried with backoff.
        Err(e) if e.is_transient() => {
            warn!(dataset = %d.name, error = %e, "the system cannot be checked now; its build will retry");
        }
        Err(e) => return Err(wrap(e)),
    }
    Ok(arbor_source::redacting(s))
}

/// Where a dataset's index lives.
pub fn index_path(config: &AgentConfig, dataset: &str) -> PathBuf {
    config.data_dir.join("indexes").join(dataset)
}

/// Full build of `index` from `source`: the source reads and hashes rows
/// in batches while the index sorts and writes earlier ones. A key read
/// twice is refused as a duplicate in the system (named if `show_keys`),
/// unless the source's read may meet a row twice.
pub fn build_from_source(
    index: &Index,
    source: &mut dyn Source,
    show_keys: bool,
) -> Result<BuildStats, IndexError> {
    build_from_source_with_progress(index, source, show_keys, &|_| {})
}

/// [`build_from_source`], reporting the records read so far.
pub fn build_from_source_with_progress(
    index: &Index,
    source: &mut dyn Source,
    show_keys: bool,
    progress: &dyn Fn(u64),
) -> Result<BuildStats, IndexError> {
    let keys = index.config().keys.clone();
    index.build_batches(None, progress, |feed| {
        source.scan_hashed(&keys, &mut |batches| {
            feed.push(batches).map_err(|_| SourceError::Stopped)
        })?;
        if !source.build_may_repeat_keys() {
            feed.key_repeats(KeyRepeats::Refuse {
                show_key: show_keys,
            });
        }
        Ok::<(), SourceError>(())
    })
}

/// Streams a source's records to `consume` as an iterator: a reader thread
/// scans in chunks while `consume` (a build or a rescan) runs here.
pub fn with_records<R>(
    source: &mut dyn Source,
    consume: impl FnOnce(&mut dyn Iterator<Item = Result<Record, SourceError>>) -> R,
) -> R {
    arbor_source::scan_in_batches(source, SOURCE_CHUNK_RECORDS, |batches| {
        // Batches are handed on as they are, without copying them again.
        let mut records = batches.flat_map(|batch| -> Box<dyn Iterator<Item = _>> {
            match batch {
                Ok(records) => Box::new(records.into_iter().map(Ok)),
                Err(e) => Box::new(std::iter::once(Err(e))),
            }
        });
        consume(&mut records)
    })
}

/// Rescans one dataset from its system (see [`Index::rescan`]); the
/// watermark records when.
pub fn rescan(ds: &Dataset, name: &str) -> Result<arbor_index::RescanStats, OpError> {
    rescan_marked(ds, name, &format!("rescan {}", report::now_rfc3339()))
}

/// Rescans one dataset, committing `watermark` with the last changes.
pub fn rescan_marked(
    ds: &Dataset,
    name: &str,
    watermark: &str,
) -> Result<arbor_index::RescanStats, OpError> {
    let source = ds
        .source
        .as_ref()
        .ok_or_else(|| OpError::NoSystem(name.to_owned()))?;
    let mut source = source.lock().unwrap_or_else(|p| p.into_inner());
    // Every index held (more than one during a key rotation) is brought to
    // the same state of the system: one pass feeds them all.
    let indexes = ds.indexes();
    let held: Vec<&Index> = indexes.iter().map(|i| i.as_ref()).collect();
    let stats = with_records(source.as_mut(), |records| {
        // A rescan reads by key (or whole files): a key read twice is a
        // duplicate in the system.
        let repeats = KeyRepeats::Refuse {
            show_key: ds.report_key.is_none(),
        };
        arbor_index::rescan_each(&held, records, Some(watermark.as_bytes()), repeats)
    })
    .map_err(OpError::of_read);
    // Until a rescan succeeds, the index may miss what this one would have
    // found: compares refuse it rather than answer from it.
    match &stats {
        Ok(_) => ds.clear_stale(),
        Err(status) => ds.mark_stale(format!("{} at {}", status, report::now_rfc3339())),
    }
    stats?
        .into_iter()
        .next()
        .ok_or_else(|| OpError::Internal("a dataset without an index".into()))
}

/// Indexes one dataset from its system, refusing compares meanwhile.
/// `claimed`: the caller already set the dataset's `indexing` flag.
pub fn reindex(ds: &Dataset, name: &str, claimed: bool) -> Result<BuildStats, OpError> {
    let source = ds
        .source
        .as_ref()
        .ok_or_else(|| OpError::NoSystem(name.to_owned()))?;
    if !claimed && ds.indexing.swap(true, Ordering::AcqRel) {
        return Err(OpError::Conflict(format!(
            "dataset {name:?} is already being indexed"
        )));
    }
    let started = Instant::now();
    let result = {
        let mut source = source.lock().unwrap_or_else(|p| p.into_inner());
        // Every index held (two during a key rotation) is rebuilt.
        let indexes = ds.indexes();
        let show_keys = ds.report_key.is_none();
        let mut result = build_from_source(&indexes[0], source.as_mut(), show_keys);
        for other in &indexes[1..] {
            if result.is_ok()
                && let Err(e) = build_from_source(other, source.as_mut(), show_keys)
            {
                result = Err(e);
            }
        }
        result
    };
    ds.indexing.store(false, Ordering::Release);
    let stats = result.map_err(OpError::of_read)?;
    info!(
        dataset = name,
        records = stats.records,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "dataset indexed"
    );
    Ok(stats)
}

/// Changes per index batch when applying polled rows.
const POLL_APPLY_BATCH: usize = 4_096;

/// Polls a dataset once: applies the rows changed at or after `since` and
/// returns the new watermark value (see [`Source::changed_since`]).
pub fn poll(
    ds: &Dataset,
    name: &str,
    column: &str,
    since: Option<&str>,
) -> Result<(u64, Option<String>), OpError> {
    let source = ds
        .source
        .as_ref()
        .ok_or_else(|| OpError::NoSystem(name.to_owned()))?;
    let mut changed = Vec::new();
    // Rows committed before the read began are in what it returns.
    let started_us = arbor_index::now_us();
    let next = {
        let mut source = source.lock().unwrap_or_else(|p| p.into_inner());
        source
            .changed_since(column, since, &mut |r| {
                changed.push(Change::Upsert(r));
                Ok(())
            })
            .map_err(OpError::Source)?
    };
    let watermark = next.as_ref().map(|v| format!("poll {column} >= {v}"));
    let mut applied = 0;
    let last_chunk = changed.len().div_ceil(POLL_APPLY_BATCH).saturating_sub(1);
    for (i, chunk) in changed.chunks(POLL_APPLY_BATCH).enumerate() {
        // The watermark commits with the last batch, never ahead of it.
        let w = if i == last_chunk {
            watermark.as_deref()
        } else {
            None
        };
        let s = ds
            .apply(chunk, w.map(str::as_bytes))
            .map_err(OpError::Index)?;
        applied += s.inserted + s.updated;
    }
    ds.mark_current(started_us).map_err(OpError::Index)?;
    Ok((applied, next))
}

/// Brings a dataset's indexes to the state of its system at start. Indexes
/// that already hold records are rescanned into, not rebuilt: a key that
/// vanished while the agent was down leaves a tombstone (stamped now, the
/// first moment it was seen gone), so a two-way job propagates that delete
/// instead of copying the row back. Empty or unfinished indexes are built.
pub fn catch_up(ds: &Dataset, name: &str) -> Result<(), OpError> {
    let indexes = ds.indexes();
    let mut warm = true;
    for index in &indexes {
        // An unfinished build cannot be described: it is built again.
        warm = warm
            && index.is_ready().map_err(OpError::Index)?
            && index
                .snapshot()
                .and_then(|s| s.describe())
                .map_err(OpError::Index)?
                .count()
                > 0;
    }
    if !warm {
        return reindex(ds, name, true).map(drop);
    }
    let started = Instant::now();
    let result = rescan_marked(ds, name, &format!("start rescan {}", report::now_rfc3339()));
    ds.indexing.store(false, Ordering::Release);
    let stats = result?;
    info!(
        dataset = name,
        inserted = stats.applied.inserted,
        updated = stats.applied.updated,
        vanished = stats.vanished,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "dataset caught up with its system"
    );
    Ok(())
}
/// Forgets compare reports older than `retention`, now and once a day.
pub async fn prune_runs_daily(runs: Arc<RunStore>, retention: std::time::Duration) {
    loop {
        let cut = std::time::SystemTime::now()
            .checked_sub(retention)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        let store = Arc::clone(&runs);
        match tokio::task::spawn_blocking(move || store.prune_runs(cut)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(pruned)) => info!(pruned, "old run reports forgotten"),
            Ok(Err(e)) => warn!(error = %e, "pruning run reports failed"),
            Err(e) => warn!(error = %e, "pruning task failed"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(86_400)).await;
    }
}

/// Forgets tombstones older than `retention`, now and once a day.
pub async fn prune_tombstones_daily(state: Arc<AgentState>, retention: std::time::Duration) {
    loop {
        for name in state.dataset_names() {
            let Ok(ds) = state.dataset(&name).map(Arc::clone) else {
                continue;
            };
            let cut = std::time::SystemTime::now()
                .checked_sub(retention)
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_micros() as i64);
            match tokio::task::spawn_blocking(move || {
                ds.indexes()
                    .iter()
                    .map(|i| i.prune_tombstones(cut))
                    .sum::<Result<_, _>>()
            })
            .await
            {
                Ok(Ok(0)) => {}
                Ok(Ok(pruned)) => info!(dataset = %name, pruned, "old tombstones forgotten"),
                Ok(Err(e)) => warn!(dataset = %name, error = %e, "pruning tombstones failed"),
                Err(e) => warn!(dataset = %name, error = %e, "pruning task failed"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(86_400)).await;
    }
}
