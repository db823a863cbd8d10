//! Generic JSONL: one JSON object per line, either `{"item": {NewItem fields}}` or
//! `{"interaction": {NewInteraction fields}}`; blank lines are allowed. Several files (or a
//! directory of `*.jsonl` files, in name order) are read as one stream.
//!
//! Items may come after the interactions that use them; references are checked at the end and
//! the first dangling one (in file order) is reported with its file and line. An item line that
//! repeats an earlier one exactly is dropped; a different definition of the same id is an error.
//! Interactions keep their timestamps: a user whose events all carry one gets them sorted by
//! time, otherwise file order is kept. Repeats of an event (same user, item, kind and
//! timestamp) are dropped, keeping the first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    Dataset, Dedupe, Files, Finished, Histories, ImportError, Lines, display_list, file_name,
};
use crate::catalog::{NewInteraction, NewItem};

/// One line: exactly one of the two keys. (A struct of options rather than an externally
/// tagged enum, whose serde errors for `{}` or two keys are just "expected value".)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    item: Option<NewItem>,
    interaction: Option<NewInteraction>,
}

enum Entry {
    Item(NewItem),
    Interaction(NewInteraction),
}

/// serde_json's message without its "at line 1 column N" suffix (each JSONL line is parsed on
/// its own, so the line is ours and only the column is useful).
fn serde_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let bare = match full.rfind(" at line ") {
        Some(i) => &full[..i],
        None => full.as_str(),
    };
    format!("{bare} (column {})", e.column())
}

pub(super) fn read(fs: Files<'_>, paths: &[PathBuf]) -> Result<Dataset, ImportError> {
    let files = list_files(fs, paths)?;
    let mut gathered = Gathered::default();
    for (f, path) in files.iter().enumerate() {
        gathered.read_file(fs, &files, f, path)?;
    }
    gathered.check_references(&files)?;
    let Gathered {
        items,
        defined,
        repeated_items,
        interactions,
        ..
    } = gathered;

    let total = interactions.len();
    let untimed = interactions
        .iter()
        .filter(|i| i.timestamp.is_none())
        .count();
    let mut histories = Histories::default();
    for it in interactions {
        histories.push(it);
    }
    let finished = histories.finish(Dedupe::Event);

    let mut notes = vec![format!(
        "jsonl: {} items; {} users and {} interactions from {}",
        items.len(),
        finished.users,
        finished.interactions.len(),
        files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    )];
    notes.extend(order_note(total, untimed, &finished));
    if finished.mixed_users > 0 {
        notes.push(format!(
            "{} users mix timestamped and untimestamped events; their events stay in file order",
            finished.mixed_users
        ));
    }
    if repeated_items > 0 {
        notes.push(format!(
            "dropped {repeated_items} repeated identical item lines"
        ));
    }
    if finished.duplicates > 0 {
        notes.push(format!(
            "dropped {} repeated events (same user, item, kind and timestamp), keeping the first",
            finished.duplicates
        ));
    }
    notes.extend(unused_note(&items, &defined, &finished));
    Ok(Dataset {
        items,
        interactions: finished.interactions,
        notes,
    })
}

/// The files to read: explicit files as given, directories' `*.jsonl` files in name order.
fn list_files(fs: Files<'_>, paths: &[PathBuf]) -> Result<Vec<PathBuf>, ImportError> {
    let mut files: Vec<PathBuf> = Vec::new();
    for p in paths {
        if fs.is_dir(p) {
            files.extend(
                fs.list_dir(p)?
                    .into_iter()
                    .filter(|f| file_name(f).ends_with(".jsonl")),
            );
        } else {
            files.push(p.clone());
        }
    }
    if files.is_empty() {
        return Err(ImportError::paths(format!(
            "jsonl: no .jsonl files among {}",
            display_list(paths)
        )));
    }
    Ok(files)
}

/// Items and interactions of all files, with where each came from.
#[derive(Default)]
struct Gathered {
    items: Vec<NewItem>,
    /// id -> (slot, file, line) of its definition.
    defined: HashMap<String, (usize, usize, usize)>,
    repeated_items: usize,
    interactions: Vec<NewInteraction>,
    /// (file, line) of each interaction, for reporting dangling references.
    origins: Vec<(usize, usize)>,
}

impl Gathered {
    /// Reads `path`, the `f`-th of `files`.
    fn read_file(
        &mut self,
        fs: Files<'_>,
        files: &[PathBuf],
        f: usize,
        path: &Path,
    ) -> Result<(), ImportError> {
        let mut lines = Lines::open(fs, path)?;
        while let Some((line, text)) = lines.next_line()? {
            if text.trim().is_empty() {
                continue;
            }
            match parse_line(path, line, text)? {
                Entry::Item(item) => self.add_item(files, (f, line), item)?,
                Entry::Interaction(it) => {
                    self.interactions.push(it);
                    self.origins.push((f, line));
                }
            }
        }
        Ok(())
    }

    /// Adds an item defined at `(file, line)`; an exact repeat is counted, a different
    /// definition of the same id is an error.
    fn add_item(
        &mut self,
        files: &[PathBuf],
        (f, line): (usize, usize),
        item: NewItem,
    ) -> Result<(), ImportError> {
        match self.defined.get(&item.id) {
            Some(&(slot, df, dl)) => {
                if self.items[slot] == item {
                    self.repeated_items += 1;
                } else {
                    return Err(ImportError::parse(
                        &files[f],
                        line,
                        format!(
                            "item {:?} is already defined differently at {}:{dl}",
                            item.id,
                            files[df].display()
                        ),
                    ));
                }
            }
            None => {
                self.defined
                    .insert(item.id.clone(), (self.items.len(), f, line));
                self.items.push(item);
            }
        }
        Ok(())
    }

    /// Fails on the first interaction (in file order) whose item no line defines.
    fn check_references(&self, files: &[PathBuf]) -> Result<(), ImportError> {
        for (it, &(f, line)) in self.interactions.iter().zip(&self.origins) {
            if !self.defined.contains_key(it.item_id.as_str()) {
                return Err(ImportError::parse(
                    &files[f],
                    line,
                    format!(
                        "interaction refers to item {:?}, which no {{\"item\": ...}} line defines",
                        it.item_id
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Parses one non-blank line into an item or an interaction.
fn parse_line(path: &Path, line: usize, text: &str) -> Result<Entry, ImportError> {
    let shape = "expected {\"item\": {...}} or {\"interaction\": {...}}";
    if !text.trim_start().starts_with('{') {
        // (serde would read a JSON array positionally into `Line`.)
        return Err(ImportError::parse(
            path,
            line,
            format!("{shape}: the line is not a JSON object"),
        ));
    }
    let parsed: Line = serde_json::from_str(text)
        .map_err(|e| ImportError::parse(path, line, format!("{shape}: {}", serde_message(&e))))?;
    match parsed {
        Line {
            item: Some(item),
            interaction: None,
        } => Ok(Entry::Item(item)),
        Line {
            item: None,
            interaction: Some(it),
        } => Ok(Entry::Interaction(it)),
        Line {
            item: None,
            interaction: None,
        } => Err(ImportError::parse(
            path,
            line,
            format!("{shape}: neither key is set"),
        )),
        Line {
            item: Some(_),
            interaction: Some(_),
        } => Err(ImportError::parse(
            path,
            line,
            format!("{shape}: both keys are set; put each on its own line"),
        )),
    }
}

/// How histories are ordered, given how many of `total` interactions lack a timestamp.
fn order_note(total: usize, untimed: usize, finished: &Finished) -> Option<String> {
    if total == 0 {
        None
    } else if untimed == total {
        Some("no timestamps: history order is file order".into())
    } else if untimed == 0 {
        Some("history order: each user's events sorted by timestamp".into())
    } else {
        Some(format!(
            "{untimed} of {total} interactions have no timestamp (the writer assigns ordered ones); \
             {} users with all events timestamped were sorted by time",
            finished.sorted_users
        ))
    }
}

/// Counts the items no kept interaction uses (they are kept, but worth knowing).
fn unused_note(
    items: &[NewItem],
    defined: &HashMap<String, (usize, usize, usize)>,
    finished: &Finished,
) -> Option<String> {
    let mut used = vec![false; items.len()];
    for it in &finished.interactions {
        if let Some(&(slot, _, _)) = defined.get(it.item_id.as_str()) {
            used[slot] = true;
        }
    }
    let unused = used.iter().filter(|u| !**u).count();
    (unused > 0).then(|| {
        format!(
            "{unused} of {} items have no interactions (kept)",
            items.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_util::write;
    use super::super::{Format, read};

    #[test]
    fn reads_items_and_interactions() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "a.jsonl",
            br#"{"interaction": {"user_id": "u1", "item_id": "i2", "kind": "purchase", "value": 1.0, "timestamp": "2026-01-02T00:00:00Z"}}

{"item": {"id": "i1", "title": "One", "text": "first", "attributes": {"platform": "GBA"}}}
{"interaction": {"user_id": "u2", "item_id": "i1"}}
{"interaction": {"user_id": "u1", "item_id": "i1", "timestamp": "2026-01-01T00:00:00Z"}}
{"interaction": {"user_id": "u1", "item_id": "i1", "timestamp": "2026-01-01T00:00:00Z"}}
{"item": {"id": "i2", "title": "Two"}}
{"item": {"id": "i3", "title": "Three"}}
{"item": {"id": "i2", "title": "Two"}}
"#,
        );
        let ds = read(Format::Jsonl, &[p]).unwrap();
        let ids: Vec<&str> = ds.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["i1", "i2", "i3"]);
        assert_eq!(
            ds.items[0].attributes,
            Some(serde_json::json!({"platform": "GBA"}))
        );
        let got: Vec<(&str, &str)> = ds
            .interactions
            .iter()
            .map(|i| (i.user_id.as_str(), i.item_id.as_str()))
            .collect();
        // u1 first appeared first; its events are sorted by time.
        assert_eq!(got, [("u1", "i1"), ("u1", "i2"), ("u2", "i1")]);
        assert_eq!(ds.interactions[1].kind.as_deref(), Some("purchase"));
        assert_eq!(
            ds.interactions[1].timestamp.unwrap().to_rfc3339(),
            "2026-01-02T00:00:00+00:00"
        );
        assert_eq!(ds.interactions[2].kind, None);
        let notes = ds.notes.join("\n");
        for want in [
            "1 of 4 interactions have no timestamp",
            "dropped 1 repeated identical item",
            "dropped 1 repeated events",
            "1 of 3 items have no interactions",
        ] {
            assert!(notes.contains(want), "{want} not in {notes}");
        }
    }

    #[test]
    fn dangling_reference_names_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "a.jsonl",
            b"{\"item\": {\"id\": \"i1\", \"title\": \"One\"}}\n\
              {\"interaction\": {\"user_id\": \"u\", \"item_id\": \"i1\"}}\n\
              {\"interaction\": {\"user_id\": \"u\", \"item_id\": \"ghost\"}}\n\
              {\"interaction\": {\"user_id\": \"u\", \"item_id\": \"ghost2\"}}\n",
        );
        let err = read(Format::Jsonl, &[p]).unwrap_err().to_string();
        assert!(
            err.contains("a.jsonl:3:") && err.contains("\"ghost\""),
            "{err}"
        );
    }

    #[test]
    fn bad_lines_are_errors_with_serde_message() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&[u8], &str); 9] = [
            (
                br#"{"item": {"id": "i", "title": "t", "colour": 1}}"#,
                "unknown field `colour`",
            ),
            (
                br#"{"user": {}}"#,
                "unknown field `user`, expected `item` or `interaction`",
            ),
            (br#"{"item": {"id": "i"}}"#, "missing field `title`"),
            (br#"[1, 2]"#, "not a JSON object"),
            (br#"{}"#, "neither key"),
            (
                br#"{"item": {"id": "i", "title": "t"}, "interaction": {"user_id": "u", "item_id": "i"}}"#,
                "both keys",
            ),
            (
                br#"{"interaction": {"user_id": "u", "item_id": "i", "timestamp": "yesterday"}}"#,
                "(column",
            ),
            (b"{not json", "key must be a string (column 2)"),
            (b"{\"item\": {\"id\": \"i\", \"title\": \"caf\xE9\"}}", "UTF-8"),
        ];
        for (content, want) in cases {
            let p = write(
                dir.path(),
                "bad.jsonl",
                &[b"\n".as_slice(), content].concat(),
            );
            let err = read(Format::Jsonl, &[p]).unwrap_err().to_string();
            assert!(
                err.contains("bad.jsonl:2:") && err.contains(want),
                "{want}: {err}"
            );
        }
    }

    #[test]
    fn conflicting_item_definitions_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "a.jsonl",
            b"{\"item\": {\"id\": \"i1\", \"title\": \"One\"}}\n{\"item\": {\"id\": \"i1\", \"title\": \"Uno\"}}\n",
        );
        let err = read(Format::Jsonl, &[p]).unwrap_err().to_string();
        assert!(
            err.contains("a.jsonl:2:") && err.contains("a.jsonl:1"),
            "{err}"
        );
    }
}
