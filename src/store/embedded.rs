//! A private Postgres cluster run from the system's server binaries (Debian `postgresql-15`),
//! used when no `DATABASE_URL` is given: by `agp serve`, the other subcommands and the tests.
//!
//! Layout under the data directory: `pg/` (the cluster, owned by whoever runs the server),
//! `pg-password` (the generated superuser password, mode 600), `agp.lock` (serialises
//! starting, restarting and stopping), `agp.users` (every agp process using the cluster holds
//! a shared lock on it for its lifetime).
//!
//! Ownership when several agp processes share one data directory: the cluster belongs to all
//! of them. The first to arrive starts it; the others adopt it. Each process on its way out
//! stops it only if no other process still holds `agp.users`, so stopping one server never
//! pulls the database from under another, and a process killed with -9 holds nothing (the
//! kernel drops its locks). While running, every process supervises the cluster: if the
//! postmaster dies, whichever process notices first restarts it on the same port (the
//! others see it back), and pools drop connections made before the restart.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Name of the superuser and of the database the service uses inside the cluster.
pub const DB_USER: &str = "agp";
/// Database the service itself uses.
pub const DB_NAME: &str = "agp";

/// What can go wrong starting the embedded cluster; every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no PostgreSQL server binaries found (looked for initdb and pg_ctl on PATH and under \
         /usr/lib/postgresql/*/bin). Install them (Debian/Ubuntu: `apt-get install postgresql-15`) \
         or set DATABASE_URL to an existing server"
    )]
    NoBinaries,
    #[error(
        "running as root, but initdb refuses to run as root and there is no `postgres` user to \
         run the cluster as; create one (`useradd --system postgres`), run agp as a normal user, \
         or set DATABASE_URL"
    )]
    NoPostgresUser,
    #[error(
        "the data directory {data_dir} is not reachable by the `{user}` user that runs the \
         cluster: {blocked} lacks the execute bit for it. Choose another --data-dir / AGP_DATA_DIR \
         (for example under /var/lib or /srv), or `chmod o+x {blocked}`"
    )]
    Unreachable {
        data_dir: String,
        user: String,
        blocked: String,
    },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmbeddedError {
    let context = context.into();
    move |source| EmbeddedError::Io { context, source }
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// The agp data directory; the cluster lives in its `pg/` folder.
    pub data_dir: PathBuf,
    /// Throwaway cluster (tests): no fsync, no durable commits. Never for real data.
    pub ephemeral: bool,
}

/// A running cluster; `stop()` stops it unless another agp process still uses it.
#[derive(Debug)]
pub struct EmbeddedPg {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    pgdata: PathBuf,
    port: u16,
    password: String,
    run_as: Option<String>,
    /// Our shared lock on `agp.users`, held while this process uses the cluster.
    user_lock: Mutex<Option<File>>,
    health: Arc<PgHealth>,
}

/// A running supervision task; `stop()` ends it.
#[derive(Debug)]
pub struct Supervisor {
    stop_tx: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    /// Ends the supervision (before the cluster is stopped on purpose).
    pub async fn stop(self) {
        let _ = self.stop_tx.send(true);
        let _ = self.task.await;
    }
}

/// The cluster's state as the supervisor sees it (for `/healthz` and the pool).
#[derive(Debug, Default)]
pub struct PgHealth {
    down: AtomicBool,
    restarts: AtomicU32,
    postmaster_pid: AtomicI32,
    down_since: Mutex<Option<Instant>>,
    /// When the cluster last came back (connections made before are dead).
    back_at: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
}

impl PgHealth {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long the cluster has been down (`None`: it is up).
    pub fn down_for(&self) -> Option<Duration> {
        if !self.down.load(Ordering::Acquire) {
            return None;
        }
        Self::lock(&self.down_since).map(|t| t.elapsed())
    }

    /// Restarts made by this process's supervisor.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// The last restart error, if the cluster is down.
    pub fn last_error(&self) -> Option<String> {
        Self::lock(&self.last_error).clone()
    }

    /// Whether a pooled connection of this age predates the cluster's last return (and so
    /// points at a dead server process).
    pub fn is_stale(&self, connection_age: Duration) -> bool {
        Self::lock(&self.back_at).is_some_and(|t| connection_age > t.elapsed())
    }

    fn mark_down(&self) {
        if !self.down.swap(true, Ordering::AcqRel) {
            *Self::lock(&self.down_since) = Some(Instant::now());
            metrics::gauge!("agp_postgres_up").set(0.0);
        }
    }

    fn mark_up(&self, pid: i32) {
        let old = self.postmaster_pid.swap(pid, Ordering::AcqRel);
        let was_down = self.down.swap(false, Ordering::AcqRel);
        if was_down || (old != 0 && old != pid) {
            *Self::lock(&self.back_at) = Some(Instant::now());
            *Self::lock(&self.last_error) = None;
            metrics::gauge!("agp_postgres_up").set(1.0);
            tracing::info!(pid, "embedded Postgres is back");
        }
    }
}

/// A system account the cluster runs as when agp itself runs as root.
struct Account {
    name: String,
    uid: u32,
    gid: u32,
}

impl EmbeddedPg {
    /// Initialises the cluster if needed, then starts it (or adopts the running one).
    /// Blocking: call it from `spawn_blocking` or before the runtime is busy.
    pub fn start(opts: &EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let bin_dir = find_bin_dir().ok_or(EmbeddedError::NoBinaries)?;
        fs::create_dir_all(&opts.data_dir).map_err(io(format!(
            "creating data directory {}",
            opts.data_dir.display()
        )))?;
        let data_dir = fs::canonicalize(&opts.data_dir)
            .map_err(io(format!("resolving {}", opts.data_dir.display())))?;
        let account = if is_root() {
            let acc = lookup_account("postgres").ok_or(EmbeddedError::NoPostgresUser)?;
            check_reachable(&data_dir, &acc)?;
            Some(acc)
        } else {
            None
        };

        // One starter at a time per data directory (serve + import, parallel test binaries).
        let lock = File::create(data_dir.join("agp.lock")).map_err(io("creating agp.lock"))?;
        lock.lock().map_err(io("locking agp.lock"))?;

        let pgdata = data_dir.join("pg");
        let password = ensure_password(&data_dir)?;
        let mut pg = EmbeddedPg {
            bin_dir,
            data_dir: data_dir.clone(),
            pgdata: pgdata.clone(),
            port: 0,
            password,
            run_as: account.as_ref().map(|a| a.name.clone()),
            user_lock: Mutex::new(None),
            health: Arc::new(PgHealth::default()),
        };
        if !pgdata.join("PG_VERSION").exists() {
            pg.init(account.as_ref(), opts.ephemeral)?;
        }
        if let Some((pid, port)) = postmaster(&pgdata) {
            tracing::info!(port, data_dir = %data_dir.display(), "adopting the running embedded Postgres");
            pg.port = port;
            pg.health.postmaster_pid.store(pid, Ordering::Relaxed);
        } else {
            // After a crash, come back on the port the cluster had, so that other agp
            // processes on this directory find it where they left it.
            pg.port = last_port(&pgdata)
                .filter(|p| port_free(*p))
                .map_or_else(free_port, Ok)?;
            pg.launch()?;
        }
        let users = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(data_dir.join("agp.users"))
            .map_err(io("opening agp.users"))?;
        users.lock_shared().map_err(io("locking agp.users"))?;
        *pg.user_lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(users);
        let _ = fs::remove_file(data_dir.join("agp.owner")); // from earlier versions
        pg.create_database()?;
        drop(lock);
        Ok(pg)
    }

    /// The supervisor's view of the cluster.
    pub fn health(&self) -> Arc<PgHealth> {
        self.health.clone()
    }

    /// Checks the cluster every `every` and restarts it when it died, until stopped.
    pub fn supervise(self: &Arc<Self>, every: Duration) -> Supervisor {
        let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
        let pg = self.clone();
        let task = tokio::spawn(async move {
            loop {
                // While the cluster is down, look again sooner.
                let pause = if pg.health.down_for().is_some() {
                    every / 4
                } else {
                    every
                };
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                let pg = pg.clone();
                let _ = tokio::task::spawn_blocking(move || pg.check_and_heal()).await;
            }
        });
        Supervisor { stop_tx, task }
    }

    /// Connection URL for `db` inside this cluster.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{DB_USER}:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    /// TCP port the cluster listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the cluster, unless another agp process still uses it (then it is left running
    /// for them). Call it once, on the way out.
    pub fn stop(&self) {
        let Ok(lock) = File::create(self.data_dir.join("agp.lock")) else {
            return;
        };
        if let Err(e) = lock.lock() {
            tracing::warn!(error = %e, "could not lock agp.lock; leaving Postgres running");
            return;
        }
        // Let go of our own shared lock first: flock locks are per open file, so ours would
        // block the exclusive probe below.
        drop(
            self.user_lock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        let last_user = File::open(self.data_dir.join("agp.users"))
            .map(|f| f.try_lock().is_ok())
            .unwrap_or(true);
        if !last_user {
            tracing::info!(
                "another agp process still uses the embedded Postgres; leaving it running"
            );
            return;
        }
        if postmaster(&self.pgdata).is_none() {
            return;
        }
        let pgdata = self.pgdata.to_string_lossy().to_string();
        match self.run(
            "pg_ctl stop",
            &[
                "pg_ctl", "-D", &pgdata, "-m", "fast", "-w", "-t", "60", "stop",
            ],
        ) {
            Ok(_) => tracing::info!("embedded Postgres stopped"),
            Err(e) => tracing::warn!(error = %e, "stopping the embedded Postgres failed"),
        }
    }

    /// Checks the postmaster once: notes a restart made by another process, or restarts a
    /// dead cluster on its port (one process at a time, under `agp.lock`). Blocking.
    pub fn check_and_heal(&self) {
        if let Some((pid, _)) = postmaster(&self.pgdata) {
            self.health.mark_up(pid);
            return;
        }
        self.health.mark_down();
        let result = (|| {
            let lock = File::create(self.data_dir.join("agp.lock")).map_err(io("agp.lock"))?;
            lock.lock().map_err(io("locking agp.lock"))?;
            if postmaster(&self.pgdata).is_some() {
                return Ok(()); // another agp process restarted it
            }
            tracing::warn!(port = self.port, "embedded Postgres is down; restarting it");
            self.launch()
        })();
        match result {
            Ok(()) => {
                if let Some((pid, _)) = postmaster(&self.pgdata) {
                    self.health.restarts.fetch_add(1, Ordering::Relaxed);
                    self.health.mark_up(pid);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "restarting the embedded Postgres failed; retrying");
                *PgHealth::lock(&self.health.last_error) = Some(e.to_string());
            }
        }
    }

    fn init(&self, account: Option<&Account>, ephemeral: bool) -> Result<(), EmbeddedError> {
        // A half-made cluster from an interrupted initdb cannot be reused: start over.
        if self.pgdata.exists() {
            fs::remove_dir_all(&self.pgdata).map_err(io("removing an incomplete cluster"))?;
        }
        fs::create_dir(&self.pgdata).map_err(io("creating the cluster directory"))?;
        fs::set_permissions(&self.pgdata, fs::Permissions::from_mode(0o700))
            .map_err(io("setting cluster directory mode"))?;
        let pwfile = self.data_dir.join(".initdb-pw");
        fs::write(&pwfile, &self.password).map_err(io("writing initdb password file"))?;
        if let Some(acc) = account {
            for p in [&self.pgdata, &pwfile] {
                std::os::unix::fs::chown(p, Some(acc.uid), Some(acc.gid)).map_err(io(format!(
                    "giving {} to {}",
                    p.display(),
                    acc.name
                )))?;
            }
        }
        let pgdata = self.pgdata.to_string_lossy().to_string();
        let pw = pwfile.to_string_lossy().to_string();
        let mut args = vec![
            "initdb",
            "-D",
            &pgdata,
            "-U",
            DB_USER,
            "--pwfile",
            &pw,
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        ];
        if ephemeral {
            args.push("--no-sync");
        }
        let result = self.run("initdb", &args);
        let _ = fs::remove_file(&pwfile);
        result?;
        let mut conf = OpenOptions::new()
            .append(true)
            .open(self.pgdata.join("postgresql.conf"))
            .map_err(io("opening postgresql.conf"))?;
        let mut extra = String::from(
            "\n# added by agp: loopback TCP only, no Unix socket\n\
             listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\nmax_connections = 200\n",
        );
        if ephemeral {
            extra.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        conf.write_all(extra.as_bytes())
            .map_err(io("writing postgresql.conf"))?;
        tracing::info!(pgdata = %self.pgdata.display(), "initialised embedded Postgres cluster");
        Ok(())
    }

    fn launch(&self) -> Result<(), EmbeddedError> {
        let pgdata = self.pgdata.to_string_lossy().to_string();
        let log = self.pgdata.join("server.log").to_string_lossy().to_string();
        let port_opt = format!("-p {}", self.port);
        self.run(
            "pg_ctl start",
            &[
                "pg_ctl", "-D", &pgdata, "-l", &log, "-o", &port_opt, "-w", "-t", "60", "start",
            ],
        )
        .map_err(|e| match e {
            EmbeddedError::Command { what, detail } => EmbeddedError::Command {
                what,
                detail: format!("{detail} (see {log})"),
            },
            other => other,
        })?;
        tracing::info!(port = self.port, "embedded Postgres started");
        Ok(())
    }

    fn create_database(&self) -> Result<(), EmbeddedError> {
        let out = self.psql(
            "postgres",
            &format!("SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"),
        )?;
        if out.trim() != "1" {
            self.psql("postgres", &format!("CREATE DATABASE {DB_NAME}"))?;
        }
        Ok(())
    }

    /// Runs one SQL statement through `psql` (only used at start-up, before the pool exists).
    fn psql(&self, db: &str, sql: &str) -> Result<String, EmbeddedError> {
        let out = Command::new(self.bin("psql"))
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                DB_USER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .env("PGPASSWORD", &self.password)
            .output()
            .map_err(io("running psql"))?;
        check("psql", out).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    fn bin(&self, name: &str) -> PathBuf {
        let p = self.bin_dir.join(name);
        if p.exists() { p } else { PathBuf::from(name) }
    }

    /// Runs a server binary, as the `postgres` account when we are root.
    fn run(&self, what: &str, args: &[&str]) -> Result<Output, EmbeddedError> {
        let program = self.bin(args[0]);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        cmd.args(&args[1..]).current_dir(&self.data_dir);
        // pg_ctl's daemon must not hold our stdout/stderr pipes open (output() would hang).
        cmd.stdin(std::process::Stdio::null());
        let out = cmd
            .output()
            .map_err(io(format!("running {}", program.display())))?;
        check(what, out)
    }
}

fn check(what: &str, out: Output) -> Result<Output, EmbeddedError> {
    if out.status.success() {
        return Ok(out);
    }
    let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if detail.is_empty() {
        detail = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    Err(EmbeddedError::Command {
        what: what.to_string(),
        detail,
    })
}

/// Finds the directory with `initdb` and `pg_ctl`: `AGP_PG_BIN_DIR`, then PATH, then the
/// newest `/usr/lib/postgresql/<version>/bin`.
pub fn find_bin_dir() -> Option<PathBuf> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = std::env::var_os("AGP_PG_BIN_DIR").map(PathBuf::from)
        && has_both(&d)
    {
        return Some(d);
    }
    if let Some(path) = std::env::var_os("PATH")
        && let Some(d) = std::env::split_paths(&path).find(|d| has_both(d))
    {
        return Some(d);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has_both(d))
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn lookup_account(name: &str) -> Option<Account> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            Some(Account {
                name: name.to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        } else {
            None
        }
    })
}

/// Every folder from `/` down to the data dir must let the account through (execute bit).
fn check_reachable(data_dir: &Path, acc: &Account) -> Result<(), EmbeddedError> {
    // The data dir itself is ours: open it up for traversal (its secrets are mode 600).
    let _ = fs::set_permissions(data_dir, fs::Permissions::from_mode(0o755));
    for dir in data_dir.ancestors() {
        let Ok(meta) = fs::metadata(dir) else {
            continue;
        };
        let mode = meta.mode();
        let ok = if meta.uid() == acc.uid {
            mode & 0o100 != 0
        } else if meta.gid() == acc.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Err(EmbeddedError::Unreachable {
                data_dir: data_dir.display().to_string(),
                user: acc.name.clone(),
                blocked: dir.display().to_string(),
            });
        }
    }
    Ok(())
}

fn ensure_password(data_dir: &Path) -> Result<String, EmbeddedError> {
    let path = data_dir.join("pg-password");
    if let Ok(pw) = fs::read_to_string(&path) {
        let pw = pw.trim().to_string();
        if !pw.is_empty() {
            return Ok(pw);
        }
    }
    let pw = hex::encode(rand::random::<[u8; 16]>());
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(io("writing pg-password"))?;
    f.write_all(pw.as_bytes())
        .map_err(io("writing pg-password"))?;
    Ok(pw)
}

/// Pid and port of a live, answering postmaster for this cluster, from `postmaster.pid`
/// (line 1 pid, line 4 port).
fn postmaster(pgdata: &Path) -> Option<(i32, u16)> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid: i32 = lines.next()?.trim().parse().ok()?;
    let port: u16 = lines.nth(2)?.trim().parse().ok()?;
    if !pid_alive(pid) {
        return None; // stale lock file after a crash; postgres removes it itself on start
    }
    // The pid may be alive but still starting or shutting down: require an answer on the port.
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))
        .ok()
        .map(|_| (pid, port))
}

/// The port in a stale `postmaster.pid` (the cluster crashed) or in `postmaster.opts`.
fn last_port(pgdata: &Path) -> Option<u16> {
    let pid_file = fs::read_to_string(pgdata.join("postmaster.pid")).ok();
    pid_file
        .as_deref()
        .and_then(|t| t.lines().nth(3))
        .and_then(|l| l.trim().parse().ok())
        .or_else(|| {
            let opts = fs::read_to_string(pgdata.join("postmaster.opts")).ok()?;
            let at = opts.find("\"-p\" \"")? + 6;
            opts[at..].split('"').next()?.trim().parse().ok()
        })
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn free_port() -> Result<u16, EmbeddedError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(io("finding a free port"))
}
