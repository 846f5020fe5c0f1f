//! `fleet codes`: devices enrolled directly in DPS, their provisioning codes printed one a line
//! (for benchmarks and scripts that skip the middleware).

use emulator::fleet::clients::Emulator;
use serde_json::json;

/// Enrolls `count` devices named `{prefix}-{n}-{pid}` and prints each one's code.
pub async fn run(emulator: &Emulator, count: usize, prefix: &str) -> anyhow::Result<()> {
    for n in 0..count {
        let id = format!("{prefix}-{n}-{}", std::process::id());
        emulator
            .service
            .put_enrollment(
                &json!({ "registrationId": id, "attestation": { "type": "symmetricKey" } }),
            )
            .await?;
        let code = iot_credentials::ProvisioningCode {
            id_scope: emulator.endpoints.dps.id_scope.clone(),
            registration_id: id.clone(),
            device_key: emulator.service.primary_key(&id).await?,
            endpoint: emulator.endpoints.dps.device_endpoint.clone(),
        };
        println!("{}", code.expose());
    }
    Ok(())
}
