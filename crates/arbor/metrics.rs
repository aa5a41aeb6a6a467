//! Prometheus metrics on `GET /metrics` (text exposition format 0.0.4),
//! served on `[agent] metrics_listen` beside the gRPC port.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `arbor_records_indexed` | gauge | dataset |
//! | `arbor_index_lag_seconds` | gauge | dataset (commit → index, logical capture) |
//! | `arbor_dataset_failed` | gauge | dataset (1 while its indexing failed and is retried) |
//! | `arbor_dataset_stale` | gauge | dataset (1 while its last rescan or capture failed) |
//! | `arbor_drift_records` | gauge | dataset (the last compare's drifting keys) |
//! | `arbor_runs_total` | counter | outcome (`completed`, `failed`) |
//! | `arbor_repair_writes_total` | counter | outcome (`applied`, `already_applied`, `conflict`) |
//! | `arbor_throttle_waits_total` | counter | — (scans that paused for `max_rows_per_sec`) |
//! | `arbor_rocksdb_block_cache_bytes` | gauge | — (the process's shared block cache in use) |
//! | `arbor_rocksdb_memtable_bytes` | gauge | — (memtables of every index and the run store) |
//! | `arbor_rpc_duration_seconds` | histogram | call, outcome |
//!
//! The HTTP side is a few lines over a TCP listener: one GET per
//! connection, no keep-alive, nothing else served.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use arbor_agent::dataset::AgentState;

/// Histogram bucket bounds, seconds.
const BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

#[derive(Default, Clone)]
struct Histogram {
    /// Per bucket (not cumulative), then +Inf.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
}

#[derive(Default)]
struct Inner {
    rpc: BTreeMap<(&'static str, String), Histogram>,
    runs: BTreeMap<&'static str, u64>,
    repair_writes: BTreeMap<&'static str, u64>,
    drift: BTreeMap<String, u64>,
}

/// The agent's metrics.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Records one finished RPC.
    pub fn observe_rpc(&self, call: &'static str, outcome: &str, took: Duration) {
        let secs = took.as_secs_f64();
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let h = m.rpc.entry((call, outcome.to_owned())).or_default();
        let i = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        h.counts[i] += 1;
        h.sum += secs;
    }

    /// Records a finished compare run and its drift.
    pub fn observe_run(&self, dataset: &str, completed: bool, drift: u64) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *m.runs
            .entry(if completed { "completed" } else { "failed" })
            .or_default() += 1;
        if completed {
            m.drift.insert(dataset.to_owned(), drift);
        }
    }

    /// Records a repair batch's writes.
    pub fn observe_repair(&self, applied: u64, already: u64, conflicts: u64) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *m.repair_writes.entry("applied").or_default() += applied;
        *m.repair_writes.entry("already_applied").or_default() += already;
        *m.repair_writes.entry("conflict").or_default() += conflicts;
    }

    /// The exposition text. (Long on purpose: one block per metric family,
    /// in the order they are exposed, each with its HELP and TYPE.)
    pub fn render(&self, state: &AgentState) -> String {
        let mut indexed = Vec::new();
        let mut lag = Vec::new();
        let mut failed = Vec::new();
        let mut stale = Vec::new();
        for name in state.dataset_names() {
            let Ok(ds) = state.dataset(&name) else {
                continue;
            };
            if let Ok(d) = ds.index().snapshot().and_then(|s| s.describe()) {
                indexed.push(format!(
                    "arbor_records_indexed{{dataset=\"{}\"}} {}",
                    label(&name),
                    d.count()
                ));
            }
            failed.push(format!(
                "arbor_dataset_failed{{dataset=\"{}\"}} {}",
                label(&name),
                u8::from(ds.failure().is_some())
            ));
            stale.push(format!(
                "arbor_dataset_stale{{dataset=\"{}\"}} {}",
                label(&name),
                u8::from(ds.stale().is_some())
            ));
            let ms = ds.lag_ms.load(std::sync::atomic::Ordering::Relaxed);
            lag.push(format!(
                "arbor_index_lag_seconds{{dataset=\"{}\"}} {}",
                label(&name),
                ms as f64 / 1000.0
            ));
        }
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut text = String::new();
        let section = |text: &mut String, name: &str, kind: &str, help: &str, body: Vec<String>| {
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for l in body {
                let _ = writeln!(text, "{l}");
            }
        };
        section(
            &mut text,
            "arbor_records_indexed",
            "gauge",
            "Records in the dataset's index.",
            indexed,
        );
        section(
            &mut text,
            "arbor_index_lag_seconds",
            "gauge",
            "Commit-to-index lag of the last captured batch (logical capture).",
            lag,
        );
        section(
            &mut text,
            "arbor_dataset_failed",
            "gauge",
            "1 while the dataset's last indexing failed (the agent retries it).",
            failed,
        );
        section(
            &mut text,
            "arbor_dataset_stale",
            "gauge",
            "1 while the dataset's last rescan or capture failed (compares refuse it).",
            stale,
        );
        section(
            &mut text,
            "arbor_drift_records",
            "gauge",
            "Drifting keys found by the dataset's last compare.",
            m.drift
                .iter()
                .map(|(d, n)| format!("arbor_drift_records{{dataset=\"{}\"}} {n}", label(d)))
                .collect(),
        );
        section(
            &mut text,
            "arbor_runs_total",
            "counter",
            "Compare runs by outcome.",
            ["completed", "failed"]
                .iter()
                .map(|o| {
                    format!(
                        "arbor_runs_total{{outcome=\"{o}\"}} {}",
                        m.runs.get(o).copied().unwrap_or(0)
                    )
                })
                .collect(),
        );
        section(
            &mut text,
            "arbor_repair_writes_total",
            "counter",
            "Repair writes received, by outcome.",
            ["applied", "already_applied", "conflict"]
                .iter()
                .map(|o| {
                    format!(
                        "arbor_repair_writes_total{{outcome=\"{o}\"}} {}",
                        m.repair_writes.get(o).copied().unwrap_or(0)
                    )
                })
                .collect(),
        );
        section(
            &mut text,
            "arbor_throttle_waits_total",
            "counter",
            "Scans that paused to stay under max_rows_per_sec.",
            vec![format!(
                "arbor_throttle_waits_total {}",
                arbor_source::keyset::throttle_waits()
            )],
        );
        let rocksdb = arbor_index::rocksdb_memory();
        section(
            &mut text,
            "arbor_rocksdb_block_cache_bytes",
            "gauge",
            "Bytes of RocksDB's block cache in use (shared by every index; bounded).",
            vec![format!(
                "arbor_rocksdb_block_cache_bytes {}",
                rocksdb.block_cache_bytes
            )],
        );
        section(
            &mut text,
            "arbor_rocksdb_memtable_bytes",
            "gauge",
            "Bytes of RocksDB memtables, every index and the run store together (bounded).",
            vec![format!(
                "arbor_rocksdb_memtable_bytes {}",
                rocksdb.memtable_bytes
            )],
        );
        let mut hist = Vec::new();
        for ((call, outcome), h) in &m.rpc {
            let labels = format!("call=\"{}\",outcome=\"{}\"", label(call), label(outcome));
            let mut cumulative = 0;
            for (b, n) in BUCKETS.iter().zip(h.counts) {
                cumulative += n;
                hist.push(format!(
                    "arbor_rpc_duration_seconds_bucket{{{labels},le=\"{b}\"}} {cumulative}"
                ));
            }
            cumulative += h.counts[BUCKETS.len()];
            hist.push(format!(
                "arbor_rpc_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
            ));
            hist.push(format!(
                "arbor_rpc_duration_seconds_sum{{{labels}}} {}",
                h.sum
            ));
            hist.push(format!(
                "arbor_rpc_duration_seconds_count{{{labels}}} {cumulative}"
            ));
        }
        section(
            &mut text,
            "arbor_rpc_duration_seconds",
            "histogram",
            "Latency of audited RPCs (everything but AgentService).",
            hist,
        );
        text
    }
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    state: Arc<AgentState>,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics on http://{addr}/metrics");
    }
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, state) = (Arc::clone(&metrics), Arc::clone(&state));
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let first = request.lines().next().unwrap_or_default();
            let (status, body, kind) = if first.starts_with("GET /metrics ") {
                let s = Arc::clone(&state);
                let body = tokio::task::spawn_blocking(move || metrics.render(&s))
                    .await
                    .unwrap_or_default();
                ("200 OK", body, "text/plain; version=0.0.4")
            } else {
                (
                    "404 Not Found",
                    "only GET /metrics here\n".to_string(),
                    "text/plain",
                )
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = conn.write_all(response.as_bytes()).await {
                warn!(error = %e, "metrics response failed");
            }
        });
    }
}
