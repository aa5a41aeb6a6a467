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
        // A row with a version beats one without.
        (Value::Null, Value::Null) => None,
        (Value::Null, _) => Some(Ordering::Less),
        (_, Value::Null) => Some(Ordering::Greater),
        _ => None,
    }
}

/// The winning side of a changed row under a whole-row rule.
pub fn winner(rule: &Rule, columns: &[String], s: &[Value], t: &[Value]) -> Result<Side, String> {
    match rule {
        Rule::Priority(side) => Ok(*side),
        Rule::Lww { column } => {
            let i = columns
                .iter()
                .position(|c| c == column)
                .ok_or_else(|| format!("lww column {column:?} is not a compared column"))?;
            match version_cmp(&s[i], &t[i]) {
                Some(Ordering::Greater) => Ok(Side::Source),
                Some(Ordering::Less) => Ok(Side::Target),
                Some(Ordering::Equal) => Err(format!("lww: equal {column} on both sides")),
                None => Err(format!("lww: {column} values cannot be ordered")),
            }
        }
        Rule::Manual => Err("manual: changed on both sides".into()),
        Rule::Ownership { .. } => Err("ownership cannot be a fallback".into()),
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
) -> Result<Settled, String> {
    let merged: Vec<Value> = match rule {
        Rule::Ownership { owners, fallback } => {
            // The fallback only matters if some column is unowned.
            let unowned = columns.iter().any(|c| !owners.contains_key(c));
            let fallback_side = if unowned {
                Some(winner(fallback, columns, s, t)?)
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
        whole => match winner(whole, columns, s, t)? {
            Side::Source => s.to_vec(),
            Side::Target => t.to_vec(),
        },
    };
    let to_source = (merged.as_slice() != s).then(|| merged.clone());
    let to_target = (merged.as_slice() != t).then_some(merged);
    Ok((to_source, to_target))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            settle(&rule, &cols(), &s, &t).unwrap(),
            (Some(t.clone()), None)
        );
        assert_eq!(
            settle(&rule, &cols(), &t, &s).unwrap(),
            (None, Some(t.clone()))
        );
        assert!(settle(&rule, &cols(), &row(1, "a", 5), &row(2, "b", 5)).is_err());
        let missing = Rule::Lww {
            column: "nope".into(),
        };
        assert!(
            settle(&missing, &cols(), &s, &t)
                .unwrap_err()
                .contains("nope")
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
            settle(&rule, &cols(), &s, &t).unwrap(),
            (Some(merged.clone()), Some(merged))
        );
        // Already merged on the target: only the source is written.
        let (s, t) = (row(1, "crm@x", 5), row(900, "crm@x", 5));
        assert_eq!(settle(&rule, &cols(), &s, &t).unwrap(), (Some(t), None));
    }

    #[test]
    fn manual_is_never_guessed_and_priority_always_decides() {
        let (s, t) = (row(1, "a", 1), row(2, "b", 2));
        assert!(settle(&Rule::Manual, &cols(), &s, &t).is_err());
        assert_eq!(
            settle(&Rule::Priority(Side::Target), &cols(), &s, &t).unwrap(),
            (Some(t), None)
        );
    }
}
