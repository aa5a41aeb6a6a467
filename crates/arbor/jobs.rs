//! Sync jobs an agent runs on its own: `[[sync]]` in its config, on a cron
//! schedule (time-zone aware), in real time after captured changes, or on
//! request (AdminService.RunSyncJob).
//!
//! A job synchronises the agent's dataset (the source side) with each peer
//! (a target side), one pair after the other, through the same client code
//! as `arbor sync run` ([`crate::sync`]): compare, plan, conditional writes,
//! verify. A job still running when its next trigger fires is not started
//! twice: the trigger is recorded as skipped.
//!
//! Real time without echo loops: a job runs when capture brings changes
//! into the index; the writes it makes on a peer may come back through the
//! peer's own capture and start the peer's job, whose compare then finds
//! both sides equal and writes nothing. Repairs the agent receives do not
//! trigger its jobs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::config::SyncJobConfig;
use crate::service::AgentState;
use crate::sync::{SyncOptions, SyncReport};

/// Pause after a captured change before a real-time run starts, so a burst
/// of changes makes one run.
const REALTIME_DEBOUNCE: Duration = Duration::from_millis(50);

/// One pair's result in a job run.
#[derive(Debug, Clone, Serialize)]
pub struct PairResult {
    /// The peer agent.
    pub peer: String,
    /// Its dataset.
    pub peer_dataset: String,
    /// The run's report, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<SyncReport>,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One run of a job.
#[derive(Debug, Clone, Serialize)]
pub struct JobRun {
    /// `schedule`, `realtime` or `request`.
    pub trigger: String,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// RFC 3339 UTC.
    pub finished_at: String,
    /// `completed` (every pair ran), `failed` (some pair failed).
    pub outcome: String,
    /// Per pair.
    pub pairs: Vec<PairResult>,
}

/// A job and what is known of its runs.
pub struct Job {
    /// Its configuration.
    pub config: SyncJobConfig,
    running: AtomicBool,
    last: Mutex<Option<JobRun>>,
    next: Mutex<Option<String>>,
    runs: std::sync::atomic::AtomicU64,
    skipped: std::sync::atomic::AtomicU64,
}

/// What AdminService reports of a job.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    /// Its name.
    pub name: String,
    /// The local dataset.
    pub dataset: String,
    /// Peer addresses.
    pub peers: Vec<String>,
    /// The cron expression, if any.
    pub schedule: Option<String>,
    /// The schedule's time zone.
    pub timezone: String,
    /// Runs after captured changes.
    pub realtime: bool,
    /// Writes (false: plans only).
    pub execute: bool,
    /// Whether a run is in progress.
    pub running: bool,
    /// Next scheduled run, RFC 3339 in the job's zone.
    pub next_run: Option<String>,
    /// Runs so far (since the agent started).
    pub runs: u64,
    /// Triggers skipped because a run was still going.
    pub skipped: u64,
    /// The last run.
    pub last_run: Option<JobRun>,
}

/// Every job of an agent.
pub struct Jobs {
    jobs: Vec<Arc<Job>>,
    /// This agent's own address, as peers' clients reach it.
    self_address: String,
}

impl Jobs {
    /// The jobs of a configuration, run against this agent at `self_address`.
    pub fn new(configs: &[SyncJobConfig], self_address: String) -> Jobs {
        Jobs {
            jobs: configs
                .iter()
                .map(|c| {
                    Arc::new(Job {
                        config: c.clone(),
                        running: AtomicBool::new(false),
                        last: Mutex::new(None),
                        next: Mutex::new(None),
                        runs: 0.into(),
                        skipped: 0.into(),
                    })
                })
                .collect(),
            self_address,
        }
    }

    /// The status of every job.
    pub async fn status(&self) -> Vec<JobStatus> {
        let mut out = Vec::with_capacity(self.jobs.len());
        for j in &self.jobs {
            let c = &j.config;
            out.push(JobStatus {
                name: c.name.clone(),
                dataset: c.dataset.clone(),
                peers: c.peers.iter().map(|(a, _)| a.clone()).collect(),
                schedule: c.schedule.clone(),
                timezone: c.timezone.name().to_owned(),
                realtime: c.realtime,
                execute: c.execute,
                running: j.running.load(Ordering::Acquire),
                next_run: j.next.lock().await.clone(),
                runs: j.runs.load(Ordering::Relaxed),
                skipped: j.skipped.load(Ordering::Relaxed),
                last_run: j.last.lock().await.clone(),
            });
        }
        out
    }

    fn job(&self, name: &str) -> Option<&Arc<Job>> {
        self.jobs.iter().find(|j| j.config.name == name)
    }

    /// Runs a job now (unless it is running); returns its run, or `None`
    /// when the job is unknown.
    pub async fn run_now(&self, name: &str) -> Option<Result<JobRun, String>> {
        let job = self.job(name)?;
        Some(run(job, &self.self_address, "request").await)
    }

    /// Starts the scheduled and real-time triggers of every job.
    pub fn spawn(self: &Arc<Jobs>, state: &Arc<AgentState>) {
        for job in &self.jobs {
            if let Some(cron) = job.config.cron.clone() {
                let (job, me) = (Arc::clone(job), self.self_address.clone());
                tokio::spawn(async move {
                    loop {
                        let now = chrono::Utc::now().with_timezone(&job.config.timezone);
                        let Ok(next) = cron.find_next_occurrence(&now, false) else {
                            warn!(job = %job.config.name, "the schedule has no next run; it stops");
                            *job.next.lock().await = None;
                            return;
                        };
                        *job.next.lock().await = Some(next.to_rfc3339());
                        let wait = (next.with_timezone(&chrono::Utc) - chrono::Utc::now())
                            .to_std()
                            .unwrap_or_default();
                        tokio::time::sleep(wait).await;
                        let _ = run(&job, &me, "schedule").await;
                    }
                });
            }
            if job.config.realtime {
                let Ok(ds) = state.dataset(&job.config.dataset) else {
                    continue;
                };
                let mut changes = ds.changes.subscribe();
                let (job, me) = (Arc::clone(job), self.self_address.clone());
                tokio::spawn(async move {
                    while changes.changed().await.is_ok() {
                        tokio::time::sleep(REALTIME_DEBOUNCE).await;
                        // Changes that arrive during the run start another.
                        changes.mark_unchanged();
                        let _ = run(&job, &me, "realtime").await;
                    }
                });
            }
        }
    }
}

/// One run of a job: every pair in turn.
async fn run(job: &Job, self_address: &str, trigger: &str) -> Result<JobRun, String> {
    let c = &job.config;
    if job.running.swap(true, Ordering::AcqRel) {
        job.skipped.fetch_add(1, Ordering::Relaxed);
        info!(job = %c.name, trigger, "sync job still running; trigger skipped");
        return Err(format!("job {:?} is still running", c.name));
    }
    let started_at = crate::report::now_rfc3339();
    let mut pairs = Vec::with_capacity(c.peers.len());
    for (peer, peer_dataset) in &c.peers {
        let opts = SyncOptions {
            source: self_address.to_owned(),
            target: peer.clone(),
            dataset: c.dataset.clone(),
            target_dataset: peer_dataset.clone(),
            policy: c.policy.clone(),
            batch: c.batch,
            max_rows_per_sec: c.max_rows_per_sec,
            retry_for: Duration::from_secs(60),
        };
        let result = async {
            let (actions, report) = crate::sync::plan(&opts, false).await?;
            if c.execute && report.drift > 0 {
                crate::sync::execute(&opts, &actions, report).await
            } else {
                Ok(report)
            }
        }
        .await;
        pairs.push(match result {
            Ok(report) => PairResult {
                peer: peer.clone(),
                peer_dataset: peer_dataset.clone(),
                report: Some(report),
                error: None,
            },
            Err(e) => {
                warn!(job = %c.name, peer = %peer, error = %e, "sync job pair failed");
                PairResult {
                    peer: peer.clone(),
                    peer_dataset: peer_dataset.clone(),
                    report: None,
                    error: Some(e.to_string()),
                }
            }
        });
    }
    let outcome = if pairs.iter().all(|p| p.error.is_none()) {
        "completed"
    } else {
        "failed"
    };
    let run = JobRun {
        trigger: trigger.to_owned(),
        started_at,
        finished_at: crate::report::now_rfc3339(),
        outcome: outcome.to_owned(),
        pairs,
    };
    let written: u64 = run
        .pairs
        .iter()
        .filter_map(|p| p.report.as_ref())
        .map(|r| r.applied)
        .sum();
    info!(job = %c.name, trigger, outcome, written, "sync job run finished");
    job.runs.fetch_add(1, Ordering::Relaxed);
    *job.last.lock().await = Some(run.clone());
    job.running.store(false, Ordering::Release);
    Ok(run)
}
