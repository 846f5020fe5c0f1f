//! Each log line of a call says which call it belongs to: the handler writes the lines of a
//! request or an invocation inside a span holding the invocation id the Functions host gave the
//! call (and, for events, a span per device), so an operator can put the host's line for a call
//! beside the handler's lines for it.

use crate::helpers::{eventually, spawn_app_with};
use crate::logs::LogCapture;

/// The invocation id in a log line's span (`invocation.id=...`), if it has one.
fn invocation_id(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once("invocation.id=")?;
    let id = rest.split(['}', ' ']).next()?;
    (!id.is_empty()).then_some(id)
}

/// The first line holding every one of `parts`.
fn line_with<'a>(text: &'a str, parts: &[&str]) -> Option<&'a str> {
    text.lines()
        .find(|line| parts.iter().all(|part| line.contains(part)))
}

#[tokio::test]
async fn the_handlers_log_lines_carry_the_invocation_id_the_host_gave_their_call() {
    let logs = LogCapture::default();
    let _capture = logs.install();
    let app = spawn_app_with(&[("RUST_LOG", "info,handler=debug")]).await;

    // A request: the handler's line for it names the host's invocation, the method and path.
    app.enroll("traced-1", "contoso").await;
    let text = logs.text();
    let enrolled = line_with(&text, &["enrolled a device", "registration.id=traced-1"])
        .expect("the handler logged the enrollment");
    assert!(
        enrolled.contains("request{method=POST path=/api/enrollments"),
        "{enrolled}"
    );
    let request = invocation_id(enrolled).expect("the line names its invocation");
    let host = line_with(
        &text,
        &["HTTP function invoked", &format!("invocation.id={request}")],
    )
    .expect("the host logged the same invocation");
    assert!(host.contains("status=201"), "{host}");

    // A path naming an enrollment puts it in the span, for every line of that request.
    let code = app.get("/enrollments/traced-1/provisioning-code").await;
    assert_eq!(code.status, 200, "{}", code.text);
    let text = logs.text();
    let issued = line_with(&text, &["issued a provisioning code"]).unwrap();
    assert!(
        issued.contains("registration.id=traced-1}"),
        "the span names the enrollment: {issued}"
    );
    assert_ne!(invocation_id(issued), Some(request), "a new call, a new id");

    // An invocation: the device's events are applied in a span naming the invocation and the
    // device, and the host's line for that invocation has the same id.
    app.register("traced-1").await;
    let applied = eventually("the registration event to be applied", || async {
        line_with(
            &logs.text(),
            &["applied a device's events", "device{device.id=traced-1}"],
        )
        .map(str::to_owned)
    })
    .await;
    assert!(
        applied.contains("invocation{function=OnHubEvents"),
        "{applied}"
    );
    let invocation = invocation_id(&applied).expect("the line names its invocation");
    eventually("the host's line for that invocation", || async {
        line_with(
            &logs.text(),
            &[
                "invocation succeeded",
                &format!("invocation.id={invocation}"),
            ],
        )
        .map(|_| ())
    })
    .await;
}
