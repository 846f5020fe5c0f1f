//! Enrolling, listing (every page, three formats), enabling, disabling and deleting; errors in
//! plain words and a missing key.

use crate::helpers::spawn_app;
use crate::run::{dpsctl, run_with};
use serde_json::Value;

#[tokio::test]
async fn enrolled_devices_are_listed_across_pages_as_a_table_json_and_csv() {
    let app = spawn_app().await;
    let enrolled = dpsctl(
        &app,
        &[
            "enroll",
            "therm-1",
            "--customer",
            "contoso",
            "--customer-name",
            "Contoso Ltd",
            "--serial",
            "SN-1",
            "--model",
            "TX-100",
            "--attribute",
            "orderNumber=PO-4711",
            "--tag",
            "site=berlin",
            "--desired",
            "interval=30",
        ],
    )
    .await
    .expect(0);
    assert!(
        enrolled.stdout.contains("enrolled therm-1"),
        "{}",
        enrolled.stdout
    );
    assert!(
        enrolled.stdout.contains("orderNumber=PO-4711"),
        "{}",
        enrolled.stdout
    );
    let record = app.get("/enrollments/therm-1").await;
    assert_eq!(record.body["asset"]["model"], "TX-100");
    assert_eq!(
        record.body["initialTwin"]["desiredProperties"]["interval"],
        30
    );
    for i in 2..=5 {
        let customer = if i == 5 { "fabrikam" } else { "contoso" };
        dpsctl(
            &app,
            &["enroll", &format!("therm-{i}"), "--customer", customer],
        )
        .await
        .expect(0);
    }

    // Two per page: three pages, all followed.
    let table = dpsctl(&app, &["list", "enrollments", "--page-size", "2"])
        .await
        .expect(0);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(
        lines[0].contains("REGISTRATION ID") && lines[0].contains("CUSTOMER"),
        "{}",
        table.stdout
    );
    for i in 1..=5 {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("therm-{i} "))),
            "therm-{i} missing:\n{}",
            table.stdout
        );
    }
    assert_eq!(lines.len(), 6, "{}", table.stdout);

    let json = dpsctl(
        &app,
        &[
            "list",
            "enrollments",
            "--page-size",
            "2",
            "--output",
            "json",
        ],
    )
    .await
    .expect(0);
    let items: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(items.as_array().unwrap().len(), 5, "{}", json.stdout);
    assert!(items
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["etag"].is_string()));

    let csv = dpsctl(
        &app,
        &[
            "list",
            "devices",
            "--customer",
            "contoso",
            "--page-size",
            "1",
            "-o",
            "csv",
        ],
    )
    .await
    .expect(0);
    let mut reader = csv::Reader::from_reader(csv.stdout.as_bytes());
    assert_eq!(&reader.headers().unwrap()[0], "DEVICE ID");
    let mut ids: Vec<String> = reader.records().map(|r| r.unwrap()[0].to_owned()).collect();
    ids.sort();
    assert_eq!(ids, ["therm-1", "therm-2", "therm-3", "therm-4"]);

    let none = dpsctl(&app, &["list", "devices", "--customer", "nobody"])
        .await
        .expect(0);
    assert_eq!(none.stdout.trim(), "no devices");
}

#[tokio::test]
async fn disable_enable_and_delete_change_the_enrollment_and_delete_wants_a_yes() {
    let app = spawn_app().await;
    app.enroll("lamp-1", "contoso").await;
    let disabled = dpsctl(&app, &["disable", "lamp-1"]).await.expect(0);
    assert!(disabled.stdout.contains("disabled"), "{}", disabled.stdout);
    assert_eq!(app.get("/enrollments/lamp-1").await.body["enabled"], false);
    dpsctl(&app, &["enable", "lamp-1"]).await.expect(0);
    assert_eq!(app.get("/enrollments/lamp-1").await.body["enabled"], true);

    // Standard input is not a terminal here: no --yes, no delete.
    let refused = dpsctl(&app, &["delete", "lamp-1"]).await.expect(2);
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
    assert_eq!(
        app.get("/enrollments/lamp-1").await.status,
        200,
        "the enrollment is still there"
    );

    let deleted = dpsctl(&app, &["delete", "lamp-1", "--yes"]).await.expect(0);
    assert_eq!(deleted.stdout.trim(), "deleted lamp-1");
    assert_eq!(app.get("/enrollments/lamp-1").await.status, 404);
}

#[tokio::test]
async fn api_errors_say_the_status_code_and_message_and_never_the_key() {
    let app = spawn_app().await;
    let missing = dpsctl(&app, &["show", "nobody"]).await.expect(1);
    assert!(
        missing
            .stderr
            .contains("GET /devices/nobody was refused: 404 Not Found (notFound)"),
        "{}",
        missing.stderr
    );
    let invalid = dpsctl(&app, &["enroll", "bad id", "--customer", "contoso"])
        .await
        .expect(1);
    assert!(
        invalid
            .stderr
            .contains("400 Bad Request (invalidRequest): registrationId \"bad id\" is invalid"),
        "{}",
        invalid.stderr
    );
    app.enroll("dup-1", "contoso").await;
    let conflict = dpsctl(&app, &["enroll", "dup-1", "--customer", "contoso"])
        .await
        .expect(1);
    assert!(
        conflict.stderr.contains("409 Conflict (alreadyEnrolled)"),
        "{}",
        conflict.stderr
    );

    let cwd = tempfile::tempdir().unwrap();
    let wrong_key = "not-the-key-0123456789";
    let refused = run_with(
        &[
            ("DPSCTL_API_URL", app.base_url.as_str()),
            ("DPSCTL_KEY", wrong_key),
        ],
        cwd.path(),
        &["list", "devices"],
    )
    .await
    .expect(1);
    assert!(
        refused.stderr.contains("401 Unauthorized"),
        "{}",
        refused.stderr
    );
    assert!(!refused.stderr.contains(wrong_key) && !refused.stdout.contains(wrong_key));
}

#[tokio::test]
async fn a_missing_key_or_an_unreachable_api_is_said_plainly() {
    let cwd = tempfile::tempdir().unwrap();
    let no_key = run_with(
        &[("DPSCTL_API_URL", "http://127.0.0.1:9/api")],
        cwd.path(),
        &["list", "devices"],
    )
    .await
    .expect(2);
    assert!(
        no_key.stderr.contains("no function key"),
        "{}",
        no_key.stderr
    );
    let nothing = run_with(&[], cwd.path(), &["list", "devices"])
        .await
        .expect(2);
    assert!(
        nothing.stderr.contains(".local/endpoints.json"),
        "{}",
        nothing.stderr
    );

    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/api");
    let unreachable = run_with(
        &[("DPSCTL_API_URL", &url), ("DPSCTL_KEY", "k")],
        cwd.path(),
        &["list", "devices"],
    )
    .await
    .expect(1);
    assert!(
        unreachable
            .stderr
            .contains(&format!("cannot reach the admin API at {url}")),
        "{}",
        unreachable.stderr
    );
}

#[tokio::test]
async fn the_local_endpoints_file_is_found_from_a_subdirectory_of_the_repository() {
    let app = spawn_app().await;
    app.enroll("found-1", "contoso").await;
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join(".local")).unwrap();
    std::fs::create_dir_all(root.path().join("docs/deep")).unwrap();
    std::fs::write(
        root.path().join(".local/endpoints.json"),
        serde_json::json!({ "api": { "baseUrl": app.base_url, "functionKey": app.function_key } })
            .to_string(),
    )
    .unwrap();
    let listed = run_with(
        &[],
        &root.path().join("docs/deep"),
        &["list", "enrollments"],
    )
    .await
    .expect(0);
    assert!(listed.stdout.contains("found-1"), "{}", listed.stdout);
}

#[tokio::test]
async fn completions_are_written_for_bash_zsh_and_fish() {
    let cwd = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let script = run_with(&[], cwd.path(), &["completions", shell])
            .await
            .expect(0);
        assert!(script.stdout.contains("dpsctl"), "{shell}");
        assert!(
            script.stdout.contains("import") && script.stdout.contains("dry-run"),
            "{shell}: {}",
            script.stdout
        );
    }
}
