//! Following a dataset's changes once it is indexed: periodic rescans,
//! polls of a change column, or a PostgreSQL logical replication slot
//! ([`crate::logical`]); and preparing that capture before the first build.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{info, warn};

use crate::config::{Capture, DatasetConfig, SourceConfig};
use crate::dataset::Dataset;
use crate::error::OpError;
use crate::maintain::{catch_up, poll, rescan};
use crate::report;

/// Polls a dataset forever, `interval` after each poll ends. Each poll
/// reads from the last value seen at least `overlap` ago, not from the last
/// value seen: a transaction that commits after a later one was polled
/// carries a `column` value below the newest one seen, and would otherwise
/// be missed until the next rescan.
async fn poll_every(
    ds: Arc<Dataset>,
    name: String,
    column: String,
    interval: std::time::Duration,
    overlap: std::time::Duration,
) {
    let mut since: Option<String> = None;
    let mut seen = PollWatermarks::default();
    loop {
        let (d, n, c, s) = (Arc::clone(&ds), name.clone(), column.clone(), since.clone());
        match tokio::task::spawn_blocking(move || poll(&d, &n, &c, s.as_deref())).await {
            Ok(Ok((applied, next))) => {
                ds.clear_stale();
                if applied > 0 {
                    info!(dataset = %name, applied, watermark = ?next, "poll applied changes");
                    ds.changed();
                }
                seen.push(Instant::now(), next);
                if let Some(from) = seen.settled(Instant::now(), overlap) {
                    since = from;
                }
            }
            // Until a poll succeeds, changes may be missing: compares refuse
            // the index rather than answer from it.
            Ok(Err(status)) => {
                warn!(dataset = %name, error = %status, "poll failed; retrying");
                ds.mark_stale(format!(
                    "poll capture failed: {} at {}",
                    status,
                    report::now_rfc3339()
                ));
            }
            Err(e) => {
                warn!(dataset = %name, error = %e, "poll task failed");
                ds.mark_stale(format!(
                    "poll capture failed: {e} at {}",
                    report::now_rfc3339()
                ));
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// The values a poll saw, with when, until they are older than the overlap
/// window: the next poll reads from the newest value at least that old.
#[derive(Default)]
struct PollWatermarks {
    held: std::collections::VecDeque<(Instant, Option<String>)>,
}

impl PollWatermarks {
    fn push(&mut self, at: Instant, watermark: Option<String>) {
        self.held.push_back((at, watermark));
    }

    /// The newest watermark seen at least `overlap` before `now`, if one
    /// became so since the last call (older ones are dropped).
    fn settled(&mut self, now: Instant, overlap: std::time::Duration) -> Option<Option<String>> {
        let mut settled = None;
        while let Some((at, _)) = self.held.front() {
            if now.duration_since(*at) < overlap {
                break;
            }
            settled = self.held.pop_front().map(|(_, w)| w);
        }
        settled
    }
}

/// Rescans a dataset forever, `interval` after each rescan ends.
async fn rescan_every(ds: Arc<Dataset>, name: String, interval: std::time::Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let (d, n) = (Arc::clone(&ds), name.clone());
        match tokio::task::spawn_blocking(move || rescan(&d, &n)).await {
            Ok(Ok(stats)) => {
                info!(
                    dataset = %name,
                    inserted = stats.applied.inserted,
                    updated = stats.applied.updated,
                    vanished = stats.vanished,
                    "rescan applied"
                );
                if stats.applied.inserted + stats.applied.updated + stats.vanished > 0 {
                    ds.changed();
                }
            }
            Ok(Err(status)) => {
                warn!(dataset = %name, error = %status, "rescan failed; retrying at the next interval")
            }
            Err(e) => warn!(dataset = %name, error = %e, "rescan task failed"),
        }
    }
}

/// Prepares a dataset's change capture and indexes it (blocking): a logical
/// slot that still covers the index catches up instead of rebuilding.
pub fn prepare_and_index(
    ds: &Dataset,
    dc: &DatasetConfig,
) -> Result<Option<crate::logical::Follower>, String> {
    let name = &dc.name;
    // Marked unavailable until this attempt succeeds.
    ds.indexing.store(true, Ordering::Release);
    let status = |e: OpError| e.to_string();
    let follower = match (&dc.capture, &dc.source) {
        (Capture::Logical(lc), SourceConfig::Postgres(db)) => Some(
            crate::logical::prepare(ds, name, &db.url, lc, db.options.statement_timeout)
                .map_err(status)?,
        ),
        _ => None,
    };
    match follower {
        Some((f, false)) => {
            crate::keys::rebuild_lagging(ds, name).map_err(status)?;
            ds.indexing.store(false, Ordering::Release);
            Ok(Some(f))
        }
        Some((f, true)) => {
            catch_up(ds, name).map_err(status)?;
            f.built(ds).map_err(status)?;
            Ok(Some(f))
        }
        None => catch_up(ds, name).map(|()| None).map_err(status),
    }
}

/// Starts following a dataset's changes: periodic rescans, polls, or a
/// logical replication slot.
pub fn start_capture(
    ds: Arc<Dataset>,
    name: String,
    capture: Capture,
    follower: Option<crate::logical::Follower>,
) {
    match capture {
        Capture::None => {}
        Capture::Rescan { interval } => {
            tokio::spawn(rescan_every(ds, name, interval));
        }
        Capture::Poll {
            column,
            interval,
            rescan_interval,
            overlap,
        } => {
            tokio::spawn(rescan_every(Arc::clone(&ds), name.clone(), rescan_interval));
            tokio::spawn(poll_every(ds, name, column, interval, overlap));
        }
        Capture::Push { rescan_interval } => {
            if let Some(interval) = rescan_interval {
                tokio::spawn(rescan_every(ds, name, interval));
            }
        }
        Capture::Logical(lc) => {
            if let Some(f) = follower {
                tokio::spawn(crate::logical::follow(ds, name, f, lc.interval));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_reads_from_the_newest_value_outside_the_overlap_window() {
        let t0 = Instant::now();
        let s = std::time::Duration::from_secs;
        let mut seen = PollWatermarks::default();
        seen.push(t0, Some("a".into()));
        seen.push(t0 + s(10), Some("b".into()));
        seen.push(t0 + s(20), Some("c".into()));
        // Nothing is 30 s old yet: keep reading from where we were.
        assert_eq!(seen.settled(t0 + s(25), s(30)), None);
        // "a" is now 30 s old; "b" not yet.
        assert_eq!(seen.settled(t0 + s(30), s(30)), Some(Some("a".into())));
        assert_eq!(seen.settled(t0 + s(31), s(30)), None);
        // Both "b" and "c" are: the newer wins.
        assert_eq!(seen.settled(t0 + s(55), s(30)), Some(Some("c".into())));
        assert_eq!(seen.settled(t0 + s(99), s(30)), None);
        // No overlap: every poll reads from its own last value.
        seen.push(t0 + s(100), Some("d".into()));
        assert_eq!(
            seen.settled(t0 + s(100), std::time::Duration::ZERO),
            Some(Some("d".into()))
        );
    }
}
