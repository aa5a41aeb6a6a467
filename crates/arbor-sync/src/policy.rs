//! Sync policies, pure: which side's row wins, or how two rows merge.
//!
//! Without a common ancestor a two-way sync cannot tell "changed here" from
//! "changed there"; a row that differs is settled by the rule alone:
//! `lww` orders the two rows by a version or updated_at column, `priority`
//! names a winning side, `ownership` takes each column from its owner (a
//! fallback rule for the rest), and `manual` never guesses.

use std::cmp::Ordering;
use std::collections::HashMap;

use arbor_record::Value;

/// One of the two synchronised datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// `--source` (the source of truth under one_way).
    Source,
    /// `--target`.
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// Why a rule left a row for a person (the reason its conflict shows).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsettled {
    /// The lww column is not one of the compared columns.
    #[error("lww column {column:?} is not a compared column")]
    NoSuchColumn {
        /// The column named.
        column: String,
    },
    /// A row's lww time is NULL.
    #[error(
        "lww: {column} is NULL on the {side} row: an edit by a writer that does not stamp it cannot be ordered"
    )]
    NullTime {
        /// The lww column.
        column: String,
        /// Whose row.
        side: Side,
    },
    /// A row's lww time lies beyond the allowed skew in the future.
    #[error(
        "lww: {column} on the {side} row is {ahead_secs}s in the future, beyond the allowed skew of {skew_secs}s"
    )]
    FutureTime {
        /// The lww column.
        column: String,
        /// Whose row.
        side: Side,
        /// How far ahead of now.
        ahead_secs: i64,
        /// The allowed skew.
        skew_secs: i64,
    },
    /// Both rows have the same lww value.
    #[error("lww: equal {column} on both sides")]
    Tie {
        /// The lww column.
        column: String,
    },
    /// The two lww values have no order (different kinds).
    #[error("lww: {column} values cannot be ordered")]
    Unordered {
        /// The lww column.
        column: String,
    },
    /// `manual` met a changed row.
    #[error("manual: changed on both sides")]
    Manual,
    /// `ownership` named as its own fallback.
    #[error("ownership cannot be a fallback")]
    NestedOwnership,
    /// `manual` met a delete on one side and a row on the other.
    #[error("manual: deleted on the {deleted_on} side, present on the other")]
    ManualDelete {
        /// Where it was deleted.
        deleted_on: Side,
    },
    /// The row a delete meets has a NULL lww time.
    #[error(
        "lww: {column} is NULL on the row the {deleted_on} side deleted, so the delete cannot be ordered against it"
    )]
    NullAgainstDelete {
        /// The lww column.
        column: String,
        /// Where it was deleted.
        deleted_on: Side,
    },
    /// The row a delete meets has an lww value that is no time.
    #[error(
        "lww: {column} ({value}) is not a time, so the delete on the {deleted_on} side cannot be ordered against it"
    )]
    NotATime {
        /// The lww column.
        column: String,
        /// Its value, shown.
        value: String,
        /// Where it was deleted.
        deleted_on: Side,
    },
    /// The row's lww time equals the delete's.
    #[error("lww: {column} equals the time of the delete on the {deleted_on} side")]
    TieWithDelete {
        /// The lww column.
        column: String,
        /// Where it was deleted.
        deleted_on: Side,
    },
}

/// What one_way does with records only the target has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Extra {
    /// Delete them: the source of truth does not have them.
    Delete,
    /// Leave them.
    Keep,
    /// Leave them and list them in the report.
    Report,
}

/// How two_way settles a row changed on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The side whose `column` (version or updated_at) is greater wins.
    Lww {
        /// Canonical name of the column.
        column: String,
    },
    /// This side wins.
    Priority(Side),
    /// Per canonical column, its owner's value; `fallback` decides the
    /// columns nobody owns.
    Ownership {
        /// Column → owning side.
        owners: HashMap<String, Side>,
        /// Lww or Priority.
        fallback: Box<Rule>,
    },
    /// Never guessed: reported for a person to settle.
    Manual,
}

/// `source` or `target`.
pub fn parse_side(s: &str) -> Result<Side, String> {
    match s {
        "source" => Ok(Side::Source),
        "target" => Ok(Side::Target),
        other => Err(format!(
            "{other:?} is not a side: expected source or target"
        )),
    }
}

/// `lww:COLUMN`, `priority:source|target` or `manual` (ownership needs its
/// owners, see [`Rule::Ownership`]).
pub fn parse_rule(s: &str) -> Result<Rule, String> {
    match s.split_once(':') {
        Some(("lww", col)) if !col.is_empty() => Ok(Rule::Lww {
            column: col.to_owned(),
        }),
        Some(("priority", side)) => Ok(Rule::Priority(parse_side(side)?)),
        None if s == "manual" => Ok(Rule::Manual),
        _ => Err(format!(
            "rule {s:?}: expected lww:COLUMN, priority:source|target, ownership or manual"
        )),
    }
}

/// A sync policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Nothing is written: the drift is listed (the default job policy
    /// next to production).
    Report,
    /// From the source of truth to the target.
    OneWay(Extra),
    /// Both sides take edits.
    TwoWay(Rule),
}

/// A policy from its text form, shared by the config, the CLI and gRPC:
/// `policy` is `report`, `one_way` or `two_way` (dashes allowed); one_way takes
/// `extra` (`delete`, `keep`, `report`: the default); two_way takes `rule`
/// (`lww:COLUMN`, `priority:SIDE`, `manual`, or `ownership` with `owners`,
/// canonical column → side, and a `fallback`, default `priority:source`).
/// An error names the offending field.
pub fn parse_policy(
    policy: &str,
    extra: Option<&str>,
    rule: Option<&str>,
    owners: &[(String, String)],
    fallback: Option<&str>,
) -> Result<Policy, (&'static str, String)> {
    match policy {
        "report" => Ok(Policy::Report),
        "one_way" | "one-way" => Ok(Policy::OneWay(match extra.unwrap_or("report") {
            "delete" => Extra::Delete,
            "keep" => Extra::Keep,
            "report" => Extra::Report,
            other => {
                return Err((
                    "extra",
                    format!("{other:?}: expected delete, keep or report"),
                ));
            }
        })),
        "two_way" | "two-way" => {
            let rule = rule.ok_or((
                "rule",
                "two_way needs a rule: lww:COLUMN, priority:SIDE, ownership or manual".to_string(),
            ))?;
            if rule != "ownership" {
                return parse_rule(rule)
                    .map(Policy::TwoWay)
                    .map_err(|e| ("rule", e));
            }
            if owners.is_empty() {
                return Err(("owners", "ownership needs at least one owned column".into()));
            }
            let owners = owners
                .iter()
                .map(|(c, side)| Ok((c.clone(), parse_side(side)?)))
                .collect::<Result<_, String>>()
                .map_err(|e| ("owners", e))?;
            let fallback =
                parse_rule(fallback.unwrap_or("priority:source")).map_err(|e| ("fallback", e))?;
            Ok(Policy::TwoWay(Rule::Ownership {
                owners,
                fallback: Box::new(fallback),
            }))
        }
        other => Err((
            "policy",
            format!("{other:?}: expected report, one_way or two_way"),
        )),
    }
}

/// Orders two version values (integers, timestamps, dates, decimals).
pub fn version_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Integer(x), Value::Integer(y)) => Some(x.cmp(y)),
        (Value::Timestamp(x), Value::Timestamp(y)) => Some(x.cmp(y)),
        (Value::Date(x), Value::Date(y)) => Some(x.cmp(y)),
        (Value::Decimal(x), Value::Decimal(y)) => {
            let (x, y) = (
                x.as_str().parse::<f64>().ok()?,
                y.as_str().parse::<f64>().ok()?,
            );
            x.partial_cmp(&y)
        }
        // A NULL version orders nothing: a writer that does not stamp the
        // column would otherwise always lose (see `winner`).
        _ => None,
    }
}

/// When `lww` times are judged: now, and how far ahead of it a time may lie
/// before it is reported as implausible rather than trusted (a clock an
/// hour fast would otherwise win every conflict for an hour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Now, µs since the Unix epoch.
    pub now_us: i64,
    /// The allowed skew, µs.
    pub max_skew_us: i64,
}

/// The default allowed skew of `lww` times: five minutes.
pub const DEFAULT_MAX_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

impl Clock {
    /// The system clock, allowing `max_skew`.
    pub fn now(max_skew: std::time::Duration) -> Clock {
        Clock {
            now_us: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64),
            max_skew_us: max_skew.as_micros().min(i64::MAX as u128) as i64,
        }
    }

    /// Checks an `lww` value of `side`'s row: NULL, or a time too far in
    /// the future, is reported, never decided.
    fn check(&self, column: &str, side: Side, v: &Value) -> Result<(), Unsettled> {
        if *v == Value::Null {
            return Err(Unsettled::NullTime {
                column: column.to_owned(),
                side,
            });
        }
        let Some(at_us) = instant_us(v) else {
            return Ok(());
        };
        let ahead = at_us.saturating_sub(self.now_us);
        if ahead > self.max_skew_us {
            return Err(Unsettled::FutureTime {
                column: column.to_owned(),
                side,
                ahead_secs: ahead / 1_000_000,
                skew_secs: self.max_skew_us / 1_000_000,
            });
        }
        Ok(())
    }
}

/// Microseconds in a day: a date orders as its midnight (UTC).
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// An `lww` value as an instant (µs since the Unix epoch), if it is a time.
fn instant_us(v: &Value) -> Option<i64> {
    match v {
        Value::Timestamp(t) => Some(t.0),
        Value::Date(d) => Some(i64::from(d.0) * MICROS_PER_DAY),
        _ => None,
    }
}

/// The index of the lww column among the compared ones.
fn lww_column(columns: &[String], column: &str) -> Result<usize, Unsettled> {
    columns
        .iter()
        .position(|c| c == column)
        .ok_or_else(|| Unsettled::NoSuchColumn {
            column: column.to_owned(),
        })
}

/// The winning side of a changed row under a whole-row rule.
pub fn winner(
    rule: &Rule,
    columns: &[String],
    s: &[Value],
    t: &[Value],
    clock: &Clock,
) -> Result<Side, Unsettled> {
    match rule {
        Rule::Priority(side) => Ok(*side),
        Rule::Lww { column } => {
            let i = lww_column(columns, column)?;
            clock.check(column, Side::Source, &s[i])?;
            clock.check(column, Side::Target, &t[i])?;
            let column = column.clone();
            match version_cmp(&s[i], &t[i]) {
                Some(Ordering::Greater) => Ok(Side::Source),
                Some(Ordering::Less) => Ok(Side::Target),
                Some(Ordering::Equal) => Err(Unsettled::Tie { column }),
                None => Err(Unsettled::Unordered { column }),
            }
        }
        Rule::Manual => Err(Unsettled::Manual),
        Rule::Ownership { .. } => Err(Unsettled::NestedOwnership),
    }
}

/// The row each side should hold after settling a changed row: `Ok((for
/// source, for target))` with `None` where that side keeps its row.
pub type Settled = (Option<Vec<Value>>, Option<Vec<Value>>);

pub fn settle(
    rule: &Rule,
    columns: &[String],
    s: &[Value],
    t: &[Value],
    clock: &Clock,
) -> Result<Settled, Unsettled> {
    let merged: Vec<Value> = match rule {
        Rule::Ownership { owners, fallback } => {
            // The fallback only matters if some column is unowned.
            let unowned = columns.iter().any(|c| !owners.contains_key(c));
            let fallback_side = if unowned {
                Some(winner(fallback, columns, s, t, clock)?)
            } else {
                None
            };
            columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let side = owners
                        .get(c)
                        .copied()
                        .or(fallback_side)
                        .unwrap_or(Side::Source);
                    match side {
                        Side::Source => s[i].clone(),
                        Side::Target => t[i].clone(),
                    }
                })
                .collect()
        }
        whole => match winner(whole, columns, s, t, clock)? {
            Side::Source => s.to_vec(),
            Side::Target => t.to_vec(),
        },
    };
    let to_source = (merged.as_slice() != s).then(|| merged.clone());
    let to_target = (merged.as_slice() != t).then_some(merged);
    Ok((to_source, to_target))
}

/// What becomes of a key one side holds while the other side's change
/// capture saw it deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The row stays and is copied to the side that deleted it.
    KeepRow,
    /// The delete stands and is carried to the side that holds the row.
    Delete,
}

/// Settles a delete on one side against the row the other side (`row_side`)
/// holds, like any other change:
///
/// * A tombstone never outranks a later write: a row inserted or updated
///   (`row_changed_at_us`, from that side's index) after the delete stays,
///   whatever the rule (a key deleted, propagated, then re-created).
/// * Otherwise `lww` compares the row's column with the delete's time (a
///   NULL or unorderable value is not guessed), `priority` decides by side,
///   `ownership` by its fallback, and `manual` never guesses: every delete
///   that meets a row is left for a person.
///
/// `Err` says why a person must decide.
pub fn settle_delete(
    rule: &Rule,
    columns: &[String],
    row_side: Side,
    row: &[Value],
    row_changed_at_us: Option<i64>,
    deleted_at_us: i64,
    clock: &Clock,
) -> Result<DeleteOutcome, Unsettled> {
    let deleted_on = match row_side {
        Side::Source => Side::Target,
        Side::Target => Side::Source,
    };
    if let Rule::Manual = rule {
        return Err(Unsettled::ManualDelete { deleted_on });
    }
    if row_changed_at_us.is_some_and(|at| at > deleted_at_us) {
        return Ok(DeleteOutcome::KeepRow);
    }
    let row_wins = |wins: bool| {
        if wins {
            DeleteOutcome::KeepRow
        } else {
            DeleteOutcome::Delete
        }
    };
    match rule {
        Rule::Priority(side) => Ok(row_wins(*side == row_side)),
        Rule::Ownership { fallback, .. } => settle_delete(
            fallback,
            columns,
            row_side,
            row,
            row_changed_at_us,
            deleted_at_us,
            clock,
        ),
        Rule::Lww { column } => {
            let i = lww_column(columns, column)?;
            let column = column.clone();
            let written_us = match (&row[i], instant_us(&row[i])) {
                (_, Some(us)) => us,
                (Value::Null, None) => {
                    return Err(Unsettled::NullAgainstDelete { column, deleted_on });
                }
                (other, None) => {
                    return Err(Unsettled::NotATime {
                        column,
                        value: other.to_string(),
                        deleted_on,
                    });
                }
            };
            // A time beyond the allowed skew is not trusted either.
            clock.check(&column, row_side, &row[i])?;
            match written_us.cmp(&deleted_at_us) {
                Ordering::Greater => Ok(DeleteOutcome::KeepRow),
                Ordering::Less => Ok(DeleteOutcome::Delete),
                Ordering::Equal => Err(Unsettled::TieWithDelete { column, deleted_on }),
            }
        }
        Rule::Manual => unreachable!("returned above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Far after every time the tests use.
    fn clock() -> Clock {
        Clock {
            now_us: 1 << 60,
            max_skew_us: 300_000_000,
        }
    }

    fn cols() -> Vec<String> {
        ["credit", "email", "version"].map(String::from).to_vec()
    }

    fn row(credit: i128, email: &str, version: i128) -> Vec<Value> {
        vec![
            Value::Integer(credit),
            Value::text(email),
            Value::Integer(version),
        ]
    }

    #[test]
    fn lww_takes_the_greater_version_and_leaves_ties_unresolved() {
        let rule = Rule::Lww {
            column: "version".into(),
        };
        let (s, t) = (row(1, "a", 5), row(2, "b", 7));
        assert_eq!(
            settle(&rule, &cols(), &s, &t, &clock()).unwrap(),
            (Some(t.clone()), None)
        );
        assert_eq!(
            settle(&rule, &cols(), &t, &s, &clock()).unwrap(),
            (None, Some(t.clone()))
        );
        assert!(settle(&rule, &cols(), &row(1, "a", 5), &row(2, "b", 5), &clock()).is_err());
        let missing = Rule::Lww {
            column: "nope".into(),
        };
        assert_eq!(
            settle(&missing, &cols(), &s, &t, &clock()).unwrap_err(),
            Unsettled::NoSuchColumn {
                column: "nope".into()
            }
        );
    }

    #[test]
    fn ownership_merges_per_column_and_writes_where_rows_differ() {
        let rule = Rule::Ownership {
            owners: HashMap::from([
                ("email".to_string(), Side::Source),
                ("credit".to_string(), Side::Target),
            ]),
            fallback: Box::new(Rule::Priority(Side::Source)),
        };
        let (s, t) = (row(1, "crm@x", 5), row(900, "erp@x", 7));
        let merged = row(900, "crm@x", 5);
        assert_eq!(
            settle(&rule, &cols(), &s, &t, &clock()).unwrap(),
            (Some(merged.clone()), Some(merged))
        );
        // Already merged on the target: only the source is written.
        let (s, t) = (row(1, "crm@x", 5), row(900, "crm@x", 5));
        assert_eq!(
            settle(&rule, &cols(), &s, &t, &clock()).unwrap(),
            (Some(t), None)
        );
    }

    #[test]
    fn a_delete_is_settled_by_the_rule_and_never_outranks_a_later_write() {
        use arbor_record::value::Timestamp;
        let cols = vec!["name".to_string(), "updated_at".to_string()];
        let row = |at: Option<i64>| {
            vec![
                Value::text("a"),
                at.map_or(Value::Null, |t| Value::Timestamp(Timestamp(t))),
            ]
        };
        let lww = Rule::Lww {
            column: "updated_at".into(),
        };
        let deleted = 1_000;
        let keep = Ok(DeleteOutcome::KeepRow);
        let delete = Ok(DeleteOutcome::Delete);
        // lww: the row's time against the delete's.
        assert_eq!(
            settle_delete(
                &lww,
                &cols,
                Side::Source,
                &row(Some(2_000)),
                None,
                deleted,
                &clock()
            ),
            keep
        );
        assert_eq!(
            settle_delete(
                &lww,
                &cols,
                Side::Source,
                &row(Some(500)),
                None,
                deleted,
                &clock()
            ),
            delete
        );
        let null = settle_delete(
            &lww,
            &cols,
            Side::Source,
            &row(None),
            None,
            deleted,
            &clock(),
        )
        .unwrap_err();
        assert_eq!(
            null,
            Unsettled::NullAgainstDelete {
                column: "updated_at".into(),
                deleted_on: Side::Target
            }
        );
        assert!(null.to_string().contains("target side"), "{null}");
        // A later write (seen by the row side's capture) always stays.
        for rule in [&lww, &Rule::Priority(Side::Target)] {
            assert_eq!(
                settle_delete(
                    rule,
                    &cols,
                    Side::Source,
                    &row(Some(500)),
                    Some(5_000),
                    deleted,
                    &clock()
                ),
                keep
            );
        }
        // priority decides by side.
        let p = Rule::Priority(Side::Target);
        assert_eq!(
            settle_delete(
                &p,
                &cols,
                Side::Source,
                &row(None),
                Some(10),
                deleted,
                &clock()
            ),
            delete
        );
        assert_eq!(
            settle_delete(&p, &cols, Side::Target, &row(None), None, deleted, &clock()),
            keep
        );
        // ownership by its fallback; manual never guesses.
        let own = Rule::Ownership {
            owners: HashMap::from([("name".to_string(), Side::Source)]),
            fallback: Box::new(Rule::Priority(Side::Source)),
        };
        assert_eq!(
            settle_delete(
                &own,
                &cols,
                Side::Source,
                &row(None),
                None,
                deleted,
                &clock()
            ),
            keep
        );
        assert!(
            settle_delete(
                &Rule::Manual,
                &cols,
                Side::Target,
                &row(None),
                Some(5_000),
                deleted,
                &clock()
            )
            .unwrap_err()
            .to_string()
            .contains("deleted on the source side")
        );
    }

    #[test]
    fn lww_reports_null_and_implausibly_future_times_instead_of_deciding() {
        use arbor_record::value::Timestamp;
        let cols = vec!["v".to_string(), "updated_at".to_string()];
        let lww = Rule::Lww {
            column: "updated_at".into(),
        };
        let clock = Clock {
            now_us: 1_000_000_000,
            max_skew_us: 300_000_000,
        };
        let row = |at: Option<i64>| {
            vec![
                Value::text("a"),
                at.map_or(Value::Null, |t| Value::Timestamp(Timestamp(t))),
            ]
        };
        let e = settle(&lww, &cols, &row(Some(5)), &row(None), &clock).unwrap_err();
        assert_eq!(
            e,
            Unsettled::NullTime {
                column: "updated_at".into(),
                side: Side::Target
            }
        );
        assert!(e.to_string().contains("NULL on the target row"), "{e}");
        // An hour ahead: reported; within the skew: decided.
        let ahead = clock.now_us + 3_600_000_000;
        let e = settle(&lww, &cols, &row(Some(ahead)), &row(Some(5)), &clock).unwrap_err();
        assert!(e.to_string().contains("3600s in the future"), "{e}");
        let near = clock.now_us + 60_000_000;
        assert_eq!(
            settle(&lww, &cols, &row(Some(near)), &row(Some(5)), &clock).unwrap(),
            (None, Some(row(Some(near))))
        );
        let e = settle_delete(
            &lww,
            &cols,
            Side::Target,
            &row(Some(ahead)),
            None,
            5,
            &clock,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                Unsettled::FutureTime {
                    side: Side::Target,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn manual_is_never_guessed_and_priority_always_decides() {
        let (s, t) = (row(1, "a", 1), row(2, "b", 2));
        assert!(settle(&Rule::Manual, &cols(), &s, &t, &clock()).is_err());
        assert_eq!(
            settle(&Rule::Priority(Side::Target), &cols(), &s, &t, &clock()).unwrap(),
            (Some(t), None)
        );
    }
}
