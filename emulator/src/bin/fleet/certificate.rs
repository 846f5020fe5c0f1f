//! `fleet issue-certificate`: a server certificate from the emulator's CA, for a reference
//! broker the benchmarks load next to the emulator's hubs.

use std::net::IpAddr;
use std::path::Path;

/// Writes a certificate for `address` and its key, signed by the CA in `state_dir`.
pub fn issue(state_dir: &Path, address: IpAddr, cert: &Path, key: &Path) -> anyhow::Result<()> {
    let ca = emulator::tls::LocalCa::load_or_create(state_dir)?;
    ca.write_server_certificate(&[address], cert, key)?;
    Ok(())
}
