//! `report.md`: the report as Markdown for people.

use std::fmt::{self, Write as _};

use chrono::{DateTime, Utc};

use super::{Cost, MethodResult, Report, StepRow, one_line};
use crate::eval::metrics::Metrics;

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
    let kind = capitalize(r.kind.as_str()) + " run";
    let status = r.status.as_str();
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

    all_users(out, methods)?;

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

/// base-topk: the same methods over every evaluated user, the users whose held-out item was
/// outside the list counting as misses.
fn all_users(out: &mut String, methods: &[MethodResult]) -> fmt::Result {
    let rows: Vec<(&MethodResult, &Metrics)> = methods
        .iter()
        .filter_map(|m| m.all_users.as_ref().map(|a| (m, a)))
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "Over all evaluated users (a held-out item outside the list counts as a miss; mean over seeds; \
         the table above covers only the users whose item was in the list):\n"
    )?;
    writeln!(
        out,
        "| Method | NDCG@10 | HR@10 | MRR | Users (n) |\n|---|---:|---:|---:|---:|"
    )?;
    for (m, a) in rows {
        writeln!(
            out,
            "| {} | {:.4} | {:.4} | {:.4} | {} |",
            cell(&m.method),
            a.ndcg_10,
            a.hr_10,
            a.mrr,
            a.n
        )?;
    }
    writeln!(out)
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
pub(crate) fn group(n: u64) -> String {
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::*;
    use super::*;

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
        r.kind = crate::store::states::JobKind::Optimization;
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
}
