//! Running the dpsctl binary the way an administrator would: configured by its environment
//! variables, in an empty working directory (so no `.local/endpoints.json` is found by accident).

use crate::helpers::TestApp;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// The binary under test.
pub const DPSCTL: &str = env!("CARGO_BIN_EXE_dpsctl");

/// What a run left behind.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics, showing both streams, unless the run exited with `code`.
    pub fn expect(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "dpsctl exited {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// Runs dpsctl with `env` only (no inherited DPSCTL_* variables), in `cwd`, stdin closed.
pub async fn run_with(env: &[(&str, &str)], cwd: &Path, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(DPSCTL);
    command
        .args(args)
        .current_dir(cwd)
        .env_remove("DPSCTL_API_URL")
        .env_remove("DPSCTL_KEY")
        .env_remove("DPSCTL_ENDPOINTS")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    // The emulator runs in this test's runtime: the child is awaited, never waited on blocking.
    let output = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("dpsctl finished within 300 s")
        .expect("dpsctl runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs dpsctl against the test app with its function key.
pub async fn dpsctl(app: &TestApp, args: &[&str]) -> Run {
    let cwd = tempfile::tempdir().unwrap();
    run_with(
        &[
            ("DPSCTL_API_URL", app.base_url.as_str()),
            ("DPSCTL_KEY", app.function_key.as_str()),
        ],
        cwd.path(),
        args,
    )
    .await
}
