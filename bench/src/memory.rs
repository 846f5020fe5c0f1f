//! A process's memory as Linux reports it in /proc/<pid>/status: what every benchmark samples.

/// A process's resident memory now and at its peak, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident set size now (VmRSS).
    pub resident_kib: u64,
    /// The highest resident set size so far (VmHWM).
    pub peak_kib: u64,
}

/// Reads the memory of process `pid`; None when the process is gone or the system is not Linux.
pub fn read(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some(Memory {
        resident_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
    })
}

/// The resident memory of `pid` in KiB, 0 when it cannot be read (a child without a pid).
pub fn resident_kib(pid: Option<u32>) -> u64 {
    pid.and_then(read).map_or(0, |m| m.resident_kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_resident_memory_no_larger_than_its_peak() {
        let memory = read(std::process::id()).expect("Linux /proc");
        assert!(memory.resident_kib > 0);
        assert!(memory.resident_kib <= memory.peak_kib);
    }
}
