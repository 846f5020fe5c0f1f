//! `fleet demo`: the flow the project exists for, on this machine, told step by step. A CRM
//! enrolls a device through the middleware's admin API, the customer's device provisions itself
//! from its provisioning code, connects and reports, and the backend reads and drives it through
//! the same API.

use super::Emulator;
use anyhow::{bail, Context};
use emulator::fleet::device::{finished, register_mqtt, DeviceCredentials};
use emulator::fleet::hub_device::DeviceConnection;
use iot_credentials::{ProvisioningCode, SharedAccessKey};
use serde_json::{json, Value};
use std::time::Instant;

/// The middleware's admin API, as a CRM script would call it.
struct AdminApi {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl AdminApi {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("x-functions-key", &self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("calling {method} {path}"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{method} {path} answered {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn enroll(&self, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, "/enrollments", Some(body))
            .await
    }

    async fn code(&self, id: &str) -> anyhow::Result<ProvisioningCode> {
        let answer = self
            .call(
                reqwest::Method::GET,
                &format!("/enrollments/{id}/provisioning-code"),
                None,
            )
            .await?;
        let text = answer["code"].as_str().context("no code in the answer")?;
        Ok(ProvisioningCode::parse(text)?)
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
pub async fn run(emulator: &Emulator) -> anyhow::Result<()> {
    let functions = emulator.endpoints.functions.clone().context(
        "the emulator runs no function app; start it with --functions-app (make demo does)",
    )?;
    let api = AdminApi {
        http: reqwest::Client::new(),
        base: functions.base_url.clone(),
        key: functions.function_key.clone(),
    };
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

    println!();
    println!(
        "Done: enrolled through the middleware, provisioned from one code, assigned, connected,"
    );
    println!("reporting and driven from the backend, all on this machine.");
    Ok(())
}
