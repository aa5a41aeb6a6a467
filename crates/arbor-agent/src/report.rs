//! The run report schema (version [`SCHEMA_VERSION`]): what an agent stores
//! for each compare, what `GetRun`/`StreamDrift` return and what
//! `arbor compare --json` prints. Keys and column names only, never values.
//! Fields are only ever added; a change of meaning bumps the version.

use arbor_index::{IndexError, RunStore};
use serde::{Deserialize, Serialize};

/// Version of the report schema.
pub const SCHEMA_VERSION: u32 = 1;

/// One side of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSide {
    /// Agent address, or `local`.
    pub agent: String,
    /// Dataset name.
    pub dataset: String,
    /// Records.
    pub count: u64,
    /// Root sum, hex.
    pub root: String,
    /// Watermark as text (hex if not UTF-8).
    pub watermark: String,
    /// Key id, hex.
    pub key_id: String,
}

/// What a compare cost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCost {
    /// Sequential request rounds.
    pub round_trips: u64,
    /// Levels descended.
    pub levels: u64,
    /// Bytes exchanged with the peer.
    pub peer_bytes: u64,
    /// Wall time, milliseconds.
    pub elapsed_ms: u64,
}

/// Where a compare run is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Still comparing.
    #[default]
    Running,
    /// Done: every drifting key, with its columns.
    Completed,
    /// Every drifting key, but a later step (naming columns) failed: see
    /// the run's `error`.
    Incomplete,
    /// Failed: see the run's `error`.
    Failed,
}

impl RunStatus {
    /// Its name on the wire and in reports.
    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Incomplete => "incomplete",
            RunStatus::Failed => "failed",
        }
    }

    /// From its name; `None` for an unknown one.
    pub fn parse(name: &str) -> Option<RunStatus> {
        [
            RunStatus::Running,
            RunStatus::Completed,
            RunStatus::Incomplete,
            RunStatus::Failed,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }

    /// Whether every drifting key was found (completed or incomplete).
    pub fn found_all_keys(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Incomplete)
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// A run's summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Sorts by start time.
    pub run_id: String,
    /// Where the run is.
    pub status: RunStatus,
    /// Why it failed.
    pub error: String,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// RFC 3339 UTC; empty while running.
    pub finished_at: String,
    /// The local side.
    pub left: RunSide,
    /// The peer side.
    pub right: RunSide,
    /// Keys only on the right.
    pub missing_left: u64,
    /// Keys only on the left.
    pub missing_right: u64,
    /// Keys on both sides with different digests.
    pub changed: u64,
    /// Cost.
    pub cost: RunCost,
}

impl RunSummary {
    /// Drifting keys in all.
    pub fn drift(&self) -> u64 {
        self.missing_left + self.missing_right + self.changed
    }
}

/// One drifting key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftEntry {
    /// `missing_left`, `missing_right` or `changed`.
    pub kind: String,
    /// Human form of the key.
    pub key: String,
    /// Canonical key bytes, hex.
    pub canonical_key: String,
    /// For `changed`: the canonical names of the differing columns.
    pub columns: Vec<String>,
}

/// The human form of a canonical key: `42`, `"abc"`, `(7, "eu")`.
pub fn display_key(canonical: &[u8]) -> String {
    arbor_record::display_canonical_tuple(canonical)
}

/// Text of a watermark: itself if UTF-8, hex otherwise.
pub fn watermark_text(w: Option<&[u8]>) -> String {
    match w {
        None => String::new(),
        Some(b) => std::str::from_utf8(b).map_or_else(|_| hex::encode(b), str::to_owned),
    }
}

/// RFC 3339 UTC of the current time, millisecond precision.
pub fn now_rfc3339() -> String {
    let us = arbor_index::now_us();
    let t = arbor_record::Timestamp(us - us % 1000).to_string();
    // Timestamp prints six fraction digits; reports use three.
    format!("{}Z", &t[..t.len() - 4])
}

/// A new run id: milliseconds since the epoch (13 digits, so ids sort by
/// time) and 6 hex digits against collisions within a millisecond.
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let salt = blake3::hash(
        &[
            now.as_nanos().to_le_bytes(),
            u128::from(std::process::id()).to_le_bytes(),
        ]
        .concat(),
    );
    format!(
        "{:013}-{}",
        now.as_millis(),
        hex::encode(&salt.as_bytes()[..3])
    )
}

/// An error and its sources, "outer: inner: …" (what a report or a CLI
/// message shows).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbor_record::{Value, tuple_bytes};

    #[test]
    fn keys_display_readably() {
        assert_eq!(display_key(&tuple_bytes(&[Value::Integer(42)])), "42");
        assert_eq!(
            display_key(&tuple_bytes(&[Value::Integer(7), Value::text("eu")])),
            "(7, \"eu\")"
        );
        assert_eq!(display_key(&[0xff]), "0xff");
        assert!(now_rfc3339().ends_with('Z'));
        assert_eq!(now_rfc3339().len(), "2026-11-26T04:00:00.000Z".len());
    }
}

/// Marks `failed` every stored run still `running`: at start no run of this
/// process exists yet, so those were cut off when an earlier process
/// stopped (killed, crashed, restarted). Returns how many.
pub fn fail_orphaned_runs(runs: &RunStore) -> Result<usize, IndexError> {
    let mut failed = 0;
    for raw in runs.list_runs(usize::MAX)? {
        let Ok(mut summary) = serde_json::from_slice::<RunSummary>(&raw) else {
            // Unreadable summaries are reported when read (GetRun).
            continue;
        };
        if summary.status != RunStatus::Running {
            continue;
        }
        summary.status = RunStatus::Failed;
        summary.error = format!(
            "the agent stopped before the run finished (marked failed at the next start, {})",
            now_rfc3339()
        );
        summary.finished_at = now_rfc3339();
        let json = serde_json::to_vec(&summary)
            .map_err(|e| IndexError::InvalidRequest(format!("run {}: {e}", summary.run_id)))?;
        runs.put_run(&summary.run_id, &json)?;
        failed += 1;
    }
    Ok(failed)
}

#[cfg(test)]
mod orphan_tests {
    use super::*;
    use arbor_index::RunStore;

    fn summary(run_id: &str, status: &str) -> RunSummary {
        RunSummary {
            schema_version: SCHEMA_VERSION,
            run_id: run_id.into(),
            status: RunStatus::parse(status).expect("a run status"),
            ..RunSummary::default()
        }
    }

    #[test]
    fn runs_left_running_by_a_stopped_process_are_marked_failed() {
        let dir = tempfile::TempDir::new().unwrap();
        let runs = RunStore::open(dir.path()).unwrap();
        for (id, status) in [("r1", "completed"), ("r2", "running"), ("r3", "failed")] {
            runs.put_run(id, &serde_json::to_vec(&summary(id, status)).unwrap())
                .unwrap();
        }
        assert_eq!(fail_orphaned_runs(&runs).unwrap(), 1);
        let read = |id: &str| -> RunSummary {
            serde_json::from_slice(&runs.get_run(id).unwrap().unwrap()).unwrap()
        };
        let orphan = read("r2");
        assert_eq!(orphan.status, RunStatus::Failed);
        assert!(orphan.error.contains("agent stopped"), "{}", orphan.error);
        assert!(!orphan.finished_at.is_empty());
        assert_eq!(read("r1").status, RunStatus::Completed);
        assert_eq!(read("r3").status, RunStatus::Failed);
        // A second start finds nothing left to fail.
        assert_eq!(fail_orphaned_runs(&runs).unwrap(), 0);
    }
}
