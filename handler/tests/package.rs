//! The deployable package (`make package`, scripts/package.sh): dist/function-app.zip holds
//! exactly what the Functions host reads (host.json, the `handler` binary, one
//! `<Function>/function.json` per folder of functions/), the binary keeps its executable bit, and
//! it runs on an image whose glibc nobody documents: no program interpreter, no shared library,
//! and name look-ups that never load glibc's NSS modules.
//!
//! The zip is read with a small central-directory reader; entries are compared by CRC-32 and size
//! with dist/function-app/, whose files are then inspected (so no inflater is needed).
// In a test crate a panic, with the failing call's message, is the failure report.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const ZIP: &str = "dist/function-app.zip";
const APP: &str = "dist/function-app";

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. Build the package first: `make package` (`make test` does it).",
            path.display()
        )
    })
}

/// One central-directory record.
#[derive(Debug)]
struct Entry {
    name: String,
    /// The high byte of "version made by": 3 is Unix, the only system whose modes hosts apply.
    made_by: u8,
    /// The Unix mode from the high half of the external attributes.
    mode: u32,
    crc32: u32,
    size: u64,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The entries of a zip (no zip64: the package is far below 4 GiB).
fn entries(zip: &[u8]) -> Vec<Entry> {
    const END: u32 = 0x0605_4b50;
    const CENTRAL: u32 = 0x0201_4b50;
    let end = (0..=zip.len().saturating_sub(22))
        .rev()
        .find(|&at| u32_at(zip, at) == END)
        .expect("the zip has an end-of-central-directory record");
    let count = usize::from(u16_at(zip, end + 10));
    let mut at = u32_at(zip, end + 16) as usize;
    let mut found = Vec::with_capacity(count);
    for _ in 0..count {
        assert_eq!(
            u32_at(zip, at),
            CENTRAL,
            "a central-directory record at {at}"
        );
        let name_len = usize::from(u16_at(zip, at + 28));
        let extra_len = usize::from(u16_at(zip, at + 30));
        let comment_len = usize::from(u16_at(zip, at + 32));
        found.push(Entry {
            name: String::from_utf8(zip[at + 46..at + 46 + name_len].to_vec())
                .expect("entry names are UTF-8"),
            made_by: zip[at + 5],
            mode: u32_at(zip, at + 38) >> 16,
            crc32: u32_at(zip, at + 16),
            size: u64::from(u32_at(zip, at + 24)),
        });
        at += 46 + name_len + extra_len + comment_len;
    }
    found
}

/// CRC-32 (IEEE), as zip records it.
fn crc32(data: &[u8]) -> u32 {
    let table: Vec<u32> = (0..256u32)
        .map(|n| {
            (0..8).fold(n, |c, _| {
                if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                }
            })
        })
        .collect();
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// The package's entries, each checked to hold the same bytes as dist/function-app/.
fn package() -> Vec<Entry> {
    let root = repository();
    let entries = entries(&read(&root.join(ZIP)));
    for entry in &entries {
        let file = read(&root.join(APP).join(&entry.name));
        assert_eq!(
            (entry.size, entry.crc32),
            (file.len() as u64, crc32(&file)),
            "{ZIP} entry {} differs from {APP}/{}: run `make package` again",
            entry.name,
            entry.name
        );
    }
    entries
}

/// What the package must hold, from the sources as they are now.
fn expected_names() -> BTreeSet<String> {
    let mut names = BTreeSet::from(["host.json".to_owned(), "handler".to_owned()]);
    for folder in std::fs::read_dir(repository().join("functions")).unwrap() {
        let folder = folder.unwrap().path();
        if folder.join("function.json").is_file() {
            let name = folder.file_name().unwrap().to_string_lossy().into_owned();
            names.insert(format!("{name}/function.json"));
        }
    }
    names
}

fn files_under(root: &Path, dir: &Path, into: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(root, &path, into);
        } else {
            let relative = path.strip_prefix(root).unwrap();
            into.insert(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

#[test]
fn the_zip_holds_host_json_the_handler_and_one_function_json_per_function_and_nothing_else() {
    let entries = package();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let unique: BTreeSet<String> = names.iter().map(|n| (*n).to_owned()).collect();
    assert_eq!(unique.len(), names.len(), "duplicate entries: {names:?}");
    assert_eq!(
        unique,
        expected_names(),
        "{ZIP} must hold host.json, handler and <Function>/function.json at its root"
    );
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(
        names, sorted,
        "entries are sorted, so the zip is reproducible"
    );

    let mut unpacked = BTreeSet::new();
    let app = repository().join(APP);
    files_under(&app, &app, &mut unpacked);
    assert_eq!(unpacked, unique, "{APP} holds the same files as the zip");
}

#[test]
fn only_the_handler_entry_is_executable() {
    for entry in package() {
        assert_eq!(
            entry.made_by, 3,
            "{} is recorded as made on Unix",
            entry.name
        );
        let expected = if entry.name == "handler" {
            0o100755
        } else {
            0o100644
        };
        assert_eq!(
            entry.mode, expected,
            "{} has mode {:o}, expected {expected:o}",
            entry.name, entry.mode
        );
    }
}

#[test]
fn host_json_starts_the_packaged_handler() {
    package();
    let host: Value =
        serde_json::from_slice(&read(&repository().join(APP).join("host.json"))).unwrap();
    assert_eq!(
        host.pointer("/customHandler/description/defaultExecutablePath"),
        Some(&Value::from("handler")),
        "the host must start the packaged `handler`"
    );
}

#[test]
fn the_packaged_handler_needs_no_program_interpreter_or_shared_library() {
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const DT_NEEDED: u64 = 1;
    package();
    let elf = read(&repository().join(APP).join("handler"));
    assert_eq!(&elf[..4], b"\x7fELF", "handler is an ELF file");
    assert_eq!((elf[4], elf[5]), (2, 1), "handler is 64-bit little-endian");
    assert_eq!(u16_at(&elf, 0x12), 0x3E, "handler is built for x86-64");
    let table = u64_at(&elf, 0x20) as usize;
    let entry_size = usize::from(u16_at(&elf, 0x36));
    let count = usize::from(u16_at(&elf, 0x38));
    let mut needed = 0;
    for header in (0..count).map(|i| table + i * entry_size) {
        let kind = u32_at(&elf, header);
        assert_ne!(
            kind, PT_INTERP,
            "handler names a program interpreter: it is not static"
        );
        if kind == PT_DYNAMIC {
            let start = u64_at(&elf, header + 8) as usize;
            let size = u64_at(&elf, header + 32) as usize;
            needed += elf[start..start + size]
                .chunks_exact(16)
                .take_while(|d| u64_at(d, 0) != 0)
                .filter(|d| u64_at(d, 0) == DT_NEEDED)
                .count();
        }
    }
    assert_eq!(needed, 0, "handler needs shared libraries");
}

/// The app settings of local.settings.json, with Table Storage at `localhost` on a closed port.
fn settings_with_storage_at_localhost(storage_port: u16) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repository().join("local.settings.json")).unwrap();
    let file: Value = serde_json::from_str(&text).unwrap();
    let mut settings: Vec<(String, String)> = file["Values"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().map_or_else(|| v.to_string(), str::to_owned),
            )
        })
        .collect();
    let storage = iot_credentials::StorageConnectionString::development(&format!(
        "http://localhost:{storage_port}/devstoreaccount1"
    ))
    .expose();
    settings.retain(|(k, _)| k != "AzureWebJobsStorage" && k != "EXTRA_TRUSTED_CA_FILE");
    settings.push(("AzureWebJobsStorage".into(), storage.to_string()));
    settings
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A GET over a plain socket; the status code of the answer.
fn get_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    socket.read_to_string(&mut answer).ok()?;
    answer.split(' ').nth(1)?.parse().ok()
}

/// The static glibc still contains getaddrinfo (reqwest's default resolver and std refer to it),
/// so this runs the packaged handler under strace while it looks up `localhost` for Table
/// Storage: the look-up must go through the pure-Rust resolver (/etc/hosts) and never open
/// glibc's NSS configuration or modules, which the Functions image may not have in a matching
/// version.
#[test]
fn the_packaged_handler_looks_up_names_without_glibc_nss() {
    package();
    assert!(
        std::process::Command::new("strace")
            .arg("-V")
            .output()
            .is_ok(),
        "strace is not installed: scripts/test-tools.sh installs it (apt-get install strace)"
    );
    let trace_dir = tempfile::tempdir().unwrap();
    let trace = trace_dir.path().join("trace");
    let port = free_port();
    let mut child = std::process::Command::new("strace")
        .arg("-f")
        .arg("-o")
        .arg(&trace)
        .args(["-e", "trace=open,openat"])
        .arg(repository().join(APP).join("handler"))
        .env_clear()
        .envs(settings_with_storage_at_localhost(free_port()))
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The handler announces nothing but its listening socket: poll it, bounded.
    let mut listening = false;
    for _ in 0..600 {
        if get_status(port, "/api/openapi.json") == Some(200) {
            listening = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = listening
        .then(|| get_status(port, "/api/devices"))
        .flatten();
    // strace's first column is the traced process id: stop the handler, then strace ends too.
    let opened = std::fs::read_to_string(&trace).unwrap_or_default();
    if let Some(pid) = opened.split_whitespace().next() {
        let _ = std::process::Command::new("kill").arg(pid).status();
    }
    let _ = child.wait();
    let opened = std::fs::read_to_string(&trace).unwrap_or_default();
    assert!(listening, "the packaged handler did not start listening");
    assert_eq!(
        status,
        Some(503),
        "with Table Storage at a closed port on localhost, the device list is unavailable"
    );
    assert!(
        opened.contains("\"/etc/hosts\""),
        "the handler resolved localhost without reading /etc/hosts: {opened}"
    );
    for nss in ["nsswitch.conf", "libnss_"] {
        assert!(
            !opened.contains(nss),
            "the handler opened glibc's NSS ({nss}) to look up a name: {opened}"
        );
    }
}
