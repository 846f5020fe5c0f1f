//! The `device` binary's roles: chosen by the first argument, or by the name it is called by.

use std::path::Path;
use std::process::Command;

const DEVICE: &str = env!("CARGO_BIN_EXE_device");

/// Runs `program args…` and returns what it printed, failing the test if it did not succeed.
fn output_of(program: &Path, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .expect("the device binary runs");
    assert!(
        output.status.success(),
        "{program:?} {args:?} failed: {output:?}"
    );
    String::from_utf8(output.stdout).expect("help is UTF-8")
}

#[test]
fn the_first_argument_names_the_role() {
    let top = output_of(Path::new(DEVICE), &["--help"]);
    assert!(top.contains("portal") && top.contains("sender"), "{top}");
    let portal = output_of(Path::new(DEVICE), &["portal", "--help"]);
    assert!(
        portal.contains("Serve the device's setup portal"),
        "{portal}"
    );
    assert!(portal.contains("--ready-file"), "{portal}");
    let sender = output_of(Path::new(DEVICE), &["sender", "--help"]);
    assert!(sender.contains("--outbox-capacity"), "{sender}");
}

#[cfg(unix)]
#[test]
fn a_link_named_after_a_former_program_takes_that_role_and_its_flags() {
    let links = tempfile::tempdir().expect("a temporary directory");
    for (name, flag, other_role_flag) in [
        ("device-portal", "--ready-file", "--outbox-capacity"),
        ("telemetry-sender", "--outbox-capacity", "--ready-file"),
    ] {
        let link = links.path().join(name);
        std::os::unix::fs::symlink(DEVICE, &link).expect("a symbolic link");
        let help = output_of(&link, &["--help"]);
        assert!(help.contains(&format!("Usage: {name} [OPTIONS]")), "{help}");
        assert!(help.contains(flag), "{help}");
        assert!(!help.contains(other_role_flag), "{help}");
    }
}
