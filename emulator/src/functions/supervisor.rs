//! The supervisor of the custom handler process (the host's worker): it starts the handler with
//! `FUNCTIONS_CUSTOMHANDLER_PORT` (and the older `FUNCTIONS_HTTPWORKER_PORT`) plus the app
//! settings in its environment, counts it ready once it accepts connections on that port (the
//! host allows 60 s), and restarts it with backoff whenever it exits.

use super::app::FunctionApp;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a handler may take to start listening, as on Azure.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The pause before restarting a handler that had been listening.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Starts of handlers, numbering each so callers can tell them apart.
static STARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The supervisor of one handler process: its port, and whether (and which start of) it is ready.
pub struct HandlerSupervisor {
    port: u16,
    /// 0 while the handler is not listening; otherwise which start of it is (1, 2, …), so a
    /// caller can tell "restarted since I looked" from "still the one that failed me".
    ready: watch::Receiver<u64>,
}

impl HandlerSupervisor {
    /// Starts supervising the app's handler; the returned task ends at shutdown.
    pub fn start(
        app: &FunctionApp,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        // The host picks a free port; so does the stand-in, once, so it stays the same across
        // restarts of the handler.
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let (ready_tx, ready) = watch::channel(0u64);
        let app = app.clone();
        let task = tokio::spawn(async move {
            let mut backoff = MIN_BACKOFF;
            loop {
                let mut listened = false;
                match spawn(&app, port) {
                    Ok(mut child) => {
                        let outcome = supervise(&mut child, port, &ready_tx, &mut shutdown).await;
                        let _ = ready_tx.send(0);
                        match outcome {
                            Ended::Shutdown => {
                                let _ = child.start_kill();
                                let _ = child.wait().await;
                                return;
                            }
                            Ended::AfterListening => listened = true,
                            Ended::BeforeListening => {}
                        }
                    }
                    Err(error) => tracing::error!(
                        executable = %app.handler.executable.display(),
                        %error,
                        "the custom handler could not be started"
                    ),
                }
                // A handler that served and then died is restarted at once: requests are
                // waiting for it. Only starts that never listen back off, so a handler that
                // cannot start does not spin.
                if listened {
                    backoff = MIN_BACKOFF;
                }
                tracing::warn!(retry_in = ?backoff, "restarting the custom handler");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                if !listened {
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        });
        Ok((Self { port, ready }, task))
    }

    /// The port the handler listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the handler accepts connections now.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow() != 0
    }

    /// Waits until the handler accepts connections.
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r != 0).await;
    }

    /// Which start of the handler is listening now (0: none).
    pub fn generation(&self) -> u64 {
        *self.ready.borrow()
    }

    /// Waits (at most `limit`) until start `generation` is no longer the one listening; true if
    /// it ended.
    pub async fn wait_ended(&self, generation: u64, limit: Duration) -> bool {
        let mut ready = self.ready.clone();
        tokio::time::timeout(limit, ready.wait_for(|r| *r != generation))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until ready, at most `limit`; true if ready.
    pub async fn wait_ready_for(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.wait_ready()).await.is_ok()
    }
}

fn spawn(app: &FunctionApp, port: u16) -> std::io::Result<Child> {
    let mut command = Command::new(&app.handler.executable);
    command
        .args(&app.handler.arguments)
        .current_dir(&app.handler.working_directory)
        .envs(&app.settings)
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("FUNCTIONS_HTTPWORKER_PORT", port.to_string())
        .env("AzureWebJobsScriptRoot", &app.root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    for output in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        tokio::spawn(async move {
            let mut lines = BufReader::new(output).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "handler", "{line}");
            }
        });
    }
    Ok(child)
}

/// How a supervised process ended.
enum Ended {
    /// The stand-in is shutting down; the process must be stopped.
    Shutdown,
    /// It exited (or was stopped) without ever listening.
    BeforeListening,
    /// It exited after it had listened.
    AfterListening,
}

/// Waits for readiness, then for the process to end.
async fn supervise(
    child: &mut Child,
    port: u16,
    ready: &watch::Sender<u64>,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + START_TIMEOUT;
    // A foreign process offers no readiness signal but its listening port: probe it, bounded.
    loop {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            tracing::info!(port, "the custom handler is listening");
            ready.send_modify(|r| {
                *r = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
            });
            break;
        }
        if Instant::now() > deadline {
            tracing::error!(
                port,
                "the custom handler did not listen on FUNCTIONS_CUSTOMHANDLER_PORT within 60 s"
            );
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Ended::BeforeListening;
        }
        tokio::select! {
            status = child.wait() => {
                tracing::error!(?status, "the custom handler exited before listening");
                return Ended::BeforeListening;
            }
            _ = shutdown.changed() => return Ended::Shutdown,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    tokio::select! {
        status = child.wait() => {
            tracing::error!(?status, "the custom handler exited");
            Ended::AfterListening
        }
        _ = shutdown.changed() => Ended::Shutdown,
    }
}
