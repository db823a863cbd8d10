//! Step 1 of AGP: a user profile written by `p_gen` from the user's last L items.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::Chat;
use super::prompt::{PromptName, render};
use crate::llm::{ChatRequest, LlmError, Message, Role};

/// Default number of recent items a profile is written from (the paper's best L).
pub const DEFAULT_HISTORY_LEN: usize = 5;

/// The history block of the prompt: one numbered line per item, oldest first.
pub fn history_block(items: &[&str]) -> String {
    items
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{}. {}\n", i + 1, flatten(t)))
        .collect()
}

fn flatten(t: &str) -> String {
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Hash of the exact history texts a profile is written from: keys the profile cache, so a
/// new interaction (or a changed summary) means a new profile.
pub fn history_hash(items: &[&str]) -> Vec<u8> {
    let mut h = Sha256::new();
    for t in items {
        h.update(t.as_bytes());
        h.update([0]);
    }
    h.finalize().to_vec()
}

/// Writes a profile with `template` (a `p_gen` version).
pub async fn generate(llm: &impl Chat, template: &str, items: &[&str]) -> Result<String, LlmError> {
    let mut vars = BTreeMap::new();
    vars.insert("history", history_block(items));
    vars.insert("count", items.len().to_string());
    let mut req = ChatRequest::new(vec![
        Message::system(PromptName::PGen.system()),
        Message::user(render(template, &vars)),
    ]);
    req.max_tokens = Some(160);
    let resp = llm.chat(Role::Profile, &req).await?;
    // Cut off by the token limit: end at the last whole sentence.
    let profile = if resp.truncated() {
        super::length::complete_sentences(&resp.content)
    } else {
        resp.content.trim().to_string()
    };
    if profile.is_empty() {
        return Err(LlmError::Garbage("empty profile".into()));
    }
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_block_and_hash() {
        assert_eq!(
            history_block(&["A  game", "B\nthing"]),
            "1. A game\n2. B thing\n"
        );
        assert_eq!(history_hash(&["a", "b"]), history_hash(&["a", "b"]));
        assert_ne!(history_hash(&["a", "b"]), history_hash(&["ab"]));
        assert_ne!(history_hash(&["a", "b"]), history_hash(&["b", "a"]));
    }
}
