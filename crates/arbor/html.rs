//! A run as one self-contained HTML file: summary, counts per kind and per
//! column, drift over the dataset's recent runs as an inline SVG chart, and
//! the first drifting keys. No scripts, no external assets: it opens in any
//! browser with no server, and mails as one attachment.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use arbor_agent::report::{DriftEntry, RunSummary};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report of `run`, with `history` (older runs of the same dataset,
/// any order) for the chart and `entries` (the first drifting keys).
pub fn render(run: &RunSummary, history: &[RunSummary], entries: &[DriftEntry]) -> String {
    let mut per_column: BTreeMap<&str, u64> = BTreeMap::new();
    for e in entries {
        for c in &e.columns {
            *per_column.entry(c.as_str()).or_default() += 1;
        }
    }
    let mut points: Vec<(&str, u64)> = history
        .iter()
        .chain(std::iter::once(run))
        .filter(|r| r.status == arbor_agent::report::RunStatus::Completed)
        .map(|r| (r.started_at.as_str(), r.drift()))
        .collect();
    points.sort();
    points.dedup();
    let chart = chart(&points);
    let mut rows = String::new();
    for e in entries {
        let _ = writeln!(
            rows,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            esc(&e.kind),
            esc(&e.key),
            esc(&e.columns.join(", "))
        );
    }
    let mut columns = String::new();
    for (c, n) in &per_column {
        let _ = writeln!(columns, "<tr><td>{}</td><td class=n>{n}</td></tr>", esc(c));
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>arbor run {run_id}</title>
<style>
body {{ font: 15px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }}
h1 {{ font-size: 1.4em; }} table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border-bottom: 1px solid #ddd; padding: .3em .8em; text-align: left; }}
.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
.cards {{ display: flex; gap: 1em; }} .card {{ background: #f3f6fa; padding: .8em 1.2em; border-radius: 6px; }}
.card b {{ display: block; font-size: 1.6em; }}
</style></head><body>
<h1>arbor run <span id="run-id">{run_id}</span></h1>
<p>{status} · {left_dataset} on {left_agent} ({left_count} records) vs {right_dataset} on {right_agent} ({right_count} records) · started {started} · {elapsed} ms, {round_trips} round trips</p>
<div class="cards">
<div class="card">missing on the left<b id="missing-left">{missing_left}</b></div>
<div class="card">missing on the right<b id="missing-right">{missing_right}</b></div>
<div class="card">changed<b id="changed">{changed}</b></div>
</div>
<h2>Drift over time</h2>
{chart}
<h2>Differing columns (first {shown} keys)</h2>
<table><tr><th>column</th><th>keys</th></tr>
{columns}</table>
<h2>First {shown} drifting keys</h2>
<table><tr><th>kind</th><th>key</th><th>columns</th></tr>
{rows}</table>
</body></html>
"#,
        run_id = esc(&run.run_id),
        status = esc(run.status.name()),
        left_dataset = esc(&run.left.dataset),
        left_agent = esc(&run.left.agent),
        left_count = run.left.count,
        right_dataset = esc(&run.right.dataset),
        right_agent = esc(&run.right.agent),
        right_count = run.right.count,
        started = esc(&run.started_at),
        elapsed = run.cost.elapsed_ms,
        round_trips = run.cost.round_trips,
        missing_left = run.missing_left,
        missing_right = run.missing_right,
        changed = run.changed,
        shown = entries.len(),
    )
}

/// Drift per run as a bar chart (inline SVG).
fn chart(points: &[(&str, u64)]) -> String {
    const W: f64 = 720.0;
    const H: f64 = 180.0;
    let max = points.iter().map(|p| p.1).max().unwrap_or(0).max(1) as f64;
    let bar = W / points.len().max(1) as f64;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{}" role="img" aria-label="drift per run">"##,
        H + 24.0
    );
    for (i, (at, n)) in points.iter().enumerate() {
        let h = (*n as f64 / max) * H;
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#3b82c4"><title>{}: {n}</title></rect>"##,
            i as f64 * bar + 2.0,
            H - h,
            (bar - 4.0).max(1.0),
            h,
            esc(at)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="0" y="{}" font-size="12">{} runs, most drift {}</text></svg>"##,
        H + 18.0,
        points.len(),
        max as u64
    );
    svg
}
