//! The setup portal's routes against the emulator's DPS, without a browser: forms, CSRF, plain
//! errors that change nothing, progress, and the setup password guarding a provisioned device.
// In a test crate a panic, with the failing call's message, is the failure report.
#![allow(clippy::unwrap_used)]

use device::assignment::StateDir;
use device::portal::{routes, Portal, PortalConfig};
use device::provision::Provisioner;
use emulator::config::EmulatorConfig;
use emulator::fleet::service::DpsService;
use iot_credentials::{ProvisioningCode, ServiceConnectionString};
use serde_json::json;
use std::time::Duration;
use warp::http::StatusCode;

struct Setup {
    emulator: emulator::RunningEmulator,
    state: StateDir,
    portal: warp::filters::BoxedFilter<(warp::reply::Response,)>,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let emulator = emulator::start(EmulatorConfig::for_tests(dir.path().join("cloud")))
        .await
        .unwrap();
    let state = StateDir::new(dir.path().join("device"));
    let mut provisioner = Provisioner::new(Some(emulator.ca_certificate_pem())).unwrap();
    provisioner.deadline = Duration::from_secs(20);
    let portal = Portal::new(PortalConfig {
        state: state.clone(),
        provisioner,
        default_endpoint: emulator.endpoints().dps.device_endpoint.clone(),
        setup_password: Some("label-password-42".into()),
    });
    Setup {
        emulator,
        state,
        portal: routes(portal),
        _dir: dir,
    }
}

impl Setup {
    async fn code(&self, id: &str) -> String {
        let connection = ServiceConnectionString::parse(
            &self.emulator.endpoints().dps.service_connection_string,
        )
        .unwrap();
        let dps = DpsService::new(connection, self.emulator.ca_certificate_pem()).unwrap();
        dps.put_enrollment(
            &json!({ "registrationId": id, "attestation": { "type": "symmetricKey" } }),
        )
        .await
        .unwrap();
        let code = ProvisioningCode {
            id_scope: self.emulator.endpoints().dps.id_scope.clone(),
            registration_id: id.into(),
            device_key: dps.primary_key(id).await.unwrap(),
            endpoint: self.emulator.endpoints().dps.device_endpoint.clone(),
        };
        code.expose()
    }

    /// The CSRF cookie a first visit sets.
    async fn token(&self) -> String {
        let response = warp::test::request().path("/").reply(&self.portal).await;
        let cookie = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_owned();
        cookie
            .split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned()
    }

    async fn post(
        &self,
        path: &str,
        token: &str,
        form: &[(&str, &str)],
    ) -> warp::http::Response<bytes::Bytes> {
        let mut body: Vec<String> = form
            .iter()
            .map(|(k, v)| format!("{k}={}", percent(v)))
            .collect();
        body.push(format!("csrf={token}"));
        warp::test::request()
            .method("POST")
            .path(path)
            .header("cookie", format!("portal_csrf={token}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.join("&"))
            .reply(&self.portal)
            .await
    }

    async fn follow(&self, response: &warp::http::Response<bytes::Bytes>) -> String {
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        for _ in 0..200 {
            let page = warp::test::request()
                .path(&location)
                .reply(&self.portal)
                .await;
            let text = String::from_utf8_lossy(page.body()).into_owned();
            if !text.contains(r#"id="progress""#) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("provisioning did not end");
    }
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn a_valid_code_provisions_the_device_and_the_page_names_the_hub() {
    let s = setup().await;
    let token = s.token().await;
    let code = s.code("portal-1").await;
    let started = s
        .post("/provision", &token, &[("code", &format!("  {code}\n"))])
        .await;
    assert_eq!(started.status(), StatusCode::SEE_OTHER);
    let result = s.follow(&started).await;
    let assignment = s.state.load().unwrap().unwrap();
    assert!(result.contains(&assignment.hub), "{result}");
    assert!(result.contains(r#"id="result""#));
    let home = String::from_utf8_lossy(
        warp::test::request()
            .path("/")
            .reply(&s.portal)
            .await
            .body(),
    )
    .into_owned();
    assert!(home.contains(&assignment.hub) && home.contains("portal-1"));
    // The key in every form it travels in: standard base64 (the stored key) and URL-safe without
    // padding (inside the provisioning code, the only way the portal ever receives it), nor the
    // code itself.
    let key = assignment.credentials.key.expose_base64();
    let url_safe = key
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_");
    for (form, secret) in [
        ("base64", key),
        ("URL-safe base64", url_safe.as_str()),
        ("the provisioning code", code.as_str()),
    ] {
        assert!(!home.contains(secret), "the key is never shown ({form})");
        assert!(
            !result.contains(secret),
            "the result page never shows the key ({form})"
        );
    }
    let again = s.post("/provision", &token, &[("code", &code)]).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn one_setup_runs_at_a_time() {
    let s = setup().await;
    let token = s.token().await;
    let code = s.code("portal-once").await;
    // DPS is busy for a while, so the first run is still going when the code comes again.
    s.emulator.dps().throttle_for(Duration::from_secs(2));
    let first = s.post("/provision", &token, &[("code", &code)]).await;
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    let second = s.post("/provision", &token, &[("code", &code)]).await;
    assert_eq!(second.status(), StatusCode::CONFLICT);
    let page = String::from_utf8_lossy(second.body()).into_owned();
    assert!(page.contains("already registering"), "{page}");
    let result = s.follow(&first).await;
    assert!(result.contains(r#"id="result""#), "{result}");
}

#[tokio::test]
async fn bad_input_is_explained_and_changes_nothing() {
    let s = setup().await;
    let token = s.token().await;
    let code = s.code("portal-2").await;
    let mistyped = format!("{}x{}", &code[..20], &code[21..]);
    for (form, expected) in [
        (vec![("code", "hello")], "not a provisioning code"),
        (vec![("code", mistyped.as_str())], "typo"),
        (vec![("idScope", "0ne00000001")], "fill in all three"),
        (
            vec![
                ("idScope", "nope"),
                ("registrationId", "a"),
                ("deviceKey", "a2V5"),
            ],
            "ID scope",
        ),
        (
            vec![
                ("idScope", "0ne00000001"),
                ("registrationId", "a b"),
                ("deviceKey", "a2V5"),
            ],
            "registration ID",
        ),
        (
            vec![
                ("idScope", "0ne00000001"),
                ("registrationId", "ab"),
                ("deviceKey", "***"),
            ],
            "device key",
        ),
    ] {
        let response = s.post("/provision", &token, &form).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let text = String::from_utf8_lossy(response.body()).into_owned();
        assert!(text.contains(expected), "{form:?}: {text}");
    }
    // No token, or a token that does not match the cookie: refused.
    let forged = s
        .post(
            "/provision",
            "0123456789abcdef0123456789abcdef",
            &[("code", &code)],
        )
        .await;
    assert_eq!(
        forged.status(),
        StatusCode::SEE_OTHER,
        "a matching pair from anywhere is fine…"
    );
    let response = warp::test::request()
        .method("POST")
        .path("/provision")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("code={}&csrf={token}", percent(&code)))
        .reply(&s.portal)
        .await;
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "…but a form without the cookie is not"
    );
    s.follow(&forged).await;
}

#[tokio::test]
async fn a_wrong_key_shows_what_to_do() {
    let s = setup().await;
    let token = s.token().await;
    s.code("portal-3").await;
    let key = iot_credentials::SharedAccessKey::generate(32);
    let started = s
        .post(
            "/provision",
            &token,
            &[
                ("idScope", &s.emulator.endpoints().dps.id_scope),
                ("registrationId", "portal-3"),
                ("deviceKey", key.expose_base64()),
            ],
        )
        .await;
    let result = s.follow(&started).await;
    assert!(result.contains("device key is wrong"), "{result}");
    assert!(s.state.load().unwrap().is_none(), "nothing stored");
}

#[tokio::test]
async fn changing_a_provisioned_device_needs_the_setup_password_and_a_confirmation() {
    let s = setup().await;
    let token = s.token().await;
    let code = s.code("portal-4").await;
    let started = s.post("/provision", &token, &[("code", &code)]).await;
    s.follow(&started).await;
    for form in [
        vec![("confirm", "yes")],
        vec![("password", "guess"), ("confirm", "yes")],
        vec![("password", "label-password-42")],
    ] {
        let response = s.post("/forget", &token, &form).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{form:?}");
        assert!(s.state.load().unwrap().is_some());
    }
    let reprovision = s
        .post(
            "/reprovision",
            &token,
            &[("password", "label-password-42"), ("confirm", "yes")],
        )
        .await;
    assert_eq!(reprovision.status(), StatusCode::SEE_OTHER);
    assert!(s.follow(&reprovision).await.contains(r#"id="result""#));
    let forget = s
        .post(
            "/forget",
            &token,
            &[("password", "label-password-42"), ("confirm", "yes")],
        )
        .await;
    assert_eq!(forget.status(), StatusCode::SEE_OTHER);
    assert!(s.state.load().unwrap().is_none());
}
