//! Goodreads user ratings (`user_rating_*.csv`, header `ID,Name,Rating`, RFC-4180 quoting),
//! optionally enriched by goodbooks-10k's `books.csv` (recognised by its header).
//!
//! Rating files are concatenated in file-name order (digit runs compared as numbers, which is
//! plain name order for the shipped files); a user may span two files. Sentinel rows
//! (`<id>,Rating,"This user doesn't have any rating"`) are dropped and counted. Labels map to
//! 5..1; the item id is `gr-` + the first 16 hex digits of sha256(title). An exact title match
//! in goodbooks adds `text` ("by <authors>, <year>") and attributes
//! `{"authors", "year", "goodreads_book_id"}`.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{
    Csv, Dataset, Dedupe, Histories, ImportError, display_list, duplicate_note, file_name,
    list_dir, percent,
};
use crate::catalog::{NewInteraction, NewItem};

const RATINGS_HEADER: [&str; 3] = ["ID", "Name", "Rating"];
const SENTINEL_LABEL: &str = "This user doesn't have any rating";
const LABELS: [(&str, f64); 5] = [
    ("it was amazing", 5.0),
    ("really liked it", 4.0),
    ("liked it", 3.0),
    ("it was ok", 2.0),
    ("did not like it", 1.0),
];

/// The goodbooks columns we use.
struct BookColumns {
    count: usize,
    title: usize,
    authors: usize,
    year: usize,
    goodreads_book_id: usize,
}

enum Kind {
    Ratings,
    Books(BookColumns),
}

/// The item id for a Goodreads display title.
pub(crate) fn item_id(title: &str) -> String {
    let digest = Sha256::digest(title.as_bytes());
    format!("gr-{}", &hex::encode(&digest[..8]))
}

pub(super) fn read(paths: &[PathBuf]) -> Result<Dataset, ImportError> {
    let mut notes = Vec::new();
    let mut rating_files: Vec<PathBuf> = Vec::new();
    let mut books: Option<(PathBuf, BookColumns)> = None;
    let mut add_books = |path: PathBuf, cols: BookColumns| match &books {
        Some((first, _)) => Err(ImportError::paths(format!(
            "goodreads: two goodbooks files given: {} and {}",
            first.display(),
            path.display()
        ))),
        None => {
            books = Some((path, cols));
            Ok(())
        }
    };
    for p in paths {
        if p.is_dir() {
            for f in list_dir(p)? {
                let name = file_name(&f);
                if !name.to_ascii_lowercase().ends_with(".csv") {
                    continue;
                }
                if name.starts_with("user_rating_") {
                    rating_files.push(f);
                    continue;
                }
                match sniff(&f) {
                    Ok(Kind::Books(cols)) => add_books(f, cols)?,
                    Ok(Kind::Ratings) => rating_files.push(f),
                    Err(ImportError::Parse { .. }) => notes.push(format!(
                        "ignored {} (not a ratings or goodbooks file)",
                        f.display()
                    )),
                    Err(e) => return Err(e),
                }
            }
        } else {
            match sniff(p)? {
                Kind::Ratings => rating_files.push(p.clone()),
                Kind::Books(cols) => add_books(p.clone(), cols)?,
            }
        }
    }
    if rating_files.is_empty() {
        return Err(ImportError::paths(format!(
            "goodreads: no user_rating_*.csv file among {}",
            display_list(paths)
        )));
    }
    rating_files.sort_by(|a, b| natural_cmp(file_name(a), file_name(b)).then_with(|| a.cmp(b)));
    rating_files.dedup();

    // Titles -> item slot; ids must not collide.
    let mut by_title: HashMap<String, usize> = HashMap::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut items: Vec<NewItem> = Vec::new();
    let mut histories = Histories::default();
    let mut sentinels = 0usize;
    let mut rows = 0usize;
    for path in &rating_files {
        let mut csv = Csv::open(path)?;
        check_ratings_header(&mut csv)?;
        while let Some(line) = csv.next_record()? {
            if csv.len() == 1 && csv.field(0).is_empty() {
                continue; // blank line
            }
            if csv.len() != 3 {
                return Err(ImportError::parse(
                    path,
                    line,
                    format!("expected 3 columns (ID,Name,Rating), found {}", csv.len()),
                ));
            }
            let (user, title, label) = (csv.field(0).trim(), csv.field(1), csv.field(2).trim());
            if user.parse::<u64>().is_err() {
                return Err(ImportError::parse(
                    path,
                    line,
                    format!("ID: {user:?} is not an integer"),
                ));
            }
            if title == "Rating" || label == SENTINEL_LABEL {
                sentinels += 1;
                continue;
            }
            let Some(&(_, value)) = LABELS.iter().find(|(l, _)| *l == label) else {
                return Err(ImportError::parse(
                    path,
                    line,
                    format!(
                        "Rating: unknown label {label:?} (expected one of {})",
                        LABELS
                            .iter()
                            .map(|(l, _)| format!("{l:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            };
            if title.trim().is_empty() {
                return Err(ImportError::parse(path, line, "empty Name (book title)"));
            }
            let slot = match by_title.get(title) {
                Some(&slot) => slot,
                None => {
                    let id = item_id(title);
                    if let Some(&other) = by_id.get(&id) {
                        return Err(ImportError::parse(
                            path,
                            line,
                            format!(
                                "item id {id} of {title:?} collides with that of {:?}",
                                items[other].title
                            ),
                        ));
                    }
                    let slot = items.len();
                    by_id.insert(id.clone(), slot);
                    by_title.insert(title.to_owned(), slot);
                    items.push(NewItem {
                        id,
                        title: title.to_owned(),
                        text: None,
                        attributes: None,
                    });
                    slot
                }
            };
            rows += 1;
            histories.push(NewInteraction {
                user_id: user.to_owned(),
                item_id: items[slot].id.clone(),
                kind: Some("rating".to_owned()),
                value: Some(value),
                timestamp: None,
            });
        }
    }
    let finished = histories.finish(Dedupe::Item);

    notes.insert(
        0,
        format!(
            "goodreads: {} users, {} ratings, {} distinct titles from {} rating files ({})",
            finished.users,
            finished.interactions.len(),
            items.len(),
            rating_files.len(),
            rating_files
                .iter()
                .map(|p| file_name(p))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    );
    notes.push(
        "no timestamps: history order is file order (the profile scrape order, not known to be chronological)"
            .into(),
    );
    if sentinels > 0 {
        notes.push(format!(
            "dropped {sentinels} sentinel rows (\"{SENTINEL_LABEL}\"); those users have no interactions"
        ));
    }
    notes.extend(duplicate_note(finished.duplicates));
    debug_assert_eq!(rows, finished.interactions.len() + finished.duplicates);

    match books {
        None => notes.push("no goodbooks10k_books.csv given: items carry titles only".into()),
        Some((path, cols)) => {
            let (catalog, repeated) = read_books(&path, &cols)?;
            let mut matched = vec![false; items.len()];
            for (slot, item) in items.iter_mut().enumerate() {
                if let Some(book) = catalog.get(item.title.as_str()) {
                    matched[slot] = true;
                    let mut parts = Vec::with_capacity(2);
                    if !book.authors.is_empty() {
                        parts.push(format!("by {}", book.authors));
                    }
                    if let Some(year) = book.year {
                        parts.push(year.to_string());
                    }
                    item.text = (!parts.is_empty()).then(|| parts.join(", "));
                    let mut attrs = serde_json::Map::new();
                    attrs.insert("authors".into(), book.authors.clone().into());
                    if let Some(year) = book.year {
                        attrs.insert("year".into(), year.into());
                    }
                    attrs.insert("goodreads_book_id".into(), book.goodreads_book_id.into());
                    item.attributes = Some(serde_json::Value::Object(attrs));
                }
            }
            let matched_titles = matched.iter().filter(|m| **m).count();
            let matched_rows = finished
                .interactions
                .iter()
                .filter(|it| by_id.get(it.item_id.as_str()).is_some_and(|&s| matched[s]))
                .count();
            notes.push(format!(
                "goodbooks enrichment from {}: {matched_titles} of {} titles matched exactly ({:.1}%), \
                 covering {matched_rows} of {} ratings ({:.1}%)",
                file_name(&path),
                items.len(),
                percent(matched_titles, items.len()),
                finished.interactions.len(),
                percent(matched_rows, finished.interactions.len()),
            ));
            if repeated > 0 {
                notes.push(format!(
                    "{} has {repeated} rows whose title repeats an earlier row's; the first (lowest book_id) is used",
                    file_name(&path)
                ));
            }
        }
    }
    Ok(Dataset {
        items,
        interactions: finished.interactions,
        notes,
    })
}

/// Classifies a CSV file by its header.
fn sniff(path: &Path) -> Result<Kind, ImportError> {
    let mut csv = Csv::open(path)?;
    let Some(line) = csv.next_record()? else {
        return Err(ImportError::parse(
            path,
            1,
            "empty file: expected a CSV header",
        ));
    };
    let header: Vec<&str> = (0..csv.len()).map(|i| csv.field(i).trim()).collect();
    if header == RATINGS_HEADER {
        return Ok(Kind::Ratings);
    }
    let find = |name: &str| header.iter().position(|h| *h == name);
    if header.first() == Some(&"book_id") {
        let need = |name: &str| {
            find(name).ok_or_else(|| {
                ImportError::parse(
                    path,
                    line,
                    format!("goodbooks header lacks a {name:?} column"),
                )
            })
        };
        return Ok(Kind::Books(BookColumns {
            count: header.len(),
            title: need("title")?,
            authors: need("authors")?,
            year: need("original_publication_year")?,
            goodreads_book_id: need("goodreads_book_id")?,
        }));
    }
    Err(ImportError::parse(
        path,
        line,
        format!(
            "unexpected header {:?}: expected \"ID,Name,Rating\" (user_rating_*.csv) or the goodbooks-10k books.csv header (book_id,goodreads_book_id,...)",
            header.join(",")
        ),
    ))
}

fn check_ratings_header(csv: &mut Csv) -> Result<(), ImportError> {
    let line = csv.next_record()?;
    let ok = line.is_some()
        && csv.len() == 3
        && (0..3).all(|i| csv.field(i).trim() == RATINGS_HEADER[i]);
    if ok {
        Ok(())
    } else {
        Err(ImportError::parse(
            csv.path(),
            line.unwrap_or(1),
            "missing header: expected \"ID,Name,Rating\"",
        ))
    }
}

struct Book {
    authors: String,
    year: Option<i64>,
    goodreads_book_id: u64,
}

/// Title -> book (first row wins) and the number of repeated titles.
fn read_books(
    path: &Path,
    cols: &BookColumns,
) -> Result<(HashMap<String, Book>, usize), ImportError> {
    let mut csv = Csv::open(path)?;
    csv.next_record()?; // header, checked by `sniff`
    let mut books = HashMap::new();
    let mut repeated = 0;
    while let Some(line) = csv.next_record()? {
        if csv.len() == 1 && csv.field(0).is_empty() {
            continue;
        }
        if csv.len() != cols.count {
            return Err(ImportError::parse(
                path,
                line,
                format!("expected {} columns, found {}", cols.count, csv.len()),
            ));
        }
        let title = csv.field(cols.title);
        let raw_year = csv.field(cols.year).trim();
        let year = if raw_year.is_empty() {
            None
        } else {
            match raw_year.parse::<f64>() {
                Ok(y) if y.is_finite() && y.fract() == 0.0 && y.abs() < 1e6 => Some(y as i64),
                _ => {
                    return Err(ImportError::parse(
                        path,
                        line,
                        format!("original_publication_year: {raw_year:?} is not a year"),
                    ));
                }
            }
        };
        let raw_id = csv.field(cols.goodreads_book_id).trim();
        let Ok(goodreads_book_id) = raw_id.parse::<u64>() else {
            return Err(ImportError::parse(
                path,
                line,
                format!("goodreads_book_id: {raw_id:?} is not an integer"),
            ));
        };
        if books.contains_key(title) {
            repeated += 1;
            continue;
        }
        let authors = csv.field(cols.authors).trim().to_owned();
        books.insert(
            title.to_owned(),
            Book {
                authors,
                year,
                goodreads_book_id,
            },
        );
    }
    Ok((books, repeated))
}

/// Compares names with digit runs taken as numbers ("x_2" < "x_10").
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let i = x.iter().take_while(|b| b.is_ascii_digit()).count();
                let j = y.iter().take_while(|b| b.is_ascii_digit()).count();
                let nx = trim_zeros(&x[..i]);
                let ny = trim_zeros(&y[..j]);
                let o = nx.len().cmp(&ny.len()).then_with(|| nx.cmp(ny));
                if o != Ordering::Equal {
                    return o;
                }
                x = &x[i..];
                y = &y[j..];
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|b| **b == b'0').count();
    &digits[zeros..]
}

#[cfg(test)]
mod tests {
    use super::super::test_util::write;
    use super::super::{Format, read};
    use super::*;

    const BOOKS: &str = "book_id,goodreads_book_id,best_book_id,work_id,books_count,isbn,isbn13,authors,original_publication_year,original_title,title,language_code\n\
        1,2767052,2767052,2792775,272,439023483,9.78043902348e+12,Suzanne Collins,2008.0,The Hunger Games,\"The Hunger Games (The Hunger Games, #1)\",eng\n\
        2,3,3,4640799,491,439554934,9.78043955493e+12,\"J.K. Rowling, Mary GrandPré\",,HP,Siddhartha,eng\n\
        3,4,4,5,6,7,8,Someone Else,1999.0,X,Siddhartha,eng\n";

    #[test]
    fn reads_ratings_with_sentinels_labels_and_enrichment() {
        let dir = tempfile::tempdir().unwrap();
        // User 2 spans both files; the second file sorts after the first by number, not by text.
        write(
            dir.path(),
            "user_rating_900_to_1000.csv",
            b"ID,Name,Rating\n\
              1,\"The Hunger Games (The Hunger Games, #1)\",it was amazing\n\
              1,Siddhartha,really liked it\n\
              3,Rating,This user doesn't have any rating\n\
              2,Unknown Book,liked it\n",
        );
        write(
            dir.path(),
            "user_rating_1000_to_2000.csv",
            b"ID,Name,Rating\n2,Siddhartha,it was ok\n2,Unknown Book,did not like it\n4,\"Quoted, \"\"Title\"\"\",liked it\n",
        );
        write(dir.path(), "goodbooks10k_books.csv", BOOKS.as_bytes());
        write(dir.path(), "SOURCE.txt", b"not csv");
        let ds = read(Format::Goodreads, &[dir.path().to_path_buf()]).unwrap();

        let got: Vec<(&str, &str, Option<f64>)> = ds
            .interactions
            .iter()
            .map(|i| (i.user_id.as_str(), i.item_id.as_str(), i.value))
            .collect();
        let hg = item_id("The Hunger Games (The Hunger Games, #1)");
        let sid = item_id("Siddhartha");
        let unk = item_id("Unknown Book");
        let quoted = item_id("Quoted, \"Title\"");
        assert_eq!(
            got,
            [
                ("1", hg.as_str(), Some(5.0)),
                ("1", sid.as_str(), Some(4.0)),
                ("2", unk.as_str(), Some(3.0)),
                ("2", sid.as_str(), Some(2.0)),
                ("4", quoted.as_str(), Some(3.0)),
            ]
        );
        assert!(
            ds.interactions
                .iter()
                .all(|i| i.kind.as_deref() == Some("rating"))
        );
        assert!(hg.starts_with("gr-") && hg.len() == 19);
        // sha256("Siddhartha") starts with these 16 hex digits.
        assert_eq!(
            sid,
            format!("gr-{}", &hex::encode(Sha256::digest(b"Siddhartha"))[..16])
        );

        let item = |id: &str| ds.items.iter().find(|i| i.id == id).unwrap();
        assert_eq!(item(&hg).text.as_deref(), Some("by Suzanne Collins, 2008"));
        assert_eq!(
            item(&hg).attributes,
            Some(
                serde_json::json!({"authors": "Suzanne Collins", "year": 2008, "goodreads_book_id": 2767052})
            )
        );
        // Missing year is omitted; the first of two rows with one title wins.
        assert_eq!(
            item(&sid).text.as_deref(),
            Some("by J.K. Rowling, Mary GrandPré")
        );
        assert_eq!(
            item(&sid).attributes,
            Some(
                serde_json::json!({"authors": "J.K. Rowling, Mary GrandPré", "goodreads_book_id": 3})
            )
        );
        assert_eq!(item(&unk).text, None);
        assert_eq!(item(&quoted).title, "Quoted, \"Title\"");

        let notes = ds.notes.join("\n");
        for want in [
            "dropped 1 sentinel rows",
            "dropped 1 repeated (user, item)",
            "2 of 4 titles matched exactly (50.0%), covering 3 of 5 ratings (60.0%)",
            "has 1 rows whose title repeats",
            "no timestamps",
        ] {
            assert!(notes.contains(want), "{want} not in {notes}");
        }
    }

    #[test]
    fn unknown_label_bad_columns_and_bad_header_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "user_rating_0.csv",
            b"ID,Name,Rating\n1,A,liked it\n1,B,meh\n",
        );
        let err = read(Format::Goodreads, std::slice::from_ref(&p))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("user_rating_0.csv:3:") && err.contains("unknown label \"meh\""),
            "{err}"
        );

        let p = write(
            dir.path(),
            "user_rating_0.csv",
            b"ID,Name,Rating\n1,A,liked it\n\n1,B,liked it,extra\n",
        );
        let err = read(Format::Goodreads, std::slice::from_ref(&p))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("user_rating_0.csv:4:") && err.contains("found 4"),
            "{err}"
        );

        let p = write(
            dir.path(),
            "user_rating_0.csv",
            b"ID,Name,Rating\n\"1\",\"multi\nline\",liked it\nx,B,liked it\n",
        );
        let err = read(Format::Goodreads, std::slice::from_ref(&p))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("user_rating_0.csv:4:") && err.contains("not an integer"),
            "{err}"
        );

        let p = write(
            dir.path(),
            "user_rating_0.csv",
            b"User,Book,Stars\n1,A,liked it\n",
        );
        let err = read(Format::Goodreads, std::slice::from_ref(&p))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("user_rating_0.csv:1:") && err.contains("unexpected header"),
            "{err}"
        );

        let p = write(
            dir.path(),
            "user_rating_0.csv",
            b"ID,Name,Rating\n1,Caf\xE9,liked it\n",
        );
        let err = read(Format::Goodreads, std::slice::from_ref(&p))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("user_rating_0.csv:2:") && err.contains("UTF-8"),
            "{err}"
        );
    }

    #[test]
    fn natural_order() {
        let mut names = vec![
            "user_rating_6000_to_11000.csv",
            "user_rating_10000_to_2.csv",
            "user_rating_0_to_1000.csv",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            [
                "user_rating_0_to_1000.csv",
                "user_rating_6000_to_11000.csv",
                "user_rating_10000_to_2.csv"
            ]
        );
    }
}
