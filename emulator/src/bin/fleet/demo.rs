//! `fleet demo`: the flow the project exists for, on this machine, told step by step. A CRM
//! enrolls a device through the middleware's admin API, the customer's device provisions itself
//! from its provisioning code, connects and reports, and the backend reads and drives it through
//! the same API.

use anyhow::{bail, Context};
use base64::Engine;
use emulator::endpoints::FunctionsEndpoints;
use emulator::fleet::admin::AdminApi;
use emulator::fleet::clients::Emulator;
use emulator::fleet::device::DeviceCredentials;
use iot_credentials::{ProvisioningCode, SharedAccessKey};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the webhook receiver got: the document and whether its signature was right.
type Received = Arc<Mutex<Vec<(Value, bool)>>>;

/// A stand-in for the Logic App: accepts the middleware's notifications on 127.0.0.1:`port` and
/// checks each signature (HMAC-SHA256 of the body with the shared secret, hex).
async fn start_receiver(
    port: u16,
    secret: String,
) -> anyhow::Result<(Received, tokio::sync::watch::Sender<bool>)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("the webhook receiver cannot listen on {port}"))?;
    let received: Received = Arc::default();
    let sink = received.clone();
    let key = SharedAccessKey::from_bytes(secret.into_bytes())?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(emulator::net::https::serve_plain(
        listener,
        move |request: hyper::Request<hyper::body::Incoming>| {
            let sink = sink.clone();
            let key = key.clone();
            async move {
                let signature =
                    emulator::net::https::header(request.headers(), "x-registry-signature")
                        .unwrap_or_default()
                        .to_owned();
                let body = emulator::net::https::read_body(request.into_body(), 1 << 20)
                    .await
                    .unwrap_or_default();
                let expected = base64::engine::general_purpose::STANDARD
                    .decode(key.sign(&body))
                    .map(|mac| {
                        format!(
                            "sha256={}",
                            mac.iter().map(|b| format!("{b:02x}")).collect::<String>()
                        )
                    })
                    .unwrap_or_default();
                if let Ok(document) = serde_json::from_slice::<Value>(&body) {
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((document, signature == expected));
                }
                emulator::net::https::empty(http::StatusCode::NO_CONTENT)
            }
        },
        stopped,
    ));
    Ok((received, stop))
}

/// Polls the admin API (bounded) until `done` holds for the device.
async fn wait_for(
    api: &AdminApi,
    path: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = api.call(reqwest::Method::GET, path, None).await?;
        if done(&value) {
            return Ok(value);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the middleware did not record the events within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Does what a person does in the portal: open it (for the form's CSRF cookie), paste the code,
/// submit, and wait on the progress page for the result. Answers (hub, device id).
async fn submit_code(portal: &str, code: &str) -> anyhow::Result<(String, String)> {
    let http = reqwest::Client::new();
    let first = http
        .get(portal)
        .send()
        .await
        .with_context(|| format!("opening the portal at {portal}"))?;
    let cookie = first
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
        .context("the portal set no CSRF cookie")?;
    let token = cookie
        .split_once('=')
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default();
    let submitted = http
        .post(format!("{}/provision", portal.trim_end_matches('/')))
        .header("cookie", &cookie)
        .form(&[("code", code), ("csrf", token.as_str())])
        .send()
        .await?;
    let progress = submitted.url().clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = http.get(progress.clone()).send().await?.text().await?;
        if !page.contains(r#"id="progress""#) {
            let between = |start: &str| {
                page.split(start)
                    .nth(1)
                    .and_then(|rest| rest.split('<').next())
                    .map(str::to_owned)
            };
            match (between(r#"id="hub">"#), between(r#"id="deviceId">"#)) {
                (Some(hub), Some(device)) => return Ok((hub, device)),
                _ => bail!(
                    "the portal did not provision the device: {}",
                    between(r#"id="error">"#).unwrap_or(page)
                ),
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the portal did not finish within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The code with its key replaced, for showing on screen.
fn elided(code: &ProvisioningCode) -> String {
    let text = code.expose();
    let mut parts: Vec<&str> = text.split('~').collect();
    if parts.len() > 3 {
        parts[3] = "<device key, hidden here>";
    }
    parts.join("~")
}

fn credentials(code: &ProvisioningCode) -> DeviceCredentials {
    DeviceCredentials {
        id_scope: code.id_scope.clone(),
        registration_id: code.registration_id.clone(),
        key: code.device_key.clone(),
    }
}

/// Runs `dpsctl code <id>` as an administrator would, against this function app (its URL and key
/// in dpsctl's environment variables, never on its command line), and answers what it printed.
async fn dpsctl_code(
    dpsctl: &std::path::Path,
    functions: &emulator::endpoints::FunctionsEndpoints,
    id: &str,
) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(dpsctl)
        .args(["code", id])
        .env("DPSCTL_API_URL", &functions.base_url)
        .env("DPSCTL_KEY", &functions.function_key)
        .env_remove("DPSCTL_ENDPOINTS")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", dpsctl.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "dpsctl code failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs the demo against the emulator and the function app its Functions host stand-in runs.
pub async fn run(
    emulator: &Emulator,
    webhook: Option<(u16, String)>,
    portal_url: Option<&str>,
    dpsctl: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let receiver = match webhook {
        Some((port, secret)) => Some(start_receiver(port, secret).await?),
        None => None,
    };
    let functions = emulator.endpoints.functions.clone().context(
        "the emulator runs no function app; start it with --functions-app (make demo does)",
    )?;
    let api = AdminApi::new(&functions);
    introduce(emulator, &functions);
    let id = format!("thermostat-{}", std::process::id());
    enroll_device(&api, &id).await?;
    let code = hand_out_code(&api, &functions, &id, dpsctl).await?;
    let portal = portal_url
        .context("the demo needs the device's portal (--portal-url; make demo starts it)")?;
    let device_id = set_up_device(emulator, portal, &code).await?;
    follow_device(emulator, &api, &device_id).await?;
    ask_for_diagnostics(&api, &device_id).await?;
    change_reporting_interval(&api, &device_id).await?;
    forge_registration(emulator, &id, &code).await?;
    print_history(emulator, &api, &device_id).await?;
    if let Some((received, stop)) = receiver {
        print_notifications(&received, &device_id).await;
        let _ = stop.send(true);
    }
    println!();
    println!(
        "Done: enrolled through the middleware, provisioned from one code, assigned, connected,"
    );
    println!(
        "reporting, driven from the backend and followed through its events, all on this machine."
    );
    Ok(())
}

/// What runs where: DPS, the hubs and the admin API.
fn introduce(emulator: &Emulator, functions: &FunctionsEndpoints) {
    let dps = &emulator.endpoints.dps;
    println!("Local Azure is running:");
    println!(
        "  Device Provisioning Service at {} (ID scope {})",
        dps.device_endpoint, dps.id_scope
    );
    for hub in &emulator.endpoints.hubs {
        println!("  IoT hub {} at {}", hub.name, hub.host_name);
    }
    println!(
        "  the middleware's admin API at {} (Functions host stand-in, function key required)",
        functions.base_url
    );
    println!();
}

/// Steps 1 and 2: the CRM enrolls the device, and the middleware's record of it.
async fn enroll_device(api: &AdminApi, id: &str) -> anyhow::Result<()> {
    println!("1. The CRM enrolls a delivered device through the admin API: POST /api/enrollments");
    println!("   (registration id {id}, serial SN-0001, model TX-100, sold to Contoso).");
    let created = api
        .enroll(json!({
            "registrationId": id,
            "customer": { "id": "contoso", "name": "Contoso Ltd" },
            "asset": { "serialNumber": "SN-0001", "model": "TX-100", "attributes": { "orderNumber": "PO-4711" } },
            "initialTwin": { "tags": { "site": "berlin" }, "desiredProperties": { "telemetryIntervalSeconds": 2 } },
        }))
        .await?;
    println!(
        "   -> status {}: DPS holds an individual enrollment with keys it generated;",
        created["status"]
    );
    println!("      the middleware's registry (Table Storage) holds the record, without keys.");

    println!("2. The middleware's record of the device (GET /api/enrollments/{id}):");
    let record = api
        .call(reqwest::Method::GET, &format!("/enrollments/{id}"), None)
        .await?;
    println!(
        "   customer {}, asset {}, status {}",
        record["customer"], record["asset"], record["status"]
    );
    Ok(())
}

/// Step 3: the provisioning code the customer receives, shown through dpsctl when given.
async fn hand_out_code(
    api: &AdminApi,
    functions: &FunctionsEndpoints,
    id: &str,
    dpsctl: Option<&std::path::Path>,
) -> anyhow::Result<ProvisioningCode> {
    println!(
        "3. The customer receives one provisioning code (GET .../provisioning-code, also as \
        a QR code):"
    );
    let code = api.code(id).await?;
    match dpsctl {
        Some(dpsctl) => {
            println!(
                "   The administrator prints it with dpsctl, the admin command line: $ \
                dpsctl code {id}"
            );
            for line in dpsctl_code(dpsctl, functions, id).await?.lines() {
                println!("   {line}");
            }
        }
        None => println!("   {}", elided(&code)),
    }
    println!(
        "   It carries the ID scope, registration id, device key and DPS endpoint, with \
        check digits;"
    );
    println!("   a phone scans the QR code into the portal's form.");
    Ok(code)
}

/// Step 4: the code entered in the device's portal, which provisions it; answers its device id.
async fn set_up_device(
    emulator: &Emulator,
    portal: &str,
    code: &ProvisioningCode,
) -> anyhow::Result<String> {
    println!("4. On the device, the setup portal runs at {portal} (`device portal`).");
    println!("   The customer opens it, pastes the code and presses \"Connect this device\".");
    let (hub_host, device_id) = submit_code(portal, &code.expose()).await?;
    println!(
        "   -> The portal registered the device with DPS (HTTPS, a SAS token signed with its \
        key) and shows:"
    );
    println!(
        "      \"provisioned to IoT hub {} as device {device_id}\"",
        emulator.hub_name(&hub_host)
    );
    Ok(device_id)
}

/// Step 5: the device connected and reporting, as the backend sees it through the middleware.
async fn follow_device(emulator: &Emulator, api: &AdminApi, device_id: &str) -> anyhow::Result<()> {
    println!(
        "5. The telemetry sender (a second program on the device) reads the stored \
        assignment, connects"
    );
    println!(
        "   to the hub over MQTT with TLS, reports its provisioning status and starts \
        sending readings."
    );
    println!(
        "   The backend sees it through the middleware (GET /api/devices/{device_id}), \
        learned from IoT Hub's events:"
    );
    let record = wait_for(api, &format!("/devices/{device_id}"), |d| {
        d["reported"]["provisioningStatus"] == "provisioned"
            && d["connection"]["state"] == "connected"
    })
    .await?;
    println!(
        "   status {}, hub {}, connection {} since {}, owner {}",
        record["status"],
        record["hub"]
            .as_str()
            .map_or_else(|| "?".to_owned(), |h| emulator.hub_name(h)),
        record["connection"]["state"],
        record["connection"]["since"],
        record["customer"]["name"]
    );
    println!("   reported {}", record["reported"]["properties"]);
    Ok(())
}

/// Step 6: a direct method through the middleware, the device's diagnostics.
async fn ask_for_diagnostics(api: &AdminApi, device_id: &str) -> anyhow::Result<()> {
    println!(
        "6. The backend asks the device for its diagnostics (POST \
        /api/devices/{device_id}/commands/GetDiagnostics):"
    );
    // Ask until the first readings are through (the enrollment set a 2 s interval).
    let deadline = Instant::now() + Duration::from_secs(20);
    let diagnostics = loop {
        let answer = api
            .call(
                reqwest::Method::POST,
                &format!("/devices/{device_id}/commands/GetDiagnostics"),
                Some(json!({ "timeoutSeconds": 10 })),
            )
            .await?;
        if answer["payload"]["acknowledged"]
            .as_u64()
            .unwrap_or_default()
            >= 2
            || Instant::now() > deadline
        {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let payload = &diagnostics["payload"];
    println!(
        "   -> {} readings accepted, {} acknowledged by the hub, {} waiting, {} dropped; interval \
            {} ms",
        payload["accepted"],
        payload["acknowledged"],
        payload["queued"],
        payload["dropped"],
        payload["intervalMs"]
    );
    Ok(())
}

/// Step 7: a desired property through the middleware, acknowledged by the device.
async fn change_reporting_interval(api: &AdminApi, device_id: &str) -> anyhow::Result<()> {
    println!(
        "7. ...and changes how often it reports (PATCH /api/devices/{device_id}/desired, \
        telemetryIntervalSeconds = 1):"
    );
    let desired = api
        .call(
            reqwest::Method::PATCH,
            &format!("/devices/{device_id}/desired"),
            Some(json!({ "telemetryIntervalSeconds": 1 })),
        )
        .await?;
    let version = desired["desired"]["$version"].as_u64().unwrap_or_default();
    let acknowledged = wait_for(api, &format!("/devices/{device_id}"), |d| {
        d["reported"]["properties"]["acknowledgedDesiredVersion"].as_u64() >= Some(version)
    })
    .await?;
    println!(
        "   -> the device applied it and acknowledged desired version {} (seen in the record, \
            from the twin-change event)",
        acknowledged["reported"]["properties"]["acknowledgedDesiredVersion"]
    );
    Ok(())
}

/// Step 8: a registration with a key of someone's own, refused.
async fn forge_registration(
    emulator: &Emulator,
    id: &str,
    code: &ProvisioningCode,
) -> anyhow::Result<()> {
    println!("8. Someone tries to register {id:?} with a key of their own.");
    let forged = DeviceCredentials {
        key: SharedAccessKey::generate(64),
        ..credentials(code)
    };
    match emulator.registrar.register(&forged, None).await {
        Err(error) => println!("   -> Refused: {error}. No hub was assigned."),
        Ok(_) => bail!("a wrong key was accepted"),
    }
    Ok(())
}

/// Step 9: the device's history, oldest first.
async fn print_history(emulator: &Emulator, api: &AdminApi, device_id: &str) -> anyhow::Result<()> {
    println!("9. The device's history (GET /api/devices/{device_id}/history), oldest first:");
    let history = api
        .call(
            reqwest::Method::GET,
            &format!("/devices/{device_id}/history"),
            None,
        )
        .await?;
    for entry in history["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .rev()
    {
        let detail = match entry["kind"].as_str() {
            Some("reported") => format!(" {}", entry["detail"]["properties"]),
            _ => entry["hub"]
                .as_str()
                .map(|h| format!(" on {}", emulator.hub_name(h)))
                .unwrap_or_default(),
        };
        println!(
            "    {} {}{detail}",
            entry["at"].as_str().unwrap_or("?"),
            entry["kind"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// Step 10: the status notifications the webhook receiver got for the device, and their
/// signatures.
async fn print_notifications(received: &Received, device_id: &str) {
    println!(
        "10. Each change of the device's provisioning status was POSTed to a webhook (a \
        Logic App in"
    );
    println!("    Azure; here a receiver in this program), signed with HMAC-SHA256:");
    let deadline = Instant::now() + Duration::from_secs(20);
    let notes = loop {
        let notes: Vec<(Value, bool)> = received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(d, _)| d["deviceId"] == device_id)
            .cloned()
            .collect();
        if notes.len() >= 2 || Instant::now() > deadline {
            break notes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (document, signed) in &notes {
        println!(
            "    {} -> {} (reported {}), signature {}",
            document["previousStatus"].as_str().unwrap_or("?"),
            document["status"].as_str().unwrap_or("?"),
            document["reportedStatus"],
            if *signed { "valid" } else { "INVALID" }
        );
    }
}
