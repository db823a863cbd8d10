//! Loading a data set into a project, the one sequence behind `agp import` and the console's
//! bundled sample: read it (from disk or from memory), check every item and interaction
//! against the catalog's limits (nothing is written when one fails), optionally hold out each
//! user's last interaction, write it in one transaction, and record where it came from.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::{Dataset, Format, ImportError, MemoryFile, file_name, read, read_memory};
use crate::catalog::{self, Invalid, Limits};
use crate::store;
use crate::store::import::ImportSummary;
use crate::store::states::HistoryOrder;

/// Where a data set is read from.
#[derive(Debug, Clone)]
pub enum Input {
    /// Files and/or directories on disk, as the format allows (`agp import`).
    Paths(Vec<PathBuf>),
    /// Files held in memory (the console's bundled sample).
    Memory(Vec<MemoryFile>),
}

impl Input {
    fn read(&self, format: Format) -> Result<Dataset, ImportError> {
        match self {
            Input::Paths(paths) => read(format, paths),
            Input::Memory(files) => read_memory(format, files),
        }
    }

    /// The file or folder names, for the project's record of its source.
    fn names(&self) -> Vec<String> {
        match self {
            Input::Paths(paths) => paths
                .iter()
                .map(|p| match file_name(p) {
                    "" => p.display().to_string(),
                    name => name.to_string(),
                })
                .collect(),
            Input::Memory(files) => files.iter().map(|f| f.name.clone()).collect(),
        }
    }
}

/// What to load, and where to.
#[derive(Debug, Clone)]
pub struct Load {
    pub project: String,
    pub format: Format,
    pub input: Input,
    /// What each item and interaction is checked against (the per-request batch sizes do not
    /// apply: a load is one transaction).
    pub limits: Limits,
    /// Leave out each user's last interaction (users with two or more): `--hold-out-last`.
    pub hold_out_last: bool,
    /// Record the data set as the project's source: its history order (evaluation picks its
    /// hold-out by it) and its name (report titles).
    pub record_source: bool,
}

/// What a load reports as it goes.
#[derive(Debug)]
pub enum Progress<'a> {
    /// The data set is read and checked (before any hold-out); nothing is written yet.
    Read { data: &'a Dataset, took: Duration },
    /// `hold_out_last` left out this many interactions.
    HeldOut(usize),
    /// Rows written so far (items, then interactions) of `total`.
    Written { rows: u64, total: u64 },
}

/// What a load did.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub items: usize,
    pub interactions: usize,
    pub summary: ImportSummary,
    /// The users the written interactions belong to, each once, in order.
    pub users: Vec<String>,
    pub read_time: Duration,
    pub write_time: Duration,
}

/// Why a load stopped. Nothing is written unless it stopped at `Source`.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Read(#[from] ImportError),
    /// The reading thread panicked.
    #[error(transparent)]
    Panicked(#[from] tokio::task::JoinError),
    #[error("{0}; nothing was written")]
    Invalid(Invalid),
    /// The caller's database could not be had.
    #[error(transparent)]
    Database(anyhow::Error),
    #[error("writing the dataset (the transaction was rolled back: nothing was written)")]
    Write(#[source] sqlx::Error),
    /// Recording the project's source failed (the rows are written).
    #[error(transparent)]
    Source(sqlx::Error),
}

/// Loads `load` into its project. `pool` is asked for the database only once the data set is
/// read and checked (so a bad file never starts a database), and must answer with the project
/// existing (`app::ensure_project`). `progress` hears of each step.
pub async fn load_into(
    load: Load,
    pool: impl AsyncFnOnce() -> anyhow::Result<PgPool>,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Loaded, LoadError> {
    let started = Instant::now();
    let (format, input) = (load.format, load.input.clone());
    let mut data = tokio::task::spawn_blocking(move || input.read(format)).await??;
    let read_time = started.elapsed();
    check(&data, &load.limits).map_err(LoadError::Invalid)?;
    progress(Progress::Read {
        data: &data,
        took: read_time,
    });
    if load.hold_out_last {
        progress(Progress::HeldOut(data.hold_out_last()));
    }

    let pool = pool().await.map_err(LoadError::Database)?;
    let write_started = Instant::now();
    let total = (data.items.len() + data.interactions.len()) as u64;
    let summary = store::import::write(
        &pool,
        &load.project,
        &data.items,
        &data.interactions,
        |rows| progress(Progress::Written { rows, total }),
    )
    .await
    .map_err(LoadError::Write)?;
    if load.record_source {
        let (order, dataset) = source(&load);
        store::catalog::set_source(&pool, &load.project, order, &dataset)
            .await
            .map_err(LoadError::Source)?;
    }
    let users: std::collections::BTreeSet<&str> = data
        .interactions
        .iter()
        .map(|i| i.user_id.as_str())
        .collect();
    Ok(Loaded {
        items: data.items.len(),
        interactions: data.interactions.len(),
        summary,
        users: users.into_iter().map(str::to_string).collect(),
        read_time,
        write_time: write_started.elapsed(),
    })
}

/// Every item and interaction against `limits`, but for the per-request batch sizes.
fn check(data: &Dataset, limits: &Limits) -> Result<(), Invalid> {
    let limits = Limits {
        max_items_per_batch: usize::MAX,
        max_interactions_per_batch: usize::MAX,
        ..*limits
    };
    for (i, item) in data.items.iter().enumerate() {
        catalog::validate_item(&format!("item #{} ({:?})", i + 1, item.id), item, &limits)?;
    }
    for (i, it) in data.interactions.iter().enumerate() {
        catalog::validate_interaction(&format!("interaction #{}", i + 1), it, &limits)?;
    }
    Ok(())
}

/// The project's record of a load: its history order and the data set's name, e.g.
/// `amazon-games (recbole, each user's last interaction held out)`.
fn source(load: &Load) -> (HistoryOrder, String) {
    let order = match load.format {
        Format::YelpCore40 | Format::Goodreads => HistoryOrder::Unordered,
        Format::Recbole | Format::Jsonl => HistoryOrder::Chronological,
    };
    let dataset = format!(
        "{} ({}{})",
        load.input.names().join(", "),
        load.format,
        if load.hold_out_last {
            ", each user's last interaction held out"
        } else {
            ""
        }
    );
    (order, dataset)
}
