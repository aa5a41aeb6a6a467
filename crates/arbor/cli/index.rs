//! `arbor index` and `arbor capture`: build, verify, reset and inspect an
//! agent's indexes offline; drop a logical capture slot.

use crate::*;

/// The dataset an offline command names.
pub(crate) fn dataset_of<'a>(
    cfg: &'a AgentConfig,
    args: &IndexArgs,
) -> Result<&'a arbor_agent::config::DatasetConfig> {
    cfg.datasets
        .iter()
        .find(|d| d.name == args.dataset)
        .with_context(|| {
            format!(
                "no dataset {:?} in {}",
                args.dataset,
                args.config.config.display()
            )
        })
}

pub(crate) fn capture_drop(args: &IndexArgs, publication: bool) -> Result<u8> {
    use arbor_agent::config::{Capture, SourceConfig};
    let cfg = AgentConfig::load(&args.config.config, &Overrides::default())?;
    let d = dataset_of(&cfg, args)?;
    let (Capture::Logical(lc), SourceConfig::Postgres(db)) = (&d.capture, &d.source) else {
        anyhow::bail!("dataset {:?} does not use logical capture", d.name);
    };
    let mut capture = arbor_source::pglogical::LogicalCapture::new(
        db.url.clone(),
        lc.table.clone(),
        lc.filtered,
        d.mapping.clone(),
        arbor_source::pglogical::LogicalOptions {
            slot: lc.slot.clone(),
            publication: lc.publication.clone(),
            create: false,
            statement_timeout: db.options.statement_timeout,
        },
    );
    let existed = capture
        .drop_slot(publication)
        .with_context(|| format!("drop slot {:?} of dataset {:?}", lc.slot, d.name))?;
    if existed {
        outln!("slot {} dropped", lc.slot);
    } else {
        outln!("slot {} did not exist", lc.slot);
    }
    if publication {
        outln!("publication {} dropped (if it existed)", lc.publication);
    }
    Ok(0)
}

/// `arbor index reset`: removes every index of a dataset (the one under
/// its current key and any kept for a rotation). RocksDB's lock refuses it
/// while the agent runs.
pub(crate) fn index_reset(args: &IndexArgs) -> Result<u8> {
    let cfg = AgentConfig::load(&args.config.config, &Overrides::default())?;
    let d = dataset_of(&cfg, args)?;
    let first = maintain::index_path(&cfg, &d.name);
    let mut paths = vec![first.clone()];
    if let Some(dir) = first.parent()
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        let prefix = format!("{}.key-", d.name);
        paths.extend(
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix))
                }),
        );
    }
    let mut removed = 0;
    for path in paths.iter().filter(|p| p.exists()) {
        Index::destroy(path).map_err(|e| {
            let hint = arbor_agent::error::rebuild_hint(&d.name, &e);
            anyhow::Error::new(e).context(format!("remove {}{hint}", path.display()))
        })?;
        outln!("removed {}", path.display());
        removed += 1;
    }
    if removed == 0 {
        outln!(
            "dataset {} has no index under {}",
            d.name,
            cfg.data_dir.display()
        );
    } else {
        outln!(
            "the next agent start (or `arbor index build`) builds the index of {} from its system",
            d.name
        );
    }
    Ok(0)
}

pub(crate) fn index_command(command: IndexCommand) -> Result<u8> {
    let (args, what) = match &command {
        IndexCommand::Build(a) => (a, "build"),
        IndexCommand::Status(a) => (a, "status"),
        IndexCommand::Verify(a) => (a, "verify"),
        // Reset never opens the index: it may not match the config.
        IndexCommand::Reset(a) => return index_reset(a),
    };
    let cfg = AgentConfig::load(&args.config.config, &Overrides::default())?;
    let d = dataset_of(&cfg, args)?;
    let path = maintain::index_path(&cfg, &d.name);
    std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
    let index = Index::open(&path, arbor_agent::keys::index_config(d)).map_err(|e| {
        let hint = arbor_agent::error::rebuild_hint(&d.name, &e);
        anyhow::Error::new(e).context(format!(
            "open the index of {} at {}{hint}",
            d.name,
            path.display()
        ))
    })?;
    match what {
        "build" => {
            let mut source = maintain::open_source(d)?;
            let started = Instant::now();
            // A progress bar on a terminal; otherwise the index logs a line
            // every million records.
            let bar = std::io::stderr().is_terminal().then(|| {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} {elapsed} {human_pos} records ({per_sec})",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                bar
            });
            let progress = |n: u64| {
                if let Some(bar) = &bar {
                    bar.set_position(n);
                }
            };
            let built = maintain::build_from_source_with_progress(
                &index,
                source.as_mut(),
                !d.key_sensitive,
                &progress,
            );
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let stats = built.context("index build")?;
            let secs = started.elapsed().as_secs_f64();
            outln!(
                "indexed {} records of {} in {secs:.2}s ({:.0} records/s), depth {}, {} nodes, peak RSS {}",
                stats.records,
                d.name,
                stats.records as f64 / secs.max(1e-9),
                stats.depth,
                stats.nodes,
                peak_rss().map_or_else(|| "unknown".to_owned(), |m| format!("{m} MiB"))
            );
        }
        "status" => {
            let s = index
                .snapshot()
                .and_then(|s| s.describe())
                .context("read the index")?;
            outln!(
                "dataset {}: {} records, root {}, depth {}, key id {}",
                d.name,
                s.count(),
                hex::encode(s.root.sum.to_le_bytes()),
                s.stored_depth,
                s.key_id
            );
        }
        _ => {
            let r = index.verify().context("verify")?;
            outln!(
                "dataset {}: {} records, {} nodes checked, {} node mismatches, {} bad records",
                d.name,
                r.records,
                r.nodes,
                r.node_mismatches,
                r.bad_records
            );
            for m in &r.mismatches {
                outln!(
                    "  node {}: stored {} records, computed {}",
                    m.prefix,
                    m.stored.count,
                    m.computed.count
                );
            }
            for b in &r.records_with_problems {
                outln!("  record {}: {}", b.key, b.reason);
            }
            if !r.is_ok() {
                return Ok(1);
            }
        }
    }
    Ok(0)
}

/// Peak resident set of this process (Linux `VmHWM`), MiB.
pub(crate) fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024)
}
