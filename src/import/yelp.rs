//! The Yelp core-40 sample (Mansoury et al., RecSys 2019 workshop): `items.txt`
//! (`itemid<TAB>category`, one line per business-category pair) and `ratings.txt`
//! (`userid<TAB>businessid<TAB>rating`). Neither file has a header; there are no timestamps and
//! no business names.
//!
//! Item id = business id; title `Yelp business <id>`; text `Categories: a, b, c` (file order,
//! deduplicated); attributes `{"categories": [...]}`. Interactions are kind `rating` with the
//! rating as value. Businesses rated but absent from `items.txt` get an item without text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{
    Dataset, Dedupe, Files, Finished, Histories, ImportError, Lines, display_list, duplicate_note,
    file_name, parse_f64, split_into,
};
use crate::catalog::{NewInteraction, NewItem};

pub(super) fn read(fs: Files<'_>, paths: &[PathBuf]) -> Result<Dataset, ImportError> {
    let (items_path, ratings_path) = pick_files(fs, paths)?;
    let mut notes = Vec::new();

    let mut businesses = Businesses::default();
    if let Some(path) = &items_path {
        businesses.read_items(fs, path)?;
    }
    let described = businesses.list.len();
    let (histories, missing) = businesses.read_ratings(fs, &ratings_path)?;
    let finished = histories.finish(Dedupe::Item);
    let unrated = businesses.unrated(&finished);
    let Businesses {
        list,
        category_lines,
        repeated_pairs,
        ..
    } = businesses;
    let items: Vec<NewItem> = list
        .into_iter()
        .map(|(id, cats)| business_item(id, cats))
        .collect();

    notes.push(format!(
        "yelp-core40: {described} businesses ({category_lines} category lines) from {}; {} users and {} ratings from {}",
        items_path.as_deref().map_or_else(|| "(no items.txt)".to_owned(), |p| p.display().to_string()),
        finished.users,
        finished.interactions.len(),
        ratings_path.display(),
    ));
    notes.push("no timestamps: history order is file order of ratings.txt".into());
    notes.push("no business names in the data: titles are \"Yelp business <id>\"".into());
    if items_path.is_none() {
        notes.push("no items.txt given: items have no categories".into());
    }
    if missing > 0 {
        notes.push(format!(
            "{missing} rated businesses are absent from items.txt; created them without categories"
        ));
    }
    if repeated_pairs > 0 {
        notes.push(format!(
            "ignored {repeated_pairs} repeated (business, category) lines in items.txt"
        ));
    }
    notes.extend(duplicate_note(finished.duplicates));
    if unrated > 0 {
        notes.push(format!(
            "{unrated} of {} businesses have no ratings (kept)",
            items.len()
        ));
    }
    Ok(Dataset {
        items,
        interactions: finished.interactions,
        notes,
    })
}

/// Businesses in first-appearance order, with their categories in file order (`None` for a
/// business absent from `items.txt`).
#[derive(Default)]
struct Businesses {
    index: HashMap<String, usize>,
    list: Vec<(String, Option<Vec<String>>)>,
    category_lines: usize,
    repeated_pairs: usize,
}

impl Businesses {
    /// Reads `items.txt`.
    fn read_items(&mut self, fs: Files<'_>, path: &Path) -> Result<(), ImportError> {
        let mut lines = Lines::open(fs, path)?;
        while let Some((line, text)) = lines.next_line()? {
            if text.is_empty() {
                continue;
            }
            // Stack array borrowing this line (no per-row allocation).
            let mut cols = [""; 3];
            let n = split_into(text, '\t', &mut cols);
            if n != 2 {
                return Err(ImportError::parse(
                    path,
                    line,
                    format!("expected 2 tab-separated columns (itemid, category), found {n}"),
                ));
            }
            let (id, category) = (cols[0].trim(), cols[1].trim());
            if id.is_empty() {
                return Err(ImportError::parse(path, line, "empty itemid"));
            }
            if category.is_empty() {
                return Err(ImportError::parse(path, line, "empty category"));
            }
            self.add_category(id, category);
        }
        Ok(())
    }

    /// Records one (business, category) line; a repeated pair is counted, not added twice.
    fn add_category(&mut self, id: &str, category: &str) {
        self.category_lines += 1;
        let slot = match self.index.get(id) {
            Some(&slot) => slot,
            None => {
                self.index.insert(id.to_owned(), self.list.len());
                self.list.push((id.to_owned(), Some(Vec::new())));
                self.list.len() - 1
            }
        };
        let cats = self.list[slot].1.get_or_insert_with(Vec::new);
        if cats.iter().any(|c| c == category) {
            self.repeated_pairs += 1;
        } else {
            cats.push(category.to_owned());
        }
    }

    /// Reads `ratings.txt`, adding the rated businesses absent from `items.txt`; returns the
    /// histories and the number of businesses added.
    fn read_ratings(
        &mut self,
        fs: Files<'_>,
        path: &Path,
    ) -> Result<(Histories, usize), ImportError> {
        let mut histories = Histories::default();
        let mut missing = 0usize;
        let mut lines = Lines::open(fs, path)?;
        while let Some((line, text)) = lines.next_line()? {
            if text.is_empty() {
                continue;
            }
            let (user, business, value) = parse_rating_line(path, line, text)?;
            if !self.index.contains_key(business) {
                self.index.insert(business.to_owned(), self.list.len());
                self.list.push((business.to_owned(), None));
                missing += 1;
            }
            histories.push(NewInteraction {
                user_id: user.to_owned(),
                item_id: business.to_owned(),
                kind: Some("rating".to_owned()),
                value: Some(value),
                timestamp: None,
            });
        }
        Ok((histories, missing))
    }

    /// How many businesses no kept rating refers to.
    fn unrated(&self, finished: &Finished) -> usize {
        let mut rated = vec![false; self.list.len()];
        for it in &finished.interactions {
            if let Some(&i) = self.index.get(it.item_id.as_str()) {
                rated[i] = true;
            }
        }
        rated.iter().filter(|r| !**r).count()
    }
}

/// Splits a non-empty `ratings.txt` line into user, business and rating.
fn parse_rating_line<'a>(
    path: &Path,
    line: usize,
    text: &'a str,
) -> Result<(&'a str, &'a str, f64), ImportError> {
    // Stack array borrowing this line (no per-row allocation).
    let mut cols = [""; 4];
    let n = split_into(text, '\t', &mut cols);
    if n != 3 {
        return Err(ImportError::parse(
            path,
            line,
            format!("expected 3 tab-separated columns (userid, businessid, rating), found {n}"),
        ));
    }
    let (user, business) = (cols[0].trim(), cols[1].trim());
    if user.is_empty() || business.is_empty() {
        return Err(ImportError::parse(path, line, "empty userid or businessid"));
    }
    // A bad rating on line 1 is most likely a header someone added.
    let value = parse_f64(path, line, "rating", cols[2]).map_err(|e| match e {
        ImportError::Parse {
            path,
            line: 1,
            message,
        } => ImportError::Parse {
            path,
            line: 1,
            message: format!("{message} (ratings.txt has no header line)"),
        },
        other => other,
    })?;
    Ok((user, business, value))
}

/// The item of a business: categories, when known, become its text and attributes.
fn business_item(id: String, cats: Option<Vec<String>>) -> NewItem {
    let title = format!("Yelp business {id}");
    match cats {
        Some(cats) if !cats.is_empty() => NewItem {
            id,
            title,
            text: Some(format!("Categories: {}", cats.join(", "))),
            attributes: Some(serde_json::json!({ "categories": cats })),
        },
        _ => NewItem {
            id,
            title,
            text: None,
            attributes: None,
        },
    }
}

/// `ratings.txt` (required) and `items.txt` (optional), from a directory or explicit files
/// recognised by name (`*rating*` / `*item*`).
fn pick_files(fs: Files<'_>, paths: &[PathBuf]) -> Result<(Option<PathBuf>, PathBuf), ImportError> {
    let mut items = Vec::new();
    let mut ratings = Vec::new();
    for p in paths {
        if fs.is_dir(p) {
            for f in fs.list_dir(p)? {
                match file_name(&f) {
                    "items.txt" => items.push(f),
                    "ratings.txt" => ratings.push(f),
                    _ => {}
                }
            }
        } else {
            let name = file_name(p).to_ascii_lowercase();
            if name.contains("rating") {
                ratings.push(p.clone());
            } else if name.contains("item") {
                items.push(p.clone());
            } else {
                return Err(ImportError::paths(format!(
                    "yelp-core40: cannot tell whether {} is items.txt or ratings.txt by its name",
                    p.display()
                )));
            }
        }
    }
    if ratings.len() != 1 {
        return Err(ImportError::paths(format!(
            "yelp-core40: expected exactly one ratings.txt among {}, found {}",
            display_list(paths),
            ratings.len()
        )));
    }
    if items.len() > 1 {
        return Err(ImportError::paths(format!(
            "yelp-core40: expected at most one items.txt, found {}",
            display_list(&items)
        )));
    }
    Ok((items.pop(), ratings.remove(0)))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::write;
    use super::super::{Format, read};

    const ITEMS: &str =
        "34\tAmerican (Traditional)\n34\tBeer\n35\tFood\n34\tBeer\n34\tItalian\n36\tUnrated\n";
    const RATINGS: &str = "100\t34\t3\n200\t35\t5\n100\t35\t4\n100\t34\t2\n200\t99\t1\n";

    #[test]
    fn groups_categories_and_ratings() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "items.txt", ITEMS.as_bytes());
        write(dir.path(), "ratings.txt", RATINGS.as_bytes());
        write(dir.path(), "SOURCE.txt", b"ignored");
        let ds = read(Format::YelpCore40, &[dir.path().to_path_buf()]).unwrap();
        let ids: Vec<&str> = ds.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["34", "35", "36", "99"]);
        let b34 = &ds.items[0];
        assert_eq!(b34.title, "Yelp business 34");
        assert_eq!(
            b34.text.as_deref(),
            Some("Categories: American (Traditional), Beer, Italian")
        );
        assert_eq!(
            b34.attributes,
            Some(serde_json::json!({"categories": ["American (Traditional)", "Beer", "Italian"]}))
        );
        assert_eq!(ds.items[3].text, None);
        let got: Vec<(&str, &str, Option<f64>)> = ds
            .interactions
            .iter()
            .map(|i| (i.user_id.as_str(), i.item_id.as_str(), i.value))
            .collect();
        assert_eq!(
            got,
            [
                ("100", "34", Some(3.0)),
                ("100", "35", Some(4.0)),
                ("200", "35", Some(5.0)),
                ("200", "99", Some(1.0))
            ]
        );
        assert!(
            ds.interactions
                .iter()
                .all(|i| i.kind.as_deref() == Some("rating") && i.timestamp.is_none())
        );
        let notes = ds.notes.join("\n");
        for want in [
            "no timestamps",
            "1 rated businesses are absent",
            "ignored 1 repeated (business, category)",
            "dropped 1 repeated (user, item)",
            "1 of 4 businesses have no ratings",
        ] {
            assert!(notes.contains(want), "{want} not in {notes}");
        }
    }

    #[test]
    fn explicit_files_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let items = write(dir.path(), "items.txt", ITEMS.as_bytes());
        let ratings = write(dir.path(), "ratings.txt", b"100\t34\t3\n100\t35\n");
        let err = read(Format::YelpCore40, &[items.clone(), ratings])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ratings.txt:2:") && err.contains("found 2"),
            "{err}"
        );

        let ratings = write(dir.path(), "ratings.txt", b"userid\tbusinessid\trating\n");
        let err = read(Format::YelpCore40, &[items.clone(), ratings])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ratings.txt:1:") && err.contains("not a number"),
            "{err}"
        );

        let ratings = write(dir.path(), "ratings.txt", b"100\t34\t3\n100\t35\t\xFF\n");
        let err = read(Format::YelpCore40, &[items, ratings])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ratings.txt:2:") && err.contains("UTF-8"),
            "{err}"
        );

        let items = write(dir.path(), "items.txt", b"34\tBeer\textra\n");
        let ratings = write(dir.path(), "ratings.txt", RATINGS.as_bytes());
        let err = read(Format::YelpCore40, &[items, ratings])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("items.txt:1:") && err.contains("found 3"),
            "{err}"
        );
    }
}
