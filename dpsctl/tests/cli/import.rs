//! `dpsctl import`: a file sent in batches, with the file's row numbers in every result, a
//! non-zero exit when rows were not enrolled, plain progress lines off a terminal, and a dry run
//! that sends nothing.

use crate::helpers::spawn_app;
use crate::run::dpsctl;
use serde_json::Value;

/// A CRM export of `rows` rows: `imp-0001`, `imp-0002`, ...
fn export(rows: usize, bad: &[(usize, &str)]) -> String {
    let mut text = String::from("Registration ID,Customer ID,Serial Number,Model,Warranty Until\n");
    for i in 1..=rows {
        match bad.iter().find(|(row, _)| *row == i) {
            Some((_, line)) => text.push_str(line),
            None => text.push_str(&format!("imp-{i:04},acme,SN{i},T-100,2030-01-01")),
        }
        text.push('\n');
    }
    text
}

#[tokio::test]
async fn a_file_imported_in_batches_reports_each_row_by_its_file_number_and_fails_on_bad_rows() {
    let app = spawn_app().await;
    app.enroll("imp-0004", "acme").await;
    // Row 17 breaks DPS's id rules; row 23 repeats row 3, which is in another batch.
    let text = export(25, &[(17, "imp 0017,acme,,,"), (23, "IMP-0003,acme,,,")]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.csv");
    std::fs::write(&file, text).unwrap();
    let run = dpsctl(
        &app,
        &["import", file.to_str().unwrap(), "--batch-rows", "10"],
    )
    .await
    .expect(3);

    let row = |n: usize| -> Vec<String> {
        run.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(n.to_string().as_str()))
            .unwrap_or_else(|| panic!("no row {n} in\n{}", run.stdout))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(row(1)[1..3], ["imp-0001", "created"]);
    assert_eq!(row(4)[1..3], ["imp-0004", "exists"]);
    assert_eq!(
        row(17)[2..4],
        ["0017", "invalid"],
        "row 17 keeps its number from the third batch"
    );
    assert_eq!(row(23)[1..3], ["IMP-0003", "invalid"]);
    assert!(row(23).join(" ").contains("repeats row 3"));
    assert_eq!(row(25)[1..3], ["imp-0025", "created"]);
    assert!(
        run.stderr
            .contains("imported 25 rows: 22 created, 1 exists, 2 invalid, 0 failed"),
        "{}",
        run.stderr
    );
    // Off a terminal: a plain line per batch, no bar.
    assert!(
        run.stderr.contains("import: 25/25 rows done"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("[#"), "{}", run.stderr);
    assert_eq!(
        app.get("/enrollments/imp-0025").await.body["asset"]["attributes"]["Warranty Until"],
        "2030-01-01"
    );

    // The same file again, as JSON results: the created rows now exist, nothing failed.
    let again = dpsctl(
        &app,
        &["import", file.to_str().unwrap(), "--output", "json"],
    )
    .await
    .expect(3);
    let answer: Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(
        answer["summary"],
        serde_json::json!({ "rows": 25, "created": 0, "exists": 23, "invalid": 2, "failed": 0 })
    );
    assert_eq!(answer["results"][16]["row"], 17);
}

#[tokio::test]
async fn a_clean_json_file_imports_with_a_zero_exit_and_a_problems_only_table() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("devices.json");
    std::fs::write(
        &file,
        r#"[{"registrationId":"js-1","customer":{"id":"c"}},{"registrationId":"js-2","customer":{"id":"c"},"enabled":false}]"#,
    )
    .unwrap();
    let run = dpsctl(&app, &["import", file.to_str().unwrap(), "--problems"])
        .await
        .expect(0);
    assert_eq!(run.stdout.trim(), "every row was created");
    assert_eq!(app.get("/enrollments/js-2").await.body["enabled"], false);
}

#[tokio::test]
async fn a_dry_run_of_ten_thousand_rows_finds_the_bad_ones_and_sends_nothing() {
    let app = spawn_app().await;
    let text = export(10_000, &[(9_999, "imp-9999,,,,")]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.csv");
    std::fs::write(&file, &text).unwrap();
    let run = dpsctl(
        &app,
        &["import", file.to_str().unwrap(), "--dry-run", "--problems"],
    )
    .await
    .expect(3);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "a header and the one bad row:\n{}",
        run.stdout
    );
    assert!(
        lines[1].starts_with("9999") && lines[1].contains("customerId is empty"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("10000 rows, 9999 valid, 1 invalid; nothing was sent"),
        "{}",
        run.stderr
    );
    let listed = app.get("/enrollments").await;
    assert_eq!(
        listed.body["items"],
        serde_json::json!([]),
        "the dry run enrolled nothing"
    );

    std::fs::write(&file, export(3, &[])).unwrap();
    let clean = dpsctl(
        &app,
        &["import", file.to_str().unwrap(), "--dry-run", "-o", "csv"],
    )
    .await
    .expect(0);
    assert_eq!(clean.stdout.lines().nth(1), Some("1,imp-0001,valid,"));
}
