//! Step 0 of AGP: a short item summary written by `p_sum` from raw metadata.

use std::collections::BTreeMap;

use super::Chat;
use super::prompt::{PromptName, render};
use crate::llm::{ChatRequest, LlmError, Message, Role};

/// The raw metadata text of an item: title, then text, then attributes, on one line each.
pub fn item_text(
    title: &str,
    text: Option<&str>,
    attributes: Option<&serde_json::Value>,
) -> String {
    let mut s = title.trim().to_string();
    if let Some(t) = text.map(str::trim).filter(|t| !t.is_empty()) {
        s.push_str(" | ");
        s.push_str(t);
    }
    if let Some(serde_json::Value::Object(map)) = attributes {
        for (k, v) in map {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            s.push_str(&format!(" | {k}: {v}"));
        }
    }
    s
}

/// Summarizes one item with `template` (a `p_sum` version).
pub async fn summarize(llm: &impl Chat, template: &str, item: &str) -> Result<String, LlmError> {
    let mut vars = BTreeMap::new();
    vars.insert("item", item.to_string());
    let mut req = ChatRequest::new(vec![
        Message::system(PromptName::PSum.system()),
        Message::user(render(template, &vars)),
    ]);
    req.max_tokens = Some(96);
    let resp = llm.chat(Role::Summarize, &req).await?;
    // Cut off by the token limit: end at the last whole sentence.
    let s = if resp.truncated() {
        super::length::complete_sentences(&resp.content)
    } else {
        resp.content.trim().to_string()
    };
    if s.is_empty() {
        return Err(LlmError::Garbage("empty summary".into()));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_text_joins_metadata() {
        let a = serde_json::json!({"platform": "GBA", "year": 2004});
        assert_eq!(
            item_text(" Zelda ", Some("RPG"), Some(&a)),
            "Zelda | RPG | platform: GBA | year: 2004"
        );
        assert_eq!(item_text("Zelda", Some(" "), None), "Zelda");
    }
}
