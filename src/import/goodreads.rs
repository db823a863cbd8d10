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
    Csv, Dataset, Dedupe, Files, Finished, Histories, ImportError, display_list, duplicate_note,
    file_name, percent,
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

pub(super) fn read(fs: Files<'_>, paths: &[PathBuf]) -> Result<Dataset, ImportError> {
    let Inputs {
        rating_files,
        books,
        mut notes,
    } = Inputs::find(fs, paths)?;

    let mut ratings = Ratings::default();
    for path in &rating_files {
        ratings.read_file(fs, path)?;
    }
    let Ratings {
        mut titles,
        histories,
        sentinels,
        rows,
    } = ratings;
    let finished = histories.finish(Dedupe::Item);

    notes.insert(
        0,
        format!(
            "goodreads: {} users, {} ratings, {} distinct titles from {} rating files ({})",
            finished.users,
            finished.interactions.len(),
            titles.items.len(),
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
        Some((path, cols)) => notes.extend(enrich(fs, &mut titles, &finished, &path, &cols)?),
    }
    Ok(Dataset {
        items: titles.items,
        interactions: finished.interactions,
        notes,
    })
}

/// The files to read, sorted out from the given paths.
struct Inputs {
    /// In natural file-name order, without repeats.
    rating_files: Vec<PathBuf>,
    books: Option<(PathBuf, BookColumns)>,
    /// Remarks on directory entries that were skipped.
    notes: Vec<String>,
}

impl Inputs {
    /// Sorts `paths` (files and directories) into rating files and at most one goodbooks file.
    fn find(fs: Files<'_>, paths: &[PathBuf]) -> Result<Self, ImportError> {
        let mut inputs = Inputs {
            rating_files: Vec::new(),
            books: None,
            notes: Vec::new(),
        };
        for p in paths {
            if fs.is_dir(p) {
                for f in fs.list_dir(p)? {
                    inputs.add_listed(fs, f)?;
                }
            } else {
                match sniff(fs, p)? {
                    Kind::Ratings => inputs.rating_files.push(p.clone()),
                    Kind::Books(cols) => inputs.add_books(p.clone(), cols)?,
                }
            }
        }
        if inputs.rating_files.is_empty() {
            return Err(ImportError::paths(format!(
                "goodreads: no user_rating_*.csv file among {}",
                display_list(paths)
            )));
        }
        inputs
            .rating_files
            .sort_by(|a, b| natural_cmp(file_name(a), file_name(b)).then_with(|| a.cmp(b)));
        inputs.rating_files.dedup();
        Ok(inputs)
    }

    /// Takes a file found in a directory: a directory may hold other files, so an unrecognised
    /// CSV file is noted and skipped rather than refused.
    fn add_listed(&mut self, fs: Files<'_>, f: PathBuf) -> Result<(), ImportError> {
        let name = file_name(&f);
        if !name.to_ascii_lowercase().ends_with(".csv") {
            return Ok(());
        }
        if name.starts_with("user_rating_") {
            self.rating_files.push(f);
            return Ok(());
        }
        match sniff(fs, &f) {
            Ok(Kind::Books(cols)) => self.add_books(f, cols)?,
            Ok(Kind::Ratings) => self.rating_files.push(f),
            Err(ImportError::Parse { .. }) => self.notes.push(format!(
                "ignored {} (not a ratings or goodbooks file)",
                f.display()
            )),
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Records the goodbooks file; a second one is an error rather than a silent choice.
    fn add_books(&mut self, path: PathBuf, cols: BookColumns) -> Result<(), ImportError> {
        match &self.books {
            Some((first, _)) => Err(ImportError::paths(format!(
                "goodreads: two goodbooks files given: {} and {}",
                first.display(),
                path.display()
            ))),
            None => {
                self.books = Some((path, cols));
                Ok(())
            }
        }
    }
}

/// The distinct titles seen so far, one item each.
#[derive(Default)]
struct Titles {
    by_title: HashMap<String, usize>,
    /// Item id -> slot, to catch two titles whose hashed ids collide.
    by_id: HashMap<String, usize>,
    items: Vec<NewItem>,
}

impl Titles {
    /// The item slot of `title`, creating the item on first sight.
    fn slot(&mut self, path: &Path, line: usize, title: &str) -> Result<usize, ImportError> {
        if let Some(&slot) = self.by_title.get(title) {
            return Ok(slot);
        }
        let id = item_id(title);
        if let Some(&other) = self.by_id.get(&id) {
            return Err(ImportError::parse(
                path,
                line,
                format!(
                    "item id {id} of {title:?} collides with that of {:?}",
                    self.items[other].title
                ),
            ));
        }
        let slot = self.items.len();
        self.by_id.insert(id.clone(), slot);
        self.by_title.insert(title.to_owned(), slot);
        self.items.push(NewItem {
            id,
            title: title.to_owned(),
            text: None,
            attributes: None,
        });
        Ok(slot)
    }
}

/// What the rating files hold, gathered file by file.
#[derive(Default)]
struct Ratings {
    titles: Titles,
    histories: Histories,
    sentinels: usize,
    /// Rating rows kept before deduplication (a consistency check on `histories`).
    rows: usize,
}

impl Ratings {
    /// Reads one `user_rating_*.csv` file.
    fn read_file(&mut self, fs: Files<'_>, path: &Path) -> Result<(), ImportError> {
        let mut csv = Csv::open(fs, path)?;
        check_ratings_header(&mut csv)?;
        while let Some(line) = csv.next_record()? {
            if csv.len() == 1 && csv.field(0).is_empty() {
                continue; // blank line
            }
            self.add_row(&csv, path, line)?;
        }
        Ok(())
    }

    /// Takes the current record of `csv`: a rating, or a sentinel row to count and drop.
    fn add_row(&mut self, csv: &Csv<'_>, path: &Path, line: usize) -> Result<(), ImportError> {
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
            self.sentinels += 1;
            return Ok(());
        }
        let value = label_value(path, line, label)?;
        if title.trim().is_empty() {
            return Err(ImportError::parse(path, line, "empty Name (book title)"));
        }
        let slot = self.titles.slot(path, line, title)?;
        self.rows += 1;
        self.histories.push(NewInteraction {
            user_id: user.to_owned(),
            item_id: self.titles.items[slot].id.clone(),
            kind: Some("rating".to_owned()),
            value: Some(value),
            timestamp: None,
        });
        Ok(())
    }
}

/// The rating value of a Goodreads label.
fn label_value(path: &Path, line: usize, label: &str) -> Result<f64, ImportError> {
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
    Ok(value)
}

/// Adds goodbooks text and attributes to the items whose title matches exactly; returns the
/// coverage notes.
fn enrich(
    fs: Files<'_>,
    titles: &mut Titles,
    finished: &Finished,
    path: &Path,
    cols: &BookColumns,
) -> Result<Vec<String>, ImportError> {
    let (catalog, repeated) = read_books(fs, path, cols)?;
    let items = &mut titles.items;
    let mut matched = vec![false; items.len()];
    for (slot, item) in items.iter_mut().enumerate() {
        if let Some(book) = catalog.get(item.title.as_str()) {
            matched[slot] = true;
            describe(item, book);
        }
    }
    let matched_titles = matched.iter().filter(|m| **m).count();
    let matched_rows = finished
        .interactions
        .iter()
        .filter(|it| {
            titles
                .by_id
                .get(it.item_id.as_str())
                .is_some_and(|&s| matched[s])
        })
        .count();
    let mut notes = vec![format!(
        "goodbooks enrichment from {}: {matched_titles} of {} titles matched exactly ({:.1}%), \
         covering {matched_rows} of {} ratings ({:.1}%)",
        file_name(path),
        titles.items.len(),
        percent(matched_titles, titles.items.len()),
        finished.interactions.len(),
        percent(matched_rows, finished.interactions.len()),
    )];
    if repeated > 0 {
        notes.push(format!(
            "{} has {repeated} rows whose title repeats an earlier row's; the first (lowest book_id) is used",
            file_name(path)
        ));
    }
    Ok(notes)
}

/// Sets an item's text and attributes from its goodbooks row.
fn describe(item: &mut NewItem, book: &Book) {
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

/// Classifies a CSV file by its header.
fn sniff(fs: Files<'_>, path: &Path) -> Result<Kind, ImportError> {
    let mut csv = Csv::open(fs, path)?;
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

fn check_ratings_header(csv: &mut Csv<'_>) -> Result<(), ImportError> {
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
    fs: Files<'_>,
    path: &Path,
    cols: &BookColumns,
) -> Result<(HashMap<String, Book>, usize), ImportError> {
    let mut csv = Csv::open(fs, path)?;
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
