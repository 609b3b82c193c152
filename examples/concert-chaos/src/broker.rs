//! The tansu broker of phase 1: started on a free port with its storage in the run's
//! directory, restarted by the `broker` fault, and revived by a watchdog when it stops
//! serving.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// The tansu broker of the run.
pub(crate) struct Broker {
    tansu: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    /// How far `tansu.log` has been read for signs of a dead storage actor.
    log_read: u64,
}

impl Broker {
    /// Starts tansu (`tansu`) on a free port, with its storage and log in `dir`.
    pub(crate) async fn start(tansu: &Path, dir: &Path) -> anyhow::Result<Broker> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut b = Broker { tansu: tansu.to_owned(), dir: dir.to_owned(), port, child: None, log_read: 0 };
        b.spawn().await?;
        Ok(b)
    }

    /// `127.0.0.1:<port>`.
    pub(crate) fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://{}", self.address());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("tansu.log"))?;
        let child = Command::new(&self.tansu)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start tansu ({}); install it or pass --tansu", self.tansu.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(self.address()).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "tansu did not listen on {} within 20 s", self.address());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Stops the broker (`crash`: SIGKILL; else SIGINT, SIGKILL after 5 s) and starts it
    /// again on the same storage after `down`.
    pub(crate) async fn restart(&mut self, down: Duration, crash: bool) -> anyhow::Result<()> {
        if crash {
            if let Some(mut child) = self.child.take() {
                child.kill().await?;
            }
        }
        self.stop().await?;
        tokio::time::sleep(down).await;
        self.spawn().await
    }

    /// Whether tansu logged, since the last call, that its storage actor is gone; then
    /// the log lines that say why are appended to `tansu-revivals.log` in the run's
    /// directory.
    ///
    /// tansu 0.6.0's storage actor (`ChannelRequestService::serve`) ends at the first
    /// error of any request, including a client that disconnected while its request
    /// was served (a killed process); every later request then fails with
    /// `UnableToSend` while the process stays up. The harness restarts it then, as a
    /// liveness probe would; its storage keeps the data.
    fn storage_dead(&mut self) -> anyhow::Result<bool> {
        use std::io::{Read, Seek, Write};
        let mut f = std::fs::File::open(self.dir.join("tansu.log"))?;
        f.seek(std::io::SeekFrom::Start(self.log_read))?;
        let mut text = Vec::new();
        f.read_to_end(&mut text)?;
        self.log_read += text.len() as u64;
        let text = String::from_utf8_lossy(&text);
        if !text.contains("SendError") {
            return Ok(false);
        }
        // The first error lines of the window: what killed the actor, not its echoes.
        let why: Vec<&str> = text.lines().filter(|l| l.contains("ERROR") || l.contains("Error")).take(12).collect();
        let mut out =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("tansu-revivals.log"))?;
        writeln!(out, "--- {} revival after:", chrono::Utc::now().to_rfc3339())?;
        for l in why {
            writeln!(out, "{}", l.chars().take(600).collect::<String>())?;
        }
        Ok(true)
    }

    /// Stops the broker: SIGINT, SIGKILL after 5 s.
    pub(crate) async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGINT);
            }
            if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                child.kill().await?;
            }
        }
        Ok(())
    }
}

/// Restarts tansu when its storage actor died (see [`Broker::storage_dead`]) or the
/// process exited; counts the revivals.
pub(crate) async fn watch_broker(broker: Arc<tokio::sync::Mutex<Broker>>, revived: Arc<AtomicU64>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut b = broker.lock().await;
        let exited = b.child.as_mut().is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
        if exited || b.storage_dead().unwrap_or(false) {
            tracing::warn!(exited, "tansu stopped serving; restarting it");
            match b.restart(Duration::from_millis(100), true).await {
                Ok(()) => {
                    revived.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::error!(error = %e, "tansu restart failed"),
            }
        }
    }
}
