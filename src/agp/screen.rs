//! Screening of candidate prompts before they are scored (AGP.md, beyond the paper): a
//! candidate that is not a valid `p_gen`, is too long, or leaks the evaluation (names an item
//! title or user id of the data, or words such as "ground truth") is rejected unscored.

use super::prompt::{self, PromptName};

/// Words that give the evaluation away.
const LEAK_WORDS: [&str; 9] = [
    "ground truth",
    "ground-truth",
    "held-out",
    "held out",
    "heldout",
    "hold-out",
    "target item",
    "correct item",
    "test set",
];

/// Why a candidate is rejected before scoring, if it is: not a valid `p_gen`, too long, or
/// leaking (an item title or user id of the training data, or evaluation words).
pub fn screen(
    candidate: &str,
    max_words: usize,
    titles: &[String],
    users: &[String],
) -> Option<String> {
    if let Err(e) = prompt::validate(PromptName::PGen, candidate) {
        return Some(format!("invalid template: {e}"));
    }
    let words = candidate.split_whitespace().count();
    if words > max_words {
        return Some(format!("too long: {words} words (limit {max_words})"));
    }
    let lower = candidate.to_lowercase();
    if let Some(w) = LEAK_WORDS.iter().find(|w| lower.contains(*w)) {
        return Some(format!("leak: mentions {w:?}"));
    }
    if let Some(t) = titles
        .iter()
        .find(|t| t.chars().count() >= 8 && lower.contains(&t.to_lowercase()))
    {
        return Some(format!("leak: names the item title {t:?}"));
    }
    if let Some(u) = users
        .iter()
        .find(|u| u.chars().count() >= 4 && contains_word(&lower, &u.to_lowercase()))
    {
        return Some(format!("leak: names the user id {u:?}"));
    }
    None
}

/// Whether `needle` occurs in `hay` as a whole word.
fn contains_word(hay: &str, needle: &str) -> bool {
    hay.match_indices(needle).any(|(i, _)| {
        let before = hay[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric());
        let after = hay[i + needle.len()..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_alphanumeric());
        before && after
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screening_rejects_leaks_length_and_bad_templates() {
        let titles = vec![
            "Fire Emblem: The Sacred Stones".to_string(),
            "Halo".to_string(),
        ];
        let users = vec!["user_1234".to_string(), "7".to_string()];
        let ok = "Recent items:\n{{history}}\nDescribe the user's favourite genres.";
        assert_eq!(screen(ok, 100, &titles, &users), None);
        let why = |t: &str| screen(t, 100, &titles, &users).unwrap_or_default();
        assert!(why("Describe the user.").contains("invalid template"));
        assert!(why(&format!("{ok} {}", "word ".repeat(200))).contains("too long"));
        assert!(why(&format!("{ok} Make sure the ground truth item is first.")).contains("leak"));
        assert!(
            why(&format!(
                "{ok} Users who liked fire emblem: the sacred stones"
            ))
            .contains("item title")
        );
        assert!(why(&format!("{ok} especially user_1234")).contains("user id"));
        // Short titles and ids are not treated as leaks (too many false alarms), and a user
        // id inside another word is not that id.
        assert_eq!(
            screen(
                &format!("{ok} halo effects, 7 genres"),
                100,
                &titles,
                &users
            ),
            None
        );
        assert_eq!(
            screen(&format!("{ok} xuser_12345"), 100, &titles, &users),
            None
        );
    }
}
