//! The write-ahead journal of rows that must survive a crash once a client was answered:
//! rerank log rows (what feedback joins to and the closed loop trains on) and LLM usage rows.
//!
//! Why a local journal, not a group commit to Postgres: the answer must not depend on
//! Postgres being up (a rerank falls back and still answers while the database restarts),
//! yet nothing answered may be lost, even to `kill -9`. So a row is appended to a file and
//! fsynced together with the other rows that arrived meanwhile (group commit: one
//! `fdatasync` per batch, about 0.1-0.3 ms here), the rerank answers once its row is on disk,
//! and a drainer task copies the file into Postgres in batches, retrying while Postgres is
//! away. Replays are idempotent (`ON CONFLICT DO NOTHING` on the row's own id), so a crash
//! between "inserted" and "marked drained" only re-inserts nothing.
//!
//! Files: `<dir>/<instance>/<start offset, 20 digits>.log`, one JSON record per line; each
//! process has its own instance folder, locked (`flock`) while the process lives. A process
//! that starts drains the folders of dead ones (a crash, `kill -9`), then removes them.
//! What a crash can still lose: a row whose fsync had not returned, whose request therefore
//! was not answered. When the journal holds `max_bytes` not yet in Postgres (a long outage),
//! new rows are dropped and counted (`agp_journal_dropped_total`) rather than filling the disk;
//! the rerank still answers.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::{Notify, oneshot, watch};

use crate::store::llm::UsageRecord;
use crate::store::rerank::RerankLogRow;

/// How long closing waits for the journal to reach Postgres (SIGTERM of `agp serve`).
pub const DRAIN_ON_CLOSE: Duration = Duration::from_secs(10);

/// One journaled row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Record {
    Rerank(RerankLogRow),
    Usage(UsageRecord),
}

impl Record {
    fn kind(&self) -> &'static str {
        match self {
            Record::Rerank(_) => "rerank",
            Record::Usage(_) => "usage",
        }
    }
}

/// Why a row was not journaled (the caller still answers; the row is counted as dropped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("the journal holds {0} bytes not yet in Postgres (AGP_JOURNAL_MAX_BYTES); row dropped")]
    Full(u64),
    #[error("journal write failed: {0}")]
    Io(String),
    #[error("the journal is closed")]
    Closed,
}

/// Where and how much.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// Root folder shared by the processes of one data directory; `None`: a private folder
    /// under the system temp dir, removed when the journal closes (tests, benches).
    pub dir: Option<PathBuf>,
    /// Most bytes kept that are not yet in Postgres.
    pub max_bytes: u64,
    /// A new file is started past this size; drained files are deleted.
    pub segment_bytes: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            dir: None,
            max_bytes: 1 << 30,
            segment_bytes: 16 << 20,
        }
    }
}

struct Entry {
    line: Vec<u8>,
    ack: Option<oneshot::Sender<Result<(), JournalError>>>,
}

/// State shared by the handle, the writer thread and the drainer task.
struct Shared {
    folder: PathBuf,
    /// Global offset up to which the journal is on disk (fsynced).
    durable: AtomicU64,
    /// Start offset of the oldest file still kept.
    oldest: AtomicU64,
    /// Wakes the drainer after a write.
    written: Notify,
    /// Someone waits for the drain (a flush): no coalescing delay.
    urgent: AtomicBool,
    /// Wakes the drainer out of its coalescing delay.
    kick: Notify,
    /// Global offset up to which rows are in Postgres.
    drained: watch::Sender<u64>,
    stopping: AtomicBool,
}

/// The journal handle (one per process, shared).
pub struct Journal {
    tx: Mutex<Option<mpsc::Sender<Entry>>>,
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    drainer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    _lock: File,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("folder", &self.shared.folder)
            .finish()
    }
}

impl Journal {
    /// Opens this process's journal under `opts.dir`, drains what dead processes left there,
    /// and starts the writer and the drainer. Needs a Tokio runtime.
    pub fn open(pool: PgPool, opts: JournalOptions) -> std::io::Result<Arc<Journal>> {
        let temporary = opts.dir.is_none();
        let root = opts
            .dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("agp-journals"));
        fs::create_dir_all(&root)?;
        let instance = format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let folder = root.join(&instance);
        fs::create_dir_all(&folder)?;
        let lock = File::create(folder.join("lock"))?;
        lock.lock()?;
        for orphan in orphans(&root, &instance) {
            if temporary {
                // Private journals of dead test processes belong to other databases.
                let _ = fs::remove_dir_all(&orphan);
            } else {
                tokio::spawn(recover(pool.clone(), orphan));
            }
        }
        let (drained, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            folder,
            durable: AtomicU64::new(0),
            oldest: AtomicU64::new(0),
            written: Notify::new(),
            urgent: AtomicBool::new(false),
            kick: Notify::new(),
            drained,
            stopping: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel::<Entry>();
        let writer = {
            let shared = shared.clone();
            let opts = opts.clone();
            std::thread::Builder::new()
                .name("agp-journal".into())
                .spawn(move || write_loop(rx, &shared, &opts))?
        };
        let drainer = tokio::spawn(drain_loop(pool, shared.clone()));
        Ok(Arc::new(Journal {
            tx: Mutex::new(Some(tx)),
            shared,
            writer: Mutex::new(Some(writer)),
            drainer: Mutex::new(Some(drainer)),
            _lock: lock,
        }))
    }

    fn send(&self, rec: &Record, ack: Option<oneshot::Sender<Result<(), JournalError>>>) -> bool {
        let mut line = match serde_json::to_vec(rec) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "could not serialize a journal record");
                return false;
            }
        };
        line.push(b'\n');
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            Some(tx) => tx.send(Entry { line, ack }).is_ok(),
            None => false,
        }
    }

    /// Appends a row and waits until it is on disk.
    pub async fn append(&self, rec: &Record) -> Result<(), JournalError> {
        let (ack, done) = oneshot::channel();
        if !self.send(rec, Some(ack)) {
            return Err(JournalError::Closed);
        }
        let r = done.await.unwrap_or(Err(JournalError::Closed));
        if r.is_err() {
            metrics::counter!("agp_journal_dropped_total", "kind" => rec.kind()).increment(1);
        }
        r
    }

    /// Queues a row without waiting; it is on disk no later than any row appended after it.
    pub fn append_nowait(&self, rec: &Record) {
        if !self.send(rec, None) {
            metrics::counter!("agp_journal_dropped_total", "kind" => rec.kind()).increment(1);
        }
    }

    /// Bytes on disk not yet in Postgres.
    pub fn pending_bytes(&self) -> u64 {
        let durable = self.shared.durable.load(Ordering::Acquire);
        durable.saturating_sub(*self.shared.drained.borrow())
    }

    /// Waits until every row appended so far is in Postgres (feedback joins, tests, shutdown),
    /// or `within` has passed; says whether it got there.
    pub async fn flush_within(&self, within: Duration) -> bool {
        // A sentinel through the writer: every row queued before it is then on disk.
        let (ack, done) = oneshot::channel();
        let sent = {
            let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            tx.as_ref().is_some_and(|tx| {
                tx.send(Entry {
                    line: Vec::new(),
                    ack: Some(ack),
                })
                .is_ok()
            })
        };
        if sent {
            let _ = done.await;
        }
        let target = self.shared.durable.load(Ordering::Acquire);
        self.shared.urgent.store(true, Ordering::Release);
        self.shared.written.notify_one();
        self.shared.kick.notify_one();
        let mut rx = self.shared.drained.subscribe();
        tokio::time::timeout(within, rx.wait_for(|d| *d >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// `flush_within` with a minute's patience.
    pub async fn flush(&self) {
        if !self.flush_within(Duration::from_secs(60)).await {
            tracing::warn!(
                pending_bytes = self.pending_bytes(),
                "journal rows are not all in Postgres yet; they stay on disk and are written later"
            );
        }
    }

    /// Flushes (for at most [`DRAIN_ON_CLOSE`]), then stops the writer and the drainer (an
    /// insert still waiting for Postgres is abandoned after 2 s). Rows still on disk are
    /// drained by the next process on this data directory, so a shutdown with Postgres away
    /// takes about 12 s, never longer.
    pub async fn close(&self) {
        if !self.flush_within(DRAIN_ON_CLOSE).await {
            tracing::warn!(
                pending_bytes = self.pending_bytes(),
                "journal rows are not all in Postgres; they stay on disk for the next process on this data dir"
            );
        }
        self.shared.stopping.store(true, Ordering::Release);
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        self.shared.written.notify_one();
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = writer {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        let drainer = self
            .drainer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut d) = drainer
            && tokio::time::timeout(Duration::from_secs(2), &mut d)
                .await
                .is_err()
        {
            d.abort();
        }
        // Everything is in Postgres: nothing for a later process to recover.
        if self.pending_bytes() == 0 {
            let _ = fs::remove_dir_all(&self.shared.folder);
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.written.notify_one();
    }
}

/// Instance folders under `root` whose process is gone (their lock can be taken).
fn orphans(root: &Path, me: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != me && e.path().is_dir())
        .filter(|e| {
            File::open(e.path().join("lock"))
                .map(|f| f.try_lock().is_ok())
                .unwrap_or(true)
        })
        .map(|e| e.path())
        .collect()
}

fn segment_name(start: u64) -> String {
    format!("{start:020}.log")
}

/// The segments of a folder by start offset, oldest first.
fn segments(folder: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = fs::read_dir(folder)
        .map(|es| {
            es.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    let start = name.strip_suffix(".log")?.parse().ok()?;
                    Some((start, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The writer thread: takes whatever is queued, writes it with one call, fsyncs once,
/// answers everyone in the batch.
fn write_loop(rx: mpsc::Receiver<Entry>, shared: &Shared, opts: &JournalOptions) {
    let mut file: Option<File> = None;
    let mut size = 0u64;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let mut waited = false;
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                // Nobody waits for rows queued without an answer at stake (a rerank's LLM
                // usage rows): give its log row a moment to join them, one fsync for both.
                Err(_) if !waited && batch.iter().all(|e| e.ack.is_none()) => {
                    waited = true;
                    match rx.recv_timeout(NOWAIT_LINGER) {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                Err(_) => break,
            }
        }
        let durable = shared.durable.load(Ordering::Acquire);
        let kept = durable.saturating_sub(shared.oldest.load(Ordering::Acquire));
        let mut buf = Vec::new();
        let mut accepted = Vec::with_capacity(batch.len());
        let mut refused = Vec::new();
        for e in batch {
            if kept + (buf.len() + e.line.len()) as u64 > opts.max_bytes && !e.line.is_empty() {
                refused.push(e);
            } else {
                buf.extend_from_slice(&e.line);
                accepted.push(e);
            }
        }
        for e in refused {
            if let Some(ack) = e.ack {
                let _ = ack.send(Err(JournalError::Full(kept)));
            } else {
                metrics::counter!("agp_journal_dropped_total", "kind" => "queued").increment(1); // not a state
            }
        }
        let result = if buf.is_empty() {
            Ok(())
        } else {
            if file.is_none() || size >= opts.segment_bytes {
                // Files are named by the offset they start at.
                file = open_segment(&shared.folder, durable)
                    .inspect_err(|e| tracing::error!(error = %e, "cannot open a journal file"))
                    .ok();
                size = 0;
            }
            match file.as_mut() {
                Some(f) => f.write_all(&buf).and_then(|_| f.sync_data()).map_err(|e| {
                    // Cut a partial write off, so the file's bytes stay the journal's.
                    let _ = f.set_len(size);
                    JournalError::Io(e.to_string())
                }),
                None => Err(JournalError::Io("no journal file".into())),
            }
        };
        if result.is_ok() {
            size += buf.len() as u64;
            shared
                .durable
                .store(durable + buf.len() as u64, Ordering::Release);
            metrics::gauge!("agp_journal_pending_bytes")
                .set((durable + buf.len() as u64 - *shared.drained.borrow()) as f64);
        }
        for e in accepted {
            if let Some(ack) = e.ack {
                let _ = ack.send(result.clone());
            } else if result.is_err() {
                metrics::counter!("agp_journal_dropped_total", "kind" => "queued").increment(1); // not a state
            }
        }
        shared.written.notify_one();
    }
}

fn open_segment(folder: &Path, start: u64) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(folder.join(segment_name(start)))?;
    // The new file's name must survive a crash too.
    File::open(folder)?.sync_all()?;
    Ok(f)
}

/// How long rows nobody waits for wait for company before their fsync.
const NOWAIT_LINGER: Duration = Duration::from_millis(2);

/// How long the drainer gathers rows before an insert (they are on disk meanwhile).
const COALESCE: Duration = Duration::from_millis(50);

/// Bytes read and inserted at once (more when a single line is longer).
const DRAIN_CHUNK: usize = 512 * 1024;

/// Reads complete lines of the journal from `from` up to `until` (global offsets): the
/// records and how many bytes they took. Unparsable lines are skipped (and counted); a
/// torn last line (a crash mid-write, never acknowledged) is left unread.
fn read_records(folder: &Path, from: u64, until: u64) -> std::io::Result<(Vec<Record>, u64)> {
    let segs = segments(folder);
    let Some((start, path)) = segs.iter().rev().find(|(s, _)| *s <= from).cloned() else {
        // Files below the first one left were drained and deleted: skip to it.
        let first = segs
            .first()
            .map(|(s, _)| *s)
            .filter(|s| *s > from && *s <= until);
        return Ok((Vec::new(), first.map_or(0, |s| s - from)));
    };
    let next = segs
        .iter()
        .find(|(s, _)| *s > start)
        .map(|(s, _)| *s)
        .unwrap_or(u64::MAX);
    let end = until.min(next);
    if end <= from {
        return Ok((Vec::new(), 0));
    }
    let mut f = File::open(&path)?;
    f.seek(SeekFrom::Start(from - start))?;
    let mut want = DRAIN_CHUNK;
    let mut buf = Vec::new();
    let complete = loop {
        let goal = (want as u64).min(end - from) as usize;
        let had = buf.len();
        buf.resize(goal, 0);
        let n = read_full(&mut f, &mut buf[had..])?;
        buf.truncate(had + n);
        if let Some(i) = buf.iter().rposition(|b| *b == b'\n') {
            break i + 1;
        }
        if n == 0 || buf.len() as u64 >= end - from {
            break 0; // no complete line before the end
        }
        want *= 2;
    };
    let mut records = Vec::new();
    for line in buf[..complete]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
    {
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => records.push(r),
            Err(e) => {
                metrics::counter!("agp_journal_corrupt_total").increment(1);
                tracing::warn!(error = %e, "skipping an unreadable journal line");
            }
        }
    }
    Ok((records, complete as u64))
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Inserts records in one transaction (idempotent).
async fn insert(pool: &PgPool, records: Vec<Record>) -> Result<(), sqlx::Error> {
    let mut logs = Vec::new();
    let mut usage = Vec::new();
    for r in records {
        match r {
            Record::Rerank(row) => logs.push(row),
            Record::Usage(u) => usage.push(u),
        }
    }
    let mut tx = pool.begin().await?;
    if !usage.is_empty() {
        crate::store::llm::insert_usage(&mut *tx, &usage).await?;
    }
    if !logs.is_empty() {
        crate::store::rerank::insert_rerank_logs(&mut *tx, &logs).await?;
    }
    tx.commit().await
}

/// The drainer: copies journal lines into Postgres, retrying with backoff while it is away,
/// and deletes files that are fully copied.
async fn drain_loop(pool: PgPool, shared: Arc<Shared>) {
    let mut cursor = 0u64;
    let mut backoff = Duration::from_millis(100);
    loop {
        // On the way out, what is not in Postgres stays on disk for the next process.
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        let durable = shared.durable.load(Ordering::Acquire);
        if cursor >= durable {
            shared.urgent.store(false, Ordering::Release);
            let _ =
                tokio::time::timeout(Duration::from_millis(500), shared.written.notified()).await;
            continue;
        }
        // Rows are safe on disk: gather a few milliseconds' worth into one insert, unless
        // someone waits (a flush) or a batch is full anyway.
        if !shared.urgent.load(Ordering::Acquire) && durable - cursor < DRAIN_CHUNK as u64 {
            let _ = tokio::time::timeout(COALESCE, shared.kick.notified()).await;
        }
        let durable = shared.durable.load(Ordering::Acquire);
        let folder = shared.folder.clone();
        let read =
            tokio::task::spawn_blocking(move || read_records(&folder, cursor, durable)).await;
        let (records, consumed) = match read {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the journal");
                let _ = tokio::time::timeout(backoff, shared.written.notified()).await;
                continue;
            }
            Err(_) => return,
        };
        if consumed == 0 {
            // Only a partial line is there (it cannot be: lines are fsynced whole); look later.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        if !records.is_empty()
            && let Err(e) = insert(&pool, records).await
        {
            tracing::warn!(error = %e, ?backoff, pending_bytes = durable - cursor, "journal rows wait for Postgres");
            let _ = tokio::time::timeout(backoff, shared.written.notified()).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        backoff = Duration::from_millis(100);
        cursor += consumed;
        shared.drained.send_replace(cursor);
        metrics::gauge!("agp_journal_pending_bytes").set(
            shared
                .durable
                .load(Ordering::Acquire)
                .saturating_sub(cursor) as f64,
        );
        let folder = shared.folder.clone();
        let oldest = tokio::task::spawn_blocking(move || remove_drained(&folder, cursor))
            .await
            .unwrap_or(0);
        shared.oldest.store(oldest, Ordering::Release);
    }
}

/// Deletes files wholly below `cursor` except the newest; returns the oldest start kept.
fn remove_drained(folder: &Path, cursor: u64) -> u64 {
    let segs = segments(folder);
    let mut oldest = cursor;
    for (i, (start, path)) in segs.iter().enumerate() {
        let next = segs.get(i + 1).map(|(s, _)| *s);
        match next {
            Some(n) if n <= cursor => {
                let _ = fs::remove_file(path);
            }
            _ => {
                oldest = oldest.min(*start);
            }
        }
    }
    oldest
}

/// Drains a dead process's folder completely, then removes it.
async fn recover(pool: PgPool, folder: PathBuf) {
    let Ok(lock) = File::open(folder.join("lock")) else {
        return;
    };
    if lock.try_lock().is_err() {
        return; // another process is recovering it
    }
    let end = segments(&folder)
        .last()
        .and_then(|(s, p)| fs::metadata(p).ok().map(|m| s + m.len()))
        .unwrap_or(0);
    let mut cursor = 0u64;
    let mut rows = 0usize;
    let mut backoff = Duration::from_millis(100);
    while cursor < end {
        let f = folder.clone();
        let read = tokio::task::spawn_blocking(move || read_records(&f, cursor, end)).await;
        let Ok(Ok((records, consumed))) = read else {
            tracing::error!(folder = %folder.display(), "cannot read a dead process's journal");
            return;
        };
        if consumed == 0 {
            break;
        }
        let n = records.len();
        if !records.is_empty()
            && let Err(e) = insert(&pool, records).await
        {
            tracing::warn!(error = %e, "recovered journal rows wait for Postgres");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        rows += n;
        cursor += consumed;
    }
    tracing::info!(folder = %folder.display(), rows, "recovered a dead process's journal");
    let _ = fs::remove_dir_all(&folder);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(n: u64) -> Record {
        Record::Usage(UsageRecord {
            uid: uuid::Uuid::new_v4(),
            created_at: chrono::Utc::now(),
            project: "p".into(),
            role: "rank".into(),
            provider: "x".into(),
            model: "m".into(),
            latency_us: n,
            prompt_tokens: 1,
            completion_tokens: 1,
            cached_tokens: 0,
            cache_hit: false,
            outcome: crate::store::states::UsageOutcome::Ok,
            request_id: None,
            job_id: None,
        })
    }

    #[test]
    fn records_are_read_back_across_files_and_torn_tails_are_left() {
        let dir = std::env::temp_dir().join(format!("agp-journal-test-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        let lines: Vec<Vec<u8>> = (0..5)
            .map(|i| {
                let mut l = serde_json::to_vec(&usage(i)).unwrap();
                l.push(b'\n');
                l
            })
            .collect();
        // Two files: lines 0-2 in the first, 3-4 and a torn half line in the second.
        let first: Vec<u8> = lines[..3].concat();
        fs::write(dir.join(segment_name(0)), &first).unwrap();
        let mut second: Vec<u8> = lines[3..].concat();
        second.extend_from_slice(&lines[0][..10]);
        fs::write(dir.join(segment_name(first.len() as u64)), &second).unwrap();
        let end = (first.len() + second.len()) as u64;
        let (a, used_a) = read_records(&dir, 0, end).unwrap();
        assert_eq!(
            (a.len(), used_a),
            (3, first.len() as u64),
            "stops at the file end"
        );
        let (b, used_b) = read_records(&dir, used_a, end).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(used_a + used_b, end - 10, "the torn tail is not consumed");
        assert_eq!(b[1], {
            let Record::Usage(u) = &b[1] else { panic!() };
            Record::Usage(u.clone())
        });
        assert_eq!(remove_drained(&dir, used_a), first.len() as u64);
        assert!(
            !dir.join(segment_name(0)).exists(),
            "a drained file is deleted"
        );
        // A reader starting below the first file left (a dead process's journal whose first
        // file was drained) skips to it and reads what is there.
        let (none, skipped) = read_records(&dir, 0, end).unwrap();
        assert_eq!((none.len(), skipped), (0, used_a));
        let (again, _) = read_records(&dir, skipped, end).unwrap();
        assert_eq!(again.len(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }
}
