//! `arbor sync`: one-shot runs, saved plans, jobs, conflicts.

use crate::*;

/// `arbor sync`: a one-shot run, or a verb an agent answers (its jobs, a
/// job's history, conflicts and their resolution, a job run now).
pub(crate) async fn sync(command: SyncCommand) -> Result<u8> {
    match command {
        SyncCommand::Plan(args) => sync_run(args, false, true).await,
        SyncCommand::Run { args, execute } => sync_run(args, execute, false).await,
        SyncCommand::Jobs { agent, json } => sync_jobs(&agent, json).await,
        SyncCommand::History { agent, job, limit } => {
            let runs = admin_client(&agent)
                .await?
                .list_sync_runs(pb::ListSyncRunsRequest { job, limit })
                .await
                .map_err(|s| rpc_error(&agent, &s))?
                .into_inner()
                .runs;
            for r in &runs {
                outln!("{r}");
            }
            Ok(0)
        }
        SyncCommand::Conflicts { agent } => {
            let list = admin_client(&agent)
                .await?
                .list_conflicts(pb::ListConflictsRequest {})
                .await
                .map_err(|s| rpc_error(&agent, &s))?
                .into_inner();
            for c in &list.conflicts {
                outln!("{c}");
            }
            Ok(if list.conflicts.is_empty() { 0 } else { 1 })
        }
        SyncCommand::Resolve { agent, id, take } => {
            let run = admin_client(&agent)
                .await?
                .resolve_conflict(pb::ResolveConflictRequest { id, take })
                .await
                .map_err(|s| rpc_error(&agent, &s))?
                .into_inner();
            outln!("{}", run.json);
            let report: serde_json::Value = serde_json::from_str(&run.json)?;
            Ok(if report["drift_after"] == 0 { 0 } else { 1 })
        }
        SyncCommand::Trigger { agent, job } => {
            let run = admin_client(&agent)
                .await?
                .run_sync_job(pb::RunSyncJobRequest { name: job })
                .await
                .map_err(|s| rpc_error(&agent, &s))?
                .into_inner();
            outln!("{}", run.json);
            let parsed: serde_json::Value = serde_json::from_str(&run.json)?;
            Ok(if parsed["outcome"] == "completed" {
                0
            } else {
                1
            })
        }
    }
}

/// A saved plan (`--plan FILE`): the file, its writes, and the report of
/// its planning.
fn load_plan(
    path: &Path,
) -> Result<(
    arbor::sync::PlanFile,
    Vec<arbor::sync::Action>,
    arbor::sync::SyncReport,
)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read the plan {}", path.display()))?;
    let file: arbor::sync::PlanFile = serde_json::from_str(&text)
        .with_context(|| format!("plan {} is not a plan file", path.display()))?;
    let actions = file
        .actions()
        .map_err(|e| anyhow::anyhow!("plan {}: {e}", path.display()))?;
    if !file.key_id.is_empty() && hex::decode(&file.key_id).map(|k| k.len()) != Ok(8) {
        anyhow::bail!(
            "plan {}: key_id {:?} is not 16 hex digits",
            path.display(),
            file.key_id
        );
    }
    let report = arbor::sync::SyncReport {
        run_id: file.run_id.clone(),
        key_id: file.key_id.clone(),
        planned_upserts: actions
            .iter()
            .filter(|a| a.action == arbor::sync::ActionKind::Upsert)
            .count() as u64,
        planned_deletes: actions
            .iter()
            .filter(|a| a.action == arbor::sync::ActionKind::Delete)
            .count() as u64,
        ..Default::default()
    };
    Ok((file, actions, report))
}

/// The options of a one-shot run: agents and datasets from the saved plan
/// or the flags, once both agents serve; the policy from the flags.
async fn sync_options(
    args: &SyncArgs,
    saved: Option<&arbor::sync::PlanFile>,
) -> Result<arbor::sync::SyncOptions> {
    // Both agents must have indexed their datasets (just started, or
    // catching up after a restart).
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    let (source, target, dataset, target_dataset) = match saved {
        Some(file) => (
            file.source.clone(),
            file.target.clone(),
            file.dataset.clone(),
            file.target_dataset.clone(),
        ),
        None => {
            // Required by the parser unless --plan.
            let dataset = args.dataset.clone().unwrap_or_default();
            (
                args.source.clone().unwrap_or_default(),
                args.target.clone().unwrap_or_default(),
                dataset.clone(),
                args.target_dataset.clone().unwrap_or(dataset),
            )
        }
    };
    wait_serving(&source, deadline).await?;
    wait_serving(&target, deadline).await?;
    if !(0.0..=1.0).contains(&args.max_share) {
        bail!("--max-share {}: a share between 0 and 1", args.max_share);
    }
    let mut owners = Vec::new();
    for o in &args.owners {
        let (col, side) = o
            .split_once('=')
            .with_context(|| format!("--owner {o:?}: expected COLUMN=source|target"))?;
        owners.push((col.to_owned(), side.to_owned()));
    }
    let policy = arbor::sync::parse_policy(
        &args.policy,
        Some(&args.extra),
        args.rule.as_deref(),
        &owners,
        Some(&args.fallback),
    )
    .map_err(|(field, e)| anyhow::anyhow!("--{field}: {e}"))?;
    Ok(arbor::sync::SyncOptions {
        source,
        target,
        target_dataset,
        dataset,
        policy,
        batch: args
            .batch
            .clamp(1, arbor_agent::repair::MAX_WRITES_PER_BATCH),
        max_rows_per_sec: args.max_rows_per_sec,
        retry_for: std::time::Duration::from_secs(args.retry_secs),
        only_keys: None,
        max_skew: Duration::from_secs(args.max_skew_secs),
        max_share: args.max_share,
    })
}

/// A one-shot run: plan (or load a saved plan), optionally execute, print.
async fn sync_run(args: SyncArgs, execute: bool, plan_only: bool) -> Result<u8> {
    let saved = args.plan.as_deref().map(load_plan).transpose()?;
    let opts = sync_options(&args, saved.as_ref().map(|(file, _, _)| file)).await?;
    let (actions, report) = match saved {
        Some((_, actions, report)) => (actions, report),
        None => arbor::sync::plan(&opts, !execute)
            .await
            .context("sync plan failed")?,
    };
    if let Some(out) = &args.out {
        let file = arbor::sync::PlanFile::new(&opts, &report, &actions);
        std::fs::write(out, serde_json::to_vec_pretty(&file)?)
            .with_context(|| format!("write the plan {}", out.display()))?;
    }
    let report = if execute {
        let mut report = arbor::sync::execute(&opts, &actions, report)
            .await
            .context("sync run failed")?;
        // Rows no rule settled wait for a person, as a job's do.
        report.queued = arbor::sync::queue_unresolved(&opts, &actions)
            .await
            .context("queue the unresolved rows")?;
        report
    } else {
        report
    };
    print_sync_run(&args, &opts, &report, &actions, execute, plan_only)?;
    let clean = if execute {
        report.drift_after == Some(0)
    } else {
        report.drift == 0
    };
    Ok(if clean { 0 } else { 1 })
}

/// Prints a run's actions and report: JSON lines, or a table and a summary.
fn print_sync_run(
    args: &SyncArgs,
    opts: &arbor::sync::SyncOptions,
    report: &arbor::sync::SyncReport,
    actions: &[arbor::sync::Action],
    execute: bool,
    plan_only: bool,
) -> Result<()> {
    let mut out = crate::output::stdout();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(report)?)?;
        for a in actions {
            writeln!(out, "{}", serde_json::to_string(a)?)?;
        }
    } else {
        if !execute {
            for a in actions {
                writeln!(
                    out,
                    "{:<10} {:<6} {:<18} {:<24} {}",
                    a.action,
                    match a.side {
                        arbor::sync::Side::Source => "source",
                        arbor::sync::Side::Target => "target",
                    },
                    a.drift,
                    a.key,
                    a.sql.as_deref().or(a.reason.as_deref()).unwrap_or("")
                )?;
            }
        }
        writeln!(
            out,
            "run {}: {} drifting, {} upserts and {} deletes planned ({} to the source, {} to the target), {} kept, {} unresolved{}",
            report.run_id,
            report.drift,
            report.planned_upserts,
            report.planned_deletes,
            report.planned_to_source,
            report.planned_to_target,
            report.kept,
            report.unresolved,
            if report.vanished > 0 {
                format!(", {} vanished from the source", report.vanished)
            } else {
                String::new()
            }
        )?;
        if execute {
            writeln!(
                out,
                "executed: {} applied, {} already applied, {} conflicts (left alone){}; drift after: {}",
                report.applied,
                report.already_applied,
                report.conflicts,
                if report.replayed_batches > 0 {
                    format!(
                        ", {} batches replayed from the journal",
                        report.replayed_batches
                    )
                } else {
                    String::new()
                },
                report
                    .drift_after
                    .map_or_else(|| "?".into(), |d| d.to_string())
            )?;
            for k in &report.conflict_keys {
                writeln!(out, "  conflict: {k} changed on the target since the plan")?;
            }
            if report.queued > 0 {
                writeln!(
                    out,
                    "{} unresolved rows wait for a person: arbor sync conflicts --agent {}",
                    report.queued, opts.source
                )?;
            }
        } else if !plan_only {
            writeln!(out, "dry run: nothing written; pass --execute to apply")?;
        }
    }
    Ok(())
}

pub(crate) async fn sync_jobs(agent: &str, json: bool) -> Result<u8> {
    let jobs = admin_client(agent)
        .await?
        .list_sync_jobs(pb::ListSyncJobsRequest {})
        .await
        .map_err(|s| rpc_error(agent, &s))?
        .into_inner()
        .jobs;
    let mut out = crate::output::stdout();
    for j in jobs {
        let last: serde_json::Value = if j.last_run_json.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&j.last_run_json)?
        };
        if json {
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "name": j.name, "dataset": j.dataset, "peers": j.peers,
                    "schedule": j.schedule, "timezone": j.timezone, "realtime": j.realtime,
                    "execute": j.execute, "running": j.running, "next_run": j.next_run,
                    "runs": j.runs, "skipped": j.skipped, "last_run": last,
                })
            )?;
        } else {
            writeln!(
                out,
                "{}: {} -> {} | schedule {} ({}){} | {} | next {} | {} runs, {} skipped{} | last: {}",
                j.name,
                j.dataset,
                j.peers.join(", "),
                if j.schedule.is_empty() {
                    "none"
                } else {
                    &j.schedule
                },
                j.timezone,
                if j.realtime { ", realtime" } else { "" },
                if j.execute { "executes" } else { "plans only" },
                if j.next_run.is_empty() {
                    "-"
                } else {
                    &j.next_run
                },
                j.runs,
                j.skipped,
                if j.running { ", running" } else { "" },
                if last.is_null() {
                    "never".to_string()
                } else {
                    format!(
                        "{} {} at {}",
                        last["trigger"], last["outcome"], last["finished_at"]
                    )
                }
            )?;
        }
    }
    Ok(0)
}
