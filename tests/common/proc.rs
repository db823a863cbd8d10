//! The real `agp` binary as a child process: start it on a data dir, wait for it, stop it.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_agp");

/// `agp --data-dir DIR` on the embedded default (never an external server here).
pub fn agp(data_dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("DATABASE_URL")
        .env_remove("AGP_MASTER_KEY")
        .env_remove("AGP_LLM_BASE_URL")
        .env("AGP_LOG", "warn")
        .arg("--data-dir")
        .arg(data_dir);
    c
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `/readyz` answers 200 (60 s at most); fails if the child exits.
pub async fn wait_ready(client: &reqwest::Client, base: &str, child: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("agp serve exited early with {status}");
        }
        assert!(Instant::now() < deadline, "agp serve not ready after 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A child process that is killed if the test fails before stopping it.
pub struct Proc(Option<Child>);

impl Proc {
    /// Wraps a spawned child.
    pub fn spawned(c: Child) -> Proc {
        Proc(Some(c))
    }
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        match self.0.as_mut() {
            Some(c) => c.try_wait(),
            None => Ok(None),
        }
    }
    /// The child, no longer killed on drop.
    pub fn take(mut self) -> Child {
        self.0.take().expect("a child")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `agp serve --listen LISTEN` with extra environment variables.
pub fn start_on(data_dir: &Path, listen: &str, env: &[(&str, &str)]) -> Proc {
    let mut c = agp(data_dir);
    c.args(["serve", "--listen", listen])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        c.env(k, v);
    }
    Proc(Some(c.spawn().expect("spawn agp serve")))
}

/// SIGTERM, then waits (30 s at most) for a clean exit.
pub async fn terminate(child: Proc) {
    let mut child = child.take();
    // SAFETY: sending SIGTERM to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "agp serve exited with {status} after SIGTERM"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agp serve did not stop within 30 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stdout of a command that must succeed.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pid and port of the embedded cluster's postmaster, from its lock file.
pub fn postmaster(data_dir: &Path) -> Option<(i32, u16)> {
    let text = std::fs::read_to_string(data_dir.join("pg/postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let port = lines.nth(2)?.trim().parse().ok()?;
    Some((pid, port))
}

/// Whether a process exists and has not exited (a zombie waiting to be reaped has).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits (5 s at most) for a process to exit.
pub async fn exits(pid: i32) -> bool {
    let since = Instant::now();
    while alive(pid) {
        if since.elapsed() > Duration::from_secs(5) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}
