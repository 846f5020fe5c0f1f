//! `fleet demo`: the flow the project exists for, on this machine, told step by step. A CRM
//! enrolls a device through the middleware's admin API, the customer's device provisions itself
//! from its provisioning code, connects and reports, and the backend reads and drives it through
//! the same API.

use super::admin::AdminApi;
use super::Emulator;
use anyhow::{bail, Context};
use base64::Engine;
use emulator::fleet::device::{finished, register_mqtt, DeviceCredentials};
use emulator::fleet::hub_device::DeviceConnection;
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

/// Runs the demo against the emulator and the function app its Functions host stand-in runs.
pub async fn run(emulator: &Emulator, webhook: Option<(u16, String)>) -> anyhow::Result<()> {
    let receiver = match webhook {
        Some((port, secret)) => Some(start_receiver(port, secret).await?),
        None => None,
    };
    let functions = emulator.endpoints.functions.clone().context(
        "the emulator runs no function app; start it with --functions-app (make demo does)",
    )?;
    let api = AdminApi::new(&functions);
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

    let id = format!("thermostat-{}", std::process::id());
    println!("1. The CRM enrolls a delivered device through the admin API: POST /api/enrollments");
    println!("   (registration id {id}, serial SN-0001, model TX-100, sold to Contoso).");
    let created = api
        .enroll(json!({
            "registrationId": id,
            "customer": { "id": "contoso", "name": "Contoso Ltd" },
            "asset": { "serialNumber": "SN-0001", "model": "TX-100", "attributes": { "orderNumber": "PO-4711" } },
            "initialTwin": { "tags": { "site": "berlin" }, "desiredProperties": { "telemetryIntervalSeconds": 30 } },
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

    println!("3. The customer receives one provisioning code (GET .../provisioning-code, also as a QR code):");
    let code = api.code(&id).await?;
    println!("   {}", elided(&code));
    println!("   It carries the ID scope, registration id, device key and DPS endpoint, with check digits.");

    println!(
        "4. Typed into the device's portal, the code lets the device register with DPS over HTTPS,"
    );
    println!("   signing a SAS token with its key.");
    let device = credentials(&code);
    let mut step = emulator
        .registrar
        .start(&device, Some(json!({ "model": "TX-100" })))
        .await?;
    println!(
        "   -> DPS answered {} and asked the device to poll again in {} s.",
        json!(step.status.status),
        step.retry_after.as_secs()
    );
    let state = loop {
        if let Some(state) = finished(&step)? {
            break state;
        }
        tokio::time::sleep(step.retry_after).await;
        step = emulator
            .registrar
            .poll(&device, &step.status.operation_id)
            .await?;
        println!(
            "   -> Polling the operation: {}.",
            json!(step.status.status)
        );
    };
    let hub_host = state
        .assigned_hub
        .clone()
        .context("assigned without a hub")?;
    let device_id = state.device_id.clone().unwrap_or_default();
    println!(
        "   -> Assigned to IoT hub {} as device {device_id:?}.",
        emulator.hub_name(&hub_host)
    );

    println!("5. The backend asks the middleware about the device (GET /api/devices/{device_id}):");
    let known = api
        .call(
            reqwest::Method::GET,
            &format!("/devices/{device_id}?refresh=true"),
            None,
        )
        .await?;
    println!(
        "   status {}, hub {}, owner {}",
        known["status"], known["hub"], known["customer"]["name"]
    );

    let second = format!("sensor-{}", std::process::id());
    api.enroll(json!({ "registrationId": second, "customer": { "id": "fabrikam" }, "asset": { "model": "SX-2" } })).await?;
    let second_code = api.code(&second).await?;
    println!("6. A second device, {second:?}, enrolled the same way, registers over MQTT instead.");
    let started = Instant::now();
    let second_state = register_mqtt(
        &dps.mqtt_host,
        dps.mqtt_port,
        emulator.tls.clone(),
        &credentials(&second_code),
        None,
    )
    .await?;
    println!(
        "   -> Assigned to IoT hub {} in {} ms.",
        emulator.hub_name(second_state.assigned_hub.as_deref().unwrap_or("?")),
        started.elapsed().as_millis()
    );

    println!("7. Someone tries to register {id:?} with a key of their own.");
    let forged = DeviceCredentials {
        key: SharedAccessKey::generate(64),
        ..device.clone()
    };
    match emulator.registrar.register(&forged, None).await {
        Err(error) => println!("   -> Refused: {error}. No hub was assigned."),
        Ok(_) => bail!("a wrong key was accepted"),
    }

    println!(
        "8. The thermostat connects to {} over MQTT with TLS and sends three readings.",
        emulator.hub_name(&hub_host)
    );
    let endpoint = emulator.hub_endpoint(&hub_host)?;
    let mut connection =
        DeviceConnection::connect_device(&endpoint, &device_id, &device.key).await?;
    for (n, temperature) in [21.5, 21.7, 22.0].iter().enumerate() {
        let reading = json!({ "temperature": temperature, "unit": "C", "sequence": n + 1 });
        connection
            .send_telemetry(
                reading.to_string().into(),
                &[
                    ("$.ct", "application/json"),
                    ("$.ce", "utf-8"),
                    ("kind", "reading"),
                ],
            )
            .await?;
        println!("   -> sent {reading}, acknowledged by the hub");
    }
    println!("9. It reports its provisioning status through reported properties.");
    let version = connection
        .report(&json!({ "provisioning": { "status": "provisioned", "hub": hub_host, "at": emulator::stamps::now() }, "firmware": "1.0.0" }))
        .await?;
    println!("   -> the hub stored them as reported version {version}");

    println!("10. The backend changes a setting through the admin API (PATCH /api/devices/{device_id}/desired);");
    api.call(
        reqwest::Method::PATCH,
        &format!("/devices/{device_id}/desired"),
        Some(json!({ "telemetryIntervalSeconds": 10 })),
    )
    .await?;
    let twin = connection.get_twin().await?;
    println!(
        "    the device reads its twin: telemetryIntervalSeconds = {}",
        twin["desired"]["telemetryIntervalSeconds"]
    );

    println!(
        "11. ...and calls a command on it (POST /api/devices/{device_id}/commands/getFirmware)."
    );
    connection.subscribe_methods().await?;
    let device_side = tokio::spawn(async move {
        let (name, rid, _) = connection.next_method().await?;
        connection
            .answer_method(&rid, 200, &json!({ "firmware": "1.0.0", "method": name }))
            .await?;
        connection.close().await;
        Ok::<_, emulator::fleet::ClientError>(())
    });
    let answer = api
        .call(
            reqwest::Method::POST,
            &format!("/devices/{device_id}/commands/getFirmware"),
            Some(json!({ "timeoutSeconds": 10 })),
        )
        .await?;
    device_side.await??;
    println!(
        "    -> the device answered {} with {}",
        answer["status"], answer["payload"]
    );

    println!("12. Meanwhile IoT Hub's events (lifecycle, connection, twin changes, telemetry) reached the");
    println!("    middleware's event functions, which keep the record current without asking DPS:");
    let record = wait_for(&api, &format!("/devices/{device_id}"), |d| {
        d["reported"]["provisioningStatus"] == "provisioned"
            && d["connection"]["state"] == "disconnected"
    })
    .await?;
    println!(
        "    status {}, hub {}, connection {} since {}, last seen {},",
        record["status"],
        record["hub"],
        record["connection"]["state"],
        record["connection"]["since"],
        record["lastSeen"]
    );
    println!(
        "    reported {} (as of {})",
        record["reported"]["properties"], record["reported"]["updatedAt"]
    );

    println!("13. The device's history (GET /api/devices/{device_id}/history), oldest first:");
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

    if let Some((received, stop)) = receiver {
        println!("14. Each change of the device's provisioning status was POSTed to a webhook (a Logic App in");
        println!("    Azure; here a receiver in this program), signed with HMAC-SHA256:");
        let deadline = Instant::now() + Duration::from_secs(20);
        let notes = loop {
            let notes: Vec<(Value, bool)> = received
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(d, _)| d["deviceId"] == device_id.as_str())
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
