//! The `agp` command line: `serve`, `worker`, `migrate`, `import`, `keys`, `eval`, `optimize`,
//! `simulate`, `probe`, `openapi`.
//! Every option can also be set from its `AGP_*` environment variable.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;

use crate::app::{AppState, build_app};
use crate::auth::{self, Scope};
use crate::config::{AppConfig, DbArgs, LimitArgs, ServeArgs};
use crate::import;
use crate::jobs::submit::{JobRequest, submit};
use crate::llm::LlmClient;
use crate::llm::config::{LlmArgs, LlmMode};
use crate::llm::local::{LocalLlm, LocalOptions};
use crate::store::{self, embedded};
use crate::telemetry::{self, LogFormat};

/// AGP Rerank: LLM reranking personalized by learned user-profile prompts.
#[derive(Debug, Parser)]
#[command(name = "agp", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbArgs,

    /// Log filter (RUST_LOG syntax), e.g. `info` or `agp_rerank=debug,tower_http=info`.
    #[arg(long, env = "AGP_LOG", default_value = "info", global = true)]
    pub log: String,

    /// Log format.
    #[arg(long, env = "AGP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Export traces over OTLP/HTTP (JSON) to this collector, e.g. `http://127.0.0.1:4318`
    /// (spans go to `{endpoint}/v1/traces`). Off by default.
    #[arg(long, env = "AGP_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (starts the embedded Postgres when DATABASE_URL is unset).
    Serve(Box<ServeArgs>),
    /// Apply database migrations and exit.
    Migrate,
    /// Bulk-load a dataset (items and interactions) into a project.
    Import(Box<ImportArgs>),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Run background jobs (optimizations, evaluations) from the shared database.
    Worker(Box<WorkerArgs>),
    /// Evaluate prompts offline on the project's data; writes a report folder.
    Eval(Box<EvalArgs>),
    /// Optimize p_gen with AGP on the project's data; writes a report folder.
    Optimize(Box<OptimizeArgs>),
    /// Replay a data set's users against a running service: rerank, click by a
    /// position-biased click model, send the clicks as feedback.
    Simulate(Box<SimulateArgs>),
    /// Exit 0 when a URL answers 2xx within a timeout (a container HEALTHCHECK without curl),
    /// e.g. `agp probe http://127.0.0.1:8080/readyz`.
    Probe {
        /// URL to GET.
        #[arg(default_value = "http://127.0.0.1:8080/readyz")]
        url: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Print the OpenAPI document (or write it to a file).
    Openapi {
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Options of `agp worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// Concurrent jobs in this process.
    #[arg(long, env = "AGP_WORKERS", default_value_t = 1)]
    pub workers: usize,
    #[command(flatten)]
    pub rerank: crate::config::RerankArgs,
    #[command(flatten)]
    pub llm: LlmArgs,
    #[command(flatten)]
    pub cluster: crate::config::ClusterArgs,
}

/// Options of `agp eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub params: crate::eval::params::EvalParams,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Options of `agp optimize`.
#[derive(Debug, clap::Args)]
pub struct OptimizeArgs {
    #[command(flatten)]
    pub params: crate::jobs::optimize::OptParams,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Where a CLI run happens and where its report goes.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Project (tenant) whose data is used.
    #[arg(long, env = "AGP_PROJECT", default_value = store::DEFAULT_PROJECT)]
    pub project: String,
    /// Report folder (default: reports/<kind>-<job id>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue this job (e.g. after the process was killed) instead of starting a new one.
    #[arg(long)]
    pub resume: Option<uuid::Uuid>,
    #[command(flatten)]
    pub llm: LlmArgs,
}

/// Options of `agp import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Input format.
    #[arg(long, env = "AGP_IMPORT_FORMAT", value_enum)]
    pub format: import::Format,
    /// Files or directories to read (see the README for what each format expects).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Project (tenant) to import into.
    #[arg(long, env = "AGP_PROJECT", default_value = store::DEFAULT_PROJECT)]
    pub project: String,
    /// Leave out each user's last interaction (users with two or more): the item `agp simulate`
    /// asks the service to find, so the service never holds it. For a service the simulator
    /// plays against (`agp eval` holds items out by itself: import everything for it).
    #[arg(long)]
    pub hold_out_last: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// After the import, write the profile each imported user's next rerank will ask for
    /// (background LLM work: charged to the background budget, paced by
    /// `--refresh-per-second`), so those reranks make one LLM call. Off by default: a backfill
    /// spends on every user, including those who never come back. Needs an LLM (`--llm`), and
    /// the serving settings the profiles depend on (`AGP_SUMMARIES`, `AGP_HISTORY_LEN`) as
    /// the replicas have them.
    #[arg(long)]
    pub refresh_profiles: bool,
    #[command(flatten)]
    pub rerank: crate::config::RerankArgs,
    #[command(flatten)]
    pub llm: LlmArgs,
}

/// Options of `agp simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Input format of the data set (the service must hold the same catalog).
    #[arg(long, value_enum)]
    pub format: import::Format,
    /// Files or directories of the data set.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Base URL of the running service.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer key with the `rerank` scope (when the service has auth on).
    #[arg(long, env = "AGP_KEY")]
    pub key: Option<String>,
    /// Reranks to send.
    #[arg(long, default_value_t = 1000)]
    pub requests: usize,
    /// Distinct users they are spread over.
    #[arg(long, default_value_t = 500)]
    pub users: usize,
    /// Candidates per list.
    #[arg(long, default_value_t = 20)]
    pub candidates: usize,
    /// How lists are made.
    #[arg(long, value_enum, default_value_t = crate::simulator::Lists::Llmrank)]
    pub lists: crate::simulator::Lists,
    /// History items sent with each request (the most recent).
    #[arg(long, default_value_t = 20)]
    pub history_len: usize,
    /// Position-bias exponent: rank r is examined with probability 1 / r^eta.
    #[arg(long, default_value_t = 1.0)]
    pub eta: f64,
    /// Ranks examined at most.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Click probability of an examined item that is not the real next one.
    #[arg(long, default_value_t = 0.0)]
    pub noise: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Simulate even when the service already holds the held-out interactions (a loud warning
    /// instead of a refusal; the figures are then inflated).
    #[arg(long)]
    pub allow_leak: bool,
    /// Print the report as JSON on standard output instead of the text summary.
    #[arg(long)]
    pub json: bool,
}

/// `agp keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it once (only its hash is stored).
    Create {
        /// What the key may do: `read` (GET), `rerank` (read + serving and ingestion), `admin` (all).
        #[arg(long, value_enum)]
        scope: Scope,
        /// A name to recognise the key by.
        #[arg(long, default_value = "")]
        name: String,
        /// Project (tenant) the key belongs to.
        #[arg(long, default_value = store::DEFAULT_PROJECT)]
        project: String,
        #[command(flatten)]
        rate: RateArgs,
    },
    /// Set (or, without `--rate-per-second`, remove) a key's rate limit.
    Rate {
        /// Key id (uuid) or prefix (`agp_xxxxxxxx`).
        key: String,
        #[command(flatten)]
        rate: RateArgs,
    },
    /// Set (or, without `--rate-per-second`, remove) a project's rate limit: all its keys
    /// together, on top of each key's own limit.
    ProjectRate {
        /// Project (tenant) id.
        project: String,
        #[command(flatten)]
        rate: RateArgs,
    },
    /// Revoke a key by its id or its printed prefix.
    Revoke {
        /// Key id (uuid) or prefix (`agp_xxxxxxxx`).
        key: String,
    },
    /// List keys (never their secrets).
    List,
}

/// A key's rate limit, held across every replica (429 with `Retry-After` beyond it).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct RateArgs {
    /// Requests per second the key may make (absent: unlimited).
    #[arg(long)]
    rate_per_second: Option<f64>,
    /// Requests the key may make at once above the rate (default: one second's worth).
    #[arg(long, requires = "rate_per_second")]
    burst: Option<i32>,
}

impl RateArgs {
    /// (rate, burst), checked.
    fn limit(self) -> anyhow::Result<(Option<f64>, Option<i32>)> {
        let Some(rate) = self.rate_per_second else {
            return Ok((None, None));
        };
        anyhow::ensure!(
            rate > 0.0 && rate <= 1_000_000.0,
            "--rate-per-second must be above 0 and at most 1000000, got {rate}"
        );
        let burst = self.burst.unwrap_or(rate.ceil() as i32);
        anyhow::ensure!(
            (1..=1_000_000).contains(&burst),
            "--burst must be between 1 and 1000000, got {burst}"
        );
        Ok((Some(rate), Some(burst)))
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    telemetry::init(&cli.log, cli.log_format, cli.otlp_endpoint.as_deref())
        .map_err(anyhow::Error::msg)?;
    let result = run_command(cli).await;
    telemetry::flush_traces();
    result
}

async fn run_command(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => run_serve(&cli.db, *args).await,
        Command::Migrate => {
            let db = Database::open(&cli.db).await?;
            println!("migrations applied");
            db.close().await;
            Ok(())
        }
        Command::Import(args) => run_import(&cli.db, *args).await,
        Command::Simulate(args) => run_simulate(*args).await,
        Command::Worker(args) => run_worker_cmd(&cli.db, *args).await,
        Command::Eval(args) => {
            let args = *args;
            run_job_cmd(&cli.db, JobRequest::Evaluation(args.params), args.run).await
        }
        Command::Optimize(args) => {
            let args = *args;
            run_job_cmd(&cli.db, JobRequest::Optimization(args.params), args.run).await
        }
        Command::Keys(cmd) => run_keys(&cli.db, cmd).await,
        Command::Probe { url, timeout_ms } => probe(&url, Duration::from_millis(timeout_ms)).await,
        Command::Openapi { out } => {
            let spec = crate::http::openapi::spec_json();
            match out {
                Some(path) => std::fs::write(&path, spec)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{spec}"),
            }
            Ok(())
        }
    }
}

/// GETs `url`; an error unless it answers 2xx in time.
async fn probe(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().timeout(timeout).build()?;
    let res = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = res.status();
    let body = res.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("GET {url}: {status} {body}");
    }
    println!("{body}");
    Ok(())
}

/// An open, migrated database and, when embedded, the cluster behind it (supervised).
pub struct Database {
    pub pool: PgPool,
    /// This process's journal in `<data-dir>/journal` (answered requests, usage rows).
    pub journal: Arc<store::journal::Journal>,
    embedded: Option<(Arc<embedded::EmbeddedPg>, embedded::Supervisor)>,
}

impl Database {
    /// Connects to `DATABASE_URL`, or starts/adopts the embedded cluster of `--data-dir` and
    /// supervises it; then runs migrations.
    pub async fn open(args: &DbArgs) -> anyhow::Result<Self> {
        let (url, pg) = match &args.database_url {
            Some(url) if !url.expose().is_empty() => (url.expose().to_string(), None),
            _ => {
                let opts = embedded::EmbeddedOptions {
                    data_dir: args.data_dir.clone(),
                    ephemeral: false,
                };
                let pg = tokio::task::spawn_blocking(move || embedded::EmbeddedPg::start(&opts))
                    .await
                    .context("embedded Postgres start-up panicked")??;
                (pg.url(embedded::DB_NAME), Some(Arc::new(pg)))
            }
        };
        let health = pg.as_ref().map(|p| p.health());
        let pool = match store::connect_supervised(&url, args.db_max_connections, health).await {
            Ok(p) => p,
            Err(e) => {
                if let Some(pg) = pg {
                    let _ = tokio::task::spawn_blocking(move || pg.stop()).await;
                }
                return Err(e).context("connecting to Postgres");
            }
        };
        crate::app::prepare_database(&pool)
            .await
            .context("running migrations")?;
        let journal_dir = args.data_dir.join("journal");
        let journal = store::journal::Journal::open(
            pool.clone(),
            store::journal::JournalOptions {
                dir: Some(journal_dir.clone()),
                max_bytes: args.journal_max_bytes,
                ..Default::default()
            },
        )
        .with_context(|| format!("opening the journal in {}", journal_dir.display()))?;
        let embedded = pg.map(|pg| {
            let sup = pg.supervise(Duration::from_secs(1));
            (pg, sup)
        });
        Ok(Database {
            pool,
            journal,
            embedded,
        })
    }

    /// The embedded cluster's health, when there is one.
    pub fn pg_health(&self) -> Option<Arc<embedded::PgHealth>> {
        self.embedded.as_ref().map(|(pg, _)| pg.health())
    }

    /// Writes out the journal (bounded), closes the pool and stops the embedded cluster
    /// unless another agp process uses it.
    pub async fn close(self) {
        self.journal.close().await;
        self.pool.close().await;
        if let Some((pg, sup)) = self.embedded {
            sup.stop().await;
            let _ = tokio::task::spawn_blocking(move || pg.stop()).await;
        }
    }
}

async fn run_serve(db_args: &DbArgs, args: ServeArgs) -> anyhow::Result<()> {
    let local = args.llm.mode == LlmMode::Local;
    let mut config = AppConfig::from_args(&args, local).map_err(anyhow::Error::msg)?;
    let addrs = resolve_listen(&args.listen).await?;
    if config.master_key.is_none() {
        if let Some(open) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            bail!(
                "refusing to listen on {open} ({}) without AGP_MASTER_KEY: development mode (no \
                 auth) is loopback only. Set AGP_MASTER_KEY or listen on 127.0.0.1",
                args.listen
            );
        }
        tracing::warn!(
            "AGP_MASTER_KEY is not set: development mode, the API is open to anyone on this machine"
        );
    }
    config.server.max_connections =
        crate::http::server::fit_connection_cap(config.server.max_connections);
    let db = Database::open(db_args).await?;
    let (llm, local) = match start_llm(&args.llm, &db).await {
        Ok(x) => x,
        Err(e) => {
            db.close().await;
            return Err(e);
        }
    };
    let listener = match bind_first(&addrs).await {
        Ok(l) => l,
        Err(e) => {
            if let Some(l) = local {
                l.stop().await;
            }
            db.close().await;
            return Err(e).with_context(|| format!("binding {}", args.listen));
        }
    };
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let limits = config.server;
    let mut state = AppState::with_llm(db.pool.clone(), config, llm.clone());
    state.local_llm_healthy = local.as_ref().map(|l| l.health_flag());
    state.pg_health = db.pg_health();
    let reranker = state.reranker.clone();
    let workers = crate::jobs::Workers::spawn(args.workers, &db.pool, &llm, &reranker);
    let election = elect(&db.pool, &args.cluster, "serve", &listen_name(&listener));
    state.leading = election.as_ref().map(|e| e.leading_flag());
    let app = build_app(state);
    let result = crate::http::server::serve(listener, app, limits, shutdown_signal()).await;
    tracing::info!("shutting down");
    if let Some(e) = election {
        e.stop().await;
    }
    workers.stop().await;
    if let Some(l) = local {
        l.stop().await;
    }
    // Drains the journal (answered reranks, usage rows) for at most journal::DRAIN_ON_CLOSE; what
    // Postgres does not take by then stays on disk for the next process on this data dir.
    db.close().await;
    result.context("serving HTTP")
}

/// Takes part in leader election unless `--leader false`, named after this process.
fn elect(
    pool: &PgPool,
    args: &crate::config::ClusterArgs,
    role: &str,
    listen: &str,
) -> Option<crate::cluster::Election> {
    if !args.leader {
        tracing::info!(
            "--leader false: this process never leads (experiment looks, autopilot, log partitions run elsewhere)"
        );
        return None;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut opts = args.options();
    opts.name = format!(
        "agp {role} {}{listen} pid {}",
        host.trim(),
        std::process::id()
    );
    Some(crate::cluster::Election::spawn(pool.clone(), opts))
}

fn listen_name(l: &tokio::net::TcpListener) -> String {
    l.local_addr().map(|a| format!(" {a}")).unwrap_or_default()
}

/// Resolves `HOST:PORT` (names such as `localhost` included).
async fn resolve_listen(listen: &str) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    let addrs: Vec<_> = tokio::net::lookup_host(listen)
        .await
        .with_context(|| format!("--listen {listen:?}: expected HOST:PORT, e.g. 127.0.0.1:8080"))?
        .collect();
    if addrs.is_empty() {
        bail!("--listen {listen:?} resolves to no address");
    }
    Ok(addrs)
}

/// Binds the first of `addrs` that works (IPv4 first).
async fn bind_first(addrs: &[std::net::SocketAddr]) -> std::io::Result<tokio::net::TcpListener> {
    let mut sorted = addrs.to_vec();
    sorted.sort_by_key(|a| !a.is_ipv4());
    let mut last = None;
    for a in sorted {
        match tokio::net::TcpListener::bind(a).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to bind")))
}

/// Builds the LLM client from the flags; with `--llm local`, first starts the managed
/// llama-server and routes every role to it.
pub async fn start_llm(
    args: &LlmArgs,
    db: &Database,
) -> anyhow::Result<(LlmClient, Option<LocalLlm>)> {
    let local = match args.mode {
        LlmMode::Local => {
            let opts = LocalOptions::new(
                args.llama_server.clone(),
                args.llama_model.clone(),
                args.llama_port,
                args.llama_threads,
            );
            Some(LocalLlm::start(opts).await?)
        }
        _ => None,
    };
    let mut settings = args
        .settings(local.as_ref().map(|l| l.base_url()))
        .map_err(anyhow::Error::msg)?;
    if local.is_some() {
        // The local server runs one slot: queue here, where the per-call timeout does not
        // count the wait, rather than inside llama-server where it would.
        settings.concurrency = 1;
        settings.reserved_interactive = 0;
    }
    if local.is_some() && args.llm_model == "default" {
        for route in settings.routes.values_mut() {
            route.model = crate::llm::local::LOCAL_MODEL_NAME.to_string();
        }
    }
    match settings.routes.get(&crate::llm::Role::Rank) {
        Some(r) => tracing::info!(base_url = %r.base_url, model = %r.model, "LLM configured"),
        None => tracing::warn!(
            "no LLM configured: reranks will return their fallback order (set AGP_LLM_BASE_URL or use --llm local)"
        ),
    }
    let client = LlmClient::with_journal(settings, Some(db.pool.clone()), Some(db.journal.clone()));
    Ok((client, local))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

async fn run_import(db_args: &DbArgs, args: ImportArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    // Checked before anything is read or written.
    let pacing = args.rerank.refresh_pacing().map_err(anyhow::Error::msg)?;
    if args.refresh_profiles && args.llm.mode != LlmMode::Local {
        let llm = args.llm.settings(None).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            llm.routes.contains_key(&crate::llm::Role::Profile),
            "--refresh-profiles needs an LLM and none is configured (--llm local, or an OpenAI-compatible AGP_LLM_BASE_URL); nothing was imported"
        );
    }
    eprintln!(
        "reading {:?} from {}",
        args.format,
        args.paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let load = import::Load {
        project: args.project.clone(),
        format: args.format,
        input: import::Input::Paths(args.paths.clone()),
        limits: args.limits.limits(),
        hold_out_last: args.hold_out_last,
        record_source: true,
    };
    // The database is opened once the data set is read and checked.
    let mut db: Option<Database> = None;
    let open = async || {
        let db = db.insert(Database::open(db_args).await?);
        crate::app::ensure_project(&db.pool, &args.project)
            .await
            .context("creating the project")?;
        Ok(db.pool.clone())
    };
    let mut bar: Option<ProgressBar> = None;
    let loaded = import::load_into(load, open, |p| match p {
        import::Progress::Read { data, took } => print_read(data, took),
        import::Progress::HeldOut(held) => println!(
            "held out {held} interactions: the last of each user with two or more (what `agp simulate` asks the service to find)"
        ),
        import::Progress::Written { rows, total } => {
            bar.get_or_insert_with(|| import_bar(total, "writing", "rows")).set_position(rows)
        }
    })
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let result = match (loaded, &db) {
        (Ok(loaded), Some(db)) => {
            let printed = print_imported(&db.pool, &args.project, &loaded, started).await;
            match (printed, args.refresh_profiles) {
                (Ok(()), true) => refresh_imported(db, &args, pacing, loaded.users).await,
                (printed, _) => printed,
            }
        }
        (Ok(_), None) => Err(anyhow::anyhow!("the import wrote without a database")),
        (Err(import::LoadError::Database(e)), _) => Err(e),
        (Err(e), _) => Err(e.into()),
    };
    if let Some(db) = db {
        db.close().await;
    }
    result
}

/// `agp import --refresh-profiles`: writes the imported users' profiles, with a progress bar.
async fn refresh_imported(
    db: &Database,
    args: &ImportArgs,
    pacing: crate::serving::refresh::RefreshOptions,
    users: Vec<String>,
) -> anyhow::Result<()> {
    let (llm, local) = start_llm(&args.llm, db).await?;
    let settings = args.rerank.settings(args.llm.mode == LlmMode::Local);
    let reranker = crate::serving::Reranker::new(db.pool.clone(), llm.clone(), settings);
    let started = Instant::now();
    let bar = import_bar(users.len() as u64, "profiles", "users");
    let out =
        crate::serving::refresh::refresh_all(&reranker, &args.project, users, pacing, |done| {
            bar.set_position(done as u64)
        })
        .await;
    bar.finish_and_clear();
    reranker.flush().await;
    llm.flush_usage().await;
    if let Some(l) = local {
        l.stop().await;
    }
    println!(
        "profiles: {} written, {} already stored, {} failed (their next rerank writes them), {} without history, in {:.1} s",
        out.written,
        out.already,
        out.failed,
        out.empty,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What `agp import` says once the data set is read and checked.
fn print_read(data: &import::Dataset, took: Duration) {
    let users: std::collections::HashSet<&str> = data
        .interactions
        .iter()
        .map(|i| i.user_id.as_str())
        .collect();
    eprintln!(
        "read {} items, {} users, {} interactions in {:.1} s",
        data.items.len(),
        users.len(),
        data.interactions.len(),
        took.as_secs_f64()
    );
    for note in &data.notes {
        eprintln!("  note: {note}");
    }
}

/// A progress bar of `agp import`: `doing` `total` `units` (its write, its profile refresh).
fn import_bar(total: u64, doing: &str, units: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {doing} [{{bar:40}}] {{pos}}/{{len}} {units} {{per_sec}} ETA {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// What `agp import` says at the end: what it wrote, the project's totals, the times.
async fn print_imported(
    pool: &PgPool,
    project: &str,
    loaded: &import::Loaded,
    started: Instant,
) -> anyhow::Result<()> {
    let (items, users, interactions) = store::catalog::counts(pool, project).await?;
    println!(
        "imported into project {project:?}: {} items ({} new or changed), {} interactions ({} new, {} already present)",
        loaded.items,
        loaded.summary.items_changed,
        loaded.interactions,
        loaded.summary.interactions.inserted,
        loaded.summary.interactions.duplicates
    );
    println!("project totals: {items} items, {users} users, {interactions} interactions");
    println!(
        "time: {:.1} s total (read {:.1} s, write {:.1} s)",
        started.elapsed().as_secs_f64(),
        loaded.read_time.as_secs_f64(),
        loaded.write_time.as_secs_f64()
    );
    Ok(())
}

async fn run_keys(db_args: &DbArgs, cmd: KeysCommand) -> anyhow::Result<()> {
    let db = Database::open(db_args).await?;
    let result = async {
        match cmd {
            KeysCommand::Create { scope, name, project, rate } => {
                let (per_second, burst) = rate.limit()?;
                let (secret, prefix, hash) = auth::generate_key();
                crate::app::ensure_project(&db.pool, &project).await?;
                let id = store::keys::insert(&db.pool, &project, &name, scope.as_str(), &prefix, &hash, per_second, burst)
                    .await?;
                println!("{secret}");
                eprintln!(
                    "created {} key {id} (prefix {prefix}) for project {project:?}; the key is shown only this once",
                    scope.as_str()
                );
            }
            KeysCommand::Rate { key, rate } => {
                let (per_second, burst) = rate.limit()?;
                if store::keys::set_rate(&db.pool, &key, per_second, burst).await? == 0 {
                    bail!("no live key with id or prefix {key:?}");
                }
                match (per_second, burst) {
                    (Some(r), Some(b)) => println!("key {key}: {r} requests per second, burst {b}"),
                    _ => println!("key {key}: unlimited"),
                }
            }
            KeysCommand::ProjectRate { project, rate } => {
                let (per_second, burst) = rate.limit()?;
                if store::keys::set_project_rate(&db.pool, &project, per_second, burst).await? == 0 {
                    bail!("no project {project:?}");
                }
                match (per_second, burst) {
                    (Some(r), Some(b)) => {
                        println!("project {project}: {r} requests per second, burst {b} (all its keys together)")
                    }
                    _ => println!("project {project}: unlimited"),
                }
            }
            KeysCommand::Revoke { key } => {
                let n = store::keys::revoke(&db.pool, &key).await?;
                if n == 0 {
                    bail!("no live key with id or prefix {key:?}");
                }
                println!("revoked {n} key(s)");
            }
            KeysCommand::List => {
                for k in store::keys::list(&db.pool).await? {
                    let state = match k.revoked_at {
                        Some(t) => format!("revoked {}", t.format("%Y-%m-%d %H:%M")),
                        None => "live".to_string(),
                    };
                    println!("{}  {}  {:6}  {:10}  {}  {}", k.id, k.prefix, k.scope, k.project, state, k.name);
                }
            }
        }
        Ok(())
    }
    .await;
    db.close().await;
    result
}

async fn run_worker_cmd(db_args: &DbArgs, args: WorkerArgs) -> anyhow::Result<()> {
    let db = Database::open(db_args).await?;
    let (llm, local) = start_llm(&args.llm, &db).await?;
    let reranker = crate::serving::Reranker::new(
        db.pool.clone(),
        llm.clone(),
        args.rerank.settings(args.llm.mode == LlmMode::Local),
    );
    let n = args.workers.max(1);
    let workers = crate::jobs::Workers::spawn(n, &db.pool, &llm, &reranker);
    let election = elect(&db.pool, &args.cluster, "worker", "");
    tracing::info!(
        workers = n,
        "waiting for jobs (Ctrl-C to stop; running jobs go back to the queue)"
    );
    shutdown_signal().await;
    if let Some(e) = election {
        e.stop().await;
    }
    workers.stop().await;
    if let Some(l) = local {
        l.stop().await;
    }
    db.close().await;
    Ok(())
}

/// Progress bars for CLI runs.
struct Bars {
    bar: ProgressBar,
}

impl crate::jobs::ProgressSink for Bars {
    fn update(&self, p: &crate::jobs::Progress, usage: &crate::llm::usage::TallySnapshot) {
        if p.total > 0 {
            self.bar.set_length(p.total);
            self.bar.set_position(p.done.min(p.total));
        }
        self.bar.set_message(format!(
            "{} | {} | LLM calls {} (cache hits {}), tokens {}+{}",
            p.phase,
            p.message,
            usage.llm_calls,
            usage.cache_hits,
            usage.prompt_tokens,
            usage.completion_tokens
        ));
    }
}

/// `agp simulate`: reads the data set, plays it against the service, prints the summary.
async fn run_simulate(args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.eta >= 0.0 && (0.0..=1.0).contains(&args.noise) && args.k >= 1,
        "--eta must be >= 0, --noise between 0 and 1, --k at least 1"
    );
    let (format, paths) = (args.format, args.paths.clone());
    let data = tokio::task::spawn_blocking(move || import::read(format, &paths)).await??;
    let opts = crate::simulator::SimOptions {
        url: args.url,
        key: args.key,
        requests: args.requests,
        users: args.users,
        candidates: args.candidates.max(2),
        lists: args.lists,
        history_len: args.history_len,
        click: crate::simulator::ClickModel {
            eta: args.eta,
            k: args.k,
            noise: args.noise,
        },
        seed: args.seed,
        concurrency: args.concurrency,
        kind: "click".into(),
    };
    let check = crate::simulator::check_leak(&data, &opts, crate::simulator::LEAK_SAMPLE)
        .await
        .with_context(|| format!("checking what the service at {} holds", opts.url))?;
    if let Some((user, item)) = check.leaking.first() {
        let what = format!(
            "the service already holds the held-out item of {} of {} sampled users (e.g. user \
             {user:?}, item {item:?}): its popularity and item-kNN rankers are fit on the very \
             items the simulated users are asked to find, so their figures would be inflated",
            check.leaking.len(),
            check.sampled
        );
        let fix = "import the data set with `agp import --hold-out-last` into a database that \
                   does not hold it yet (an import only adds: re-importing over the full data \
                   leaves the held-out items in place)";
        if !args.allow_leak {
            bail!("refusing to simulate: {what}. Re-import: {fix}; or pass --allow-leak");
        }
        eprintln!("WARNING: {what}.\nWARNING: simulating anyway (--allow-leak); to fix it, {fix}.");
    } else {
        eprintln!(
            "leak check: none of {} sampled users' held-out items is in the service",
            check.sampled
        );
    }
    let started = std::time::Instant::now();
    let r = crate::simulator::run(&data, &opts).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "{} requests from {} users in {:.1} s: {} clicks, {} requests with a click ({:.1}%), {} failed",
        r.requests,
        r.users,
        started.elapsed().as_secs_f64(),
        r.clicks,
        r.clicked_requests,
        100.0 * r.clicked_requests as f64 / r.requests.max(1) as f64,
        r.failures
    );
    println!(
        "  {:<36} {:>8} {:>8} {:>13} {:>6} {:>8}",
        "arm",
        "requests",
        "clicked",
        "click-through",
        "MRR",
        format!("HR@{}", opts.click.k)
    );
    let rows = r.by_arm.iter().map(|(arm, a)| {
        (
            arm.as_str(),
            a.requests,
            a.clicked_requests,
            a.click_through,
            a.mrr,
            a.hr_at_k,
        )
    });
    let all = (
        "all",
        r.requests,
        r.clicked_requests,
        r.clicked_requests as f64 / r.requests.max(1) as f64,
        r.mrr,
        r.hr_at_k,
    );
    for (arm, n, c, ctr, mrr, hr) in rows.chain([all]) {
        println!("  {arm:<36} {n:>8} {c:>8} {ctr:>13.3} {mrr:>6.3} {hr:>8.3}");
    }
    Ok(())
}

/// `agp eval` / `agp optimize`: the same job code as the server's workers, run in this
/// process with progress bars, then the report folder.
async fn run_job_cmd(db_args: &DbArgs, request: JobRequest, run: RunArgs) -> anyhow::Result<()> {
    let job_kind = request.kind();
    let kind = job_kind.as_str();
    let db = Database::open(db_args).await?;
    let result = async {
        crate::app::ensure_project(&db.pool, &run.project).await?;
        let (llm, local) = start_llm(&run.llm, &db).await?;
        let reranker = crate::serving::Reranker::new(db.pool.clone(), llm.clone(), crate::serving::RerankSettings::default());
        let id = match run.resume {
            Some(id) => {
                let job = store::jobs::get(&db.pool, &run.project, id, Some(job_kind))
                    .await?
                    .with_context(|| format!("no {kind} job {id} in project {:?}", run.project))?;
                if job.status == crate::jobs::JobStatus::Running {
                    // Its process is gone (that is why we resume): make it claimable now.
                    store::jobs::expire_lease(&db.pool, id).await?;
                }
                id
            }
            None => submit(&db.pool, &db.pool, &run.project, &request).await?.id,
        };
        eprintln!("{kind} job {id}");
        let opts = crate::jobs::WorkerOptions::new(0);
        let job = store::jobs::claim(&db.pool, &opts.id, opts.lease.as_secs() as i64, Some(id))
            .await?
            .with_context(|| format!("job {id} cannot be run (finished, cancelled, or out of attempts)"))?;
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {elapsed_precise} ETA {eta} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(250));
        let sink: std::sync::Arc<dyn crate::jobs::ProgressSink> = std::sync::Arc::new(Bars { bar: bar.clone() });
        let status = tokio::select! {
            s = crate::jobs::execute(db.pool.clone(), llm.clone(), reranker.clone(), job, &opts, Some(sink)) => Some(s),
            _ = shutdown_signal() => {
                bar.abandon();
                eprintln!("interrupted: resume with `agp {} --resume {id}` (or any `agp serve`/`agp worker` picks it up)",
                    if job_kind == crate::jobs::JobKind::Evaluation { "eval" } else { "optimize" });
                None
            }
        };
        bar.finish_and_clear();
        reranker.flush().await;
        llm.flush_usage().await;
        if let Some(l) = local {
            l.stop().await;
        }
        let job = store::jobs::get(&db.pool, &run.project, id, None).await?.context("job vanished")?;
        match job.result {
            Some(result) if status == Some(crate::jobs::JobStatus::Succeeded) => {
                let report: crate::report::Report = serde_json::from_value(result)?;
                let dir = run.out.clone().unwrap_or_else(|| PathBuf::from(format!("reports/{kind}-{id}")));
                let files = crate::report::write_report(&dir, &report)?;
                for line in &report.summary {
                    println!("{line}");
                }
                println!("report: {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
                Ok(())
            }
            _ => bail!("{kind} job {id} ended {}: {}", job.status, job.error.unwrap_or_default()),
        }
    }
    .await;
    db.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches clap mistakes (duplicate flags between flattened groups) at test time.
    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "agp",
            "optimize",
            "--train-users",
            "20",
            "--acceptance",
            "paper",
            "--history-len",
            "3",
        ])
        .unwrap();
        match cli.command {
            Command::Optimize(o) => {
                assert_eq!(o.params.data.train_users, 20);
                assert_eq!(o.params.data.history_len, 3);
            }
            _ => panic!("wrong command"),
        }
        let cli = Cli::try_parse_from([
            "agp",
            "eval",
            "--seeds",
            "1,2,3",
            "--methods",
            "base,random",
        ])
        .unwrap();
        match cli.command {
            Command::Eval(e) => assert_eq!(e.params.seeds, Some(vec![1, 2, 3])),
            _ => panic!("wrong command"),
        }
    }
}
