//! `bench soak` and `bench plot-memory`: a fleet kept busy for a long time while the servers'
//! memory is sampled, and the chart drawn from the samples.

use crate::storm::{enrolled, provisioner};
use anyhow::{bail, Context};
use bench::memory_chart::{self, MemorySample};
use bench::soak::{self, SoakPlan};
use device::provision::DpsTransport;
use emulator::fleet::clients::Emulator;
use std::path::Path;
use std::time::Duration;

/// What `bench soak` is told.
pub struct SoakArgs<'a> {
    pub minutes: f64,
    pub devices: usize,
    pub telemetry_seconds: f64,
    pub report_seconds: f64,
    pub reprovision_seconds: f64,
    pub sample_seconds: f64,
    pub processes: &'a [String],
    pub csv: &'a Path,
    pub svg: Option<&'a Path>,
}

/// `NAME=PID` pairs.
fn processes(specs: &[String]) -> anyhow::Result<Vec<(String, u32)>> {
    specs
        .iter()
        .map(|spec| {
            let (name, pid) = spec
                .split_once('=')
                .with_context(|| format!("--process {spec:?}: use NAME=PID"))?;
            let pid = pid
                .parse()
                .with_context(|| format!("--process {spec:?}: {pid:?} is not a process id"))?;
            Ok((name.to_owned(), pid))
        })
        .collect()
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{name} must be a positive number of seconds, not {value}"))
}

/// Keeps the fleet busy, samples memory to the CSV, draws the SVG.
pub async fn run(emulator: &Emulator, args: SoakArgs<'_>) -> anyhow::Result<()> {
    let plan = SoakPlan {
        duration: seconds("--minutes", args.minutes * 60.0)?,
        telemetry_interval: seconds("--telemetry-seconds", args.telemetry_seconds)?,
        report_interval: seconds("--report-seconds", args.report_seconds)?,
        reprovision_interval: seconds("--reprovision-seconds", args.reprovision_seconds)?,
        sample_interval: seconds("--sample-seconds", args.sample_seconds)?,
        processes: processes(args.processes)?,
    };
    if plan.processes.is_empty() {
        bail!("name at least one process to sample: --process emulator=PID");
    }
    let prefix = format!("soak-{}", std::process::id());
    let credentials = enrolled(emulator, &prefix, args.devices).await?;
    let provisioner = provisioner(
        emulator,
        DpsTransport::Https,
        true,
        Duration::from_secs(120),
    )?;
    let csv = std::fs::File::create(args.csv)
        .with_context(|| format!("creating {}", args.csv.display()))?;
    eprintln!(
        "Soak: {} devices for {} min, memory of {} every {} s into {}",
        args.devices,
        args.minutes,
        plan.processes
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        args.sample_seconds,
        args.csv.display()
    );
    let report = soak::run(
        &credentials,
        &provisioner,
        &emulator.hub_endpoints()?,
        &plan,
        std::io::BufWriter::new(csv),
    )
    .await?;
    println!(
        "{} devices, {:.1} min: {} messages, {} reported-property patches, {} re-provisionings, \
            {} failures",
        args.devices,
        args.minutes,
        report.messages,
        report.reports,
        report.reprovisions,
        report.failures
    );
    print_memory(&report.samples);
    if let Some(svg) = args.svg {
        write_svg(&report.samples, svg, args.devices, args.minutes)?;
    }
    if let Some(error) = report.first_error {
        eprintln!("the first failure: {error}");
    }
    Ok(())
}

/// One line per process: first, last and peak resident memory and the late slope.
fn print_memory(samples: &[MemorySample]) {
    println!("| process | samples | first | last | peak | growth, second half |");
    println!("|---|---|---|---|---|---|");
    for (name, slope) in memory_chart::slopes(samples) {
        let mine: Vec<u64> = samples
            .iter()
            .filter(|s| s.process == name)
            .map(|s| s.rss_kib)
            .collect();
        println!(
            "| {name} | {} | {} KiB | {} KiB | {} KiB | {slope:+.0} KiB/min |",
            mine.len(),
            mine.first().copied().unwrap_or_default(),
            mine.last().copied().unwrap_or_default(),
            mine.iter().max().copied().unwrap_or_default(),
        );
    }
}

fn write_svg(
    samples: &[MemorySample],
    path: &Path,
    devices: usize,
    minutes: f64,
) -> anyhow::Result<()> {
    let title = format!(
        "Resident memory during a {minutes} min soak, {devices} devices ({})",
        time::OffsetDateTime::now_utc().date()
    );
    std::fs::write(path, memory_chart::render_svg(samples, &title))
        .with_context(|| format!("writing {}", path.display()))
}

/// `bench plot-memory`: the SVG from a soak's CSV.
pub fn plot(csv: &Path, svg: &Path, title: &str) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
    let samples = memory_chart::read_csv(&text).map_err(anyhow::Error::msg)?;
    std::fs::write(svg, memory_chart::render_svg(&samples, title))
        .with_context(|| format!("writing {}", svg.display()))?;
    print_memory(&samples);
    Ok(())
}
