//! The human-readable report of a job: the report model, `report.md` (Markdown for people,
//! `markdown`), `report.json` (the same data, machine-readable) and `chart.svg` (a
//! hand-written SVG chart, `svg`: validation NDCG@10 per optimization step, NDCG@10 by
//! method).

pub mod markdown;
pub mod svg;

pub use markdown::render_markdown;
pub use svg::render_svg;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::eval::metrics::Metrics;
use crate::store::states::{JobKind, JobStatus};

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
    /// base-topk only: the mean over every evaluated user, those whose held-out item was
    /// outside the list counting as misses (`mean` covers the users inside only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_users: Option<Metrics>,
    /// LLM cost of this method.
    pub cost: Cost,
}

pub use crate::llm::usage::Cost;

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
    pub kind: JobKind,
    pub job_id: String,
    pub status: JobStatus,
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

/// Text on one line (newlines become spaces).
pub(crate) fn one_line(s: &str) -> String {
    s.split(['\r', '\n'])
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::eval::metrics::{from_ranks, mean_and_std};

    pub fn method(name: &str, seeds: &[(u64, &[usize])], calls: u64) -> MethodResult {
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
            all_users: None,
            cost: Cost {
                llm_calls: calls,
                ..Cost::default()
            },
        }
    }

    pub fn eval_report() -> Report {
        Report {
            title: "Evaluation <Yelp> & co".into(),
            kind: JobKind::Evaluation,
            job_id: "job-1".into(),
            status: JobStatus::Succeeded,
            settings: serde_json::json!({"protocol": "llmrank", "users": 200, "seeds": [1, 2]}),
            methods: vec![
                method("random", &[(1, &[5, 9, 12]), (2, &[7, 3, 11])], 0),
                method("llm_manual", &[(1, &[1, 2, 4]), (2, &[1, 3, 2])], 600),
            ],
            ..Report::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

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
            kind: JobKind::Optimization,
            job_id: "7f3c2a10-5d4e-4b7a-9a51-0c2f3e8d9b11".into(),
            status: JobStatus::Succeeded,
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
        eval.kind = JobKind::Evaluation;
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
