//! The catalog and behaviour data model: items, interactions, and the validation rules that
//! the HTTP API and the bulk importer share (one set of limits, one set of messages).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

// Schema fields name these patterns (`pattern = "ID"`, `"TEXT"`, `"NO_NUL"`, `"LABEL"`);
// `http::openapi` expands the names, so each regex is written once, here.

/// JSON-schema pattern of an id (the rule `check_id` applies): no control characters, and at
/// least one character that is not a space.
pub const ID_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\u0000-\\u001F\\u007F-\\u009F \\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000\\uFEFF][^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// JSON-schema pattern of a required text (title, template): no NUL, and at least one
/// character that is not whitespace (`is_blank`).
pub const TEXT_PATTERN: &str = "^[^\\u0000]*[^\\u0000\\t-\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000\\uFEFF][^\\u0000]*$";

/// JSON-schema pattern of an optional text: no NUL.
pub const NO_NUL_PATTERN: &str = "^[^\\u0000]*$";

/// JSON-schema pattern of a label (the rule `agp::prompt::check_label` applies).
pub const LABEL_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

/// Whitespace as the schema patterns define it (Unicode White_Space and U+FEFF): a text made
/// only of these is blank.
pub fn is_blank(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
            | '\u{feff}'
    )
}

/// An item as clients send it (`PUT /v1/items`) and importers produce it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "i7", "title": "Fire Emblem: The Sacred Stones", "text": "Tactical RPG for the Game Boy Advance", "attributes": {"platform": "GBA"}}))]
pub struct NewItem {
    /// Caller-chosen id, unique per project.
    #[schema(min_length = 1, max_length = 256, pattern = "ID")]
    pub id: String,
    /// Display title; the LLM sees it.
    #[schema(min_length = 1, max_length = 1000, pattern = "TEXT")]
    pub title: String,
    /// Longer free text (description, categories); optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 20000, pattern = "NO_NUL")]
    pub text: Option<String>,
    /// Free-form JSON object of attributes; optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<serde_json::Value>,
}

/// One user-item event as clients send it (`POST /v1/interactions`) and importers produce it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"user_id": "u1", "item_id": "i7", "kind": "purchase", "value": 1.0, "timestamp": "2026-01-02T03:04:05Z"}))]
pub struct NewInteraction {
    #[schema(min_length = 1, max_length = 256, pattern = "ID")]
    pub user_id: String,
    #[schema(min_length = 1, max_length = 256, pattern = "ID")]
    pub item_id: String,
    /// Event kind (`view`, `purchase`, `rating`, ...); default `interaction`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 64, pattern = "ID")]
    pub kind: Option<String>,
    /// Numeric value (a rating, a dwell time); optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// When it happened (RFC 3339). Default: the time the server received it.
    /// Together with user, item and kind it identifies the event, so re-sending it is a no-op.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<DateTime<Utc>>,
}

/// Default event kind when none is given.
pub const DEFAULT_KIND: &str = "interaction";

/// Size limits shared by the API and the importer. Every violation names the field and limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_items_per_batch: usize,
    pub max_interactions_per_batch: usize,
    pub max_id_len: usize,
    pub max_title_len: usize,
    pub max_text_len: usize,
    pub max_attributes_bytes: usize,
    pub max_kind_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_items_per_batch: 1000,
            max_interactions_per_batch: 10_000,
            max_id_len: 256,
            max_title_len: 1_000,
            max_text_len: 20_000,
            max_attributes_bytes: 16_384,
            max_kind_len: 64,
        }
    }
}

/// A validation failure; the message names the offending field and the rule broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Checks an id-like field: not blank, at most `max` characters, no control characters
/// (`ID_PATTERN`).
pub fn check_id(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.chars().all(is_blank) {
        return Err(Invalid(format!("{field} must not be empty")));
    }
    if value.chars().count() > max {
        return Err(Invalid(format!(
            "{field} is {} characters long; the limit is {max}",
            value.chars().count()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    let n = value.chars().count();
    if n > max {
        return Err(Invalid(format!(
            "{field} is {n} characters long; the limit is {max}"
        )));
    }
    if value.contains('\0') {
        return Err(Invalid(format!("{field} must not contain NUL characters")));
    }
    Ok(())
}

/// Validates one item; `at` names its place (`items[3]`) in messages.
pub fn validate_item(at: &str, item: &NewItem, limits: &Limits) -> Result<(), Invalid> {
    check_id(&format!("{at}.id"), &item.id, limits.max_id_len)?;
    if item.title.chars().all(is_blank) {
        return Err(Invalid(format!("{at}.title must not be empty")));
    }
    check_len(&format!("{at}.title"), &item.title, limits.max_title_len)?;
    if let Some(text) = &item.text {
        check_len(&format!("{at}.text"), text, limits.max_text_len)?;
    }
    if let Some(attrs) = &item.attributes {
        if !attrs.is_object() {
            return Err(Invalid(format!("{at}.attributes must be a JSON object")));
        }
        let size = attrs.to_string().len();
        if size > limits.max_attributes_bytes {
            return Err(Invalid(format!(
                "{at}.attributes is {size} bytes as JSON; the limit is {}",
                limits.max_attributes_bytes
            )));
        }
        if has_huge_number(attrs) {
            return Err(Invalid(format!(
                "{at}.attributes holds a number of magnitude 1e300 or more; Postgres stores it exactly \
                 and it would not read back"
            )));
        }
        if attrs.to_string().contains("\\u0000") {
            return Err(Invalid(format!(
                "{at}.attributes must not contain NUL characters"
            )));
        }
    }
    Ok(())
}

/// Whether a JSON value holds a number too large to survive Postgres' exact decimal form
/// (a value near f64::MAX can round past it when read back).
fn has_huge_number(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => n
            .as_f64()
            .is_some_and(|x| !x.is_finite() || x.abs() >= 1e300),
        serde_json::Value::Array(a) => a.iter().any(has_huge_number),
        serde_json::Value::Object(o) => o.values().any(has_huge_number),
        _ => false,
    }
}

/// Validates a batch of items: size, each item, and no id twice.
pub fn validate_items(items: &[NewItem], limits: &Limits) -> Result<(), Invalid> {
    if items.is_empty() {
        return Err(Invalid("items must contain at least one item".into()));
    }
    if items.len() > limits.max_items_per_batch {
        return Err(Invalid(format!(
            "items has {} entries; the limit is {} per batch",
            items.len(),
            limits.max_items_per_batch
        )));
    }
    let mut seen = HashSet::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        validate_item(&format!("items[{i}]"), item, limits)?;
        if !seen.insert(item.id.as_str()) {
            return Err(Invalid(format!(
                "items[{i}].id {:?} appears more than once in the batch",
                item.id
            )));
        }
    }
    Ok(())
}

/// Validates one interaction; `at` names its place in messages.
pub fn validate_interaction(at: &str, it: &NewInteraction, limits: &Limits) -> Result<(), Invalid> {
    check_id(&format!("{at}.user_id"), &it.user_id, limits.max_id_len)?;
    check_id(&format!("{at}.item_id"), &it.item_id, limits.max_id_len)?;
    if let Some(kind) = &it.kind {
        check_id(&format!("{at}.kind"), kind, limits.max_kind_len)?;
    }
    if let Some(v) = it.value
        && !v.is_finite()
    {
        return Err(Invalid(format!("{at}.value must be a finite number")));
    }
    Ok(())
}

/// Validates a batch of interactions (size and each entry). Whether item ids exist is the
/// store's check, made inside the write transaction.
pub fn validate_interactions(its: &[NewInteraction], limits: &Limits) -> Result<(), Invalid> {
    if its.is_empty() {
        return Err(Invalid(
            "interactions must contain at least one interaction".into(),
        ));
    }
    if its.len() > limits.max_interactions_per_batch {
        return Err(Invalid(format!(
            "interactions has {} entries; the limit is {} per batch",
            its.len(),
            limits.max_interactions_per_batch
        )));
    }
    for (i, it) in its.iter().enumerate() {
        validate_interaction(&format!("interactions[{i}]"), it, limits)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str) -> NewItem {
        NewItem {
            id: id.into(),
            title: "T".into(),
            text: None,
            attributes: None,
        }
    }

    #[test]
    fn duplicate_ids_in_batch_are_named() {
        let err =
            validate_items(&[item("a"), item("b"), item("a")], &Limits::default()).unwrap_err();
        assert!(err.0.contains("items[2].id \"a\""), "{err}");
    }

    #[test]
    fn over_long_title_names_limit() {
        let mut it = item("a");
        it.title = "x".repeat(1001);
        let err = validate_items(&[it], &Limits::default()).unwrap_err();
        assert_eq!(
            err.0,
            "items[0].title is 1001 characters long; the limit is 1000"
        );
    }

    #[test]
    fn empty_and_oversized_batches() {
        let l = Limits {
            max_items_per_batch: 2,
            ..Limits::default()
        };
        assert!(validate_items(&[], &l).is_err());
        assert!(
            validate_items(&[item("a"), item("b"), item("c")], &l)
                .unwrap_err()
                .0
                .contains("limit is 2")
        );
        assert!(validate_items(&[item("a"), item("b")], &l).is_ok());
    }

    #[test]
    fn attributes_must_be_object() {
        let mut it = item("a");
        it.attributes = Some(serde_json::json!([1, 2]));
        assert!(validate_items(&[it], &Limits::default()).is_err());
    }

    #[test]
    fn interaction_rules() {
        let good = NewInteraction {
            user_id: "u".into(),
            item_id: "i".into(),
            kind: None,
            value: Some(4.0),
            timestamp: None,
        };
        assert!(validate_interactions(std::slice::from_ref(&good), &Limits::default()).is_ok());
        let mut bad = good.clone();
        bad.user_id = " ".into();
        assert!(
            validate_interactions(&[bad], &Limits::default())
                .unwrap_err()
                .0
                .contains("user_id")
        );
        let mut bad = good;
        bad.value = Some(f64::NAN);
        assert!(validate_interactions(&[bad], &Limits::default()).is_err());
    }
}
