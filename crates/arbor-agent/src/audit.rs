//! The audit log: one JSON line per privileged or audit call — who, what,
//! dataset, run, decision, outcome and counts, never values — each line
//! carrying the blake3 hash of the line before it.
//!
//! ```text
//!   {"seq":0,"time":…,"who":…,"call":"AuditService/Compare",…,"prev":"000…0"}
//!   {"seq":1,…,"prev":"<blake3 of line 0>"}
//! ```
//!
//! An edited line breaks the next line's `prev`; a deleted line leaves a gap
//! in `seq` (and a broken `prev`); lines cut from the end are caught by the
//! head file beside the log (`<log>.head`: the last sequence number and
//! hash, replaced atomically after every append). `arbor audit verify`
//! checks all three.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::warn;

/// The `prev` of the first line.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audited call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, from 0, without gaps.
    pub seq: u64,
    /// RFC 3339 UTC.
    pub time: String,
    /// The caller: its certificate identity or token name when it has one,
    /// else its address.
    pub who: String,
    /// `Service/Method`.
    pub call: String,
    /// The dataset concerned, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dataset: String,
    /// The run or job concerned, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub run: String,
    /// `allowed` or `denied`.
    pub decision: String,
    /// `ok` or the status code the call ended with.
    pub outcome: String,
    /// Numbers that say what the call did (records, drift, writes…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, u64>,
    /// blake3 of the previous line, hex.
    pub prev: String,
}

/// What a caller knows of a call; the log adds sequence, time and chain.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// See [`Entry::who`].
    pub who: String,
    /// See [`Entry::call`].
    pub call: &'static str,
    /// See [`Entry::dataset`].
    pub dataset: String,
    /// See [`Entry::run`].
    pub run: String,
    /// See [`Entry::decision`].
    pub decision: &'static str,
    /// See [`Entry::outcome`].
    pub outcome: String,
    /// See [`Entry::counts`].
    pub counts: BTreeMap<String, u64>,
}

/// Why the log could not be opened or written.
#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {what}")]
pub struct AuditError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub what: String,
}

struct Tail {
    file: File,
    next_seq: u64,
    prev: String,
}

/// An open, append-only audit log.
pub struct AuditLog {
    path: PathBuf,
    tail: Mutex<Tail>,
}

fn head_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".head");
    PathBuf::from(p)
}

fn hash_line(line: &str) -> String {
    blake3::hash(line.as_bytes()).to_hex().to_string()
}

impl AuditLog {
    /// Opens (or creates) the log at `path` and continues its chain.
    pub fn open(path: impl AsRef<Path>) -> Result<AuditLog, AuditError> {
        let path = path.as_ref().to_path_buf();
        let err = |what: String| AuditError {
            path: path.clone(),
            what,
        };
        let (mut next_seq, mut prev) = (0u64, GENESIS.to_owned());
        if path.exists() {
            let file = File::open(&path).map_err(|e| err(e.to_string()))?;
            for line in BufReader::new(file).lines() {
                let line = line.map_err(|e| err(e.to_string()))?;
                if let Ok(e) = serde_json::from_str::<Entry>(&line) {
                    next_seq = e.seq + 1;
                }
                prev = hash_line(&line);
            }
            if let Err(problem) = verify(&path) {
                // The damage stays visible to `arbor audit verify`; new
                // lines keep chaining from what is there.
                warn!(path = %path.display(), %problem, "the audit log does not verify");
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| err(e.to_string()))?;
        Ok(AuditLog {
            path,
            tail: Mutex::new(Tail {
                file,
                next_seq,
                prev,
            }),
        })
    }

    /// The log's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry (durably) and moves the head.
    pub fn append(&self, r: Record) -> Result<(), AuditError> {
        let err = |what: String| AuditError {
            path: self.path.clone(),
            what,
        };
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let entry = Entry {
            seq: tail.next_seq,
            time: crate::report::now_rfc3339(),
            who: r.who,
            call: r.call.to_owned(),
            dataset: r.dataset,
            run: r.run,
            decision: r.decision.to_owned(),
            outcome: r.outcome,
            counts: r.counts,
            prev: tail.prev.clone(),
        };
        let line = serde_json::to_string(&entry).map_err(|e| err(e.to_string()))?;
        tail.file
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| tail.file.sync_data())
            .map_err(|e| err(e.to_string()))?;
        let hash = hash_line(&line);
        let head = head_path(&self.path);
        let tmp = head.with_extension("head.tmp");
        std::fs::write(&tmp, format!("{} {hash}\n", entry.seq))
            .and_then(|()| std::fs::rename(&tmp, &head))
            .map_err(|e| err(format!("moving the head: {e}")))?;
        tail.next_seq += 1;
        tail.prev = hash;
        Ok(())
    }

    /// Appends, logging (not failing the call) if the log cannot be written.
    pub fn record(&self, r: Record) {
        if let Err(e) = self.append(r) {
            warn!(error = %e, "could not write the audit log");
        }
    }
}

/// Checks a log against its chain and its head: `Ok(lines)` or the first
/// problem, naming the line.
pub fn verify(path: &Path) -> Result<u64, String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut prev = GENESIS.to_owned();
    let mut count = 0u64;
    let mut last: Option<(u64, String)> = None;
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line_no = n + 1;
        let line = line.map_err(|e| format!("line {line_no}: {e}"))?;
        let entry: Entry = serde_json::from_str(&line)
            .map_err(|e| format!("line {line_no}: not an audit entry ({e})"))?;
        if entry.seq != count {
            return Err(format!(
                "line {line_no}: sequence {} where {count} was expected (lines deleted before it)",
                entry.seq
            ));
        }
        if entry.prev != prev {
            return Err(format!(
                "line {line_no}: the chain breaks (the line before it was edited or removed)"
            ));
        }
        prev = hash_line(&line);
        last = Some((entry.seq, prev.clone()));
        count += 1;
    }
    let head = head_path(path);
    match std::fs::read_to_string(&head) {
        Ok(text) => {
            let mut parts = text.split_whitespace();
            let seq = parts.next().and_then(|s| s.parse::<u64>().ok());
            let hash = parts.next().map(str::to_owned);
            match (seq, hash, last) {
                (Some(s), Some(h), Some((ls, lh))) if s == ls && h == lh => Ok(count),
                (Some(s), Some(_), Some((ls, _))) if s > ls => Err(format!(
                    "truncated: the head names line {} but the log ends at line {}",
                    s + 1,
                    ls + 1
                )),
                (Some(s), Some(_), None) => Err(format!(
                    "truncated: the head names line {} but the log is empty",
                    s + 1
                )),
                _ => Err("the last line does not match the head (edited at the end)".into()),
            }
        }
        Err(_) if count == 0 => Ok(0),
        Err(e) => Err(format!("cannot read the head {}: {e}", head.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(call: &'static str, n: u64) -> Record {
        Record {
            who: "127.0.0.1:5000".into(),
            call,
            dataset: "customers".into(),
            run: String::new(),
            decision: "allowed",
            outcome: "ok".into(),
            counts: BTreeMap::from([("drift".to_string(), n)]),
        }
    }

    fn write_log(dir: &Path, n: u64) -> PathBuf {
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        for i in 0..n {
            log.append(record("AuditService/Compare", i)).unwrap();
        }
        path
    }

    #[test]
    fn an_intact_log_verifies_and_reopening_continues_the_chain() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = write_log(dir.path(), 3);
        assert_eq!(verify(&path), Ok(3));
        let log = AuditLog::open(&path).unwrap();
        log.append(record("AdminService/Reindex", 0)).unwrap();
        assert_eq!(verify(&path), Ok(4));
    }

    #[test]
    fn an_edited_line_is_caught() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = write_log(dir.path(), 4);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"drift\":1", "\"drift\":0", 1)).unwrap();
        let err = verify(&path).unwrap_err();
        assert!(err.starts_with("line 3: the chain breaks"), "{err}");
    }

    #[test]
    fn a_deleted_line_is_caught() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = write_log(dir.path(), 4);
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = text
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| l)
            .collect();
        std::fs::write(&path, kept.join("\n") + "\n").unwrap();
        let err = verify(&path).unwrap_err();
        assert!(err.starts_with("line 2: sequence 2 where 1"), "{err}");
    }

    #[test]
    fn truncation_and_an_edited_last_line_are_caught() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = write_log(dir.path(), 4);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, lines[..3].join("\n") + "\n").unwrap();
        let err = verify(&path).unwrap_err();
        assert!(err.starts_with("truncated: the head names line 4"), "{err}");
        std::fs::write(&path, text.replacen("\"drift\":3", "\"drift\":9", 1)).unwrap();
        let err = verify(&path).unwrap_err();
        assert!(err.contains("edited at the end"), "{err}");
    }
}
