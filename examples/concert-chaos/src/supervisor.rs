//! The worker processes of phase 1: this executable started as `concert-chaos worker`
//! (see [`crate::worker`]), told where to die on its stdin, stopped with SIGTERM.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use concert::app::WorkerRole;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};

use crate::broker::Broker;
use crate::checks::ChaosReport;
use crate::{ChaosConfig, Sabotage};

/// `application_name` of the workers' PostgreSQL connections (the `db-drop` fault
/// terminates exactly these).
pub const WORKER_APPLICATION_NAME: &str = "concert-chaos-worker";

/// A worker child process.
pub(crate) struct Worker {
    pub(crate) role: WorkerRole,
    pub(crate) name: String,
    pub(crate) child: Child,
    stdin: ChildStdin,
    pub(crate) started: Instant,
}

impl Worker {
    pub(crate) fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().expect("running") as i32)
    }

    /// Asks the worker to SIGKILL itself at `point`; returns whether it did within `wait`.
    pub(crate) async fn kill_at(&mut self, point: &str, wait: Duration) -> anyhow::Result<bool> {
        let armed = async {
            self.stdin.write_all(format!("kill {point}\n").as_bytes()).await?;
            self.stdin.flush().await
        };
        if armed.await.is_err() {
            return Ok(false); // the worker is gone already: not a landed fault
        }
        match tokio::time::timeout(wait, self.child.wait()).await {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                Ok(status?.signal() == Some(Signal::SIGKILL as i32))
            }
            Err(_) => {
                let _ = self.stdin.write_all(b"disarm\n").await;
                Ok(false)
            }
        }
    }

    /// SIGTERM; the exit status, or `None` when it did not exit within `wait` (then it
    /// is killed).
    async fn terminate(mut self, wait: Duration) -> anyhow::Result<Option<std::process::ExitStatus>> {
        kill(self.pid(), Signal::SIGTERM)?;
        match tokio::time::timeout(wait, self.child.wait()).await {
            Ok(status) => Ok(Some(status?)),
            Err(_) => {
                self.child.kill().await?;
                Ok(None)
            }
        }
    }
}

/// Everything phase 1 owns: its database, broker, Redis namespace and worker
/// processes, and the report the faults are counted in.
pub(crate) struct Supervisor {
    pub(crate) cfg: ChaosConfig,
    pub(crate) dir: PathBuf,
    pub(crate) admin: sqlx::PgPool,
    pub(crate) database: String,
    pub(crate) worker_url: String,
    pub(crate) namespace: String,
    pub(crate) broker: Arc<tokio::sync::Mutex<Broker>>,
    pub(crate) brokers: String,
    pub(crate) webhook_url: String,
    /// The demo receiver and gateway, for `downstream-outage`.
    pub(crate) receiver: Option<concert::webhook::DemoReceiver>,
    pub(crate) gateway: Option<concert::gateway::DemoGateway>,
    pub(crate) workers: Vec<Worker>,
    pub(crate) spawned: usize,
    pub(crate) report: ChaosReport,
}

impl Supervisor {
    /// Starts a worker process of `role`: this executable's `worker` command.
    pub(crate) fn spawn_worker(&mut self, role: WorkerRole) -> anyhow::Result<()> {
        self.spawned += 1;
        let role_arg = role.to_possible_value().expect("every role is a value");
        let name = format!("{}-{}", role_arg.get_name(), self.spawned);
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let mut child = Command::new(std::env::current_exe()?)
            .arg("worker")
            .args(["--role", role_arg.get_name()])
            .args(["--webhook-url", &self.webhook_url])
            .args(["--relay-shards", &if self.cfg.relays > 1 { crate::RELAY_SHARDS } else { 1 }.to_string()])
            .args(self.cfg.watermarks.then_some("--watermarks"))
            .env("DATABASE_URL", &self.worker_url)
            .env("REDIS_URL", &self.cfg.redis_url)
            .env("REDIS_NAMESPACE", &self.namespace)
            .env("KAFKA_BROKERS", &self.brokers)
            .env("KAFKA_CONFIG_SESSION_TIMEOUT_MS", "6000")
            .env("KAFKA_CONFIG_HEARTBEAT_INTERVAL_MS", "500")
            .env("KAFKA_CONFIG_RECONNECT_BACKOFF_MAX_MS", "500")
            .env("KAFKA_CONFIG_TOPIC_METADATA_REFRESH_INTERVAL_MS", "2000")
            .env("CHAOS_SABOTAGE", self.cfg.sabotage.map_or("", Sabotage::fail_point))
            .env(
                "RUST_LOG",
                std::env::var("CHAOS_WORKER_LOG").unwrap_or_else(|_| {
                    // The containers' own lines say which step of a stop hangs, if one does.
                    "warn,concert=info,concert_chaos=info,reliable_kafka::consumer::container=info".into()
                }),
            )
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        self.workers.push(Worker { role, name, child, stdin, started: Instant::now() });
        Ok(())
    }

    /// Removes the oldest worker of `role` from the supervision.
    pub(crate) fn take_worker(&mut self, role: WorkerRole) -> Worker {
        let i = self.workers.iter().position(|w| w.role == role).expect("a worker of the role");
        self.workers.remove(i)
    }

    /// Restarts workers that died on their own (a crash is a finding, not a fault).
    pub(crate) async fn check_workers(&mut self) -> anyhow::Result<()> {
        let mut dead = Vec::new();
        for (i, w) in self.workers.iter_mut().enumerate() {
            if let Some(status) = w.child.try_wait()? {
                dead.push((i, w.name.clone(), status));
            }
        }
        for (i, name, status) in dead.into_iter().rev() {
            let w = self.workers.remove(i);
            self.report.problems.push(format!("worker {name} exited on its own: {status}"));
            self.spawn_worker(w.role)?;
        }
        Ok(())
    }

    /// SIGTERMs `w` and records a problem unless it exits 0 within 60 s.
    pub(crate) async fn expect_clean_exit(&mut self, w: Worker) -> anyhow::Result<()> {
        let name = w.name.clone();
        if std::env::var_os("CHAOS_GDB_ON_HANG").is_some() {
            // Debug aid: the threads of a worker that does not stop within 20 s.
            let pid = w.pid().as_raw();
            let out = self.dir.join(format!("{name}.hang.txt"));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(20)).await;
                if kill(Pid::from_raw(pid), None).is_ok() {
                    let bt = Command::new("gdb")
                        .args(["-p", &pid.to_string(), "-batch", "-ex", "thread apply all bt"])
                        .output()
                        .await;
                    if let Ok(bt) = bt {
                        let _ = std::fs::write(out, bt.stdout);
                    }
                }
            });
        }
        match w.terminate(Duration::from_secs(60)).await? {
            Some(status) if status.success() => {}
            Some(status) => self.report.problems.push(format!("worker {name} ended with {status} after SIGTERM")),
            None => {
                let tail = log_tail(&self.dir.join(format!("{name}.log")), 6);
                self.report
                    .problems
                    .push(format!("worker {name} did not stop within 60 s of SIGTERM; its log ends: {tail}"));
            }
        }
        Ok(())
    }
}

/// The last `n` lines of the log at `path`, joined with ` | ` (for a problem report).
pub(crate) fn log_tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
