//! Following a PostgreSQL table through logical replication: the agent's
//! side of [`arbor_source::pglogical`].
//!
//! One step reads the slot's next transactions without consuming them,
//! applies their changes and the new LSN watermark in **one** index batch,
//! makes it durable, and only then advances the slot. A crash anywhere in
//! between replays transactions the watermark already covers, which are
//! skipped; nothing is lost and nothing is applied out of order.
//!
//! At start the slot is prepared **before** any full build, so the build
//! plus the slot's backlog always reach the table's state. A restart whose
//! index already carries this slot's watermark, with the slot not ahead of
//! it, catches up from the slot instead of rebuilding.

use std::time::Duration;

use arbor_index::{Change, ChangeTime};
use arbor_record::Value;
use arbor_source::pglogical::{self, Captured, LogicalOptions, Lsn};
use tracing::{info, instrument, warn};

use crate::config::LogicalCapture;
use crate::dataset::Dataset;
use crate::error::OpError;

/// The watermark text of a slot position: `pgoutput slot=<slot> lsn=<lsn>`.
pub fn watermark(slot: &str, lsn: Lsn) -> String {
    format!("pgoutput slot={slot} lsn={lsn}")
}

/// The LSN of a watermark written by [`watermark`] for `slot`.
pub fn parse_watermark(w: &[u8], slot: &str) -> Option<Lsn> {
    let text = std::str::from_utf8(w).ok()?;
    let rest = text.strip_prefix(&format!("pgoutput slot={slot} lsn="))?;
    rest.parse().ok()
}

/// What one step did.
#[derive(Debug, Default, Clone)]
pub struct StepStats {
    /// Transactions read from the slot (including ones already applied).
    pub transactions: u64,
    /// Changes applied to the index.
    pub changes: u64,
    /// Records inserted, updated and deleted in the index.
    pub inserted: u64,
    /// See `inserted`.
    pub updated: u64,
    /// See `inserted`.
    pub deleted: u64,
    /// Per newly applied transaction touching the table: time from its
    /// commit (server clock) to its changes being durable in the index.
    pub lags: Vec<Duration>,
    /// The slot position now confirmed, if it moved.
    pub advanced_to: Option<Lsn>,
}

/// A dataset's follower: its slot, and the position already in the index.
pub struct Follower {
    capture: pglogical::LogicalCapture,
    slot: String,
    max_changes: u32,
    applied: Lsn,
    failures: u32,
    /// When the index was last marked current (µs since the Unix epoch).
    marked_us: i64,
}

/// How often, at most, a follower records that its index is current.
const MARK_CURRENT_EVERY_US: i64 = 1_000_000;

/// Failed reads of the slot before it is checked (and maybe replaced) again.
const REPREPARE_AFTER_FAILURES: u32 = 3;

/// Prepares the slot of a dataset and decides whether the index must be
/// built: returns the follower and `true` when a full build is needed
/// (then call [`Follower::built`] after it).
pub fn prepare(
    ds: &Dataset,
    name: &str,
    url: &str,
    config: &LogicalCapture,
    statement_timeout: Duration,
) -> Result<(Follower, bool), OpError> {
    let mapping = ds
        .mapping
        .clone()
        .ok_or_else(|| OpError::NotReady(format!("dataset {name:?} has no mapping")))?;
    let mut capture = pglogical::LogicalCapture::new(
        url,
        config.table.clone(),
        config.filtered,
        mapping,
        LogicalOptions {
            slot: config.slot.clone(),
            publication: config.publication.clone(),
            create: config.create,
            statement_timeout,
        },
    );
    let slot = capture.prepare().map_err(OpError::Source)?;
    let index = ds.index();
    let stored = if index.is_ready().map_err(OpError::Index)? {
        index
            .snapshot()
            .and_then(|s| s.describe())
            .map_err(OpError::Index)?
            .watermark
            .and_then(|w| parse_watermark(&w, &config.slot))
    } else {
        None
    };
    let resume = match stored {
        // The slot never moves past what the index holds, unless someone
        // else consumed it: then changes were lost and only a build helps.
        Some(at) if !slot.created && slot.confirmed_flush <= at => Some(at),
        _ => None,
    };
    match resume {
        Some(at) => {
            info!(dataset = name, slot = %config.slot, lsn = %at, "catching up from the replication slot")
        }
        None => info!(
            dataset = name,
            slot = %config.slot,
            created = slot.created,
            lsn = %slot.confirmed_flush,
            "slot ready; a full build comes first"
        ),
    }
    Ok((
        Follower {
            capture,
            slot: config.slot.clone(),
            max_changes: config.max_changes,
            applied: resume.unwrap_or(slot.confirmed_flush),
            failures: 0,
            marked_us: 0,
        },
        resume.is_none(),
    ))
}

impl Follower {
    /// Records that a full build finished: the slot's backlog from the
    /// prepared position on brings it up to date.
    pub fn built(&self, ds: &Dataset) -> Result<(), OpError> {
        ds.apply(&[], Some(watermark(&self.slot, self.applied).as_bytes()))
            .map_err(OpError::Index)?;
        ds.sync_wal().map_err(OpError::Index)
    }

    /// The position whose changes are in the index.
    pub fn applied(&self) -> Lsn {
        self.applied
    }

    /// Reads, applies and confirms the slot's next transactions.
    #[instrument(skip_all, fields(dataset = name, slot = %self.slot))]
    pub fn step(&mut self, ds: &Dataset, name: &str) -> Result<StepStats, OpError> {
        let started_us = arbor_index::now_us();
        let txns = match self.capture.peek(self.max_changes) {
            Ok(t) => {
                self.failures = 0;
                t
            }
            Err(e) => {
                self.capture.disconnect();
                self.failures += 1;
                if self.failures.is_multiple_of(REPREPARE_AFTER_FAILURES) {
                    // The slot may be gone or invalidated: check it again,
                    // and rebuild from a new one if it had to be replaced.
                    self.reprepare(ds, name)?;
                }
                return Err(OpError::Source(e));
            }
        };
        let mut stats = StepStats {
            transactions: txns.len() as u64,
            ..StepStats::default()
        };
        let Some(last) = txns.last().map(|t| t.end_lsn) else {
            self.mark_current(ds, started_us)?;
            return Ok(stats);
        };
        // Each change is stamped with its transaction's commit time, not
        // the time it is applied: after a restart the slot replays changes
        // made while the agent was down, and two-way sync must not take
        // them for changes newer than the other side's deletes.
        let mut changes = Vec::new();
        let mut times = Vec::new();
        // Keys to read again, each with the commit time that named it.
        let mut refetch: Vec<(Vec<Value>, i64)> = Vec::new();
        let mut truncated = false;
        let mut commits = Vec::new();
        for t in txns.iter().filter(|t| t.end_lsn > self.applied) {
            if !t.changes.is_empty() {
                commits.push(t.commit_time_us);
            }
            for c in &t.changes {
                match c {
                    Captured::Upsert(r) => changes.push(Change::Upsert(r.clone())),
                    Captured::Delete(k) => changes.push(Change::Delete(k.clone())),
                    Captured::Refetch(k) => {
                        refetch.push((k.clone(), t.commit_time_us));
                        continue;
                    }
                    Captured::Truncate => {
                        truncated = true;
                        continue;
                    }
                }
                times.push(ChangeTime::Made(Some(t.commit_time_us)));
            }
        }
        let mark = watermark(&self.slot, last.max(self.applied));
        if truncated {
            // Everything went at some point in these transactions: read the
            // table as it is now, which is at or after all of them.
            let s = crate::maintain::rescan_marked(ds, name, &mark)?;
            stats.changes = s.applied.inserted + s.applied.updated + s.vanished;
            (stats.inserted, stats.updated, stats.deleted) =
                (s.applied.inserted, s.applied.updated, s.vanished);
        } else {
            if !refetch.is_empty() {
                // Rows read now are at or after every change in the batch, so
                // they go last and win.
                let source = ds
                    .source
                    .as_ref()
                    .ok_or_else(|| OpError::NoSystem(name.to_owned()))?;
                let (keys, named_at): (Vec<_>, Vec<_>) = refetch.into_iter().unzip();
                let found = {
                    let mut source = source.lock().unwrap_or_else(|p| p.into_inner());
                    source.fetch(&keys).map_err(OpError::Source)?
                };
                for ((key, row), at) in keys.into_iter().zip(found).zip(named_at) {
                    changes.push(match row {
                        Some(r) => Change::Upsert(r),
                        None => Change::Delete(key),
                    });
                    times.push(ChangeTime::Made(Some(at)));
                }
            }
            let s = ds
                .apply_timed(&changes, &times, Some(mark.as_bytes()))
                .map_err(OpError::Index)?;
            stats.changes = changes.len() as u64;
            (stats.inserted, stats.updated, stats.deleted) = (s.inserted, s.updated, s.deleted);
        }
        // Durable before the slot forgets the changes.
        ds.sync_wal().map_err(OpError::Index)?;
        self.mark_current(ds, started_us)?;
        let now_us = arbor_index::now_us();
        stats.lags = commits
            .iter()
            .map(|&c| Duration::from_micros(now_us.saturating_sub(c).max(0) as u64))
            .collect();
        if let Err(e) = self.capture.advance(last) {
            // The index is ahead of the slot: the next peek replays what the
            // watermark covers, which is skipped. Harmless; say it.
            warn!(dataset = name, error = %e, "could not advance the slot; will retry");
            self.capture.disconnect();
        } else {
            stats.advanced_to = Some(last);
        }
        self.applied = self.applied.max(last);
        if let Some(worst) = stats.lags.iter().max() {
            ds.lag_ms.store(
                worst.as_millis() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        if stats.inserted + stats.updated + stats.deleted > 0 {
            ds.changed();
        }
        Ok(stats)
    }

    /// Records that the index is current as of `started_us`, when the peek
    /// just applied began, if it drained the slot (at most once a
    /// [`MARK_CURRENT_EVERY_US`]: an idle follower peeks 50 times a second).
    fn mark_current(&mut self, ds: &Dataset, started_us: i64) -> Result<(), OpError> {
        if self.capture.drained() && started_us - self.marked_us >= MARK_CURRENT_EVERY_US {
            ds.mark_current(started_us).map_err(OpError::Index)?;
            self.marked_us = started_us;
        }
        Ok(())
    }

    /// Prepares the slot again after failures; when it had to be created
    /// anew, the index is rebuilt, since the old slot's changes are lost.
    fn reprepare(&mut self, ds: &Dataset, name: &str) -> Result<(), OpError> {
        let slot = self.capture.prepare().map_err(OpError::Source)?;
        if slot.created {
            warn!(dataset = name, slot = %self.slot, "the replication slot was replaced; rebuilding the index");
            crate::maintain::reindex(ds, name, false)?;
            self.applied = slot.confirmed_flush;
            self.built(ds)?;
        }
        Ok(())
    }

    /// Drops the slot (and the publication when `publication`).
    pub fn drop_slot(&mut self, publication: bool) -> Result<bool, OpError> {
        self.capture.drop_slot(publication).map_err(OpError::Source)
    }
}

/// Follows a dataset forever: steps back to back while the slot has
/// changes, pausing `interval` when it is empty or failed.
pub async fn follow(
    ds: std::sync::Arc<Dataset>,
    name: String,
    follower: Follower,
    interval: Duration,
) {
    let mut follower = Some(follower);
    let mut backoff = interval;
    loop {
        let Some(mut f) = follower.take() else {
            return;
        };
        let (d, n) = (std::sync::Arc::clone(&ds), name.clone());
        let joined = tokio::task::spawn_blocking(move || {
            let r = f.step(&d, &n);
            (f, r)
        })
        .await;
        let pause = match joined {
            Ok((f, result)) => {
                follower = Some(f);
                if result.is_ok() {
                    ds.clear_stale();
                }
                match result {
                    Ok(stats) if stats.changes > 0 => {
                        let worst = stats.lags.iter().max().copied().unwrap_or_default();
                        info!(
                            dataset = %name,
                            transactions = stats.transactions,
                            inserted = stats.inserted,
                            updated = stats.updated,
                            deleted = stats.deleted,
                            max_lag_ms = worst.as_millis() as u64,
                            "replicated changes applied"
                        );
                        backoff = interval;
                        Duration::ZERO
                    }
                    Ok(stats) if stats.transactions > 0 => Duration::ZERO,
                    Ok(_) => {
                        backoff = interval;
                        interval
                    }
                    Err(status) => {
                        warn!(dataset = %name, error = %status, "replication step failed; retrying");
                        // Changes may be missing until a step succeeds.
                        ds.mark_stale(format!(
                            "logical capture failed: {} at {}",
                            status,
                            crate::report::now_rfc3339()
                        ));
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        backoff
                    }
                }
            }
            Err(e) => {
                warn!(dataset = %name, error = %e, "replication task failed; capture stops");
                ds.mark_stale(format!(
                    "logical capture stopped: {e} at {}",
                    crate::report::now_rfc3339()
                ));
                return;
            }
        };
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_round_trip_per_slot() {
        let w = watermark("arbor_x", Lsn(0x1_0000_00ff));
        assert_eq!(w, "pgoutput slot=arbor_x lsn=1/FF");
        assert_eq!(
            parse_watermark(w.as_bytes(), "arbor_x"),
            Some(Lsn(0x1_0000_00ff))
        );
        assert_eq!(parse_watermark(w.as_bytes(), "arbor_y"), None);
        assert_eq!(parse_watermark(b"rescan 2026-01-01", "arbor_x"), None);
    }
}
