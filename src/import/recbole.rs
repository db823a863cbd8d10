//! RecBole atomic files (`.item` + `.inter`, tab separated, typed `name:type` header on line 1),
//! as used by LLMRank's Amazon Games-6k.
//!
//! `.item`: `item_id:token` and a title column are required; further columns become
//! `attributes` (`float` as numbers, `float_seq` as arrays, the rest as text). The title is
//! the first of [`TITLE_COLUMNS`] the header has (`title`, then the names RecBole's own dataset
//! collection uses: `movie_title` in MovieLens, `book_title` in Book-Crossing, `app_name` in
//! Steam, `item_name`, `name` in Yelp and Anime), typed `token_seq` or `token`. HTML entities
//! in titles are decoded.
//!
//! `.inter` comes in two layouts:
//! - sequence: `user_id:token  item_id_list:token_seq  item_id:token`, one row per user; the
//!   history is the list followed by the target item (kind `interaction`, no value);
//! - plain: `user_id:token  item_id:token [rating:float] [timestamp:float]`, one event per row
//!   (kind `rating` with the rating as value when there is a rating column, else `interaction`;
//!   timestamps are unix seconds).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::{
    Dataset, Dedupe, Files, Histories, ImportError, Lines, display_list, duplicate_note, file_name,
    parse_f64, split_into,
};
use crate::catalog::{DEFAULT_KIND, NewInteraction, NewItem};

/// Upper bound on columns per file; wider headers are rejected.
const MAX_COLS: usize = 64;

pub(super) fn read(fs: Files<'_>, paths: &[PathBuf]) -> Result<Dataset, ImportError> {
    let (item_path, inter_path) = pick_files(fs, paths)?;
    let mut catalog = ItemTable::read(fs, &item_path)?;
    let from_item_file = catalog.items.len();
    let inter = read_inter(fs, &inter_path, &mut catalog)?;
    let finished = inter.histories.finish(Dedupe::Item);

    let mut notes = vec![format!(
        "recbole: {from_item_file} items from {}; {} users and {} interactions from {} ({} layout)",
        item_path.display(),
        finished.users,
        finished.interactions.len(),
        inter_path.display(),
        if inter.sequence { "sequence" } else { "plain" },
    )];
    if inter.sequence {
        notes.push(
            "no timestamps: history order is file order (item_id_list, then the target item_id)"
                .into(),
        );
    } else if inter.timestamps {
        notes.push("history order: each user's events sorted by timestamp (unix seconds)".into());
    } else {
        notes.push("no timestamps: history order is file order".into());
    }
    notes.extend(duplicate_note(finished.duplicates));
    if catalog.untitled > 0 {
        notes.push(format!(
            "{} items have an empty title in {}; titled them \"Item <id>\"",
            catalog.untitled,
            file_name(&item_path)
        ));
    }
    if catalog.placeholders > 0 {
        notes.push(format!(
            "{} item ids used in {} are missing from {}; created them titled \"Item <id>\" without text",
            catalog.placeholders,
            file_name(&inter_path),
            file_name(&item_path)
        ));
    }
    let mut used = vec![false; catalog.items.len()];
    for it in &finished.interactions {
        if let Some(&i) = catalog.index.get(it.item_id.as_str()) {
            used[i] = true;
        }
    }
    let unused = used.iter().filter(|u| !**u).count();
    if unused > 0 {
        notes.push(format!(
            "{unused} of {} items have no interactions (kept)",
            catalog.items.len()
        ));
    }
    Ok(Dataset {
        items: catalog.items,
        interactions: finished.interactions,
        notes,
    })
}

/// One `.item` and one `.inter` file, from explicit files or directories (where the
/// `*.test.inter` file is preferred, else the only `*.inter`).
fn pick_files(fs: Files<'_>, paths: &[PathBuf]) -> Result<(PathBuf, PathBuf), ImportError> {
    let ext = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_owned()
    };
    let mut items = Vec::new();
    let mut inters = Vec::new();
    for p in paths {
        if fs.is_dir(p) {
            let files = fs.list_dir(p)?;
            items.extend(files.iter().filter(|f| ext(f) == "item").cloned());
            let tests: Vec<_> = files
                .iter()
                .filter(|f| file_name(f).ends_with(".test.inter"))
                .cloned()
                .collect();
            if tests.is_empty() {
                inters.extend(files.iter().filter(|f| ext(f) == "inter").cloned());
            } else {
                inters.extend(tests);
            }
        } else {
            match ext(p).as_str() {
                "item" => items.push(p.clone()),
                "inter" => inters.push(p.clone()),
                _ => {
                    return Err(ImportError::paths(format!(
                        "recbole: {} is neither a .item nor a .inter file",
                        p.display()
                    )));
                }
            }
        }
    }
    let one = |found: Vec<PathBuf>, what: &str| {
        if found.len() == 1 {
            Ok(found.into_iter().next())
        } else {
            Err(ImportError::paths(format!(
                "recbole: expected exactly one {what} file among {}, found {}{}",
                display_list(paths),
                found.len(),
                if found.is_empty() {
                    String::new()
                } else {
                    format!(": {}", display_list(&found))
                }
            )))
        }
    };
    match (
        one(items, ".item")?,
        one(inters, ".inter (or *.test.inter)")?,
    ) {
        (Some(i), Some(t)) => Ok((i, t)),
        _ => Err(ImportError::paths(
            "recbole: need one .item and one .inter file",
        )),
    }
}

/// A parsed `name:type` header.
struct Header {
    columns: Vec<(String, String)>,
}

impl Header {
    fn read(lines: &mut Lines<'_>, path: &Path, example: &str) -> Result<Header, ImportError> {
        let Some((line, text)) = lines.next_line()? else {
            return Err(ImportError::parse(
                path,
                1,
                format!("empty file: expected a RecBole header such as {example}"),
            ));
        };
        let mut columns: Vec<(String, String)> = Vec::new();
        for (i, field) in text.split('\t').enumerate() {
            let Some((name, ty)) = field.split_once(':') else {
                return Err(ImportError::parse(
                    path,
                    line,
                    format!(
                        "missing RecBole header: column {} is {field:?}, expected name:type (e.g. {example})",
                        i + 1
                    ),
                ));
            };
            if !matches!(ty, "token" | "token_seq" | "float" | "float_seq") || name.is_empty() {
                return Err(ImportError::parse(
                    path,
                    line,
                    format!(
                        "header column {} {field:?}: unknown type (token, token_seq, float, float_seq)",
                        i + 1
                    ),
                ));
            }
            if columns.iter().any(|(n, _)| n == name) {
                return Err(ImportError::parse(
                    path,
                    line,
                    format!("header names column {name:?} twice"),
                ));
            }
            columns.push((name.to_owned(), ty.to_owned()));
        }
        if columns.len() > MAX_COLS {
            return Err(ImportError::parse(
                path,
                line,
                format!(
                    "header has {} columns; at most {MAX_COLS} are supported",
                    columns.len()
                ),
            ));
        }
        Ok(Header { columns })
    }

    fn find(&self, name: &str) -> Option<(usize, &str)> {
        self.columns
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| (i, self.columns[i].1.as_str()))
    }

    /// Index of a column that must exist with one of the given types.
    fn require(&self, path: &Path, name: &str, types: &[&str]) -> Result<usize, ImportError> {
        match self.find(name) {
            Some((i, ty)) if types.contains(&ty) => Ok(i),
            Some((_, ty)) => Err(ImportError::parse(
                path,
                1,
                format!(
                    "header column {name}:{ty} should be {name}:{}",
                    types.join(" or ")
                ),
            )),
            None => Err(ImportError::parse(
                path,
                1,
                format!("header lacks a {name}:{} column", types.join(" or ")),
            )),
        }
    }

    fn len(&self) -> usize {
        self.columns.len()
    }
}

/// Title columns, in order of preference.
pub const TITLE_COLUMNS: [&str; 6] = [
    "title",
    "movie_title",
    "book_title",
    "app_name",
    "item_name",
    "name",
];

fn column_count_error(path: &Path, line: usize, want: usize, got: usize) -> ImportError {
    ImportError::parse(
        path,
        line,
        format!("expected {want} tab-separated columns, found {got}"),
    )
}

struct ItemTable {
    items: Vec<NewItem>,
    index: HashMap<String, usize>,
    placeholders: usize,
    untitled: usize,
}

impl ItemTable {
    fn read(fs: Files<'_>, path: &Path) -> Result<ItemTable, ImportError> {
        let mut lines = Lines::open(fs, path)?;
        let header = Header::read(&mut lines, path, "item_id:token<TAB>title:token_seq")?;
        let id_col = header.require(path, "item_id", &["token"])?;
        let title_name = TITLE_COLUMNS
            .iter()
            .find(|n| header.find(n).is_some())
            .ok_or_else(|| {
                ImportError::parse(
                    path,
                    1,
                    format!(
                        "header lacks a title column (one of {}, typed token_seq or token)",
                        TITLE_COLUMNS.join(", ")
                    ),
                )
            })?;
        let title_col = header.require(path, title_name, &["token_seq", "token"])?;
        let extras: Vec<(usize, &str, &str)> = header
            .columns
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != id_col && *i != title_col)
            .map(|(i, (n, t))| (i, n.as_str(), t.as_str()))
            .collect();
        let mut table = ItemTable {
            items: Vec::new(),
            index: HashMap::new(),
            placeholders: 0,
            untitled: 0,
        };
        let mut first_line: Vec<usize> = Vec::new();
        while let Some((line, text)) = lines.next_line()? {
            if text.is_empty() {
                continue;
            }
            // Stack array borrowing this line (no per-row allocation).
            let mut cols = [""; MAX_COLS];
            let n = split_into(text, '\t', &mut cols);
            if n != header.len() {
                return Err(column_count_error(path, line, header.len(), n));
            }
            let id = cols[id_col];
            if id.is_empty() {
                return Err(ImportError::parse(path, line, "empty item_id"));
            }
            if let Some(&prev) = table.index.get(id) {
                return Err(ImportError::parse(
                    path,
                    line,
                    format!(
                        "item_id {id:?} already appeared on line {}",
                        first_line[prev]
                    ),
                ));
            }
            let mut title = decode_html_entities(cols[title_col]).trim().to_owned();
            if title.is_empty() {
                title = format!("Item {id}");
                table.untitled += 1;
            }
            let attributes = if extras.is_empty() {
                None
            } else {
                let mut map = serde_json::Map::new();
                for &(i, name, ty) in &extras {
                    let raw = cols[i].trim();
                    if raw.is_empty() {
                        continue;
                    }
                    let value = match ty {
                        "float" => serde_json::Value::from(parse_f64(path, line, name, raw)?),
                        "float_seq" => serde_json::Value::Array(
                            raw.split_ascii_whitespace()
                                .map(|v| {
                                    parse_f64(path, line, name, v).map(serde_json::Value::from)
                                })
                                .collect::<Result<_, _>>()?,
                        ),
                        _ => serde_json::Value::String(decode_html_entities(raw).into_owned()),
                    };
                    map.insert(name.to_owned(), value);
                }
                (!map.is_empty()).then_some(serde_json::Value::Object(map))
            };
            table.index.insert(id.to_owned(), table.items.len());
            first_line.push(line);
            table.items.push(NewItem {
                id: id.to_owned(),
                title,
                text: None,
                attributes,
            });
        }
        Ok(table)
    }

    /// Makes sure `id` exists, adding a placeholder item when the `.item` file lacks it.
    fn ensure(&mut self, id: &str) {
        if !self.index.contains_key(id) {
            self.index.insert(id.to_owned(), self.items.len());
            self.items.push(NewItem {
                id: id.to_owned(),
                title: format!("Item {id}"),
                text: None,
                attributes: None,
            });
            self.placeholders += 1;
        }
    }
}

struct Inter {
    histories: Histories,
    sequence: bool,
    timestamps: bool,
}

fn read_inter(fs: Files<'_>, path: &Path, catalog: &mut ItemTable) -> Result<Inter, ImportError> {
    let mut lines = Lines::open(fs, path)?;
    let header = Header::read(&mut lines, path, "user_id:token<TAB>item_id:token")?;
    let user_col = header.require(path, "user_id", &["token"])?;
    let item_col = header.require(path, "item_id", &["token"])?;
    let sequence = header.find("item_id_list").is_some();
    let (list_col, rating_col, time_col) = if sequence {
        (
            Some(header.require(path, "item_id_list", &["token_seq"])?),
            None,
            None,
        )
    } else {
        let rating = header
            .find("rating")
            .map(|_| header.require(path, "rating", &["float"]))
            .transpose()?;
        let time = header
            .find("timestamp")
            .map(|_| header.require(path, "timestamp", &["float"]))
            .transpose()?;
        (None, rating, time)
    };
    let known = [
        Some(user_col),
        Some(item_col),
        list_col,
        rating_col,
        time_col,
    ];
    for (i, (name, ty)) in header.columns.iter().enumerate() {
        if !known.contains(&Some(i)) {
            let expected = if sequence {
                "user_id:token, item_id_list:token_seq, item_id:token"
            } else {
                "user_id:token, item_id:token, optionally rating:float and timestamp:float"
            };
            return Err(ImportError::parse(
                path,
                1,
                format!("unexpected header column {name}:{ty}; expected {expected}"),
            ));
        }
    }
    let kind = if rating_col.is_some() {
        "rating"
    } else {
        DEFAULT_KIND
    };
    let mut histories = Histories::default();
    while let Some((line, text)) = lines.next_line()? {
        if text.is_empty() {
            continue;
        }
        // Stack array borrowing this line (no per-row allocation).
        let mut cols = [""; MAX_COLS];
        let n = split_into(text, '\t', &mut cols);
        if n != header.len() {
            return Err(column_count_error(path, line, header.len(), n));
        }
        let user = cols[user_col];
        if user.is_empty() {
            return Err(ImportError::parse(path, line, "empty user_id"));
        }
        let target = cols[item_col];
        if target.is_empty() {
            return Err(ImportError::parse(path, line, "empty item_id"));
        }
        let value = match rating_col {
            Some(c) => Some(parse_f64(path, line, "rating", cols[c])?),
            None => None,
        };
        let timestamp = match time_col {
            Some(c) => Some(unix_seconds(path, line, cols[c])?),
            None => None,
        };
        let mut push = |item: &str| {
            catalog.ensure(item);
            histories.push(NewInteraction {
                user_id: user.to_owned(),
                item_id: item.to_owned(),
                kind: Some(kind.to_owned()),
                value,
                timestamp,
            });
        };
        if let Some(c) = list_col {
            for item in cols[c].split_ascii_whitespace() {
                push(item);
            }
        }
        push(target);
    }
    Ok(Inter {
        histories,
        sequence,
        timestamps: time_col.is_some(),
    })
}

fn unix_seconds(path: &Path, line: usize, raw: &str) -> Result<DateTime<Utc>, ImportError> {
    let v = parse_f64(path, line, "timestamp", raw)?;
    let secs = v.floor();
    let nanos = (((v - secs) * 1e9).round() as u32).min(999_999_999);
    if secs.abs() < 1e15
        && let Some(t) = DateTime::from_timestamp(secs as i64, nanos)
    {
        return Ok(t);
    }
    Err(ImportError::parse(
        path,
        line,
        format!("timestamp: {raw:?} is out of range for unix seconds"),
    ))
}

/// Decodes HTML character references: `&amp; &quot; &apos; &lt; &gt;`, the HTML 4 Latin-1 and
/// common typographic names (`&eacute; &reg; &ndash; &rsquo; &trade; ...`) and numeric
/// `&#NNN;` / `&#xHH;`. Unknown or malformed references (and ones naming control characters)
/// are left as they are. One pass: `&amp;lt;` becomes `&lt;`.
pub fn decode_html_entities(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semi = after.bytes().take(32).position(|b| b == b';');
        // `semi` indexes an ASCII ';', so slicing around it stays on char boundaries.
        match semi.and_then(|i| entity_char(&after[..i]).map(|c| (i, c))) {
            Some((i, c)) => {
                out.push(c);
                rest = &after[i + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// HTML 4 Latin-1 entity names, U+00A0 to U+00FF in order.
const LATIN1: [&str; 96] = [
    "nbsp", "iexcl", "cent", "pound", "curren", "yen", "brvbar", "sect", "uml", "copy", "ordf",
    "laquo", "not", "shy", "reg", "macr", "deg", "plusmn", "sup2", "sup3", "acute", "micro",
    "para", "middot", "cedil", "sup1", "ordm", "raquo", "frac14", "frac12", "frac34", "iquest",
    "Agrave", "Aacute", "Acirc", "Atilde", "Auml", "Aring", "AElig", "Ccedil", "Egrave", "Eacute",
    "Ecirc", "Euml", "Igrave", "Iacute", "Icirc", "Iuml", "ETH", "Ntilde", "Ograve", "Oacute",
    "Ocirc", "Otilde", "Ouml", "times", "Oslash", "Ugrave", "Uacute", "Ucirc", "Uuml", "Yacute",
    "THORN", "szlig", "agrave", "aacute", "acirc", "atilde", "auml", "aring", "aelig", "ccedil",
    "egrave", "eacute", "ecirc", "euml", "igrave", "iacute", "icirc", "iuml", "eth", "ntilde",
    "ograve", "oacute", "ocirc", "otilde", "ouml", "divide", "oslash", "ugrave", "uacute", "ucirc",
    "uuml", "yacute", "thorn", "yuml",
];

fn entity_char(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = if let Some(hex) = num.strip_prefix(['x', 'X']) {
            if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(hex, 16).ok()?
        } else {
            if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            num.parse::<u32>().ok()?
        };
        return char::from_u32(code).filter(|c| !c.is_control());
    }
    let code = match name {
        "amp" => 0x26,
        "quot" => 0x22,
        "apos" => 0x27,
        "lt" => 0x3C,
        "gt" => 0x3E,
        "OElig" => 0x152,
        "oelig" => 0x153,
        "Scaron" => 0x160,
        "scaron" => 0x161,
        "Yuml" => 0x178,
        "fnof" => 0x192,
        "circ" => 0x2C6,
        "tilde" => 0x2DC,
        "ensp" => 0x2002,
        "emsp" => 0x2003,
        "thinsp" => 0x2009,
        "ndash" => 0x2013,
        "mdash" => 0x2014,
        "lsquo" => 0x2018,
        "rsquo" => 0x2019,
        "sbquo" => 0x201A,
        "ldquo" => 0x201C,
        "rdquo" => 0x201D,
        "bdquo" => 0x201E,
        "dagger" => 0x2020,
        "Dagger" => 0x2021,
        "bull" => 0x2022,
        "hellip" => 0x2026,
        "permil" => 0x2030,
        "prime" => 0x2032,
        "Prime" => 0x2033,
        "lsaquo" => 0x2039,
        "rsaquo" => 0x203A,
        "euro" => 0x20AC,
        "trade" => 0x2122,
        "larr" => 0x2190,
        "rarr" => 0x2192,
        "hearts" => 0x2665,
        _ => 0xA0 + LATIN1.iter().position(|n| *n == name)? as u32,
    };
    char::from_u32(code)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::write;
    use super::super::{Format, read};
    use super::*;

    const ITEM: &str = "item_id:token\ttitle:token_seq\n\
        0\tFire Emblem: The Sacred Stones\n\
        1\tMario &amp; Luigi: &quot;Bowser&#39;s&quot; &lt;Inside&gt; Story\n\
        2\tPok&eacute;mon&reg; &ndash; Red &#x263A;\n\
        3\tUnused Item\n";
    const SEQ: &str = "user_id:token\titem_id_list:token_seq\titem_id:token\n\
        10\t0 1\t2\n\
        11\t2 2 0\t1\n";

    #[test]
    fn decodes_entities() {
        assert_eq!(decode_html_entities("plain"), "plain");
        assert!(matches!(decode_html_entities("plain"), Cow::Borrowed(_)));
        assert_eq!(
            decode_html_entities("A &amp; B &quot;C&quot; D&#39;s &lt;x&gt; &#65;&#x42;"),
            "A & B \"C\" D's <x> AB"
        );
        assert_eq!(
            decode_html_entities("Pok&eacute;mon&reg;&trade; &ndash; &nbsp;"),
            "Pokémon®™ – \u{a0}"
        );
        // Unknown, malformed, unterminated and control references stay as they are.
        assert_eq!(
            decode_html_entities("&bogus; & &#; &#xZZ; &amp &#0; AT&T"),
            "&bogus; & &#; &#xZZ; &amp &#0; AT&T"
        );
        assert_eq!(decode_html_entities("&amp;amp; é&amp;"), "&amp; é&");
        assert_eq!(decode_html_entities("&yuml;&Agrave;&nbsp;"), "ÿÀ\u{a0}");
    }

    #[test]
    fn reads_sequence_layout_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let item = write(dir.path(), "G.item", ITEM.as_bytes());
        let inter = write(dir.path(), "G.test.inter", SEQ.as_bytes());
        let ds = read(Format::Recbole, &[item, inter]).unwrap();
        assert_eq!(ds.items.len(), 4);
        assert_eq!(
            ds.items[1].title,
            "Mario & Luigi: \"Bowser's\" <Inside> Story"
        );
        assert_eq!(ds.items[2].title, "Pokémon® – Red ☺");
        let got: Vec<(&str, &str)> = ds
            .interactions
            .iter()
            .map(|i| (i.user_id.as_str(), i.item_id.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("10", "0"),
                ("10", "1"),
                ("10", "2"),
                ("11", "2"),
                ("11", "0"),
                ("11", "1")
            ]
        );
        assert!(
            ds.interactions
                .iter()
                .all(|i| i.kind.as_deref() == Some("interaction")
                    && i.value.is_none()
                    && i.timestamp.is_none())
        );
        let notes = ds.notes.join("\n");
        assert!(notes.contains("no timestamps"), "{notes}");
        assert!(notes.contains("dropped 1 repeated"), "{notes}");
        assert!(
            notes.contains("1 of 4 items have no interactions"),
            "{notes}"
        );
    }

    #[test]
    fn directory_prefers_test_inter() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "G.item", ITEM.as_bytes());
        write(dir.path(), "G.test.inter", SEQ.as_bytes());
        write(dir.path(), "G.valid.inter", b"junk");
        write(dir.path(), "G.random", b"junk");
        let ds = read(Format::Recbole, &[dir.path().to_path_buf()]).unwrap();
        assert_eq!(ds.user_count(), 2);
        assert_eq!(ds.interactions.len(), 6);
    }

    #[test]
    fn reads_plain_layout_with_ratings_and_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let item = write(dir.path(), "x.item", ITEM.as_bytes());
        let inter = write(
            dir.path(),
            "x.inter",
            b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n\
              u1\t1\t4\t1700000100\n\
              u2\t0\t3.5\t1700000000\n\
              u1\t0\t5\t1700000000.5\n\
              u1\t9\t1\t1700000200\n",
        );
        let ds = read(Format::Recbole, &[item, inter]).unwrap();
        let got: Vec<(&str, &str, Option<f64>)> = ds
            .interactions
            .iter()
            .map(|i| (i.user_id.as_str(), i.item_id.as_str(), i.value))
            .collect();
        assert_eq!(
            got,
            [
                ("u1", "0", Some(5.0)),
                ("u1", "1", Some(4.0)),
                ("u1", "9", Some(1.0)),
                ("u2", "0", Some(3.5))
            ]
        );
        assert_eq!(ds.interactions[0].kind.as_deref(), Some("rating"));
        assert_eq!(
            ds.interactions[0].timestamp.unwrap().timestamp_millis(),
            1_700_000_000_500
        );
        // Item 9 is not in the .item file: a placeholder is created and noted.
        assert_eq!(ds.items.len(), 5);
        assert_eq!(ds.items[4].title, "Item 9");
        assert!(
            ds.notes
                .iter()
                .any(|n| n.contains("1 item ids used in x.inter are missing")),
            "{:?}",
            ds.notes
        );
    }

    #[test]
    fn bad_column_count_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let item = write(dir.path(), "G.item", ITEM.as_bytes());
        let inter = write(
            dir.path(),
            "G.test.inter",
            b"user_id:token\titem_id_list:token_seq\titem_id:token\n1\t0\t1\n2\t0 1\n",
        );
        let err = read(Format::Recbole, &[item, inter])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("G.test.inter:3:")
                && err.contains("expected 3 tab-separated columns, found 2"),
            "{err}"
        );
    }

    #[test]
    fn non_utf8_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let item = write(
            dir.path(),
            "G.item",
            b"item_id:token\ttitle:token_seq\n0\tok\n1\tbad \xE9 latin-1\n",
        );
        let inter = write(dir.path(), "G.test.inter", SEQ.as_bytes());
        let err = read(Format::Recbole, &[item, inter])
            .unwrap_err()
            .to_string();
        assert!(err.contains("G.item:3:") && err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn header_problems_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let inter = write(dir.path(), "G.test.inter", SEQ.as_bytes());
        let cases: [(&[u8], &str); 4] = [
            (b"0\tFire Emblem\n", "missing RecBole header"),
            (b"item_id:token\tgenre:token_seq\n", "lacks a title"),
            (b"", "empty file"),
            (
                b"item_id:float\ttitle:token_seq\n",
                "should be item_id:token",
            ),
        ];
        for (content, want) in cases {
            let item = write(dir.path(), "G.item", content);
            let err = read(Format::Recbole, &[item, inter.clone()])
                .unwrap_err()
                .to_string();
            assert!(err.contains("G.item:1:") && err.contains(want), "{err}");
        }
        let item = write(dir.path(), "G.item", ITEM.as_bytes());
        let inter = write(
            dir.path(),
            "G.test.inter",
            b"user_id:token\titem_id:token\tlabel:float\n",
        );
        let err = read(Format::Recbole, &[item, inter])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("G.test.inter:1:") && err.contains("unexpected header column label:float"),
            "{err}"
        );
    }

    #[test]
    fn bad_numbers_and_duplicate_items_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let item = write(dir.path(), "G.item", ITEM.as_bytes());
        let inter = write(
            dir.path(),
            "G.inter",
            b"user_id:token\titem_id:token\trating:float\nu\t0\tfive\n",
        );
        let err = read(Format::Recbole, &[item, inter.clone()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("G.inter:2:") && err.contains("rating: \"five\" is not a number"),
            "{err}"
        );
        let item = write(
            dir.path(),
            "G.item",
            b"item_id:token\ttitle:token_seq\n0\ta\n0\tb\n",
        );
        let err = read(Format::Recbole, &[item, inter])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("G.item:3:") && err.contains("already appeared on line 2"),
            "{err}"
        );
    }

    #[test]
    fn recbole_collection_title_columns_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let inter = write(
            dir.path(),
            "ml.inter",
            b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t50\t5\t881250949\n",
        );
        for (header, title) in [
            (
                "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
                "Star Wars",
            ),
            (
                "item_id:token\tname:token_seq\tgenre:token_seq",
                "Star Wars",
            ),
            ("item_id:token\tname:token\ttitle:token_seq", "Star Wars"),
        ] {
            let row = if header.ends_with("title:token_seq") {
                "50\tignored\tStar Wars"
            } else if header.contains("release_year") {
                "50\tStar Wars\t1977\tAction"
            } else {
                "50\tStar Wars\tx"
            };
            let item = write(
                dir.path(),
                "ml.item",
                format!("{header}\n{row}\n").as_bytes(),
            );
            let ds = read(Format::Recbole, &[item, inter.clone()]).unwrap();
            assert_eq!(ds.items[0].title, title, "{header}");
        }
    }

    #[test]
    fn extra_item_columns_become_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let item = write(
            dir.path(),
            "G.item",
            b"item_id:token\ttitle:token_seq\tprice:float\tbrand:token\n0\tA\t9.5\tNin&amp;tendo\n1\tB\t\t\n",
        );
        let inter = write(
            dir.path(),
            "G.inter",
            b"user_id:token\titem_id:token\nu\t0\n",
        );
        let ds = read(Format::Recbole, &[item, inter]).unwrap();
        assert_eq!(
            ds.items[0].attributes,
            Some(serde_json::json!({"price": 9.5, "brand": "Nin&tendo"}))
        );
        assert_eq!(ds.items[1].attributes, None);
    }

    #[test]
    fn wrong_file_sets_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let item = write(dir.path(), "G.item", ITEM.as_bytes());
        let err = read(Format::Recbole, std::slice::from_ref(&item))
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly one .inter"), "{err}");
        let other = write(dir.path(), "G.csv", b"");
        let err = read(Format::Recbole, &[item, other])
            .unwrap_err()
            .to_string();
        assert!(err.contains("G.csv is neither"), "{err}");
    }
}
