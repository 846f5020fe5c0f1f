//! A device's side: its provisioning code with a QR code, its record and timeline, desired
//! properties and a direct method reaching it through the emulator's hub over TLS MQTT.

use crate::helpers::{eventually, spawn_app};
use crate::run::dpsctl;
use iot_credentials::ProvisioningCode;
use serde_json::{json, Value};

#[tokio::test]
async fn code_prints_the_provisioning_code_draws_its_qr_code_and_writes_the_svg() {
    let app = spawn_app().await;
    app.enroll("qr-1", "contoso").await;
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("qr-1.svg");
    let run = dpsctl(&app, &["code", "qr-1", "--svg", svg.to_str().unwrap()])
        .await
        .expect(0);
    let mut lines = run.stdout.lines();
    let code = ProvisioningCode::parse(lines.next().unwrap()).expect("the first line is the code");
    assert_eq!(code.expose(), app.code("qr-1").await.expose());
    let qr: Vec<&str> = lines
        .take_while(|l| !l.starts_with("QR code written"))
        .collect();
    assert!(qr.len() > 10, "{}", run.stdout);
    assert!(
        qr.iter().all(|l| l
            .chars()
            .all(|c| matches!(c, ' ' | '\u{2580}' | '\u{2584}' | '\u{2588}'))),
        "{}",
        run.stdout
    );
    assert!(
        qr.iter()
            .all(|l| l.chars().count() == qr[0].chars().count()),
        "every QR line is as wide"
    );
    let written = std::fs::read_to_string(&svg).unwrap();
    assert!(written.contains("<svg"), "{written}");
    assert_eq!(
        written,
        app.get("/enrollments/qr-1/provisioning-code").await.body["qrSvg"]
    );
}

#[tokio::test]
async fn show_desired_and_command_follow_and_drive_a_connected_device() {
    let app = spawn_app().await;
    dpsctl(
        &app,
        &[
            "enroll",
            "live-1",
            "--customer",
            "contoso",
            "--serial",
            "SN-9",
        ],
    )
    .await
    .expect(0);
    let (hub, device_id) = app.register("live-1").await;
    let mut device = app.connect("live-1", &hub, &device_id).await;
    eventually("the connection is recorded", || async {
        let record = app.get("/devices/live-1").await;
        (record.body["connection"]["state"] == "connected").then_some(())
    })
    .await;

    let shown = dpsctl(&app, &["show", "live-1", "--refresh"])
        .await
        .expect(0);
    let text = &shown.stdout;
    assert!(
        text.lines()
            .any(|l| l.starts_with("Hub:") && l.contains(&hub)),
        "{text}"
    );
    assert!(
        text.contains("Connection:") && text.contains("connected since"),
        "{text}"
    );
    let timeline: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("History"))
        .collect();
    let position = |kind: &str| {
        timeline
            .iter()
            .position(|l| l.split_whitespace().nth(1) == Some(kind))
            .unwrap_or_else(|| panic!("no {kind} in the timeline:\n{text}"))
    };
    assert!(
        position("enrolled") < position("connected"),
        "oldest first:\n{text}"
    );
    let json_view: Value = serde_json::from_str(
        &dpsctl(&app, &["show", "live-1", "-o", "json"])
            .await
            .expect(0)
            .stdout,
    )
    .unwrap();
    assert_eq!(json_view["device"]["hub"], hub.as_str());
    assert!(json_view["history"].as_array().unwrap().len() >= 2);

    let desired = dpsctl(
        &app,
        &[
            "desired",
            "live-1",
            "interval=5",
            "mode=eco",
            "limits={\"high\":30}",
        ],
    )
    .await
    .expect(0);
    assert!(
        desired.stdout.contains("\"mode\": \"eco\""),
        "{}",
        desired.stdout
    );
    let twin = device.get_twin().await.unwrap();
    assert_eq!(
        twin["desired"]["interval"], 5,
        "a number, not the text \"5\""
    );
    assert_eq!(twin["desired"]["mode"], "eco");
    assert_eq!(twin["desired"]["limits"]["high"], 30);

    device.subscribe_methods().await.unwrap();
    let answering = tokio::spawn(async move {
        let (name, rid, payload) = device.next_method().await.unwrap();
        let request: Value = serde_json::from_slice(&payload).unwrap();
        device
            .answer_method(
                &rid,
                200,
                &json!({ "method": name, "delay": request["delay"] }),
            )
            .await
            .unwrap();
        device
    });
    let answered = dpsctl(
        &app,
        &[
            "command",
            "live-1",
            "reboot",
            "--payload",
            "{\"delay\":3}",
            "--timeout",
            "10",
            "-o",
            "json",
        ],
    )
    .await
    .expect(0);
    let answer: Value = serde_json::from_str(&answered.stdout).unwrap();
    assert_eq!(
        answer,
        json!({ "status": 200, "payload": { "method": "reboot", "delay": 3 } })
    );
    let device = answering.await.unwrap();
    device.close().await;

    let bad = dpsctl(
        &app,
        &["command", "live-1", "reboot", "--payload", "{not json"],
    )
    .await
    .expect(2);
    assert!(
        bad.stderr.contains("--payload is not JSON"),
        "{}",
        bad.stderr
    );
}

#[tokio::test]
async fn rotate_key_says_how_far_the_rotation_got_and_refuses_a_second_one() {
    let app = spawn_app().await;
    app.enroll("rotate-1", "contoso").await;
    // Registered but not connected: the device gets the key when it connects. The registry
    // learns of the registration from the hub's events; a rotation before that is refused.
    app.register("rotate-1").await;
    eventually("the registration is recorded", || async {
        let record = app.get("/devices/rotate-1").await;
        record.body["hub"].is_string().then_some(())
    })
    .await;
    let old_key = app
        .code("rotate-1")
        .await
        .device_key
        .expose_base64()
        .to_owned();
    let run = dpsctl(&app, &["rotate-key", "rotate-1"]).await.expect(0);
    assert!(
        run.stdout
            .starts_with("rotating the key of rotate-1: staged (the device is offline"),
        "{}",
        run.stdout
    );
    let record = app.get("/enrollments/rotate-1").await.body;
    assert_eq!(record["key"]["pending"]["step"], "staged", "{record}");
    let again = dpsctl(&app, &["rotate-key", "rotate-1", "--output", "json"])
        .await
        .expect(1);
    assert!(
        again.stderr.contains("409") && again.stderr.contains("rotationPending"),
        "{}",
        again.stderr
    );
    for text in [&run.stdout, &run.stderr, &again.stdout, &again.stderr] {
        assert!(!text.contains(&old_key), "no key in dpsctl's output");
    }
}
