//! `dpsctl import` in a real terminal: tmux runs it in a detached session of a fixed size, and
//! the screen it leaves shows the progress bar drawn in full.

use crate::helpers::spawn_app;
use crate::run::DPSCTL;
use std::path::Path;
use std::time::Duration;

/// Runs tmux on the test's own server socket.
async fn tmux(socket: &Path, args: &[&str]) -> std::process::Output {
    let run = tokio::process::Command::new("tmux")
        .arg("-S")
        .arg(socket)
        .args(args)
        .env_remove("TMUX")
        .output();
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("tmux answered within 120 s")
        .expect("tmux runs (scripts/test-tools.sh installs it)")
}

#[tokio::test]
async fn an_import_on_a_terminal_draws_a_progress_bar() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("registrationId,customerId\n");
    for i in 1..=30 {
        text.push_str(&format!("tty-{i:02},acme\n"));
    }
    let file = dir.path().join("export.csv");
    std::fs::write(&file, text).unwrap();
    let socket = dir.path().join("tmux.sock");
    // The session's shell says when dpsctl is done, then stays (keeping the screen as dpsctl
    // left it) until the server is killed.
    let script = format!(
        "DPSCTL_API_URL='{}' DPSCTL_KEY='{}' '{DPSCTL}' import '{}' --batch-rows 10 --problems; echo \"exit $?\"; tmux -S '{sock}' wait-for -S imported; tmux -S '{sock}' wait-for never",
        app.base_url,
        app.function_key,
        file.display(),
        sock = socket.display()
    );
    let started = tmux(
        &socket,
        &[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "import",
            "-x",
            "120",
            "-y",
            "30",
            &script,
        ],
    )
    .await;
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let waited = tmux(&socket, &["wait-for", "imported"]).await;
    assert!(waited.status.success());
    let screen = tmux(&socket, &["capture-pane", "-p", "-t", "import"]).await;
    tmux(&socket, &["kill-server"]).await;
    let screen = String::from_utf8_lossy(&screen.stdout).into_owned();
    let bar = screen
        .lines()
        .find(|l| l.contains("30/30 rows"))
        .unwrap_or_else(|| panic!("no progress bar on the screen:\n{screen}"));
    assert!(
        bar.starts_with(&format!("[{}]", "#".repeat(40))),
        "{screen}"
    );
    assert!(bar.contains("30 created"), "{screen}");
    assert!(screen.contains("every row was created"), "{screen}");
    assert!(screen.contains("exit 0"), "{screen}");
}
