//! Sync jobs an agent runs on its own: `[[sync]]` in its config, on a cron
//! schedule (time-zone aware), in real time after captured changes, or on
//! request (AdminService.RunSyncJob).
//!
//! A job synchronises the agent's dataset (the source side) with each peer
//! (a target side), one pair after the other, through the same plan and
//! execution as `arbor sync run` ([`crate::sync`]): compare, plan,
//! conditional writes, verify. The agent's own side is reached in process
//! ([`SideAt::Local`]), never through its own socket; the peer over gRPC. A job still running when its next trigger fires is not started
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

use arbor_index::RunStore;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::config::SyncJobConfig;
use crate::dataset::AgentState;
use crate::error::OpError;
use crate::sync::{Action, Policy, Remote, Rule, Side, SideAt, Sides, SyncOptions, SyncReport};

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

/// How a job reaches its agent's own side: in process when the agent's
/// repairs are known, else through its own address.
#[derive(Clone)]
struct Home<R> {
    address: String,
    repairs: Option<crate::repair::Repairs>,
    /// How the peers are reached.
    remote: R,
}

impl<R: Remote> Home<R> {
    /// The sides of a run of `opts` (its source is this agent's dataset).
    fn sides(&self, opts: &SyncOptions) -> Sides<R> {
        let source = match &self.repairs {
            Some(repairs) => SideAt::Local {
                repairs: repairs.clone(),
                dataset: opts.dataset.clone(),
            },
            None => SideAt::Remote {
                agent: self.address.clone(),
                dataset: opts.dataset.clone(),
            },
        };
        let target = SideAt::Remote {
            agent: opts.target.clone(),
            dataset: opts.target_dataset.clone(),
        };
        Sides::new(source, target, opts.retry_for, self.remote.clone())
    }
}

/// Every job of an agent.
pub struct Jobs<R> {
    jobs: Vec<Arc<Job>>,
    /// This agent's own side.
    home: Home<R>,
    /// Where conflicts wait for a person.
    runs: Option<Arc<RunStore>>,
}

/// A changed-on-both row no rule settled, queued for a person.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Conflict {
    /// Stable id: the same job, peer and key always queue under one id.
    pub id: String,
    /// The job that found it.
    pub job: String,
    /// The local dataset (the source side).
    pub dataset: String,
    /// The peer agent (the target side).
    pub peer: String,
    /// The peer's dataset.
    pub peer_dataset: String,
    /// The key, human form.
    pub key: String,
    /// Canonical key bytes, hex.
    pub canonical_key: String,
    /// Why no rule settled it.
    pub reason: String,
    /// RFC 3339 UTC.
    pub first_seen: String,
    /// RFC 3339 UTC.
    pub last_seen: String,
}

/// The error of a conflict call on an agent that keeps no conflicts.
fn no_store() -> OpError {
    OpError::NotReady("this agent keeps no conflict store".into())
}

fn conflict_id(job: &str, peer: &str, key: &str) -> String {
    let h = blake3::hash(format!("{job}\0{peer}\0{key}").as_bytes());
    hex::encode(&h.as_bytes()[..8])
}

impl<R: Remote> Jobs<R> {
    /// Keeps conflicts in `runs` (without it they are only reported).
    pub fn with_store(mut self, runs: Arc<RunStore>) -> Jobs<R> {
        self.runs = Some(runs);
        self
    }

    /// A job's last `limit` runs, newest first, as recorded.
    pub fn history(&self, job: &str, limit: usize) -> Result<Vec<String>, OpError> {
        if self.job(job).is_none() {
            return Err(OpError::NotFound(format!("no sync job {job:?}")));
        }
        let Some(runs) = &self.runs else {
            return Ok(Vec::new());
        };
        runs.sync_runs(job, limit)?
            .into_iter()
            .map(|(_, raw)| {
                String::from_utf8(raw)
                    .map_err(|e| OpError::DataLoss(format!("a recorded run of job {job:?}: {e}")))
            })
            .collect()
    }

    /// Queued conflicts.
    pub fn conflicts(&self) -> Result<Vec<Conflict>, OpError> {
        let Some(runs) = &self.runs else {
            return Ok(Vec::new());
        };
        runs.conflicts()?
            .iter()
            .map(|raw| {
                serde_json::from_slice(raw)
                    .map_err(|e| OpError::DataLoss(format!("a queued conflict: {e}")))
            })
            .collect()
    }

    /// Queues the unresolved rows of a one-shot run whose source side is
    /// this agent's `dataset` (see [`ONE_SHOT_JOB`]); returns their ids.
    pub fn queue_one_shot(
        &self,
        dataset: &str,
        peer: &str,
        peer_dataset: &str,
        rows: &[Unresolved],
    ) -> Result<Vec<String>, OpError> {
        let runs = self.runs.as_ref().ok_or_else(no_store)?;
        queue_conflicts(runs, ONE_SHOT_JOB, dataset, peer, peer_dataset, rows)
    }

    /// Settles a queued conflict by taking `take`'s row (`source`: this
    /// agent's, `target`: the peer's); the conflict leaves the queue when the
    /// key no longer drifts. Returns the sync report.
    pub async fn resolve(&self, id: &str, take: Side) -> Result<SyncReport, OpError> {
        let runs = self.runs.as_ref().ok_or_else(no_store)?;
        let raw = runs
            .get_conflict(id)?
            .ok_or_else(|| OpError::NotFound(format!("no queued conflict {id:?}")))?;
        let unreadable =
            |e: &dyn std::fmt::Display| OpError::DataLoss(format!("queued conflict {id:?}: {e}"));
        let c: Conflict = serde_json::from_slice(&raw).map_err(|e| unreadable(&e))?;
        let key = hex::decode(&c.canonical_key).map_err(|e| unreadable(&e))?;
        let opts = SyncOptions {
            source: self.home.address.clone(),
            target: c.peer.clone(),
            dataset: c.dataset.clone(),
            target_dataset: c.peer_dataset.clone(),
            policy: Policy::TwoWay(Rule::Priority(take)),
            batch: 1,
            max_rows_per_sec: 0,
            retry_for: crate::sync::DEFAULT_RETRY_FOR,
            only_keys: Some(std::collections::HashSet::from([key])),
            // Settled by priority: no lww time is judged.
            max_skew: crate::sync::DEFAULT_MAX_SKEW,
            // One key, chosen by a person.
            max_share: 1.0,
        };
        let sides = self.home.sides(&opts);
        // A run that cannot reach a side now may pass later.
        let failed = |e: crate::sync::SyncError| OpError::Unavailable(e.to_string());
        let (actions, report) = crate::sync::plan_with(&opts, &sides, false)
            .await
            .map_err(failed)?;
        let report = crate::sync::execute_with(&opts, &sides, &actions, report)
            .await
            .map_err(failed)?;
        if report.drift_after == Some(0) {
            runs.delete_conflict(id)?;
            info!(conflict = id, key = %c.key, ?take, "conflict resolved");
        }
        Ok(report)
    }

    /// The jobs of a configuration, run against this agent at
    /// `self_address`, its peers reached through `remote`.
    pub fn new(configs: &[SyncJobConfig], self_address: String, remote: R) -> Jobs<R> {
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
            home: Home {
                address: self_address,
                repairs: None,
                remote,
            },
            runs: None,
        }
    }

    /// Reaches the agent's own datasets in process, through its repairs.
    pub fn with_repairs(mut self, repairs: crate::repair::Repairs) -> Jobs<R> {
        self.home.repairs = Some(repairs);
        self
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
    ///
    /// The run is a task of its own: a caller that goes away (a command
    /// line that gives up or is interrupted) leaves it to finish, where
    /// dropping it midway would stop a repair between two batches.
    pub async fn run_now(&self, name: &str) -> Result<JobRun, OpError> {
        let job = Arc::clone(
            self.job(name)
                .ok_or_else(|| OpError::NotFound(format!("no sync job {name:?}")))?,
        );
        let (home, store) = (self.home.clone(), self.runs.clone());
        tokio::spawn(async move { run(&job, &home, store.as_deref(), "request").await })
            .await
            .map_err(|e| OpError::Internal(format!("the run of sync job {name:?} failed: {e}")))?
    }

    /// Starts the scheduled and real-time triggers of every job.
    pub fn spawn(self: &Arc<Jobs<R>>, state: &Arc<AgentState>) {
        for job in &self.jobs {
            if let Some(cron) = job.config.cron.clone() {
                let (job, me, store) = (Arc::clone(job), self.home.clone(), self.runs.clone());
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
                        let _ = run(&job, &me, store.as_deref(), "schedule").await;
                    }
                });
            }
            if job.config.realtime {
                let Ok(ds) = state.dataset(&job.config.dataset) else {
                    continue;
                };
                let mut changes = ds.changes.subscribe();
                let (job, me, store) = (Arc::clone(job), self.home.clone(), self.runs.clone());
                tokio::spawn(async move {
                    while changes.changed().await.is_ok() {
                        tokio::time::sleep(REALTIME_DEBOUNCE).await;
                        // Changes that arrive during the run start another.
                        changes.mark_unchanged();
                        let _ = run(&job, &me, store.as_deref(), "realtime").await;
                    }
                });
            }
        }
    }
}

/// One run of a job: every pair in turn.
async fn run<R: Remote>(
    job: &Job,
    home: &Home<R>,
    store: Option<&RunStore>,
    trigger: &str,
) -> Result<JobRun, OpError> {
    let c = &job.config;
    if job.running.swap(true, Ordering::AcqRel) {
        job.skipped.fetch_add(1, Ordering::Relaxed);
        info!(job = %c.name, trigger, "sync job still running; trigger skipped");
        return Err(OpError::Conflict(format!(
            "job {:?} is still running",
            c.name
        )));
    }
    // However the run ends (a panic, the task dropped), the job is free
    // again: a flag left set would skip every later trigger for ever.
    let _running = Running(&job.running);
    let started_at = crate::report::now_rfc3339();
    let mut pairs = Vec::with_capacity(c.peers.len());
    for (peer, peer_dataset) in &c.peers {
        let opts = SyncOptions {
            source: home.address.clone(),
            target: peer.clone(),
            dataset: c.dataset.clone(),
            target_dataset: peer_dataset.clone(),
            policy: c.policy.clone(),
            batch: c.batch,
            max_rows_per_sec: c.max_rows_per_sec,
            retry_for: crate::sync::DEFAULT_RETRY_FOR,
            only_keys: None,
            max_skew: c.max_skew,
            max_share: c.max_share,
        };
        let sides = home.sides(&opts);
        let result = async {
            let (actions, report) = crate::sync::plan_with(&opts, &sides, false).await?;
            if let Some(store) = store
                && let Err(e) = queue_conflicts(
                    store,
                    &c.name,
                    &c.dataset,
                    peer,
                    peer_dataset,
                    &Unresolved::of(&actions),
                )
            {
                warn!(job = %c.name, error = %e, "could not queue conflicts");
            }
            if c.execute && report.drift > 0 {
                crate::sync::execute_with(&opts, &sides, &actions, report).await
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
    if let Some(store) = store {
        // The report outlives the agent: `arbor sync history`.
        let kept = serde_json::to_vec(&run)
            .map_err(|e| e.to_string())
            .and_then(|raw| store.put_sync_run(&c.name, &raw).map_err(|e| e.to_string()));
        if let Err(e) = kept {
            warn!(job = %c.name, error = %e, "could not record the sync run");
        }
    }
    *job.last.lock().await = Some(run.clone());
    Ok(run)
}

/// Marks a job as no longer running when dropped.
struct Running<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A row no rule settled: its key (human form), canonical key (hex) and
/// why.
pub struct Unresolved {
    /// The key, human form.
    pub key: String,
    /// Canonical key bytes, hex.
    pub canonical_key: String,
    /// Why no rule settled it.
    pub reason: String,
}

impl Unresolved {
    /// The unresolved rows of a plan.
    pub fn of(actions: &[Action]) -> Vec<Unresolved> {
        actions
            .iter()
            .filter(|a| a.action == crate::sync::ActionKind::Unresolved)
            .map(|a| Unresolved {
                key: a.key.clone(),
                canonical_key: a.canonical_key.clone(),
                reason: a.reason.clone().unwrap_or_default(),
            })
            .collect()
    }
}

/// What queues the conflicts of one-shot runs (`arbor sync run`), in place
/// of a job's name.
pub const ONE_SHOT_JOB: &str = "(one-shot run)";

/// Queues a run's unresolved rows of one pair (under `job`, the local
/// `dataset` and the peer's), and drops queued ones of the pair that are
/// no longer unresolved (settled, or converged); returns the ids queued.
fn queue_conflicts(
    store: &RunStore,
    job: &str,
    dataset: &str,
    peer: &str,
    peer_dataset: &str,
    rows: &[Unresolved],
) -> Result<Vec<String>, OpError> {
    let now = crate::report::now_rfc3339();
    let mut current = std::collections::HashSet::new();
    let mut ids = Vec::with_capacity(rows.len());
    for a in rows {
        let id = conflict_id(job, peer, &a.canonical_key);
        let first_seen = match store.get_conflict(&id)? {
            Some(raw) => serde_json::from_slice::<Conflict>(&raw)
                .map(|c| c.first_seen)
                .unwrap_or_else(|_| now.clone()),
            None => now.clone(),
        };
        let c = Conflict {
            id: id.clone(),
            job: job.to_owned(),
            dataset: dataset.to_owned(),
            peer: peer.to_owned(),
            peer_dataset: peer_dataset.to_owned(),
            key: a.key.clone(),
            canonical_key: a.canonical_key.clone(),
            reason: a.reason.clone(),
            first_seen,
            last_seen: now.clone(),
        };
        let raw = serde_json::to_vec(&c).map_err(|e| OpError::Internal(e.to_string()))?;
        store.put_conflict(&id, &raw)?;
        current.insert(id.clone());
        ids.push(id);
    }
    for raw in store.conflicts()? {
        if let Ok(c) = serde_json::from_slice::<Conflict>(&raw)
            && c.job == job
            && c.dataset == dataset
            && c.peer == peer
            && c.peer_dataset == peer_dataset
            && !current.contains(&c.id)
        {
            store.delete_conflict(&c.id)?;
        }
    }
    Ok(ids)
}
