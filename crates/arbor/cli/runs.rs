//! `arbor compare` and `arbor runs`: start a compare, wait for it, read
//! stored runs and their drift (table, JSON, CSV, HTML).

use crate::*;

pub(crate) async fn compare(args: CompareArgs) -> Result<u8> {
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    wait_serving(&args.agent, deadline).await?;
    wait_serving(&args.peer, deadline).await?;
    let mut client = audit_client(&args.agent).await?;
    let request = pb::CompareRequest {
        dataset: args.dataset.clone(),
        peer: args.peer.clone(),
        peer_dataset: args.peer_dataset.clone().unwrap_or_default(),
        skip_column_names: args.skip_column_names,
        // The run carries on in the agent; this polls it, so a compare of
        // any length outlives the agent's per-request timeout.
        detach: true,
        ..Default::default()
    };
    let started: RunSummary = loop {
        match client.compare(request.clone()).await {
            Ok(r) => break r.into_inner().into(),
            // Not indexed yet, or busy (its dataset's run limit): wait in
            // line until --wait runs out.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                ) && Instant::now() < deadline =>
            {
                tracing::info!(reason = %s.message(), "agent not ready or busy; waiting");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(s) => bail!(
                "compare on {}: {}",
                args.agent,
                status_text(&args.agent, &s)
            ),
        }
    };
    let summary = wait_for_run(&mut client, &args.agent, started).await?;
    // A run that failed on the peer side: report the run, exit 2.
    if summary.status == RunStatus::Incomplete {
        print_run(&mut client, &summary, &args.output, args.stats).await?;
        bail!("run {} incomplete: {}", summary.run_id, summary.error);
    }
    if summary.status != RunStatus::Completed {
        print_summary(&summary, args.stats, args.output.json)?;
        bail!(
            "run {} {}: {}",
            summary.run_id,
            summary.status,
            summary.error
        );
    }
    print_run(&mut client, &summary, &args.output, args.stats).await?;
    Ok(if summary.drift() == 0 { 0 } else { 1 })
}

/// `arbor runs`: list, export, diff and show stored compare runs.
pub(crate) async fn runs(command: RunsCommand) -> Result<u8> {
    match command {
        RunsCommand::List {
            agent,
            dataset,
            limit,
            json,
        } => runs_list(agent, dataset, limit, json).await,
        RunsCommand::Export {
            agent,
            run_id,
            html,
            limit,
        } => runs_export(agent, run_id, html, limit).await,
        RunsCommand::Diff {
            agent,
            first,
            second,
            json,
            limit,
        } => runs_diff(agent, first, second, json, limit).await,
        RunsCommand::Show {
            agent,
            run_id,
            output,
        } => runs_show(agent, run_id, output).await,
    }
}

/// List a dataset's (or every) stored run, newest first.
async fn runs_list(agent: String, dataset: Option<String>, limit: u32, json: bool) -> Result<u8> {
    let mut client = audit_client(&agent).await?;
    let list = client
        .list_runs(pb::ListRunsRequest {
            limit,
            dataset: dataset.unwrap_or_default(),
        })
        .await
        .context("list runs")?
        .into_inner();
    if !json {
        outln!(
            "{:<22} {:<10} {:<24} {:>10} {:>10} {:>10} {:>8}",
            "RUN",
            "STATUS",
            "STARTED",
            "MISS_LEFT",
            "MISS_RIGHT",
            "CHANGED",
            "MS"
        );
    }
    for r in list.runs {
        let s: RunSummary = r.into();
        if json {
            outln!("{}", serde_json::to_string(&s)?);
        } else {
            outln!(
                "{:<22} {:<10} {:<24} {:>10} {:>10} {:>10} {:>8}",
                s.run_id,
                s.status,
                s.started_at,
                s.missing_left,
                s.missing_right,
                s.changed,
                s.cost.elapsed_ms
            );
        }
    }
    Ok(0)
}

/// Writes a run's HTML report, with the dataset's recent history.
async fn runs_export(agent: String, run_id: String, html: PathBuf, limit: u64) -> Result<u8> {
    let mut client = audit_client(&agent).await?;
    let run: RunSummary = client
        .get_run(pb::GetRunRequest {
            run_id: run_id.clone(),
        })
        .await
        .map_err(|s| rpc_error(&agent, &s))?
        .into_inner()
        .into();
    let history: Vec<RunSummary> = client
        .list_runs(pb::ListRunsRequest {
            limit: 30,
            dataset: run.left.dataset.clone(),
        })
        .await
        .map_err(|s| rpc_error(&agent, &s))?
        .into_inner()
        .runs
        .into_iter()
        .map(Into::into)
        .collect();
    let mut entries = Vec::new();
    let mut stream = client
        .stream_drift(pb::StreamDriftRequest {
            run_id,
            limit,
            ..Default::default()
        })
        .await
        .map_err(|s| rpc_error(&agent, &s))?
        .into_inner();
    while let Some(e) = stream.message().await.map_err(|s| rpc_error(&agent, &s))? {
        entries.push(DriftEntry::from(e));
    }
    std::fs::write(&html, html::render(&run, &history, &entries))
        .with_context(|| format!("write {}", html.display()))?;
    outln!("report of run {} written to {}", run.run_id, html.display());
    Ok(0)
}

/// What changed between two runs' drift: new, resolved, persisting.
async fn runs_diff(
    agent: String,
    first: String,
    second: String,
    json: bool,
    limit: Option<usize>,
) -> Result<u8> {
    let mut client = audit_client(&agent).await?;
    let mut read = async |run: &str| -> Result<BTreeMap<String, DriftEntry>> {
        let mut stream = client
            .stream_drift(pb::StreamDriftRequest {
                run_id: run.to_owned(),
                ..Default::default()
            })
            .await
            .map_err(|s| rpc_error(&agent, &s))?
            .into_inner();
        let mut out = BTreeMap::new();
        while let Some(e) = stream.message().await.map_err(|s| rpc_error(&agent, &s))? {
            let e: DriftEntry = e.into();
            out.insert(e.canonical_key.clone(), e);
        }
        Ok(out)
    };
    let (a, b) = (read(&first).await?, read(&second).await?);
    let groups = [
        (
            "new",
            b.iter()
                .filter(|(k, _)| !a.contains_key(*k))
                .map(|(_, e)| e)
                .collect::<Vec<_>>(),
        ),
        (
            "resolved",
            a.iter()
                .filter(|(k, _)| !b.contains_key(*k))
                .map(|(_, e)| e)
                .collect(),
        ),
        (
            "persisting",
            b.iter()
                .filter(|(k, _)| a.contains_key(*k))
                .map(|(_, e)| e)
                .collect(),
        ),
    ];
    let mut out = crate::output::stdout();
    if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "first": first, "second": second,
                "new": groups[0].1.len(), "resolved": groups[1].1.len(), "persisting": groups[2].1.len(),
            })
        )?;
    } else {
        writeln!(
            out,
            "{first} -> {second}: {} new, {} resolved, {} persisting",
            groups[0].1.len(),
            groups[1].1.len(),
            groups[2].1.len()
        )?;
    }
    let limit = limit.unwrap_or(if json { 0 } else { TABLE_ROWS as usize });
    for (group, entries) in &groups {
        let shown = if limit == 0 {
            entries.len()
        } else {
            limit.min(entries.len())
        };
        for e in &entries[..shown] {
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"group": group, "kind": e.kind, "key": e.key, "canonical_key": e.canonical_key, "columns": e.columns})
                )?;
            } else {
                writeln!(out, "  {group:<11} {:<14} {}", e.kind, e.key)?;
            }
        }
        if !json && shown < entries.len() {
            writeln!(
                out,
                "  {group:<11} … and {} more (use --limit 0 for all)",
                entries.len() - shown
            )?;
        }
    }
    Ok(u8::from(!groups[0].1.is_empty()))
}

/// One run: its summary and drift.
async fn runs_show(agent: String, run_id: String, output: OutputArgs) -> Result<u8> {
    let mut client = audit_client(&agent).await?;
    let summary: RunSummary = client
        .get_run(pb::GetRunRequest {
            run_id: run_id.clone(),
        })
        .await
        .with_context(|| format!("run {run_id}"))?
        .into_inner()
        .into();
    if summary.status == RunStatus::Incomplete {
        print_run(&mut client, &summary, &output, true).await?;
        return Ok(2);
    }
    if summary.status != RunStatus::Completed {
        print_summary(&summary, true, output.json)?;
        return Ok(2);
    }
    print_run(&mut client, &summary, &output, true).await?;
    Ok(if summary.drift() == 0 { 0 } else { 1 })
}

pub(crate) fn print_summary(s: &RunSummary, stats: bool, json: bool) -> Result<()> {
    if json {
        outln!("{}", serde_json::to_string(s)?);
        return Ok(());
    }
    outln!(
        "run {} {} ({} → {})",
        s.run_id,
        s.status,
        s.started_at,
        s.finished_at
    );
    // A side the run never described (it failed first) has no count: say
    // so rather than show 0 records.
    let records = |side: &arbor_agent::report::RunSide| {
        if side.root.is_empty() {
            "not described (the run stopped before)".to_owned()
        } else {
            format!("{} records", side.count)
        }
    };
    outln!(
        "  left  {} / {}: {}",
        s.left.agent,
        s.left.dataset,
        records(&s.left)
    );
    outln!(
        "  right {} / {}: {}",
        s.right.agent,
        s.right.dataset,
        records(&s.right)
    );
    if !s.error.is_empty() {
        outln!("  error: {}", s.error);
    }
    if s.status.found_all_keys() {
        if s.drift() == 0 {
            outln!("  in sync");
        } else {
            outln!(
                "  drift: {} missing on the left, {} missing on the right, {} changed",
                s.missing_left,
                s.missing_right,
                s.changed
            );
        }
    }
    if stats {
        let per = if s.drift() > 0 {
            s.cost.peer_bytes / s.drift()
        } else {
            0
        };
        outln!(
            "  cost: {} ms, {} round trips, {} levels, {} bytes with the peer ({} per drifting key)",
            s.cost.elapsed_ms,
            s.cost.round_trips,
            s.cost.levels,
            s.cost.peer_bytes,
            per
        );
    }
    Ok(())
}

pub(crate) async fn print_run(
    client: &mut AuditServiceClient<Authed>,
    summary: &RunSummary,
    output: &OutputArgs,
    stats: bool,
) -> Result<()> {
    if !output.csv {
        print_summary(summary, stats, output.json)?;
    }
    if summary.drift() == 0 {
        return Ok(());
    }
    let mut stream = client
        .stream_drift(pb::StreamDriftRequest {
            run_id: summary.run_id.clone(),
            limit: output.limit(),
            kinds: output.kinds.clone(),
            column: output.column.clone().unwrap_or_default(),
            ..Default::default()
        })
        .await
        .context("read the run's drift")?
        .into_inner();
    if output.csv {
        outln!("kind,key,columns");
    } else if !output.json {
        outln!();
        outln!("  {:<14} {:<40} COLUMNS", "KIND", "KEY");
    }
    let mut shown = 0u64;
    while let Some(entry) = stream.message().await.context("read the run's drift")? {
        let e: DriftEntry = entry.into();
        shown += 1;
        if output.json {
            outln!("{}", serde_json::to_string(&e)?);
        } else if output.csv {
            outln!(
                "{},{},{}",
                e.kind,
                csv_field(&e.key),
                csv_field(&e.columns.join(";"))
            );
        } else {
            outln!("  {:<14} {:<40} {}", e.kind, e.key, e.columns.join(", "));
        }
    }
    let filtered = !output.kinds.is_empty() || output.column.is_some();
    if !output.json && !output.csv && !filtered && shown < summary.drift() {
        outln!(
            "  … and {} more (use --limit 0 for all)",
            summary.drift() - shown
        );
    }
    Ok(())
}

pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
