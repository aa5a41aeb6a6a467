//! Executing a plan: each side's writes in batches bounded in writes and
//! bytes, throttled, then a verifying compare.

use std::time::{Duration, Instant};

use arbor_sync::wire::MAX_MESSAGE_BYTES;

use super::plan::drift_of;
use super::{Action, Batch, BatchOutcome, Side, SyncError, SyncOptions, SyncReport, SyncSides};

/// Bytes of writes per ApplyChanges request, about: half what a message
/// may hold, so a batch of wide rows never reaches the limit.
const APPLY_BATCH_BYTES: usize = MAX_MESSAGE_BYTES / 2;

/// Bytes a write adds to a request beside its own encoding (its field tag
/// and length), at most.
pub const WRITE_FRAMING_BYTES: usize = 8;

/// Room a request needs beside its writes (dataset, run id, key id,
/// framing).
const APPLY_REQUEST_OVERHEAD: usize = 64 << 10;

/// Splits writes into batches of at most `max` writes and about
/// [`APPLY_BATCH_BYTES`] each, so rows of any width are repaired without a
/// hand-tuned `--batch`. A write no request can carry is an error naming
/// its key.
pub(crate) fn batches<'a>(
    writing: &'a [&'a Action],
    max: usize,
    write_bytes: impl Fn(&Action) -> usize,
) -> Result<Vec<&'a [&'a Action]>, SyncError> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, a) in writing.iter().enumerate() {
        let size = write_bytes(a);
        if size + APPLY_REQUEST_OVERHEAD > MAX_MESSAGE_BYTES {
            return Err(SyncError::Invalid(format!(
                "the write of key {} is {size} bytes, more than one request may carry ({} bytes)",
                a.key, MAX_MESSAGE_BYTES
            )));
        }
        if i > start && (i - start >= max || bytes + size > APPLY_BATCH_BYTES) {
            out.push(&writing[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < writing.len() {
        out.push(&writing[start..]);
    }
    Ok(out)
}

/// A hex key id as request bytes (empty stays empty: the agent's current key).
pub(crate) fn report_key_id(report: &SyncReport) -> Result<Option<arbor_record::KeyId>, SyncError> {
    if report.key_id.is_empty() {
        return Ok(None);
    }
    hex::decode(&report.key_id)
        .ok()
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(|b| Some(arbor_record::KeyId(b)))
        .ok_or_else(|| {
            SyncError::Invalid(format!("key id {:?} is not 16 hex digits", report.key_id))
        })
}

/// Executes a plan over `sides` (each side's writes in batches), then
/// compares again.
pub async fn execute_with(
    opts: &SyncOptions,
    sides: &impl SyncSides,
    actions: &[Action],
    mut report: SyncReport,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    report.executed = true;
    let key_id = report_key_id(&report)?;
    let mut written = 0u64;
    for side in [Side::Target, Side::Source] {
        let writing: Vec<&Action> = actions
            .iter()
            .filter(|a| a.writes() && a.side == side)
            .collect();
        if writing.is_empty() {
            continue;
        }
        for (n, chunk) in batches(&writing, opts.batch.max(1), |a| sides.write_bytes(side, a))?
            .into_iter()
            .enumerate()
        {
            let applied = sides
                .apply(
                    side,
                    Batch {
                        run_id: &report.run_id,
                        number: n as u64,
                        writes: chunk,
                        dry_run: false,
                        key_id,
                    },
                )
                .await?;
            if applied.replayed {
                report.replayed_batches += 1;
            }
            for (a, o) in chunk.iter().zip(&applied.outcomes) {
                match o {
                    BatchOutcome::Applied => report.applied += 1,
                    BatchOutcome::AlreadyApplied => report.already_applied += 1,
                    BatchOutcome::Conflict => {
                        report.conflicts += 1;
                        if report.conflict_keys.len() < 100 {
                            report.conflict_keys.push(a.key.clone());
                        }
                    }
                    BatchOutcome::Planned(_) => {}
                }
            }
            written += chunk.len() as u64;
            if opts.max_rows_per_sec > 0 {
                let due = Duration::from_secs_f64(written as f64 / opts.max_rows_per_sec as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
    report.write_ms = started.elapsed().as_millis() as u64;
    let verifying = Instant::now();
    report.drift_after = Some(drift_of(opts, sides).await?.drift.len() as u64);
    report.verify_ms = verifying.elapsed().as_millis() as u64;
    report.elapsed_ms += started.elapsed().as_millis() as u64;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::{ActionKind, InProcess, Remote, Why};
    use arbor_record::Value;

    fn size(a: &Action) -> usize {
        InProcess.write_bytes(a)
    }

    fn upsert(key: i64, bytes: usize) -> Action {
        Action {
            action: ActionKind::Upsert,
            side: Side::Target,
            drift: Why::Changed,
            key: key.to_string(),
            canonical_key: String::new(),
            reason: None,
            sql: None,
            key_bytes: arbor_record::tuple_bytes(&[Value::Integer(key.into())]),
            expected: None,
            values: Some(vec![Value::text("x".repeat(bytes))]),
            made_at_us: None,
        }
    }

    #[test]
    fn batches_are_bounded_in_writes_and_bytes() {
        let mb = 1 << 20;
        let actions: Vec<Action> = (0..10)
            .map(|i| upsert(i, if i < 6 { 3 * mb } else { 10 }))
            .collect();
        let refs: Vec<&Action> = actions.iter().collect();
        let sizes: Vec<usize> = batches(&refs, 500, size)
            .unwrap()
            .iter()
            .map(|b| b.len())
            .collect();
        // 3 MiB rows two at a time under 8 MiB; the small ones join the last.
        assert_eq!(sizes, vec![2, 2, 6]);
        let sizes: Vec<usize> = batches(&refs[6..], 3, size)
            .unwrap()
            .iter()
            .map(|b| b.len())
            .collect();
        assert_eq!(sizes, vec![3, 1]);
        let huge = [upsert(7, 17 * mb)];
        let refs: Vec<&Action> = huge.iter().collect();
        let e = batches(&refs, 500, size).unwrap_err().to_string();
        assert!(
            e.contains("key 7") && e.contains("more than one request may carry"),
            "{e}"
        );
    }
}
