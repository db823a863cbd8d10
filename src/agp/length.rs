//! Keeping LLM outputs within their limits. Small models ignore length instructions, and an
//! answer cut off by `max_tokens` ends mid-sentence; rather than discard such an answer, it
//! is cut back at sentence or line boundaries, keeping the parts that must stay (a
//! template's required placeholders).

/// Words of a text (whitespace-separated).
pub fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// A piece of text that ends at a line or sentence boundary.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Segment<'a> {
    text: &'a str,
    /// The segment ends a line (a newline followed it).
    line_end: bool,
}

/// Splits a text into sentences (ending with `.`, `!` or `?` and then whitespace or the end)
/// within lines; boundaries stay with the segment they end.
fn segments(text: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.split('\n').collect();
    for (li, line) in lines.iter().enumerate() {
        let last_line = li + 1 == lines.len();
        let mut start = 0;
        let chars: Vec<(usize, char)> = line.char_indices().collect();
        for (k, &(i, c)) in chars.iter().enumerate() {
            let next = chars.get(k + 1).map(|x| x.1);
            if matches!(c, '.' | '!' | '?') && next.is_none_or(char::is_whitespace) {
                let end = i + c.len_utf8();
                out.push(Segment {
                    text: &line[start..end],
                    line_end: false,
                });
                start = end;
            }
        }
        let produced = start > 0;
        if start < line.len() || (!last_line && !produced) {
            out.push(Segment {
                text: &line[start..],
                line_end: !last_line,
            });
        } else if !last_line && let Some(last) = out.last_mut() {
            last.line_end = true;
        }
    }
    out
}

fn join(segs: &[Segment<'_>]) -> String {
    let mut s = String::new();
    for seg in segs {
        s.push_str(seg.text);
        if seg.line_end {
            s.push('\n');
        }
    }
    s.trim().to_string()
}

/// `text` cut to at most `max_words` at sentence or line boundaries, in its own order,
/// keeping every segment that holds one of `keep`; `None` when the kept segments alone do
/// not fit.
pub fn cut_to(text: &str, max_words: usize, keep: &[&str]) -> Option<String> {
    let segs = segments(text);
    let must = |s: &Segment<'_>| keep.iter().any(|k| s.text.contains(k));
    let mut reserved: usize = segs.iter().filter(|s| must(s)).map(|s| words(s.text)).sum();
    if reserved > max_words {
        return None;
    }
    let mut kept = Vec::new();
    let mut used = 0usize;
    let mut full = false;
    for seg in &segs {
        let w = words(seg.text);
        if must(seg) {
            reserved -= w;
            used += w;
            kept.push(*seg);
        } else if !full && used + reserved + w <= max_words {
            used += w;
            kept.push(*seg);
        } else {
            // Stop adding ordinary text at the first piece that does not fit (no holes).
            full = true;
            if let Some(last) = kept.last_mut() {
                last.line_end |= seg.line_end;
            }
        }
    }
    let out = join(&kept);
    (!out.is_empty()).then_some(out)
}

/// For an answer cut off by its token limit: the text up to its last complete sentence or
/// line (unchanged when it has none).
pub fn complete_sentences(text: &str) -> String {
    let segs = segments(text.trim());
    let Some(last) = segs.last() else {
        return text.trim().to_string();
    };
    let last_complete = last.line_end || last.text.trim_end().ends_with(['.', '!', '?']);
    if last_complete || segs.len() == 1 {
        return text.trim().to_string();
    }
    join(&segs[..segs.len() - 1])
}

/// Token budget for an answer of about `max_words` words (English runs about 1.3 tokens a
/// word; a margin for placeholders and punctuation).
pub fn tokens_for_words(max_words: usize) -> u32 {
    (max_words as u32).saturating_mul(3) / 2 + 32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_split_lines_and_sentences() {
        let s: Vec<&str> = segments("One. Two!\nThree\nv1.5 is a version. End")
            .iter()
            .map(|s| s.text)
            .collect();
        assert_eq!(s, ["One.", " Two!", "Three", "v1.5 is a version.", " End"]);
    }

    #[test]
    fn long_text_is_cut_at_boundaries_keeping_the_placeholder() {
        let text = format!(
            "Describe the user. {}.\nRecent items:\n{{{{history}}}}\n{}. Be brief.",
            "word ".repeat(30).trim(),
            "more ".repeat(30).trim()
        );
        let cut = cut_to(&text, 20, &["{{history}}"]).unwrap();
        assert!(words(&cut) <= 20, "{cut}");
        assert!(
            cut.contains("{{history}}") && cut.starts_with("Describe the user."),
            "{cut}"
        );
        assert!(
            !cut.contains("more"),
            "no hole is filled after a cut: {cut}"
        );
        // Short enough: unchanged.
        assert_eq!(
            cut_to("A {{history}} b.", 20, &["{{history}}"]).unwrap(),
            "A {{history}} b."
        );
        // The kept part alone is too long.
        assert_eq!(
            cut_to(
                &format!("{} {{{{history}}}}", "x ".repeat(30)),
                10,
                &["{{history}}"]
            ),
            None
        );
    }

    #[test]
    fn a_truncated_answer_ends_at_its_last_sentence() {
        assert_eq!(
            complete_sentences("Likes puzzles. Avoids sports. Prefers co-op gam"),
            "Likes puzzles. Avoids sports."
        );
        assert_eq!(
            complete_sentences("No boundary at all"),
            "No boundary at all"
        );
        assert_eq!(complete_sentences("Done."), "Done.");
        assert_eq!(complete_sentences("Line one\nline tw"), "Line one");
    }

    #[test]
    fn token_budget_follows_words() {
        assert_eq!(tokens_for_words(250), 407);
        assert!(tokens_for_words(20) > 20);
    }
}
