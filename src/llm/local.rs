//! The local model: llama.cpp's `llama-server` run as a supervised child process on
//! 127.0.0.1 (waited for on `/health`, restarted if it dies, stopped on shutdown).
//! `scripts/setup-local-llm.sh` builds the server and fetches the model into the cache.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::watch;

/// Version of llama.cpp the setup script builds (its cache folder name).
pub const LLAMA_VERSION: &str = "11434.0.0";
/// Model file the setup script fetches.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Model name reported for the local server.
pub const LOCAL_MODEL_NAME: &str = "smollm2-135m-instruct-q4_1";

/// Cache folder of the setup script (`AGP_CACHE_DIR`, default `~/.cache/agp`).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("AGP_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("agp")
}

/// Where the setup script puts `llama-server`.
pub fn default_server_path() -> PathBuf {
    cache_dir()
        .join(format!("llama-server-{LLAMA_VERSION}"))
        .join("llama-server")
}

/// Where the setup script puts the model.
pub fn default_model_path() -> PathBuf {
    cache_dir().join("models").join(DEFAULT_MODEL_FILE)
}

/// How to run the local server.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub server: PathBuf,
    pub model: PathBuf,
    pub port: u16,
    pub threads: usize,
    /// Context size in tokens.
    pub ctx_size: u32,
}

impl LocalOptions {
    /// Options from the cached defaults, with the given overrides.
    pub fn new(server: Option<PathBuf>, model: Option<PathBuf>, port: u16, threads: usize) -> Self {
        LocalOptions {
            server: server.unwrap_or_else(default_server_path),
            model: model.unwrap_or_else(default_model_path),
            port,
            threads: threads.max(1),
            ctx_size: 4096,
        }
    }

    /// Whether the binary and the model are there.
    pub fn available(&self) -> bool {
        self.server.is_file() && self.model.is_file()
    }

    /// OpenAI-compatible base URL of the server.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

/// Errors starting the local model.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(
        "the local LLM is not set up: {missing} not found. Run scripts/setup-local-llm.sh \
         (builds llama-server and fetches a small model into ~/.cache/agp), or point \
         AGP_LLAMA_SERVER / AGP_LLAMA_MODEL at yours"
    )]
    Missing { missing: String },
    #[error("could not start llama-server: {0}")]
    Spawn(std::io::Error),
    #[error("llama-server did not become healthy within {0:?}; see its output above")]
    NotHealthy(Duration),
}

/// A supervised llama-server; `stop()` ends it.
#[derive(Debug)]
pub struct LocalLlm {
    opts: LocalOptions,
    healthy: Arc<AtomicBool>,
    pid: Arc<AtomicU32>,
    stop_tx: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl LocalLlm {
    /// Starts the server and waits until `/health` answers 200.
    pub async fn start(opts: LocalOptions) -> Result<Self, LocalError> {
        for (what, p) in [("llama-server", &opts.server), ("model", &opts.model)] {
            if !p.is_file() {
                return Err(LocalError::Missing {
                    missing: format!("{what} at {}", p.display()),
                });
            }
        }
        let client = reqwest::Client::new();
        let mut child = spawn(&opts).map_err(LocalError::Spawn)?;
        let wait = Duration::from_secs(120);
        if !wait_healthy(&client, &opts, &mut child, wait).await {
            let _ = child.kill().await;
            return Err(LocalError::NotHealthy(wait));
        }
        tracing::info!(url = %opts.base_url(), model = %opts.model.display(), "local llama-server is up");
        let healthy = Arc::new(AtomicBool::new(true));
        let pid = Arc::new(AtomicU32::new(child.id().unwrap_or(0)));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(
            opts.clone(),
            child,
            healthy.clone(),
            pid.clone(),
            stop_rx,
            client,
        ));
        Ok(LocalLlm {
            opts,
            healthy,
            pid,
            stop_tx,
            task,
        })
    }

    /// Base URL for the client.
    pub fn base_url(&self) -> String {
        self.opts.base_url()
    }

    /// Whether the server is up (false while it is being restarted).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Process id of the running llama-server (0 while none runs).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// A handle to the health flag (for `/readyz`).
    pub fn health_flag(&self) -> Arc<AtomicBool> {
        self.healthy.clone()
    }

    /// Stops the server and its supervisor.
    pub async fn stop(self) {
        let _ = self.stop_tx.send(true);
        let _ = self.task.await;
        tracing::info!("local llama-server stopped");
    }
}

fn spawn(opts: &LocalOptions) -> std::io::Result<Child> {
    Command::new(&opts.server)
        .arg("-m")
        .arg(&opts.model)
        .args(["--host", "127.0.0.1", "--port", &opts.port.to_string()])
        .args([
            "-np",
            "1",
            "-c",
            &opts.ctx_size.to_string(),
            "-t",
            &opts.threads.to_string(),
        ])
        .args(["--alias", LOCAL_MODEL_NAME, "--no-webui"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

async fn wait_healthy(
    client: &reqwest::Client,
    opts: &LocalOptions,
    child: &mut Child,
    within: Duration,
) -> bool {
    let url = format!("http://127.0.0.1:{}/health", opts.port);
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            tracing::error!(%status, "llama-server exited during start-up");
            return false;
        }
        if let Ok(r) = client
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            && r.status().is_success()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn supervise(
    opts: LocalOptions,
    mut child: Child,
    healthy: Arc<AtomicBool>,
    pid: Arc<AtomicU32>,
    mut stop: watch::Receiver<bool>,
    client: reqwest::Client,
) {
    let mut restarts = 0u32;
    loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                healthy.store(false, Ordering::Relaxed);
                return;
            }
            status = child.wait() => {
                healthy.store(false, Ordering::Relaxed);
                pid.store(0, Ordering::Relaxed);
                restarts += 1;
                let backoff = Duration::from_millis(500 * u64::from(restarts.min(20)));
                tracing::error!(?status, restarts, ?backoff, "llama-server died; restarting");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                // If the spawn fails, `child` stays the dead one and the next turn retries.
                match spawn(&opts) {
                    Ok(mut c) => {
                        pid.store(c.id().unwrap_or(0), Ordering::Relaxed);
                        if wait_healthy(&client, &opts, &mut c, Duration::from_secs(120)).await {
                            healthy.store(true, Ordering::Relaxed);
                            tracing::info!("llama-server is back");
                        }
                        child = c;
                    }
                    Err(e) => tracing::error!(error = %e, "could not restart llama-server"),
                }
            }
        }
    }
}
