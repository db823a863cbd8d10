//! Bulk dataset readers: pure, database-free parsers that turn a public recommendation data set
//! (or a generic JSONL file) into catalog items and per-user interaction histories, from files
//! on disk ([`read`]) or held in memory ([`read_memory`]); and `load.rs`, the one sequence that
//! reads, checks and writes a data set into a project ([`load_into`]: `agp import` and the
//! console's bundled sample).
//!
//! Every reader follows the same contract (see [`Dataset`]):
//! - interactions come grouped by user, users in first-appearance order, each user's events in
//!   history order (oldest first);
//! - every interaction's `item_id` exists in `items`, item ids are unique, and items without
//!   interactions are kept;
//! - a user's repeated rows for the same item are dropped (the first is kept) and counted in
//!   `notes`;
//! - `timestamp` stays `None` when the source has none (the writer assigns ordered synthetic
//!   timestamps);
//! - anything malformed (non-UTF-8 bytes, a missing or unexpected header, a wrong column count,
//!   an unparsable number) is an [`ImportError`] naming the file and the 1-based line.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::catalog::{NewInteraction, NewItem};

mod goodreads;
mod jsonl;
mod load;
mod recbole;
mod yelp;

pub use load::{Input, Load, LoadError, Loaded, Progress, load_into};
pub use recbole::decode_html_entities;

/// The input formats `agp import` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// RecBole atomic files (`.item` + `.inter`), e.g. LLMRank's Amazon Games-6k.
    Recbole,
    /// The Yelp core-40 sample (`items.txt` + `ratings.txt`).
    #[value(name = "yelp-core40")]
    YelpCore40,
    /// Goodreads `user_rating_*.csv` files, optionally enriched by `goodbooks10k_books.csv`.
    Goodreads,
    /// One JSON object per line: `{"item": {...}}` or `{"interaction": {...}}`.
    Jsonl,
}

impl Format {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Recbole => "recbole",
            Format::YelpCore40 => "yelp-core40",
            Format::Goodreads => "goodreads",
            Format::Jsonl => "jsonl",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a reader produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dataset {
    /// Unique by id; items without interactions are kept.
    pub items: Vec<NewItem>,
    /// Grouped by user (users in first-appearance order), each user's in history order.
    pub interactions: Vec<NewInteraction>,
    /// Human-readable remarks: ordering assumptions, dropped rows, enrichment coverage.
    pub notes: Vec<String>,
}

impl Dataset {
    /// Number of distinct users (interactions are grouped by user, so this counts the groups).
    pub fn user_count(&self) -> usize {
        let mut n = 0;
        let mut last: Option<&str> = None;
        for it in &self.interactions {
            if last != Some(it.user_id.as_str()) {
                n += 1;
                last = Some(it.user_id.as_str());
            }
        }
        n
    }
}

/// The runs of one user in `interactions` (readers group a user's events together, oldest
/// first), as index ranges in order.
pub fn user_runs(interactions: &[NewInteraction]) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, it) in interactions.iter().enumerate() {
        match runs.last_mut() {
            Some(r) if interactions[r.start].user_id == it.user_id => r.end = i + 1,
            _ => runs.push(i..i + 1),
        }
    }
    runs
}

/// The held-out target of one user's run: its last interaction, when the run has at least two
/// (one is left as history). The one definition the replay simulator (`simulator::users`) and
/// `agp import --hold-out-last` share, so what the service is not given is exactly what the
/// simulator asks it to find.
pub fn held_out_target(run: &std::ops::Range<usize>) -> Option<usize> {
    (run.len() >= 2).then(|| run.end - 1)
}

/// Indices (ascending) of every user's held-out target in `interactions`.
pub fn held_out_targets(interactions: &[NewInteraction]) -> Vec<usize> {
    user_runs(interactions)
        .iter()
        .filter_map(held_out_target)
        .collect()
}

impl Dataset {
    /// Drops every user's held-out target (see [`held_out_target`]); returns how many.
    pub fn hold_out_last(&mut self) -> usize {
        let drop = held_out_targets(&self.interactions);
        let mut next = drop.iter().peekable();
        let mut i = 0;
        self.interactions.retain(|_| {
            let gone = next.next_if_eq(&&i).is_some();
            i += 1;
            !gone
        });
        drop.len()
    }
}

/// A reading failure. Content errors name the file and the 1-based line.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A path could not be opened or listed (missing file, no permission, ...).
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An I/O error while reading a file.
    #[error("{}:{line}: read error: {source}", path.display())]
    Read {
        path: PathBuf,
        line: usize,
        #[source]
        source: std::io::Error,
    },
    /// Malformed content.
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The set of paths does not fit the format (a file missing, too many, wrong kind).
    #[error("{message}")]
    Paths { message: String },
}

impl ImportError {
    pub(crate) fn parse(path: &Path, line: usize, message: impl Into<String>) -> Self {
        ImportError::Parse {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    pub(crate) fn paths(message: impl Into<String>) -> Self {
        ImportError::Paths {
            message: message.into(),
        }
    }
}

/// Reads `paths` (files and/or directories, as the format allows) into a [`Dataset`].
pub fn read(format: Format, paths: &[PathBuf]) -> Result<Dataset, ImportError> {
    read_from(Files::Disk, format, paths)
}

/// Reads files held in memory into a [`Dataset`], exactly as the same files on disk would be
/// read (given as files, not a directory).
pub fn read_memory(format: Format, files: &[MemoryFile]) -> Result<Dataset, ImportError> {
    let paths: Vec<PathBuf> = files.iter().map(|f| PathBuf::from(&f.name)).collect();
    read_from(Files::Memory(files), format, &paths)
}

fn read_from(fs: Files<'_>, format: Format, paths: &[PathBuf]) -> Result<Dataset, ImportError> {
    if paths.is_empty() {
        return Err(ImportError::paths(format!(
            "{format}: no input paths given"
        )));
    }
    for p in paths {
        fs.check(p)?;
    }
    match format {
        Format::Recbole => recbole::read(fs, paths),
        Format::YelpCore40 => yelp::read(fs, paths),
        Format::Goodreads => goodreads::read(fs, paths),
        Format::Jsonl => jsonl::read(fs, paths),
    }
}

/// A file held in memory (the console's bundled sample): the readers see its name as they
/// see a path (its extension, `ratings.txt`, ...), and errors and notes name it.
#[derive(Debug, Clone)]
pub struct MemoryFile {
    pub name: String,
    pub bytes: Cow<'static, [u8]>,
}

/// Where the readers' paths lead: the file system, or files held in memory (no directories).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Files<'a> {
    Disk,
    Memory(&'a [MemoryFile]),
}

impl<'a> Files<'a> {
    fn memory_file(files: &'a [MemoryFile], path: &Path) -> Option<&'a MemoryFile> {
        files.iter().find(|f| Path::new(&f.name) == path)
    }

    fn not_found(path: &Path) -> ImportError {
        ImportError::Open {
            path: path.to_path_buf(),
            source: std::io::ErrorKind::NotFound.into(),
        }
    }

    /// Fails with [`ImportError::Open`] when `path` is not there.
    fn check(self, path: &Path) -> Result<(), ImportError> {
        match self {
            Files::Disk => {
                std::fs::metadata(path)
                    .map(|_| ())
                    .map_err(|source| ImportError::Open {
                        path: path.to_path_buf(),
                        source,
                    })
            }
            Files::Memory(files) => Files::memory_file(files, path)
                .map(|_| ())
                .ok_or_else(|| Files::not_found(path)),
        }
    }

    pub(crate) fn is_dir(self, path: &Path) -> bool {
        match self {
            Files::Disk => path.is_dir(),
            Files::Memory(_) => false,
        }
    }

    /// The files of a directory (not recursing), sorted by name.
    pub(crate) fn list_dir(self, dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
        match self {
            Files::Disk => list_dir(dir),
            Files::Memory(_) => Err(Files::not_found(dir)),
        }
    }

    /// The content of a file.
    fn open(self, path: &Path) -> Result<Box<dyn Read + 'a>, ImportError> {
        match self {
            Files::Disk => {
                let file = File::open(path).map_err(|source| ImportError::Open {
                    path: path.to_path_buf(),
                    source,
                })?;
                Ok(Box::new(file))
            }
            Files::Memory(files) => Files::memory_file(files, path)
                .map(|f| Box::new(&f.bytes[..]) as Box<dyn Read + 'a>)
                .ok_or_else(|| Files::not_found(path)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared machinery.

/// The files of a directory on disk (not recursing), sorted by name.
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let open_err = |source| ImportError::Open {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(open_err)? {
        let entry = entry.map_err(open_err)?;
        let path = entry.path();
        if path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The final path component as text ("" when it has none or is not UTF-8).
pub(crate) fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

pub(crate) fn display_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Line-by-line reader that checks UTF-8 and counts lines, reusing one buffer.
pub(crate) struct Lines<'a> {
    path: PathBuf,
    reader: BufReader<Box<dyn Read + 'a>>,
    buf: Vec<u8>,
    line: usize,
}

impl<'a> Lines<'a> {
    pub(crate) fn open(fs: Files<'a>, path: &Path) -> Result<Self, ImportError> {
        let file = fs.open(path)?;
        Ok(Lines {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 16, file),
            buf: Vec::with_capacity(256),
            line: 0,
        })
    }

    /// The next line without its `\n` / `\r\n` terminator (and without a leading BOM on line 1),
    /// with its 1-based number; `None` at the end of the file.
    pub(crate) fn next_line(&mut self) -> Result<Option<(usize, &str)>, ImportError> {
        self.buf.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.buf)
            .map_err(|source| ImportError::Read {
                path: self.path.clone(),
                line: self.line + 1,
                source,
            })?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        }
        let mut bytes = &self.buf[..];
        if self.line == 1 && bytes.starts_with(b"\xEF\xBB\xBF") {
            bytes = &bytes[3..];
        }
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Some((self.line, s))),
            Err(e) => Err(ImportError::parse(
                &self.path,
                self.line,
                format!("invalid UTF-8 (byte {} of the line)", e.valid_up_to() + 1),
            )),
        }
    }
}

/// Splits `line` on `sep` into `out`, returning the number of fields (which may exceed
/// `out.len()`; only the first `out.len()` are stored). Avoids a per-row allocation.
pub(crate) fn split_into<'a>(line: &'a str, sep: char, out: &mut [&'a str]) -> usize {
    let mut n = 0;
    for field in line.split(sep) {
        if n < out.len() {
            out[n] = field;
        }
        n += 1;
    }
    n
}

/// Counts the newlines the CSV parser has pulled, so records get true line numbers.
/// (`csv`'s own record positions start right after the previous record, so they are off after
/// blank lines and with CRLF endings.)
struct NewlineTracker<R> {
    inner: R,
    /// Absolute offset of the next byte to be read.
    offset: u64,
    /// Offsets of newlines not yet passed by a query.
    pending: VecDeque<u64>,
    /// Newlines before the last queried offset.
    passed: usize,
}

impl<R: Read> Read for NewlineTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for (i, b) in buf[..n].iter().enumerate() {
            if *b == b'\n' {
                self.pending.push_back(self.offset + i as u64);
            }
        }
        self.offset += n as u64;
        Ok(n)
    }
}

impl<R> NewlineTracker<R> {
    /// The 1-based line of byte `at`; queries must not go backwards.
    fn line_of(&mut self, at: u64) -> usize {
        while self.pending.front().is_some_and(|&nl| nl < at) {
            self.pending.pop_front();
            self.passed += 1;
        }
        self.passed + 1
    }
}

/// A CSV reader over a file, with UTF-8 checking and 1-based record line numbers.
pub(crate) struct Csv<'a> {
    path: PathBuf,
    reader: csv::Reader<NewlineTracker<Box<dyn Read + 'a>>>,
    record: csv::ByteRecord,
}

impl<'a> Csv<'a> {
    pub(crate) fn open(fs: Files<'a>, path: &Path) -> Result<Self, ImportError> {
        let file = fs.open(path)?;
        let tracker = NewlineTracker {
            inner: file,
            offset: 0,
            pending: VecDeque::new(),
            passed: 0,
        };
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(1 << 16)
            .from_reader(tracker);
        Ok(Csv {
            path: path.to_path_buf(),
            reader,
            record: csv::ByteRecord::new(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the next record; returns the line it starts on, or `None` at the end. All fields
    /// are checked to be UTF-8, so [`Csv::field`] cannot fail on encoding afterwards.
    pub(crate) fn next_record(&mut self) -> Result<Option<usize>, ImportError> {
        match self.reader.read_byte_record(&mut self.record) {
            Ok(false) => Ok(None),
            Ok(true) => {
                // The parser stops just past the record's terminator's first byte (`\n`, or the
                // `\r` of `\r\n`), or at the end of the file: the byte before is on the last line.
                let end = self.reader.position().byte();
                let last_line = self.reader.get_mut().line_of(end.saturating_sub(1));
                let embedded = self
                    .record
                    .as_slice()
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count();
                let line = last_line.saturating_sub(embedded).max(1);
                for (i, field) in self.record.iter().enumerate() {
                    if let Err(e) = std::str::from_utf8(field) {
                        return Err(ImportError::parse(
                            &self.path,
                            line,
                            format!(
                                "invalid UTF-8 in column {} (byte {})",
                                i + 1,
                                e.valid_up_to() + 1
                            ),
                        ));
                    }
                }
                Ok(Some(line))
            }
            Err(e) => {
                let at = self.reader.position().byte();
                let line = self.reader.get_mut().line_of(at);
                let message = format!("invalid CSV: {e}");
                match e.into_kind() {
                    csv::ErrorKind::Io(source) => Err(ImportError::Read {
                        path: self.path.clone(),
                        line,
                        source,
                    }),
                    _ => Err(ImportError::parse(&self.path, line, message)),
                }
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.record.len()
    }

    /// Field `i` of the current record ("" when absent); a BOM opening the file is dropped.
    pub(crate) fn field(&self, i: usize) -> &str {
        let bytes = self.record.get(i).unwrap_or(b"");
        let s = std::str::from_utf8(bytes).unwrap_or("");
        let first = i == 0 && self.record.position().is_some_and(|p| p.byte() == 0);
        if first {
            s.strip_prefix('\u{feff}').unwrap_or(s)
        } else {
            s
        }
    }
}

/// How repeated events of one user are recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dedupe {
    /// Same item (the data-set formats).
    Item,
    /// Same item, kind and timestamp (JSONL, where a view and a purchase of one item differ).
    Event,
}

/// Per-user histories in first-appearance order.
#[derive(Default)]
pub(crate) struct Histories {
    index: HashMap<String, usize>,
    users: Vec<Vec<NewInteraction>>,
}

/// What [`Histories::finish`] did.
pub(crate) struct Finished {
    pub interactions: Vec<NewInteraction>,
    pub users: usize,
    pub duplicates: usize,
    /// Users whose events were all timestamped and got sorted by time.
    pub sorted_users: usize,
    /// Users with some but not all events timestamped (left in file order).
    pub mixed_users: usize,
}

impl Histories {
    pub(crate) fn push(&mut self, it: NewInteraction) {
        let slot = match self.index.get(it.user_id.as_str()) {
            Some(&slot) => slot,
            None => {
                let slot = self.users.len();
                self.index.insert(it.user_id.clone(), slot);
                self.users.push(Vec::new());
                slot
            }
        };
        self.users[slot].push(it);
    }

    /// Flattens the histories: stable-sorts a user's events by time when all of them carry a
    /// timestamp, then drops repeats (keeping the first).
    pub(crate) fn finish(self, dedupe: Dedupe) -> Finished {
        let total: usize = self.users.iter().map(Vec::len).sum();
        let mut out = Vec::with_capacity(total);
        let (mut duplicates, mut sorted_users, mut mixed_users) = (0, 0, 0);
        let users = self.users.len();
        for mut events in self.users {
            let stamped = events.iter().filter(|e| e.timestamp.is_some()).count();
            if stamped == events.len() && stamped > 0 {
                events.sort_by_key(|e| e.timestamp);
                sorted_users += 1;
            } else if stamped > 0 {
                mixed_users += 1;
            }
            let keep: Vec<bool> = match dedupe {
                Dedupe::Item => {
                    let mut seen = HashSet::with_capacity(events.len());
                    events
                        .iter()
                        .map(|e| seen.insert(e.item_id.as_str()))
                        .collect()
                }
                Dedupe::Event => {
                    let mut seen = HashSet::with_capacity(events.len());
                    events
                        .iter()
                        .map(|e| seen.insert((e.item_id.as_str(), e.kind.as_deref(), e.timestamp)))
                        .collect()
                }
            };
            for (e, k) in events.into_iter().zip(keep) {
                if k {
                    out.push(e);
                } else {
                    duplicates += 1;
                }
            }
        }
        Finished {
            interactions: out,
            users,
            duplicates,
            sorted_users,
            mixed_users,
        }
    }
}

pub(crate) fn duplicate_note(duplicates: usize) -> Option<String> {
    (duplicates > 0).then(|| {
        format!("dropped {duplicates} repeated (user, item) rows, keeping each user's first")
    })
}

/// Parses a float field, naming the column on failure; rejects NaN and infinities.
pub(crate) fn parse_f64(
    path: &Path,
    line: usize,
    column: &str,
    s: &str,
) -> Result<f64, ImportError> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(ImportError::parse(
            path,
            line,
            format!("{column}: {s:?} is not a number"),
        )),
    }
}

pub(crate) fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::path::{Path, PathBuf};

    pub fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).expect("write fixture");
        path
    }

    /// The folder of the real data sets (`amazon-games/`, `yelp-core40/`, `goodreads/`) that
    /// the ignored tests read: `$AGP_SHARED_DATA`, else `../shared/data` beside this crate.
    pub fn shared_data() -> PathBuf {
        std::env::var_os("AGP_SHARED_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::write;
    use super::*;

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.jsonl");
        let err = read(Format::Jsonl, std::slice::from_ref(&missing)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("nope.jsonl"), "{msg}");
        assert!(matches!(err, ImportError::Open { .. }));
    }

    #[test]
    fn memory_files_read_as_the_same_files_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(Format, &[(&str, &str)]); 4] = [
            (
                Format::Recbole,
                &[
                    ("s.item", "item_id:token\ttitle:token_seq\n1\tOne\n2\tTwo\n"),
                    (
                        "s.inter",
                        "user_id:token\titem_id:token\nu\t1\nu\t2\nv\t3\n",
                    ),
                ],
            ),
            (
                Format::YelpCore40,
                &[
                    ("items.txt", "b1\tFood\n"),
                    ("ratings.txt", "u\tb1\t4\nu\tb2\t5\n"),
                ],
            ),
            (
                Format::Goodreads,
                &[("user_rating_0.csv", "ID,Name,Rating\n1,A book,it was ok\n")],
            ),
            (
                Format::Jsonl,
                &[(
                    "x.jsonl",
                    "{\"item\": {\"id\": \"a\", \"title\": \"A\"}}\n\
                     {\"interaction\": {\"user_id\": \"u\", \"item_id\": \"a\"}}\n",
                )],
            ),
        ];
        for (format, files) in cases {
            let sub = dir.path().join(format.as_str());
            std::fs::create_dir(&sub).unwrap();
            let paths: Vec<PathBuf> = files
                .iter()
                .map(|(name, text)| write(&sub, name, text.as_bytes()))
                .collect();
            let disk = read(format, &paths).unwrap();
            let in_memory: Vec<MemoryFile> = files
                .iter()
                .map(|(name, text)| MemoryFile {
                    name: name.to_string(),
                    bytes: Cow::Owned(text.as_bytes().to_vec()),
                })
                .collect();
            let memory = read_memory(format, &in_memory).unwrap();
            assert!(!disk.interactions.is_empty(), "{format}");
            assert_eq!(memory.items, disk.items, "{format}");
            assert_eq!(memory.interactions, disk.interactions, "{format}");
            // The notes name the files as given: here without the folder.
            let prefix = format!("{}/", sub.display());
            let notes: Vec<String> = disk.notes.iter().map(|n| n.replace(&prefix, "")).collect();
            assert_eq!(memory.notes, notes, "{format}");
        }

        let bad = [MemoryFile {
            name: "bad.jsonl".into(),
            bytes: Cow::Borrowed(b"{\"item\": {\"id\": \"a\", \"title\": \"A\"}}\n[1]\n"),
        }];
        let err = read_memory(Format::Jsonl, &bad).unwrap_err().to_string();
        assert!(err.starts_with("bad.jsonl:2: "), "{err}");
        let only_items = [MemoryFile {
            name: "s.item".into(),
            bytes: Cow::Borrowed(b"item_id:token\ttitle:token_seq\n1\tOne\n"),
        }];
        assert!(matches!(
            read_memory(Format::Recbole, &only_items),
            Err(ImportError::Paths { .. })
        ));
    }

    #[test]
    fn format_names() {
        use clap::ValueEnum;
        for f in Format::value_variants() {
            assert_eq!(Format::from_str(f.as_str(), false), Ok(*f));
        }
        assert_eq!(
            Format::from_str("yelp-core40", false),
            Ok(Format::YelpCore40)
        );
    }

    #[test]
    fn no_paths_is_an_error() {
        assert!(matches!(
            read(Format::Recbole, &[]),
            Err(ImportError::Paths { .. })
        ));
    }

    #[test]
    fn lines_strip_terminators_and_bom_and_reject_bad_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.txt", b"\xEF\xBB\xBFone\r\ntwo\nthr\xFFee\n");
        let mut lines = Lines::open(Files::Disk, &p).unwrap();
        assert_eq!(lines.next_line().unwrap(), Some((1, "one")));
        assert_eq!(lines.next_line().unwrap(), Some((2, "two")));
        let err = lines.next_line().unwrap_err().to_string();
        assert!(err.contains("a.txt:3:") && err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn csv_lines_are_one_based_and_utf8_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.csv", b"h1,h2\n\"multi\nline\",x\nok,\xFF\n");
        let mut csv = Csv::open(Files::Disk, &p).unwrap();
        assert_eq!(csv.next_record().unwrap(), Some(1));
        assert_eq!(csv.next_record().unwrap(), Some(2));
        assert_eq!(csv.field(0), "multi\nline");
        let err = csv.next_record().unwrap_err().to_string();
        assert!(err.contains("a.csv:4:") && err.contains("UTF-8"), "{err}");

        // Blank lines, CRLF and a missing final newline keep the numbering right.
        let p = write(
            dir.path(),
            "b.csv",
            b"\xEF\xBB\xBFh\r\n\r\na\r\n\r\n\r\n\"x\r\ny\"\r\n\nlast",
        );
        let mut csv = Csv::open(Files::Disk, &p).unwrap();
        let mut got = Vec::new();
        while let Some(line) = csv.next_record().unwrap() {
            got.push((line, csv.field(0).to_owned()));
        }
        let want = [(1, "h"), (3, "a"), (6, "x\r\ny"), (9, "last")];
        assert_eq!(got, want.map(|(l, f)| (l, f.to_owned())));
    }

    #[test]
    fn histories_group_sort_and_dedupe() {
        use chrono::{TimeZone, Utc};
        let ev = |u: &str, i: &str, t: Option<i64>| NewInteraction {
            user_id: u.into(),
            item_id: i.into(),
            kind: None,
            value: None,
            timestamp: t.map(|s| Utc.timestamp_opt(s, 0).unwrap()),
        };
        let mut h = Histories::default();
        for e in [
            ev("b", "1", Some(20)),
            ev("a", "1", None),
            ev("b", "2", Some(10)),
            ev("a", "2", None),
            ev("a", "1", None),
        ] {
            h.push(e);
        }
        let f = h.finish(Dedupe::Item);
        let got: Vec<(&str, &str)> = f
            .interactions
            .iter()
            .map(|e| (e.user_id.as_str(), e.item_id.as_str()))
            .collect();
        assert_eq!(got, [("b", "2"), ("b", "1"), ("a", "1"), ("a", "2")]);
        assert_eq!((f.users, f.duplicates, f.sorted_users), (2, 1, 1));
    }

    #[test]
    fn hold_out_last_drops_exactly_each_users_last_of_two_or_more() {
        let ev = |u: &str, i: &str| NewInteraction {
            user_id: u.into(),
            item_id: i.into(),
            kind: None,
            value: None,
            timestamp: None,
        };
        let mut ds = Dataset {
            items: Vec::new(),
            interactions: vec![
                ev("a", "1"),
                ev("a", "2"),
                ev("a", "3"),
                ev("b", "9"),
                ev("c", "4"),
                ev("c", "5"),
                ev("d", "6"),
            ],
            notes: Vec::new(),
        };
        assert_eq!(held_out_targets(&ds.interactions), vec![2, 5]);
        assert_eq!(ds.hold_out_last(), 2);
        let left: Vec<(&str, &str)> = ds
            .interactions
            .iter()
            .map(|e| (e.user_id.as_str(), e.item_id.as_str()))
            .collect();
        // A user with one interaction keeps it (nothing to simulate, nothing held out).
        assert_eq!(
            left,
            [("a", "1"), ("a", "2"), ("b", "9"), ("c", "4"), ("d", "6")]
        );
        let mut empty = Dataset::default();
        assert_eq!(empty.hold_out_last(), 0);

        // On the shipped sample: one per user, and each dropped one is the simulator's target.
        let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/amazon-games-sample");
        let full = read(Format::Recbole, &[data]).unwrap();
        let mut held = full.clone();
        assert_eq!(held.hold_out_last(), 300);
        assert_eq!(held.interactions.len(), full.interactions.len() - 300);
        assert_eq!(held.user_count(), 300);
        for u in crate::simulator::users(&full) {
            let kept: Vec<&str> = held
                .interactions
                .iter()
                .filter(|e| e.user_id == u.id)
                .map(|e| e.item_id.as_str())
                .collect();
            assert_eq!(kept, u.history, "user {}", u.id);
            assert!(!kept.contains(&u.target.as_str()));
        }
    }

    /// The samples shipped in `data/` read cleanly (see data/README.md for the expected counts).
    #[test]
    fn shipped_samples() {
        let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
        let ds = read(Format::Recbole, &[data.join("amazon-games-sample")]).unwrap();
        assert_eq!(
            (ds.items.len(), ds.user_count(), ds.interactions.len()),
            (2990, 300, 3940)
        );
        assert_eq!(ds.items[0].id, "0");
        assert_eq!(ds.items[0].title, "Fire Emblem: The Sacred Stones");
        assert!(ds.items.iter().all(|i| !i.title.contains("&amp;")));
        let ds = read(Format::Jsonl, &[data.join("example.jsonl")]).unwrap();
        assert_eq!(
            (ds.items.len(), ds.user_count(), ds.interactions.len()),
            (3, 2, 5)
        );
    }

    /// Reads the real data sets and prints counts and read times. They are looked for in
    /// `$AGP_SHARED_DATA`, else in `../shared/data` beside this crate. Run with
    /// `AGP_SHARED_DATA=/path/to/data cargo test --release --lib import::tests::real_datasets -- --ignored --nocapture`.
    #[test]
    #[ignore = "reads the real data sets ($AGP_SHARED_DATA, default ../shared/data)"]
    fn real_datasets() {
        let root = super::test_util::shared_data();
        let cases: [(Format, Vec<PathBuf>); 5] = [
            (
                Format::Recbole,
                vec![
                    root.join("amazon-games/Games-6k.item"),
                    root.join("amazon-games/Games-6k.test.inter"),
                ],
            ),
            (Format::Recbole, vec![root.join("amazon-games")]),
            (Format::YelpCore40, vec![root.join("yelp-core40")]),
            (Format::Goodreads, vec![root.join("goodreads")]),
            (
                Format::Jsonl,
                vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/example.jsonl")],
            ),
        ];
        for (format, paths) in cases {
            let start = std::time::Instant::now();
            let ds = read(format, &paths).unwrap_or_else(|e| panic!("{format}: {e}"));
            let took = start.elapsed();
            println!(
                "{format} {}: {} items, {} users, {} interactions in {:.3} s",
                display_list(&paths),
                ds.items.len(),
                ds.user_count(),
                ds.interactions.len(),
                took.as_secs_f64()
            );
            for n in &ds.notes {
                println!("  note: {n}");
            }
            let ids: HashSet<&str> = ds.items.iter().map(|i| i.id.as_str()).collect();
            assert_eq!(ids.len(), ds.items.len(), "unique item ids");
            assert!(
                ds.interactions
                    .iter()
                    .all(|i| ids.contains(i.item_id.as_str()))
            );
            // What `agp import` checks before writing.
            let limits = crate::catalog::Limits::default();
            for item in &ds.items {
                crate::catalog::validate_item("item", item, &limits).unwrap();
            }
            for it in &ds.interactions {
                crate::catalog::validate_interaction("interaction", it, &limits).unwrap();
            }
        }
    }
}
