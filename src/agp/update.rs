//! Steps 4 and 5 of AGP: one aggregated critique per batch (`p_agg`) and candidate rewrites
//! of `p_gen` (`p_opt`) that carry the batch's error count and an update strength from
//! where the true items landed (the position-aware signal).

use std::collections::BTreeMap;

use super::prompt::{self, PromptName, render};
use super::{Chat, length};
use crate::llm::{ChatRequest, LlmError, Message, Role};

/// The update strength (1..=10) from the batch's mean true-item rank among `k` candidates:
/// true items near the bottom ask for a large rewrite, near the top for a small edit.
pub fn update_strength(mean_rank: f64, k: usize) -> u32 {
    if k <= 1 {
        return 1;
    }
    let x = (mean_rank - 1.0) / (k as f64 - 1.0);
    (1.0 + 9.0 * x.clamp(0.0, 1.0)).round() as u32
}

/// Used when no user produced a critique (every feedback call failed).
pub const FALLBACK_CRITIQUE: &str =
    "Profiles should capture the user's specific preferences more precisely.";

/// The numbered list of critiques the aggregation prompt gets.
pub fn critique_list(critiques: &[String]) -> String {
    critiques
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{}. {}\n", i + 1, c.replace('\n', " ")))
        .collect()
}

/// The batch's critique: one `p_agg` answer over the per-user critiques (`aggregate`), or
/// the critiques listed as they are (the ablation); the list itself if the call fails.
pub async fn aggregate(
    llm: &impl Chat,
    template: &str,
    critiques: &[String],
    aggregate: bool,
) -> String {
    if critiques.is_empty() {
        return FALLBACK_CRITIQUE.to_string();
    }
    if !aggregate {
        return critiques
            .iter()
            .map(|c| format!("- {}", c.replace('\n', " ")))
            .collect::<Vec<_>>()
            .join("\n");
    }
    let mut vars = BTreeMap::new();
    vars.insert("critiques", critique_list(critiques));
    vars.insert("count", critiques.len().to_string());
    let req = ChatRequest {
        max_tokens: Some(300),
        ..ChatRequest::new(vec![
            Message::system(PromptName::PAgg.system()),
            Message::user(render(template, &vars)),
        ])
    };
    match llm.chat(Role::Aggregate, &req).await {
        Ok(r) if r.truncated() => length::complete_sentences(&r.content),
        Ok(r) if !r.content.trim().is_empty() => r.content.trim().to_string(),
        _ => critiques.join("\n"),
    }
}

/// What an update call is told about the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateInput<'a> {
    pub current: &'a str,
    pub critique: &'a str,
    pub errors: usize,
    pub batch_size: usize,
    pub strength: u32,
    /// `None` when position feedback is off (the ablation).
    pub mean_rank: Option<f64>,
    pub max_words: usize,
    pub temperature: f64,
}

/// The `p_opt` request for one candidate; `seed` makes each candidate different and
/// reproducible (a resumed job asks the same question and gets the cached answer).
pub fn update_request(template: &str, input: &UpdateInput<'_>, seed: u64) -> ChatRequest {
    let mut vars = BTreeMap::new();
    vars.insert("prompt", input.current.to_string());
    vars.insert("critique", input.critique.to_string());
    vars.insert("errors", input.errors.to_string());
    vars.insert("batch_size", input.batch_size.to_string());
    vars.insert("strength", input.strength.to_string());
    vars.insert(
        "mean_rank",
        input
            .mean_rank
            .map_or_else(|| "not shown".to_string(), |m| format!("{m:.2}")),
    );
    vars.insert("max_words", input.max_words.to_string());
    ChatRequest {
        temperature: Some(input.temperature as f32),
        seed: Some(seed),
        cache_seeded: true,
        // Room for about the word limit: a small model that ignores the limit is cut off
        // near it (and `fit_candidate` cuts the rest at sentence boundaries).
        max_tokens: Some(length::tokens_for_words(input.max_words)),
        ..ChatRequest::new(vec![
            Message::system(PromptName::POpt.system()),
            Message::user(render(template, &vars)),
        ])
    }
}

/// Asks for `n` candidates at once (the calls do not depend on each other), each cleaned.
pub async fn candidates(
    llm: &impl Chat,
    template: &str,
    input: &UpdateInput<'_>,
    seeds: &[u64],
) -> Vec<Result<String, LlmError>> {
    futures_util::future::join_all(seeds.iter().map(|&seed| {
        let req = update_request(template, input, seed);
        async move {
            llm.chat(Role::Optimize, &req)
                .await
                .map(|r| clean_candidate(&r.content))
        }
    }))
    .await
}

/// The candidate prompt from an update answer: code fences and surrounding quotes removed.
pub fn clean_candidate(answer: &str) -> String {
    let mut s = answer.trim();
    if let Some(rest) = s.strip_prefix("```") {
        s = rest.split_once('\n').map(|(_, r)| r).unwrap_or(rest);
        s = s.trim_end().strip_suffix("```").unwrap_or(s);
    }
    let s = s.trim();
    let s = s.strip_prefix("New instructions:").unwrap_or(s).trim();
    s.trim_matches('"').trim().to_string()
}

/// Brings a candidate under `max_words` by cutting it at sentence or line boundaries, keeping
/// its `{{history}}` placeholder; says what was done (`None`: it already fit). A candidate
/// that cannot be cut so (the placeholder's own sentence is too long) is left as it is, for
/// the screen to reject.
pub fn fit_candidate(candidate: String, max_words: usize) -> (String, Option<String>) {
    let before = length::words(&candidate);
    if before <= max_words {
        return (candidate, None);
    }
    match length::cut_to(&candidate, max_words, &["{{history}}"]) {
        Some(cut) => {
            let note = format!(
                "shortened from {before} to {} words at sentence boundaries",
                length::words(&cut)
            );
            (cut, Some(note))
        }
        None => (candidate, None),
    }
}

/// Appends the history block when a candidate lost its `{{history}}` placeholder; says whether
/// it did (weak models often drop it: the candidate is kept rather than wasted).
pub fn ensure_history_placeholder(candidate: String) -> (String, bool) {
    if prompt::placeholders(&candidate)
        .iter()
        .any(|p| p == "history")
        || candidate.trim().is_empty()
    {
        return (candidate, false);
    }
    (
        format!(
            "{}\n\nRecent items, oldest first:\n{{{{history}}}}",
            candidate.trim_end()
        ),
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strength_follows_the_mean_rank() {
        assert_eq!(update_strength(1.0, 20), 1);
        assert_eq!(update_strength(20.0, 20), 10);
        assert_eq!(update_strength(10.5, 20), 6);
        assert_eq!(update_strength(3.0, 1), 1);
        assert_eq!(update_strength(50.0, 20), 10, "clamped");
    }

    #[test]
    fn a_lost_placeholder_is_put_back() {
        let (t, added) = ensure_history_placeholder("Describe the user.".into());
        assert!(added && t.ends_with("{{history}}"), "{t}");
        assert!(prompt::validate(PromptName::PGen, &t).is_ok());
        let (t, added) = ensure_history_placeholder("Items: {{history}}".into());
        assert!(!added && t == "Items: {{history}}");
    }

    #[test]
    fn candidates_are_cleaned() {
        assert_eq!(
            clean_candidate("```\nHello {{history}}\n```"),
            "Hello {{history}}"
        );
        assert_eq!(
            clean_candidate("```text\nHello {{history}}```"),
            "Hello {{history}}"
        );
        assert_eq!(
            clean_candidate("New instructions: \"Hi {{history}}\""),
            "Hi {{history}}"
        );
    }

    #[test]
    fn update_requests_carry_the_batch_signal_and_hide_the_rank_when_off() {
        let mut input = UpdateInput {
            current: "CURRENT {{history}}",
            critique: "CRITIQUE",
            errors: 7,
            batch_size: 10,
            strength: 8,
            mean_rank: Some(12.345),
            max_words: 120,
            temperature: 0.7,
        };
        let t = prompt::default_template(PromptName::POpt);
        let r = update_request(t, &input, 99);
        let text = &r.messages[1].content;
        assert!(text.contains("CURRENT") && text.contains("CRITIQUE"));
        assert!(text.contains("from 7 of 10 users") && text.contains("12.35"));
        assert!(text.contains("strength: 8") && text.contains("under 120 words"));
        assert_eq!(
            (r.seed, r.cache_seeded, r.max_tokens),
            (Some(99), true, Some(212))
        );
        input.mean_rank = None;
        assert!(
            update_request(t, &input, 1).messages[1]
                .content
                .contains("not shown")
        );
    }

    #[test]
    fn a_long_candidate_is_cut_under_the_limit_and_says_so() {
        let long = format!(
            "Describe the user's tastes. {}\n\nRecent items, oldest first:\n{{{{history}}}}\n\n{}",
            "Mention genres and platforms they like. ".repeat(20),
            "Say what they avoid. ".repeat(20)
        );
        let n = length::words(&long);
        let (cut, note) = fit_candidate(long, 60);
        assert!(length::words(&cut) <= 60, "{cut}");
        assert!(cut.contains("{{history}}") && cut.starts_with("Describe the user's tastes."));
        assert_eq!(
            note.unwrap(),
            format!(
                "shortened from {n} to {} words at sentence boundaries",
                length::words(&cut)
            )
        );
        let (same, note) = fit_candidate("Short {{history}}.".into(), 60);
        assert_eq!((same.as_str(), note), ("Short {{history}}.", None));
    }

    #[test]
    fn critiques_are_listed_one_per_line() {
        assert_eq!(
            critique_list(&["a\nb".into(), "c".into()]),
            "1. a b\n2. c\n"
        );
    }
}
