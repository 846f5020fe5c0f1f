//! What both roles share on their command line: how the device reaches DPS and what it tells DPS
//! about itself (the portal registers with it; the sender re-provisions with it).

use anyhow::Context;
use clap::Args;
use device::provision::{DeviceInfo, DpsTransport, Provisioner};
use std::path::PathBuf;

/// The flags of both roles that set up their DPS client.
#[derive(Args)]
pub struct DpsArgs {
    /// A PEM file of an extra CA to trust (the emulator's).
    #[arg(long, env = "EXTRA_TRUSTED_CA_FILE")]
    extra_ca_file: Option<PathBuf>,
    /// How the device reaches DPS (the portal's setup, the sender's `Reprovision`).
    #[arg(long, value_enum, default_value = "https")]
    dps_transport: DpsTransport,
    /// DPS's MQTT port, for `--dps-transport mqtt`.
    #[arg(long, default_value_t = 8883)]
    dps_mqtt_port: u16,
    /// The device's model, sent to DPS (and reported to the twin by the sender).
    #[arg(long, env = "DEVICE_MODEL")]
    model: Option<String>,
    /// The device's serial number, sent to DPS (and reported to the twin by the sender).
    #[arg(long, env = "DEVICE_SERIAL")]
    serial: Option<String>,
}

impl DpsArgs {
    /// The extra CA's PEM text, if one is given.
    pub fn extra_ca(&self) -> anyhow::Result<Option<String>> {
        self.extra_ca_file
            .as_ref()
            .map(|path| {
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
            })
            .transpose()
    }

    /// What the device tells DPS about itself, with its firmware version.
    pub fn info(&self, firmware: String) -> DeviceInfo {
        DeviceInfo {
            model: self.model.clone(),
            serial_number: self.serial.clone(),
            firmware: Some(firmware),
        }
    }

    /// The DPS client these flags describe.
    pub fn provisioner(
        &self,
        extra_ca: Option<&str>,
        info: DeviceInfo,
    ) -> anyhow::Result<Provisioner> {
        let mut provisioner = Provisioner::new(extra_ca).map_err(anyhow::Error::msg)?;
        provisioner.transport = self.dps_transport;
        provisioner.mqtt_port = self.dps_mqtt_port;
        provisioner.info = info;
        Ok(provisioner)
    }
}
