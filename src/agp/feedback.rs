//! Step 3 of AGP: a critique per user whose true item was not ranked first (`p_fb`), told
//! the profile, the candidates as ranked, the item the user chose and (position feedback,
//! the paper's first innovation) where it landed.

use std::collections::BTreeMap;

use super::Chat;
use super::case::{Case, CaseOutcome};
use super::prompt::{PromptName, render};
use crate::llm::{ChatRequest, Message, Role};

/// Item titles by id (what the critique prompt shows; an unknown id shows as itself).
pub type Titles = BTreeMap<String, String>;

fn title_of(titles: &Titles, id: &str) -> String {
    titles.get(id).cloned().unwrap_or_else(|| id.to_string())
}

/// The `p_fb` request for one user's outcome.
pub fn feedback_request(
    template: &str,
    current_prompt: &str,
    titles: &Titles,
    case: &Case,
    out: &CaseOutcome,
    position_feedback: bool,
) -> ChatRequest {
    let ranked: String = out
        .order
        .iter()
        .enumerate()
        .map(|(pos, &c)| format!("{}. {}\n", pos + 1, title_of(titles, &case.candidates[c])))
        .collect();
    let mut vars = BTreeMap::new();
    vars.insert(
        "profile",
        out.profile
            .as_deref()
            .map_or_else(|| "(no profile)".to_string(), |s| s.to_string()),
    );
    vars.insert("ranked", ranked);
    vars.insert("target", title_of(titles, &case.target));
    vars.insert(
        "position",
        if position_feedback {
            out.rank.to_string()
        } else {
            "somewhere below the first place".into()
        },
    );
    vars.insert("count", case.candidates.len().to_string());
    vars.insert("prompt", current_prompt.to_string());
    ChatRequest {
        max_tokens: Some(200),
        ..ChatRequest::new(vec![
            Message::system(PromptName::PFb.system()),
            Message::user(render(template, &vars)),
        ])
    }
}

/// One user's critique, or `None` when the call failed or the answer was empty.
pub async fn critique(
    llm: &impl Chat,
    template: &str,
    current_prompt: &str,
    titles: &Titles,
    case: &Case,
    out: &CaseOutcome,
    position_feedback: bool,
) -> Option<String> {
    let req = feedback_request(
        template,
        current_prompt,
        titles,
        case,
        out,
        position_feedback,
    );
    llm.chat(Role::Feedback, &req)
        .await
        .ok()
        .map(|r| {
            if r.truncated() {
                super::length::complete_sentences(&r.content)
            } else {
                r.content.trim().to_string()
            }
        })
        .filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agp::prompt::default_template;
    use std::sync::Arc;

    fn case() -> (Case, CaseOutcome, Titles) {
        let case = Case {
            user_id: "u1".into(),
            history: vec!["h".into()],
            target: "c".into(),
            candidates: vec!["a".into(), "b".into(), "c".into()],
        };
        let out = CaseOutcome {
            rank: 3,
            order: vec![1, 0, 2],
            profile: Some(Arc::new("Likes puzzles.".into())),
            repaired: false,
            failure: None,
            windows_without_logprobs: 0,
        };
        let titles: Titles = [("a", "Alpha"), ("b", "Beta"), ("c", "Gamma")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (case, out, titles)
    }

    #[test]
    fn feedback_shows_the_ranked_list_the_target_and_where_it_landed() {
        let (case, out, titles) = case();
        let r = feedback_request(
            default_template(PromptName::PFb),
            "P {{history}}",
            &titles,
            &case,
            &out,
            true,
        );
        let text = &r.messages[1].content;
        assert!(text.contains("1. Beta\n2. Alpha\n3. Gamma\n"), "{text}");
        assert!(text.contains("chose next was: Gamma"), "{text}");
        assert!(text.contains("ranked at position 3 of 3"), "{text}");
        assert!(text.contains("Likes puzzles.") && text.contains("P {{history}}"));
        assert_eq!(r.messages[0].content, PromptName::PFb.system());
    }

    #[test]
    fn without_position_feedback_the_rank_is_not_told() {
        let (case, out, titles) = case();
        let r = feedback_request(
            default_template(PromptName::PFb),
            "P",
            &titles,
            &case,
            &out,
            false,
        );
        let text = &r.messages[1].content;
        assert!(text.contains("somewhere below the first place"), "{text}");
        assert!(!text.contains("position 3"), "{text}");
    }
}
