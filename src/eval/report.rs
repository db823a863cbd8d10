//! The human-readable report of an evaluation or optimization run: `report.md` (Markdown for
//! people), `report.json` (the same data, machine-readable) and `chart.svg` (a hand-written
//! SVG chart: validation NDCG@10 per optimization step, NDCG@10 by method).

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::metrics::Metrics;

/// The metrics of one seed of a method.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq)]
pub struct SeedMetrics {
    pub seed: u64,
    pub metrics: Metrics,
}

/// One row of the results table: a method evaluated over one or more seeds.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct MethodResult {
    /// e.g. "base", "random", "popularity", "llm_no_profile", "llm_manual", "llm_pgen_v7".
    pub method: String,
    /// One line.
    pub description: String,
    pub per_seed: Vec<SeedMetrics>,
    pub mean: Metrics,
    /// Over seeds (0 with one seed).
    pub std: Metrics,
    /// LLM cost of this method.
    pub cost: Cost,
}

/// LLM usage and wall time.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq)]
pub struct Cost {
    pub llm_calls: u64,
    pub cache_hits: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub wall_ms: u64,
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        self.llm_calls += o.llm_calls;
        self.cache_hits += o.cache_hits;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.wall_ms += o.wall_ms;
    }
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(mut self, o: Cost) -> Cost {
        self += o;
        self
    }
}

impl std::iter::Sum for Cost {
    fn sum<I: Iterator<Item = Cost>>(iter: I) -> Cost {
        iter.fold(Cost::default(), |a, b| a + b)
    }
}

/// One optimization candidate (or the baseline row).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct StepRow {
    pub step: i32,
    pub epoch: i32,
    pub batch: i32,
    /// "baseline" | "candidate"
    pub kind: String,
    pub version: Option<i32>,
    pub accepted: Option<bool>,
    /// Why accepted/rejected, e.g. "batch mean rank 6.1 -> 5.2", "leak: names an item title".
    pub reason: String,
    pub batch_mean_rank: Option<f64>,
    pub validation_ndcg_10: Option<f64>,
    pub cost: Cost,
}

/// The cost of one stage (summaries, profiles, ranking, feedback, aggregation, update).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct StageCost {
    pub stage: String,
    pub cost: Cost,
}

/// A prompt template shown in full in the report.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct PromptShown {
    /// e.g. "baseline (manual) v1", "best v7".
    pub label: String,
    pub version: i32,
    pub template: String,
}

/// Everything the report shows.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Report {
    pub title: String,
    /// "evaluation" | "optimization"
    pub kind: String,
    pub job_id: String,
    /// succeeded | failed | cancelled
    pub status: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The request as run (protocol, users, seeds, batch size, ...).
    pub settings: serde_json::Value,
    /// e.g. "Yelp core-40 has no timestamps: a seeded random item was held out".
    pub data_notes: Vec<String>,
    /// Evaluation table (optimization: baseline vs best on the test split).
    pub methods: Vec<MethodResult>,
    /// Optimization history (empty for evaluations).
    pub steps: Vec<StepRow>,
    /// Cost per stage.
    pub stages: Vec<StageCost>,
    pub total_cost: Cost,
    pub prompts: Vec<PromptShown>,
    /// Headline sentences written by the runner.
    pub summary: Vec<String>,
}

/// Writes `report.md`, `report.json` and `chart.svg` into `dir` (created if missing); returns
/// the paths (in that order).
pub fn write_report(dir: &Path, r: &Report) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let md = dir.join("report.md");
    std::fs::write(&md, render_markdown(r))?;
    let json = dir.join("report.json");
    let mut text = serde_json::to_string_pretty(r).map_err(std::io::Error::other)?;
    text.push('\n');
    std::fs::write(&json, text)?;
    let svg = dir.join("chart.svg");
    std::fs::write(&svg, render_svg(r))?;
    Ok(vec![md, json, svg])
}

// ---------------------------------------------------------------------------------------------
// Markdown

/// A metric column of the results table.
struct Col {
    header: &'static str,
    get: fn(&Metrics) -> f64,
    decimals: usize,
    higher_is_better: bool,
}

const COLS: [Col; 8] = [
    Col {
        header: "NDCG@1",
        get: |m| m.ndcg_1,
        decimals: 3,
        higher_is_better: true,
    },
    Col {
        header: "NDCG@5",
        get: |m| m.ndcg_5,
        decimals: 3,
        higher_is_better: true,
    },
    Col {
        header: "NDCG@10",
        get: |m| m.ndcg_10,
        decimals: 3,
        higher_is_better: true,
    },
    Col {
        header: "HR@1",
        get: |m| m.hr_1,
        decimals: 3,
        higher_is_better: true,
    },
    Col {
        header: "HR@5",
        get: |m| m.hr_5,
        decimals: 3,
        higher_is_better: true,
    },
    Col {
        header: "HR@10",
        get: |m| m.hr_10,
        decimals: 3,
        higher_is_better: true,
    },
    Col {
        header: "MRR",
        get: |m| m.mrr,
        decimals: 3,
        higher_is_better: true,
    },
    Col {
        header: "Mean rank",
        get: |m| m.mean_rank,
        decimals: 2,
        higher_is_better: false,
    },
];

/// The Markdown alone (for tests and the CLI).
pub fn render_markdown(r: &Report) -> String {
    let mut out = String::new();
    markdown(r, &mut out).expect("writing to a String cannot fail");
    out
}

fn markdown(r: &Report, out: &mut String) -> fmt::Result {
    let title = if r.title.trim().is_empty() {
        "Run report"
    } else {
        r.title.trim()
    };
    writeln!(out, "# {}\n", one_line(title))?;
    header(r, out)?;

    writeln!(out, "## Summary\n")?;
    bullets(out, &r.summary, "No summary.")?;

    writeln!(out, "## Settings\n")?;
    settings(out, &r.settings)?;

    writeln!(out, "## Data\n")?;
    bullets(out, &r.data_notes, "No notes.")?;

    writeln!(out, "## Results\n")?;
    results(out, &r.methods)?;

    if !r.steps.is_empty() {
        writeln!(out, "## Optimization steps\n")?;
        steps(out, &r.steps)?;
    }

    writeln!(out, "## Cost\n")?;
    costs(out, r)?;

    writeln!(out, "## Prompts\n")?;
    if r.prompts.is_empty() {
        writeln!(out, "_No prompts shown._\n")?;
    }
    for p in &r.prompts {
        let label = if p.label.trim().is_empty() {
            "prompt"
        } else {
            p.label.trim()
        };
        if label.contains(&format!("v{}", p.version)) {
            writeln!(out, "### {}\n", one_line(label))?;
        } else {
            writeln!(out, "### {} (version {})\n", one_line(label), p.version)?;
        }
        let fence = "`".repeat(longest_backtick_run(&p.template).max(2) + 1);
        writeln!(
            out,
            "{fence}text\n{}\n{fence}\n",
            p.template.trim_end_matches('\n')
        )?;
    }
    Ok(())
}

fn header(r: &Report, out: &mut String) -> fmt::Result {
    let kind = match r.kind.trim() {
        "" => "Run".to_string(),
        k => capitalize(k) + " run",
    };
    let status = if r.status.trim().is_empty() {
        "unknown"
    } else {
        r.status.trim()
    };
    write!(
        out,
        "{} `{}`, status **{}**. ",
        one_line(&kind),
        code(&r.job_id),
        one_line(status)
    )?;
    let when = |t: Option<DateTime<Utc>>| match t {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => "not recorded".to_string(),
    };
    write!(
        out,
        "Started {}, finished {}",
        when(r.started_at),
        when(r.finished_at)
    )?;
    match (r.started_at, r.finished_at) {
        (Some(a), Some(b)) if b >= a => {
            writeln!(
                out,
                " (duration {}).\n",
                duration((b - a).num_milliseconds() as u64)
            )
        }
        _ => writeln!(out, ".\n"),
    }
}

fn bullets(out: &mut String, items: &[String], empty: &str) -> fmt::Result {
    let items: Vec<&String> = items.iter().filter(|s| !s.trim().is_empty()).collect();
    if items.is_empty() {
        return writeln!(out, "_{empty}_\n");
    }
    for s in items {
        writeln!(out, "- {}", one_line(s.trim()))?;
    }
    writeln!(out)
}

fn settings(out: &mut String, v: &serde_json::Value) -> fmt::Result {
    use serde_json::Value;
    let rows: Vec<(String, String)> = match v {
        Value::Null => Vec::new(),
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), json_cell(v))).collect(),
        other => vec![("value".to_string(), json_cell(other))],
    };
    if rows.is_empty() {
        return writeln!(out, "_None recorded._\n");
    }
    writeln!(out, "| Setting | Value |\n|---|---|")?;
    for (k, v) in rows {
        writeln!(out, "| {} | {} |", cell(&k), cell(&v))?;
    }
    writeln!(out)
}

/// A settings value as one short line: strings bare, everything else as compact JSON.
fn json_cell(v: &serde_json::Value) -> String {
    const MAX: usize = 100;
    let s = match v {
        serde_json::Value::Null => "—".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > MAX {
        s.chars().take(MAX - 1).collect::<String>() + "…"
    } else {
        s
    }
}

fn results(out: &mut String, methods: &[MethodResult]) -> fmt::Result {
    if methods.is_empty() {
        return writeln!(out, "_No results._\n");
    }
    let seeds = methods.iter().map(|m| m.per_seed.len()).max().unwrap_or(0);
    if seeds > 1 {
        writeln!(
            out,
            "Mean ± sample standard deviation over {seeds} seeds.\n"
        )?;
    }
    // Best value per column (compared as displayed, so displayed ties are all bold); only
    // meaningful with two methods or more.
    let best: Vec<Option<i64>> = COLS
        .iter()
        .map(|c| {
            let keys = methods
                .iter()
                .map(|m| (c.get)(&m.mean))
                .filter(|v| v.is_finite())
                .map(|v| key(v, c.decimals));
            if methods.len() < 2 {
                None
            } else if c.higher_is_better {
                keys.max()
            } else {
                keys.min()
            }
        })
        .collect();

    write!(out, "| Method |")?;
    for c in &COLS {
        write!(out, " {} |", c.header)?;
    }
    writeln!(out, " Users (n) | LLM calls |")?;
    writeln!(out, "|---|{}---:|---:|", "---:|".repeat(COLS.len()))?;
    for m in methods {
        write!(out, "| {} |", cell(&m.method))?;
        for (c, b) in COLS.iter().zip(&best) {
            let (mu, sd) = ((c.get)(&m.mean), (c.get)(&m.std));
            let d = c.decimals;
            let shown = format!("{mu:.d$}");
            let shown = if mu.is_finite() && *b == Some(key(mu, d)) {
                format!("**{shown}**")
            } else {
                shown
            };
            write!(out, " {shown} ± {sd:.d$} |")?;
        }
        writeln!(out, " {} | {} |", users(m), group(m.cost.llm_calls))?;
    }
    writeln!(out)?;

    let described: Vec<&MethodResult> = methods
        .iter()
        .filter(|m| !m.description.trim().is_empty())
        .collect();
    if !described.is_empty() {
        for m in described {
            writeln!(
                out,
                "- `{}`: {}",
                code(&m.method),
                one_line(m.description.trim())
            )?;
        }
        writeln!(out)?;
    }

    if seeds > 1 {
        writeln!(out, "### Per seed\n")?;
        write!(out, "| Method | Seed |")?;
        for c in &COLS {
            write!(out, " {} |", c.header)?;
        }
        writeln!(out, " Users (n) |")?;
        writeln!(out, "|---|---:|{}---:|", "---:|".repeat(COLS.len()))?;
        for m in methods {
            for s in &m.per_seed {
                write!(out, "| {} | {} |", cell(&m.method), s.seed)?;
                for c in &COLS {
                    let d = c.decimals;
                    write!(out, " {:.d$} |", (c.get)(&s.metrics))?;
                }
                writeln!(out, " {} |", s.metrics.n)?;
            }
        }
        writeln!(out)?;
    }
    Ok(())
}

/// Users evaluated per seed: one number, or a range when seeds differ (with no per-seed
/// values, `mean.n`).
fn users(m: &MethodResult) -> String {
    let ns = m.per_seed.iter().map(|s| s.metrics.n);
    match (ns.clone().min(), ns.max()) {
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a}–{b}"),
        _ => m.mean.n.to_string(),
    }
}

fn steps(out: &mut String, steps: &[StepRow]) -> fmt::Result {
    writeln!(
        out,
        "| Step | Epoch | Batch | Version | Accepted | Batch mean rank | Validation NDCG@10 | Reason | LLM calls |"
    )?;
    writeln!(out, "|---:|---:|---:|---|---|---:|---:|---|---:|")?;
    for s in steps {
        let version = match (s.version, s.kind.trim()) {
            (Some(v), "baseline") => format!("v{v} (baseline)"),
            (Some(v), _) => format!("v{v}"),
            (None, "baseline") => "baseline".to_string(),
            (None, _) => "—".to_string(),
        };
        let accepted = match s.accepted {
            Some(true) => "yes",
            Some(false) => "no",
            None => "—",
        };
        let opt = |v: Option<f64>, d: usize| v.map_or("—".to_string(), |v| format!("{v:.d$}"));
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.step,
            s.epoch,
            s.batch,
            version,
            accepted,
            opt(s.batch_mean_rank, 2),
            opt(s.validation_ndcg_10, 3),
            cell(s.reason.trim()),
            group(s.cost.llm_calls)
        )?;
    }
    writeln!(out)
}

fn costs(out: &mut String, r: &Report) -> fmt::Result {
    writeln!(
        out,
        "| Stage | LLM calls | Cache hits | Prompt tokens | Completion tokens | LLM time (s, summed over calls) |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
    let row = |out: &mut String, name: &str, c: &Cost| {
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.1} |",
            name,
            group(c.llm_calls),
            group(c.cache_hits),
            group(c.prompt_tokens),
            group(c.completion_tokens),
            c.wall_ms as f64 / 1000.0
        )
    };
    for s in &r.stages {
        row(out, &cell(&s.stage), &s.cost)?;
    }
    row(out, "**Total**", &r.total_cost)?;
    writeln!(out)
}

/// A table cell: one line, `|` escaped.
fn cell(s: &str) -> String {
    one_line(s).replace('|', "\\|")
}

/// Text on one line (newlines become spaces).
fn one_line(s: &str) -> String {
    s.split(['\r', '\n'])
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Text inside a single-backtick code span (in a table or not): no backticks, no `|`.
fn code(s: &str) -> String {
    cell(s).replace('`', "'")
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn longest_backtick_run(s: &str) -> usize {
    let (mut best, mut run) = (0, 0);
    for ch in s.chars() {
        run = if ch == '`' { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

/// A value rounded to `decimals`, as an integer (for comparing displayed values).
fn key(v: f64, decimals: usize) -> i64 {
    (v * 10f64.powi(decimals as i32)).round() as i64
}

/// `1234567` -> `1,234,567`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// `3723000` ms -> `1h 02m 03s`; under a minute, seconds with one decimal.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{:.1} s", ms as f64 / 1000.0),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m {:02}s", s / 3600, s / 60 % 60, s % 60),
    }
}

// ---------------------------------------------------------------------------------------------
// SVG

const WIDTH: f64 = 900.0;
const FONT: &str = "font-family=\"DejaVu Sans, Arial, Helvetica, sans-serif\"";
const GREEN: &str = "#2e9d4a";
const GREY: &str = "#9a9a9a";
const BLUE: &str = "#3b6fb6";
const PALETTE: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#edc948", "#9c755f",
];

/// The SVG alone.
pub fn render_svg(r: &Report) -> String {
    let mut body = String::new();
    let height = svg_body(r, &mut body).expect("writing to a String cannot fail");
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {WIDTH} {height:.0}\" {FONT} font-size=\"12\">\n<title>{}</title>\n\
         <path d=\"M0 0H{WIDTH}V{height:.0}H0Z\" fill=\"#ffffff\"/>\n{body}</svg>\n",
        xml(&r.title)
    );
    out
}

/// Draws the panels into `out`; returns the total height.
fn svg_body(r: &Report, out: &mut String) -> Result<f64, fmt::Error> {
    let mut y = 0.0;
    let title = if r.title.trim().is_empty() {
        "Run report"
    } else {
        r.title.trim()
    };
    writeln!(
        out,
        "<text x=\"20\" y=\"26\" font-size=\"16\" font-weight=\"bold\" fill=\"#222\">{}</text>",
        xml(&truncate(&one_line(title), 95))
    )?;
    y += 40.0;
    let points: Vec<&StepRow> = {
        let mut p: Vec<&StepRow> = r
            .steps
            .iter()
            .filter(|s| s.validation_ndcg_10.is_some_and(f64::is_finite))
            .collect();
        p.sort_by_key(|s| s.step);
        p
    };
    if !points.is_empty() {
        y = steps_panel(out, &r.steps, &points, y)?;
    }
    y = methods_panel(out, &r.methods, y)?;
    Ok(y + 10.0)
}

/// Top panel: validation NDCG@10 per step. Returns the y below the panel.
/// `points` are the steps with a validation value, in step order; the other steps get a
/// cross on the x axis.
fn steps_panel(
    out: &mut String,
    all: &[StepRow],
    points: &[&StepRow],
    y0: f64,
) -> Result<f64, fmt::Error> {
    let (left, right) = (80.0, WIDTH - 40.0);
    let (top, bottom) = (y0 + 40.0, y0 + 230.0);
    writeln!(out, "<g class=\"steps\">")?;
    writeln!(
        out,
        "<text x=\"20\" y=\"{:.1}\" font-size=\"14\" font-weight=\"bold\" fill=\"#222\">Validation NDCG@10 per step</text>",
        y0 + 18.0
    )?;
    // Legend (only the kinds present), right-aligned on the title line.
    let mut legend: Vec<(&str, &str)> = Vec::new();
    if points.iter().any(|s| s.accepted == Some(true)) {
        legend.push((GREEN, "accepted"));
    }
    if points.iter().any(|s| s.accepted == Some(false)) {
        legend.push((GREY, "rejected"));
    }
    if points.iter().any(|s| s.accepted.is_none()) {
        legend.push((BLUE, "baseline / not judged"));
    }
    let crosses = all
        .iter()
        .any(|s| !s.validation_ndcg_10.is_some_and(f64::is_finite));
    let mut lx = right;
    if crosses {
        let label = "no validation value";
        lx -= text_width(label, 12.0) + 30.0;
        writeln!(
            out,
            "<path d=\"M{:.1} {:.1}l8 8m0 -8l-8 8\" stroke=\"{GREY}\" stroke-width=\"2\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#333\">{label}</text>",
            lx + 2.0,
            y0 + 10.0,
            lx + 15.0,
            y0 + 18.0,
        )?;
    }
    for (color, label) in legend.iter().rev() {
        lx -= text_width(label, 12.0) + 30.0;
        writeln!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#333\">{}</text>",
            lx + 6.0,
            y0 + 14.0,
            lx + 15.0,
            y0 + 18.0,
            xml(label)
        )?;
    }

    let values: Vec<f64> = points.iter().filter_map(|s| s.validation_ndcg_10).collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (yticks, ystep) = nice_ticks(lo, hi);
    let (ymin, ymax) = (yticks[0], yticks[yticks.len() - 1]);
    let yd = decimals(ystep);
    let ypos = |v: f64| bottom - (v - ymin) / (ymax - ymin) * (bottom - top);
    for t in &yticks {
        let py = ypos(*t);
        writeln!(
            out,
            "<line x1=\"{left:.1}\" y1=\"{py:.1}\" x2=\"{right:.1}\" y2=\"{py:.1}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#444\">{t:.yd$}</text>",
            left - 6.0,
            py + 4.0
        )?;
    }

    let smin = all.iter().map(|s| s.step).min().unwrap_or(0);
    let smax = all.iter().map(|s| s.step).max().unwrap_or(0);
    let pad = 20.0;
    let xpos = |step: i32| {
        if smax == smin {
            (left + right) / 2.0
        } else {
            left + pad + (step - smin) as f64 / (smax - smin) as f64 * (right - left - 2.0 * pad)
        }
    };
    for t in int_ticks(smin, smax) {
        let px = xpos(t);
        writeln!(
            out,
            "<line x1=\"{px:.1}\" y1=\"{bottom:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#666\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">{t}</text>",
            bottom + 4.0,
            bottom + 17.0
        )?;
    }
    // Axes and axis titles.
    writeln!(
        out,
        "<path d=\"M{left:.1} {top:.1}V{bottom:.1}H{right:.1}\" fill=\"none\" stroke=\"#666\"/>"
    )?;
    writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">step</text>",
        (left + right) / 2.0,
        bottom + 34.0
    )?;
    let (ax, ay) = (22.0, (top + bottom) / 2.0);
    writeln!(
        out,
        "<text x=\"{ax:.1}\" y=\"{ay:.1}\" text-anchor=\"middle\" fill=\"#444\" transform=\"rotate(-90 {ax:.1} {ay:.1})\">NDCG@10</text>"
    )?;

    // The line through all points, then the dots (and their values when few).
    let path: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let v = s.validation_ndcg_10.unwrap_or(0.0);
            format!(
                "{}{:.1} {:.1}",
                if i == 0 { 'M' } else { 'L' },
                xpos(s.step),
                ypos(v)
            )
        })
        .collect();
    writeln!(
        out,
        "<path d=\"{}\" fill=\"none\" stroke=\"#7a8fa6\" stroke-width=\"1.5\"/>",
        path.join(" ")
    )?;
    for s in all
        .iter()
        .filter(|s| !s.validation_ndcg_10.is_some_and(f64::is_finite))
    {
        let (px, py) = (xpos(s.step), bottom - 10.0);
        let tip = format!(
            "step {}: no validation value{}",
            s.step,
            if s.reason.trim().is_empty() {
                String::new()
            } else {
                format!("; {}", one_line(&s.reason))
            }
        );
        writeln!(
            out,
            "<path d=\"M{:.1} {:.1}l8 8m0 -8l-8 8\" stroke=\"{GREY}\" stroke-width=\"2\"><title>{}</title></path>",
            px - 4.0,
            py - 4.0,
            xml(&tip)
        )?;
    }
    let label_values = points.len() <= 16;
    for s in points {
        let v = s.validation_ndcg_10.unwrap_or(0.0);
        let color = match s.accepted {
            Some(true) => GREEN,
            Some(false) => GREY,
            None => BLUE,
        };
        let (px, py) = (xpos(s.step), ypos(v));
        let tip = format!(
            "step {} ({}): validation NDCG@10 {v:.3}{}",
            s.step,
            match s.accepted {
                Some(true) => "accepted",
                Some(false) => "rejected",
                None => "baseline / not judged",
            },
            if s.reason.trim().is_empty() {
                String::new()
            } else {
                format!("; {}", one_line(&s.reason))
            }
        );
        writeln!(
            out,
            "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"5\" fill=\"{color}\" stroke=\"#ffffff\" stroke-width=\"1.5\"><title>{}</title></circle>",
            xml(&tip)
        )?;
        if label_values {
            writeln!(
                out,
                "<text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\" fill=\"#333\">{v:.3}</text>",
                py - 9.0
            )?;
        }
    }
    writeln!(out, "</g>")?;
    Ok(bottom + 50.0)
}

/// Bottom panel: NDCG@10 by method, horizontal bars with ± std whiskers. Returns the y below.
fn methods_panel(out: &mut String, methods: &[MethodResult], y0: f64) -> Result<f64, fmt::Error> {
    let seeds = methods.iter().map(|m| m.per_seed.len()).max().unwrap_or(0);
    let title = if seeds > 1 {
        format!("NDCG@10 by method (mean ± std over {seeds} seeds)")
    } else {
        "NDCG@10 by method".to_string()
    };
    writeln!(out, "<g class=\"methods\">")?;
    writeln!(
        out,
        "<text x=\"20\" y=\"{:.1}\" font-size=\"14\" font-weight=\"bold\" fill=\"#222\">{}</text>",
        y0 + 18.0,
        xml(&title)
    )?;
    if methods.is_empty() {
        writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"14\" fill=\"#888\">no data</text>\n</g>",
            WIDTH / 2.0,
            y0 + 70.0
        )?;
        return Ok(y0 + 100.0);
    }

    const MAX_LABEL: usize = 36;
    let names: Vec<String> = methods
        .iter()
        .map(|m| truncate_middle(&one_line(&m.method), MAX_LABEL))
        .collect();
    let label_w = names
        .iter()
        .map(|n| text_width(n, 12.0))
        .fold(60.0, f64::max);
    let left = 20.0 + label_w + 10.0;
    let right = WIDTH - 140.0; // room for the value labels
    let (row_h, bar_h) = (30.0, 18.0);
    let top = y0 + 36.0;
    let bottom = top + row_h * methods.len() as f64;

    let fin = |v: f64| if v.is_finite() { v } else { 0.0 };
    // NDCG is at most 1: whiskers past 1 are cut rather than stretching the scale.
    let hi = methods
        .iter()
        .map(|m| {
            let mu = fin(m.mean.ndcg_10);
            (mu + fin(m.std.ndcg_10).abs()).min(1.0).max(mu)
        })
        .fold(0.0, f64::max);
    let (xticks, xstep) = nice_ticks(0.0, if hi > 0.0 { hi } else { 1.0 });
    let xmax = xticks[xticks.len() - 1];
    let xd = decimals(xstep);
    let xpos = |v: f64| left + (v.clamp(0.0, xmax) / xmax) * (right - left);
    for t in &xticks {
        let px = xpos(*t);
        writeln!(
            out,
            "<line x1=\"{px:.1}\" y1=\"{top:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">{t:.xd$}</text>",
            bottom + 4.0,
            bottom + 18.0
        )?;
    }
    writeln!(
        out,
        "<path d=\"M{left:.1} {top:.1}V{bottom:.1}H{right:.1}\" fill=\"none\" stroke=\"#666\"/>"
    )?;
    writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">NDCG@10</text>",
        (left + right) / 2.0,
        bottom + 36.0
    )?;

    for (i, (m, name)) in methods.iter().zip(&names).enumerate() {
        let cy = top + row_h * i as f64 + row_h / 2.0;
        let (mu, sd) = (fin(m.mean.ndcg_10), fin(m.std.ndcg_10).abs());
        let color = PALETTE[i % PALETTE.len()];
        writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#222\">{}</text>",
            left - 8.0,
            cy + 4.0,
            xml(name)
        )?;
        let tip = if m.description.trim().is_empty() {
            m.method.clone()
        } else {
            format!("{}: {}", m.method, one_line(&m.description))
        };
        writeln!(
            out,
            "<rect x=\"{left:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bar_h:.1}\" fill=\"{color}\"><title>{}</title></rect>",
            cy - bar_h / 2.0,
            xpos(mu) - left,
            xml(&tip)
        )?;
        let mut end = xpos(mu);
        if sd > 0.0 {
            let (a, b) = (xpos(mu - sd), xpos(mu + sd));
            let (t, u) = (cy - 6.0, cy + 6.0);
            writeln!(
                out,
                "<path d=\"M{a:.1} {cy:.1}H{b:.1}M{a:.1} {t:.1}V{u:.1}M{b:.1} {t:.1}V{u:.1}\" fill=\"none\" stroke=\"#222\" stroke-width=\"1.2\"/>"
            )?;
            end = end.max(b);
        }
        let value = if seeds > 1 || sd > 0.0 {
            format!("{:.3} ± {:.3}", m.mean.ndcg_10, m.std.ndcg_10)
        } else {
            format!("{:.3}", m.mean.ndcg_10)
        };
        writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#222\">{}</text>",
            end + 6.0,
            cy + 4.0,
            xml(&value)
        )?;
    }
    writeln!(out, "</g>")?;
    Ok(bottom + 50.0)
}

/// 3–5 evenly spaced "nice" ticks (steps 1, 2, 2.5, 5 × 10^k) covering `[lo, hi]`; returns
/// the ticks and the step. Never empty, never a zero span.
fn nice_ticks(lo: f64, hi: f64) -> (Vec<f64>, f64) {
    let (mut lo, mut hi) = if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    if hi < lo {
        std::mem::swap(&mut lo, &mut hi);
    }
    if hi - lo < 1e-12 {
        let d = if lo.abs() > 1e-9 { lo.abs() * 0.1 } else { 0.1 };
        // Do not invent negative ticks for non-negative data.
        lo = if lo >= 0.0 { (lo - d).max(0.0) } else { lo - d };
        hi += d;
    }
    let base = 10f64.powf(((hi - lo) / 4.0).log10().floor() - 1.0);
    let eps = 1e-9;
    let mut chosen = None;
    'outer: for e in 0..4 {
        for m in [1.0, 2.0, 2.5, 5.0] {
            let step = base * 10f64.powi(e) * m;
            let a = (lo / step + eps).floor() as i64;
            let b = (hi / step - eps).ceil() as i64;
            if b - a < 5 {
                chosen = Some((step, a, b));
                break 'outer;
            }
        }
    }
    let (step, a, mut b) = chosen.unwrap_or((hi - lo, 0, 1));
    while b - a < 2 {
        b += 1;
    }
    ((a..=b).map(|i| i as f64 * step).collect(), step)
}

/// Integer ticks (at most ~12) covering `[lo, hi]`.
fn int_ticks(lo: i32, hi: i32) -> Vec<i32> {
    let span = (hi - lo).max(0) as i64;
    let step = [
        1i64, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000,
    ]
    .into_iter()
    .find(|s| span / s <= 12)
    .unwrap_or_else(|| (span / 10).max(1));
    let first = (lo as i64).div_euclid(step) * step;
    let first = if first < lo as i64 {
        first + step
    } else {
        first
    };
    (0..)
        .map(|i| first + i * step)
        .take_while(|&t| t <= hi as i64)
        .map(|t| t as i32)
        .collect()
}

/// Decimals needed to show multiples of `step` exactly.
fn decimals(step: f64) -> usize {
    (0..6)
        .find(|&d| {
            let x = step * 10f64.powi(d as i32);
            (x - x.round()).abs() < 1e-6
        })
        .unwrap_or(6)
}

/// Rough width of `s` in a sans-serif font of `size` px (a generous average glyph width).
fn text_width(s: &str, size: f64) -> f64 {
    s.chars()
        .map(|c| match c {
            'i' | 'j' | 'l' | '.' | ',' | ':' | ';' | '\'' | '|' | '!' => 0.3,
            'f' | 't' | 'r' | ' ' | '(' | ')' | '-' => 0.4,
            'm' | 'w' | 'M' | 'W' | '@' => 0.9,
            c if c.is_ascii_uppercase() => 0.7,
            _ => 0.6,
        })
        .sum::<f64>()
        * size
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() > max {
        s.chars().take(max - 1).collect::<String>() + "…"
    } else {
        s.to_string()
    }
}

/// At most `max` characters, cut in the middle so that both ends stay readable
/// (`llm_pgen_with_a_v…_number_4`).
fn truncate_middle(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max || max < 3 {
        return s.to_string();
    }
    let head = (max - 1) / 2;
    let tail = max - 1 - head;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(n - tail));
    out
}

/// XML text/attribute escaping.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab/newline are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::{from_ranks, mean_and_std};

    fn method(name: &str, seeds: &[(u64, &[usize])], calls: u64) -> MethodResult {
        let per_seed: Vec<SeedMetrics> = seeds
            .iter()
            .map(|(seed, ranks)| SeedMetrics {
                seed: *seed,
                metrics: from_ranks(ranks),
            })
            .collect();
        let (mean, std) = mean_and_std(&per_seed.iter().map(|s| s.metrics).collect::<Vec<_>>());
        MethodResult {
            method: name.to_string(),
            description: format!("the {name} method"),
            per_seed,
            mean,
            std,
            cost: Cost {
                llm_calls: calls,
                ..Cost::default()
            },
        }
    }

    fn eval_report() -> Report {
        Report {
            title: "Evaluation <Yelp> & co".into(),
            kind: "evaluation".into(),
            job_id: "job-1".into(),
            status: "succeeded".into(),
            settings: serde_json::json!({"protocol": "llmrank", "users": 200, "seeds": [1, 2]}),
            methods: vec![
                method("random", &[(1, &[5, 9, 12]), (2, &[7, 3, 11])], 0),
                method("llm_manual", &[(1, &[1, 2, 4]), (2, &[1, 3, 2])], 600),
            ],
            ..Report::default()
        }
    }

    #[test]
    fn markdown_has_table_methods_and_bold_best() {
        let r = eval_report();
        let md = render_markdown(&r);
        assert!(md.starts_with("# Evaluation <Yelp> & co\n"), "{md}");
        assert!(md.contains(
            "| Method | NDCG@1 | NDCG@5 | NDCG@10 | HR@1 | HR@5 | HR@10 | MRR | Mean rank | Users (n) | LLM calls |"
        ));
        assert!(md.contains("| random |") && md.contains("| llm_manual |"));
        // llm_manual is best everywhere: bold NDCG@10 mean, and the lowest mean rank.
        let row = md
            .lines()
            .find(|l| l.starts_with("| llm_manual |"))
            .unwrap();
        let ndcg10 = r.methods[1].mean.ndcg_10;
        assert!(row.contains(&format!("**{ndcg10:.3}** ±")), "{row}");
        assert!(
            row.contains(&format!("**{:.2}** ±", r.methods[1].mean.mean_rank)),
            "{row}"
        );
        let worse = md.lines().find(|l| l.starts_with("| random |")).unwrap();
        assert!(!worse.contains("**"), "{worse}");
        // Two seeds: a per-seed table; no steps: no steps table.
        assert!(md.contains("### Per seed"));
        assert!(!md.contains("## Optimization steps"));
        for h in [
            "## Summary",
            "## Settings",
            "## Data",
            "## Results",
            "## Cost",
            "## Prompts",
        ] {
            assert!(md.contains(h), "{h}");
        }
        assert!(md.contains("| protocol | llmrank |"));
        assert!(md.contains("| **Total** |"));
        // Section order.
        let pos = |s: &str| md.find(s).unwrap();
        assert!(pos("## Summary") < pos("## Settings") && pos("## Settings") < pos("## Data"));
        assert!(pos("## Data") < pos("## Results") && pos("## Results") < pos("## Cost"));
        assert!(pos("## Cost") < pos("## Prompts"));
    }

    #[test]
    fn markdown_steps_table_only_with_steps_and_escapes_pipes() {
        let mut r = eval_report();
        r.kind = "optimization".into();
        r.methods[0].method = "a|b".into();
        r.steps = vec![
            StepRow {
                step: 0,
                kind: "baseline".into(),
                version: Some(1),
                ..StepRow::default()
            },
            StepRow {
                step: 1,
                epoch: 1,
                batch: 1,
                kind: "candidate".into(),
                version: Some(2),
                accepted: Some(false),
                reason: "leak | names an item title".into(),
                batch_mean_rank: Some(6.1),
                validation_ndcg_10: Some(0.41),
                cost: Cost {
                    llm_calls: 1234,
                    ..Cost::default()
                },
            },
        ];
        r.prompts = vec![PromptShown {
            label: "best v2".into(),
            version: 2,
            template: "Describe ```the``` user".into(),
        }];
        let md = render_markdown(&r);
        assert!(md.contains("## Optimization steps"));
        assert!(md.contains("| a\\|b |"), "{md}");
        assert!(md.contains("| leak \\| names an item title |"), "{md}");
        assert!(
            md.contains("| 1 | 1 | 1 | v2 | no | 6.10 | 0.410 |"),
            "{md}"
        );
        assert!(md.contains("| 0 | 0 | 0 | v1 (baseline) | — |"), "{md}");
        assert!(md.contains("| 1,234 |"));
        assert!(
            md.contains("````text\nDescribe ```the``` user\n````"),
            "{md}"
        );
        assert!(md.contains("Optimization run `job-1`, status **succeeded**"));
    }

    #[test]
    fn markdown_header_duration_and_single_method() {
        let t0 = DateTime::parse_from_rfc3339("2025-03-01T10:00:00Z")
            .unwrap()
            .to_utc();
        let r = Report {
            started_at: Some(t0),
            finished_at: Some(t0 + chrono::Duration::seconds(3723)),
            methods: vec![method("base", &[(7, &[1, 2])], 0)],
            ..Report::default()
        };
        let md = render_markdown(&r);
        assert!(md.contains("Started 2025-03-01 10:00:00 UTC"), "{md}");
        assert!(md.contains("(duration 1h 02m 03s)"), "{md}");
        // One method: nothing to compare, no bold in the results; one seed: no per-seed table.
        let row = md.lines().find(|l| l.starts_with("| base |")).unwrap();
        assert!(!row.contains("**") && row.contains("| 2 | 0 |"), "{row}");
        assert!(!md.contains("### Per seed"));
        assert!(md.contains("_None recorded._") && !md.contains("_No results._"));
    }

    #[test]
    fn svg_bars_and_escaping() {
        let mut r = eval_report();
        r.methods[0].method = "a&b<c>".into();
        let svg = render_svg(&r);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), r.methods.len());
        assert!(svg.contains("a&amp;b&lt;c&gt;"));
        assert!(svg.contains("Evaluation &lt;Yelp&gt; &amp; co"));
        assert!(!svg.contains("a&b"));
        assert!(!svg.contains("no data"));
        // No steps: no top panel.
        assert!(!svg.contains("Validation NDCG@10 per step"));
        assert!(svg.contains("NDCG@10 by method"));
    }

    #[test]
    fn svg_empty_and_degenerate_data() {
        let svg = render_svg(&Report::default());
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("no data"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        assert_eq!(svg.matches("<rect").count(), 0);

        // One step with a value, all-zero metrics, a NaN: no division by zero in coordinates.
        let r = Report {
            steps: vec![StepRow {
                step: 3,
                validation_ndcg_10: Some(0.0),
                ..StepRow::default()
            }],
            methods: vec![MethodResult {
                method: "zero".into(),
                ..MethodResult::default()
            }],
            ..Report::default()
        };
        let svg = render_svg(&r);
        assert!(svg.contains("Validation NDCG@10 per step"));
        assert_eq!(svg.matches("<rect").count(), 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn ticks_are_nice() {
        for (lo, hi) in [
            (0.0, 1.0),
            (0.31, 0.47),
            (0.0, 0.0),
            (0.5, 0.5),
            (0.0, 0.0123),
            (2.0, 900.0),
        ] {
            let (t, step) = nice_ticks(lo, hi);
            assert!((3..=6).contains(&t.len()), "{lo} {hi}: {t:?}");
            assert!(step > 0.0 && t[0] <= lo.min(hi) + 1e-9 && *t.last().unwrap() >= hi - 1e-9);
        }
        assert_eq!(int_ticks(0, 5), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(int_ticks(3, 3), vec![3]);
        assert_eq!(int_ticks(1, 40), vec![5, 10, 15, 20, 25, 30, 35, 40]);
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(group(12), "12");
        assert_eq!(decimals(0.025), 3);
        assert_eq!(decimals(0.5), 1);
        assert_eq!(nice_ticks(0.0, 0.0).0[0], 0.0);
        assert_eq!(truncate_middle("abcdefghij", 5), "ab…ij");
        assert_eq!(truncate_middle("abc", 5), "abc");
    }

    #[test]
    fn write_report_writes_three_files() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("nested/run");
        let r = eval_report();
        let paths = write_report(&sub, &r).unwrap();
        let names: Vec<_> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["report.md", "report.json", "chart.svg"]);
        for p in &paths {
            assert!(std::fs::metadata(p).unwrap().len() > 0, "{p:?}");
        }
        let back: Report =
            serde_json::from_str(&std::fs::read_to_string(&paths[1]).unwrap()).unwrap();
        assert_eq!(back.methods.len(), 2);
        assert_eq!(back.methods[1].per_seed, r.methods[1].per_seed);
    }

    /// Renders a realistic sample to /tmp/sample-report/ (look at it: rsvg-convert chart.svg).
    #[test]
    #[ignore]
    fn sample_report() {
        let t0 = DateTime::parse_from_rfc3339("2025-05-12T08:30:00Z")
            .unwrap()
            .to_utc();
        let c = |calls: u64, hits: u64, secs: u64| Cost {
            llm_calls: calls,
            cache_hits: hits,
            prompt_tokens: calls * 1450,
            completion_tokens: calls * 210,
            wall_ms: secs * 1000,
        };
        let base = method(
            "llm_manual",
            &[
                (1, &[1, 3, 2, 6, 4, 9, 2, 1, 14, 5]),
                (2, &[2, 1, 5, 8, 3, 1, 11, 4, 2, 3]),
            ],
            400,
        );
        let best = method(
            "llm_pgen_v7",
            &[
                (1, &[1, 2, 1, 4, 3, 6, 2, 1, 9, 2]),
                (2, &[1, 1, 3, 6, 2, 1, 8, 2, 1, 3]),
            ],
            400,
        );
        let random = method(
            "random",
            &[
                (1, &[7, 12, 3, 18, 9, 5, 14, 2, 20, 11]),
                (2, &[4, 16, 9, 1, 13, 19, 6, 10, 8, 15]),
            ],
            0,
        );
        let step =
            |step, epoch, batch, version, accepted, reason: &str, rank, ndcg, calls| StepRow {
                step,
                epoch,
                batch,
                kind: if step == 0 { "baseline" } else { "candidate" }.into(),
                version,
                accepted,
                reason: reason.into(),
                batch_mean_rank: rank,
                validation_ndcg_10: ndcg,
                cost: c(calls, calls / 5, calls / 10),
            };
        let r = Report {
            title: "Optimization of the profile prompt — Yelp core-40 (llmrank, 20 candidates)".into(),
            kind: "optimization".into(),
            job_id: "7f3c2a10-5d4e-4b7a-9a51-0c2f3e8d9b11".into(),
            status: "succeeded".into(),
            started_at: Some(t0),
            finished_at: Some(t0 + chrono::Duration::seconds(2 * 3600 + 17 * 60 + 41)),
            settings: serde_json::json!({
                "protocol": "llmrank",
                "candidates": 20,
                "history_len": 20,
                "users": {"train": 120, "validation": 40, "test": 200},
                "seeds": [1, 2],
                "batch_size": 8,
                "epochs": 2,
                "model": "qwen2.5-7b-instruct | local",
            }),
            data_notes: vec![
                "Yelp core-40 has no timestamps: a seeded random item was held out".into(),
                "3 users with fewer than 5 interactions were skipped".into(),
            ],
            methods: vec![random, base, best],
            steps: vec![
                step(0, 0, 0, Some(1), None, "baseline (manual prompt)", Some(6.1), Some(0.512), 160),
                step(1, 1, 1, Some(2), Some(true), "batch mean rank 6.1 -> 5.2", Some(5.2), Some(0.538), 96),
                step(2, 1, 2, Some(3), Some(false), "leak: names an item title", None, None, 12),
                step(3, 1, 3, Some(4), Some(false), "batch mean rank 5.2 -> 5.6", Some(5.6), Some(0.529), 96),
                step(4, 2, 1, Some(5), Some(true), "batch mean rank 5.2 -> 4.7", Some(4.7), Some(0.561), 96),
                step(5, 2, 2, Some(7), Some(true), "batch mean rank 4.7 -> 4.4", Some(4.4), Some(0.574), 96),
            ],
            stages: vec![
                StageCost { stage: "summaries".into(), cost: c(360, 40, 410) },
                StageCost { stage: "profiles".into(), cost: c(520, 130, 980) },
                StageCost { stage: "ranking".into(), cost: c(1450, 300, 3120) },
                StageCost { stage: "feedback".into(), cost: c(96, 0, 420) },
                StageCost { stage: "aggregation".into(), cost: c(12, 0, 95) },
                StageCost { stage: "update".into(), cost: c(6, 0, 60) },
            ],
            total_cost: c(2444, 470, 5085),
            prompts: vec![
                PromptShown {
                    label: "baseline (manual) v1".into(),
                    version: 1,
                    template: "Describe the user's tastes from their history:\n{history}\n".into(),
                },
                PromptShown {
                    label: "best v7".into(),
                    version: 7,
                    template: "From the items below, write 3-5 short sentences on cuisine, price \
                               level and atmosphere the user prefers; never name an item.\n{history}"
                        .into(),
                },
            ],
            summary: vec![
                "Best prompt v7 reached validation NDCG@10 0.574 (baseline 0.512).".into(),
                "On the test split, NDCG@10 went from 0.55 to 0.66 (2 seeds).".into(),
            ],
        };
        let paths = write_report(Path::new("/tmp/sample-report"), &r).unwrap();
        assert_eq!(paths.len(), 3);
        // Also the evaluation-only variant and the empty one, for a look.
        let mut eval = r.clone();
        eval.kind = "evaluation".into();
        eval.steps.clear();
        std::fs::write("/tmp/sample-report/chart-eval.svg", render_svg(&eval)).unwrap();
        std::fs::write(
            "/tmp/sample-report/chart-empty.svg",
            render_svg(&Report::default()),
        )
        .unwrap();
        // Stress: many steps, long names, a huge spread, a NaN, negative steps.
        let mut stress = r.clone();
        stress.steps = (-1..40)
            .map(|i| StepRow {
                step: i,
                accepted: Some(i % 3 != 0),
                validation_ndcg_10: (i % 7 != 2).then(|| 0.4 + (i as f64 * 0.7).sin() * 0.05),
                ..StepRow::default()
            })
            .collect();
        stress.methods = (0..9usize)
            .map(|i| {
                let mut m = method(
                    &format!("llm_pgen_with_a_very_long_method_name_number_{i}"),
                    &[(1, &[1 + i, 2]), (2, &[3, 1 + 2 * i])],
                    10,
                );
                if i == 4 {
                    m.std.ndcg_10 = 0.9;
                }
                if i == 5 {
                    m.mean.ndcg_10 = f64::NAN;
                }
                m
            })
            .collect();
        std::fs::write("/tmp/sample-report/chart-stress.svg", render_svg(&stress)).unwrap();
    }
}
