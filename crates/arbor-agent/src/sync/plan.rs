//! Planning a sync run: compare, fetch the values the policy needs, decide
//! each drifting key's action, refuse a plan that changes too much.

use std::time::Instant;

use arbor_sync::DriftKind;
use arbor_sync::repair::SHARE_MIN_ROWS;

use super::execute::{batches, report_key_id};
use super::{
    Action, ActionKind, Batch, BatchOutcome, Clock, Compared, DeleteOutcome, Extra, Fetched,
    Policy, Rule, Side, SyncError, SyncOptions, SyncReport, SyncSides, Why, settle, settle_delete,
};
use crate::report::display_key;

/// The drift of a run: all of it, or only the keys the run settles.
pub(crate) async fn drift_of(
    opts: &SyncOptions,
    sides: &impl SyncSides,
) -> Result<Compared, SyncError> {
    let mut compared = sides.drift().await?;
    if let Some(only) = &opts.only_keys {
        compared.drift.retain(|d| only.contains(&d.key));
    }
    Ok(compared)
}

/// Refuses a plan that would update or delete more than `max_share` of a
/// side's records: a mass change is more often a wrong mapping or a wrong
/// source of truth than real drift. Inserts do not count (filling an empty
/// table is no risk to existing rows); `max_share` 1 allows anything.
pub(crate) fn check_share(
    actions: &[Action],
    rows: [u64; 2],
    max_share: f64,
) -> Result<(), SyncError> {
    for (side, rows) in [(Side::Source, rows[0]), (Side::Target, rows[1])] {
        let changed = actions
            .iter()
            .filter(|a| {
                a.side == side
                    && (a.action == ActionKind::Delete
                        || (a.action == ActionKind::Upsert && a.expected.is_some()))
            })
            .count() as u64;
        if rows >= SHARE_MIN_ROWS && changed as f64 > max_share * rows as f64 {
            return Err(SyncError::Invalid(format!(
                "the plan would update or delete {changed} of the {rows} records of the {side} \
                 ({:.1} %), more than the allowed share of {:.1} %: check the mapping and the \
                 source of truth, or allow more (--max-share, a job's max_share)",
                100.0 * changed as f64 / rows as f64,
                100.0 * max_share
            )));
        }
    }
    Ok(())
}

/// Compares and plans; fetches the values the plan writes. With `dry_run`
/// each written side renders its SQL.
pub async fn plan_with(
    opts: &SyncOptions,
    sides: &impl SyncSides,
    dry_run: bool,
) -> Result<(Vec<Action>, SyncReport), SyncError> {
    let started = Instant::now();
    let Compared {
        drift,
        key_id,
        rows,
    } = drift_of(opts, sides).await?;
    let mut report = SyncReport {
        run_id: crate::report::new_run_id(),
        key_id,
        drift: drift.len() as u64,
        compare_ms: started.elapsed().as_millis() as u64,
        ..SyncReport::default()
    };
    let two_way = matches!(opts.policy, Policy::TwoWay(_));
    if opts.policy == Policy::Report {
        let actions = listed(&drift);
        report.kept = actions.len() as u64;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        return Ok((actions, report));
    }
    let (from_source, from_target) = keys_to_fetch(&drift, two_way);
    let fetching = Instant::now();
    let mut source = sides.fetch(Side::Source, from_source).await?;
    let mut target = sides.fetch(Side::Target, from_target).await?;
    report.fetch_ms = fetching.elapsed().as_millis() as u64;
    if two_way
        && !source.columns.is_empty()
        && !target.columns.is_empty()
        && source.columns != target.columns
    {
        return Err(SyncError::Invalid(format!(
            "the two datasets name their columns differently ({:?} vs {:?})",
            source.columns, target.columns
        )));
    }
    let mut actions = decide(opts, &drift, &mut source, &mut target, &mut report);
    check_share(&actions, rows, opts.max_share)?;
    count_planned(&actions, &mut report);
    if dry_run {
        render_sql(opts, sides, &mut actions, report_key_id(&report)?).await?;
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok((actions, report))
}

/// A report plan: every drifting key listed, nothing fetched or written.
fn listed(drift: &[arbor_sync::Drift]) -> Vec<Action> {
    // Listed, never written: no values are fetched either.
    drift
        .iter()
        .map(|d| Action {
            action: ActionKind::Report,
            side: Side::Target,
            drift: match d.kind {
                DriftKind::MissingRight => Why::MissingOnTarget,
                DriftKind::MissingLeft => Why::OnlyOnTarget,
                DriftKind::Changed => Why::Changed,
            },
            key: display_key(&d.key),
            canonical_key: hex::encode(&d.key),
            reason: None,
            sql: None,
            key_bytes: d.key.clone(),
            expected: None,
            values: None,
            made_at_us: None,
        })
        .collect()
}

/// The keys whose values each side must hand over: (source, target).
fn keys_to_fetch(drift: &[arbor_sync::Drift], two_way: bool) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut from_source = Vec::new();
    let mut from_target = Vec::new();
    for d in drift {
        match d.kind {
            DriftKind::MissingRight => {
                from_source.push(d.key.clone());
                if two_way {
                    // Was it deleted on the target?
                    from_target.push(d.key.clone());
                }
            }
            DriftKind::MissingLeft if two_way => {
                from_target.push(d.key.clone());
                from_source.push(d.key.clone());
            }
            DriftKind::MissingLeft => {}
            DriftKind::Changed => {
                from_source.push(d.key.clone());
                if two_way {
                    from_target.push(d.key.clone());
                }
            }
        }
    }
    (from_source, from_target)
}

/// The action for each drifting key under the policy, from the values
/// both sides handed over; counts what could not be planned in `report`.
/// (Long on purpose: one match over drift kind and policy, so every rule
/// is read in one place.)
fn decide(
    opts: &SyncOptions,
    drift: &[arbor_sync::Drift],
    source: &mut Fetched,
    target: &mut Fetched,
    report: &mut SyncReport,
) -> Vec<Action> {
    let columns = if source.columns.is_empty() {
        target.columns.clone()
    } else {
        source.columns.clone()
    };
    // One clock for the whole plan: every lww time is judged against it.
    let clock = Clock::now(opts.max_skew);
    let mut actions = Vec::new();
    for d in drift {
        let base = |action: ActionKind, side: Side, drift: Why| Action {
            action,
            side,
            drift,
            key: display_key(&d.key),
            canonical_key: hex::encode(&d.key),
            reason: None,
            sql: None,
            key_bytes: d.key.clone(),
            expected: match side {
                Side::Source => d.left,
                Side::Target => d.right,
            },
            values: None,
            made_at_us: None,
        };
        let take = |f: &mut Fetched| f.rows.remove(&d.key).flatten();
        // When a side's row was last changed, as its index knows: a copy
        // carries it to the written side.
        let (made_on_source, made_on_target) = (
            source.changed.get(&d.key).copied(),
            target.changed.get(&d.key).copied(),
        );
        // Two-way: a key one side's capture saw deleted while the other side
        // holds it is settled by the rule (see `settle_delete`): the delete
        // is carried over, the row is copied back, or a person decides.
        if let (Policy::TwoWay(rule), DriftKind::MissingRight | DriftKind::MissingLeft) =
            (&opts.policy, d.kind)
        {
            let (tombs, rows, row_side) = match d.kind {
                DriftKind::MissingRight => (&*target, &*source, Side::Source),
                _ => (&*source, &*target, Side::Target),
            };
            let deleted_on = match row_side {
                Side::Source => Why::DeletedOnTarget,
                Side::Target => Why::DeletedOnSource,
            };
            if let Some(&deleted_at) = tombs.deleted.get(&d.key) {
                let Some(Some(row)) = rows.rows.get(&d.key) else {
                    report.vanished += 1;
                    continue;
                };
                let changed_at = rows.changed.get(&d.key).copied();
                match settle_delete(
                    rule, &columns, row_side, row, changed_at, deleted_at, &clock,
                ) {
                    Ok(DeleteOutcome::Delete) => {
                        // Carried with its own time: the written side's
                        // tombstone must not look newer than the delete.
                        actions.push(Action {
                            made_at_us: Some(deleted_at),
                            ..base(ActionKind::Delete, row_side, deleted_on)
                        });
                        continue;
                    }
                    // Copied to the deleting side below, like any one-sided row.
                    Ok(DeleteOutcome::KeepRow) => {}
                    Err(reason) => {
                        report.unresolved += 1;
                        if report.unresolved_keys.len() < 100 {
                            report.unresolved_keys.push(display_key(&d.key));
                        }
                        actions.push(Action {
                            reason: Some(reason.to_string()),
                            ..base(ActionKind::Unresolved, row_side, deleted_on)
                        });
                        continue;
                    }
                }
            }
        }
        match (d.kind, &opts.policy) {
            (_, Policy::Report) => unreachable!("report plans return above"),
            (DriftKind::MissingRight, _) => match take(source) {
                Some(v) => actions.push(Action {
                    values: Some(v),
                    made_at_us: made_on_source,
                    ..base(ActionKind::Upsert, Side::Target, Why::MissingOnTarget)
                }),
                None => report.vanished += 1,
            },
            (DriftKind::MissingLeft, Policy::OneWay(extra)) => actions.push(base(
                match extra {
                    Extra::Delete => ActionKind::Delete,
                    Extra::Keep => ActionKind::Keep,
                    Extra::Report => ActionKind::Report,
                },
                Side::Target,
                Why::OnlyOnTarget,
            )),
            (DriftKind::MissingLeft, Policy::TwoWay(_)) => match take(target) {
                Some(v) => actions.push(Action {
                    values: Some(v),
                    made_at_us: made_on_target,
                    ..base(ActionKind::Upsert, Side::Source, Why::MissingOnSource)
                }),
                None => report.vanished += 1,
            },
            (DriftKind::Changed, Policy::OneWay(_)) => match take(source) {
                Some(v) => actions.push(Action {
                    values: Some(v),
                    made_at_us: made_on_source,
                    ..base(ActionKind::Upsert, Side::Target, Why::Changed)
                }),
                None => report.vanished += 1,
            },
            (DriftKind::Changed, Policy::TwoWay(rule)) => {
                let (Some(s), Some(t)) = (take(source), take(target)) else {
                    report.vanished += 1;
                    continue;
                };
                // The settled row holds both sides' changes (a merge) or
                // the winner's: it is as new as the later of them.
                let made_at_us = made_on_source.max(made_on_target);
                match settle(rule, &columns, &s, &t, &clock) {
                    Ok((to_source, to_target)) => {
                        if let Some(v) = to_source {
                            actions.push(Action {
                                values: Some(v),
                                made_at_us,
                                ..base(ActionKind::Upsert, Side::Source, Why::Changed)
                            });
                        }
                        if let Some(v) = to_target {
                            actions.push(Action {
                                values: Some(v),
                                made_at_us,
                                ..base(ActionKind::Upsert, Side::Target, Why::Changed)
                            });
                        }
                    }
                    Err(reason) => {
                        report.unresolved += 1;
                        if report.unresolved_keys.len() < 100 {
                            report.unresolved_keys.push(display_key(&d.key));
                        }
                        // Say which side's capture saw a change, rather
                        // than call every difference an edit on both.
                        let reason = match rule {
                            Rule::Manual => manual_reason(
                                source.changed.contains_key(&d.key),
                                target.changed.contains_key(&d.key),
                            ),
                            _ => reason.to_string(),
                        };
                        actions.push(Action {
                            reason: Some(reason),
                            ..base(ActionKind::Unresolved, Side::Target, Why::Changed)
                        });
                    }
                }
            }
        }
    }
    actions
}

/// Counts the planned actions into `report`.
fn count_planned(actions: &[Action], report: &mut SyncReport) {
    for a in actions {
        match a.action {
            ActionKind::Upsert => report.planned_upserts += 1,
            ActionKind::Delete => report.planned_deletes += 1,
            ActionKind::Keep | ActionKind::Report => report.kept += 1,
            _ => {}
        }
        if a.writes() {
            match a.side {
                Side::Source => report.planned_to_source += 1,
                Side::Target => report.planned_to_target += 1,
            }
        }
    }
}

/// A dry run: each written side renders the SQL of its writes.
async fn render_sql(
    opts: &SyncOptions,
    sides: &impl SyncSides,
    actions: &mut [Action],
    key_id: Option<arbor_record::KeyId>,
) -> Result<(), SyncError> {
    for side in [Side::Source, Side::Target] {
        let writing: Vec<usize> = (0..actions.len())
            .filter(|&i| actions[i].writes() && actions[i].side == side)
            .collect();
        if writing.is_empty() {
            continue;
        }
        let chunks: Vec<Vec<usize>> = {
            let refs: Vec<&Action> = writing.iter().map(|&i| &actions[i]).collect();
            let mut at = 0;
            batches(&refs, opts.batch.max(1), |a| sides.write_bytes(side, a))?
                .into_iter()
                .map(|b| {
                    let chunk = writing[at..at + b.len()].to_vec();
                    at += b.len();
                    chunk
                })
                .collect()
        };
        for chunk in &chunks {
            let refs: Vec<&Action> = chunk.iter().map(|&i| &actions[i]).collect();
            let applied = sides
                .apply(
                    side,
                    Batch {
                        run_id: "",
                        number: 0,
                        writes: &refs,
                        dry_run: true,
                        key_id,
                    },
                )
                .await?;
            let sql: Vec<Option<String>> = applied
                .outcomes
                .into_iter()
                .map(|o| match o {
                    BatchOutcome::Planned(sql) => Some(sql),
                    _ => None,
                })
                .collect();
            for (&i, sql) in chunk.iter().zip(sql) {
                actions[i].sql = sql;
            }
        }
    }
    Ok(())
}

/// Why `manual` left a differing row: which side's change capture saw it
/// written since that side's index was built.
fn manual_reason(source_changed: bool, target_changed: bool) -> String {
    match (source_changed, target_changed) {
        (true, true) => "manual: changed on both sides".into(),
        (true, false) => {
            "manual: changed on the source side; the target's row is as first indexed".into()
        }
        (false, true) => {
            "manual: changed on the target side; the source's row is as first indexed".into()
        }
        (false, false) => {
            "manual: the rows differ, and neither side's capture saw either written".into()
        }
    }
}
